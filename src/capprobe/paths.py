"""Exact paths in JSON.

Paths are bytes on Linux. The profile stores a path as a JSON string when it is
valid UTF-8 (JSON escapes newlines and control characters, so those survive as
they are). A path that is not valid UTF-8 is stored as ``"b64:"`` followed by the
base64 of its bytes. Stored paths are absolute (they start with "/") or abstract
unix socket names (they start with "@"), so the prefix cannot be mistaken for a
real path.
"""

from __future__ import annotations

import base64
import os

B64_PREFIX = "b64:"


def encode_path(raw: bytes) -> str:
    """bytes -> JSON-safe string, exactly reversible with decode_path()."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return B64_PREFIX + base64.b64encode(raw).decode("ascii")
    if text.startswith(B64_PREFIX):  # cannot happen for absolute paths; stay exact anyway
        return B64_PREFIX + base64.b64encode(raw).decode("ascii")
    return text


def decode_path(stored: str) -> bytes:
    """The exact bytes of a path stored with encode_path()."""
    if stored.startswith(B64_PREFIX):
        return base64.b64decode(stored[len(B64_PREFIX):], validate=True)
    # surrogateescape: profiles written before arguments were encoded hold os.fsdecode()
    # text ("\udcff" for byte 0xff); those surrogates are the original bytes.
    return stored.encode("utf-8", "surrogateescape")


def display_path(stored: str) -> str:
    """A one-line printable form for humans (control and non-UTF-8 bytes escaped)."""
    return printable(decode_path(stored).decode("utf-8", "backslashreplace"))


def printable(text: str) -> str:
    """TEXT made safe for a terminal and one line: control characters (escape sequences,
    line breaks), bidi overrides such as U+202E and other invisible ones are escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def resolve(base: bytes, path: bytes) -> bytes:
    """Absolute, lexically normalised path of PATH relative to directory BASE."""
    if not path.startswith(b"/"):
        path = base.rstrip(b"/") + b"/" + path if base else b"/" + path
    norm = os.path.normpath(path)
    # normpath keeps a leading "//" (POSIX allows it to be special); Linux does not care.
    if norm.startswith(b"//"):
        norm = b"/" + norm.lstrip(b"/")
    return norm
