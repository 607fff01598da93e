"""The profile: versioned JSON, written atomically, loaded with validation.

Schema: docs/profile-schema.md. Paths are encoded by capprobe.paths.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .model import Profile
from .paths import decode_path

SCHEMA = "capprobe/profile/v1"
REQUIRED_SECTIONS = ("host", "run", "processes", "syscalls", "files", "network")


class ProfileError(Exception):
    """A profile cannot be read or written; the message is one line for the user."""


def save_profile(profile: dict, dest: Path, force: bool = False) -> None:
    """Write PROFILE to DEST atomically; refuse to replace an existing file without force."""
    dest = Path(dest)
    data = json.dumps(profile, indent=1, sort_keys=False, ensure_ascii=True) + "\n"
    write_atomically(dest, data.encode("ascii"), force)


def write_atomically(dest: Path, data: bytes, force: bool = False, mode: int = 0o644) -> None:
    """Write DATA to DEST via a temporary file in the same directory and a rename/link."""
    dest = Path(dest)
    directory = dest.parent if str(dest.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + dest.name + ".", suffix=".tmp", dir=directory)
    except OSError as e:
        raise ProfileError(f"cannot write {dest}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            # by the descriptor: in a directory someone else can write, the name may
            # already lead elsewhere (a symlink swapped in), and chmod would follow it
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, dest)
        else:
            # link() fails if DEST exists: no window where another writer's file is replaced
            try:
                os.link(tmp, dest)
            except FileExistsError:
                raise ProfileError(f"{dest} exists; use --force to replace it") from None
            os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# A profile bigger than this is not one capprobe wrote (a busy daemon's is a few MiB):
# refusing it keeps `capprobe show /dev/zero` or a runaway file from eating all memory.
MAX_PROFILE_BYTES = 256 * 1024 * 1024


def load_profile(path: Path) -> dict:
    """Read and check a profile; any problem becomes a one-line ProfileError."""
    raw = _read_regular_file(path, MAX_PROFILE_BYTES)
    try:
        profile = json.loads(raw)
    except json.JSONDecodeError as e:
        if raw.lstrip().startswith(b"{") and not raw.rstrip().endswith(b"}"):  # a cut-off copy
            raise ProfileError(f"{path} is truncated (its JSON ends at byte {len(raw)}): copy it again") from None
        raise ProfileError(f"{path} is not a capprobe profile (invalid JSON: {e})") from None
    except (ValueError, RecursionError) as e:  # bad UTF-8, a 5,000-digit number, nesting too deep
        raise ProfileError(f"{path} is not a capprobe profile (invalid JSON: {e})") from None
    if not isinstance(profile, dict) or "schema" not in profile:
        raise ProfileError(f"{path} is not a capprobe profile (no schema field)")
    if profile["schema"] != SCHEMA:
        raise ProfileError(f"{path} has schema {_short(profile['schema'])}; this capprobe reads {SCHEMA} "
                           "(profile the service again with this capprobe)")
    missing = [s for s in REQUIRED_SECTIONS if s not in profile]
    if missing:
        raise ProfileError(f"{path} is a damaged profile (missing: {', '.join(missing)})")
    problem = shape_problem(profile)
    if problem is not None:
        raise ProfileError(f"{path} is a damaged profile ({problem})")
    return profile


def read_profile(path: Path) -> Profile:
    """load_profile, as the typed read model (capprobe.model)."""
    return Profile.from_json(load_profile(path))


def _read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of PATH if it is a regular file of at most LIMIT bytes.

    Checked on the open descriptor (fstat), so a swap between check and read cannot
    slip a device in; O_NONBLOCK keeps a FIFO from blocking the open."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise ProfileError(f"cannot read {path}: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)  # before fdopen: Python refuses to wrap a directory's descriptor
        raise ProfileError(f"{path} is not a regular file; a profile is a JSON file")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > limit:
            raise ProfileError(f"{path} is {st.st_size} bytes; profiles are read up to "
                               f"{limit // (1024 * 1024)} MiB")
        try:
            raw = f.read(limit + 1)
        except OSError as e:
            raise ProfileError(f"cannot read {path}: {e.strerror}") from None
    if len(raw) > limit:  # grew after fstat
        raise ProfileError(f"{path} is over {limit // (1024 * 1024)} MiB; profiles are read up to that size")
    return raw


# -- the shape the rules and renderers read --------------------------------------
# A type (or tuple of types) is an isinstance check; [X] a list of X; {"k": X} an object
# whose key k must hold X ("k?" when it may be absent); MapOf(X) an object of any keys
# whose values are X; Text a string matching a pattern; Decodes a string its decoder takes;
# NonEmpty([X]) a list with an item (or with least..most items).
# Only what the code reads is described: other keys pass.

@dataclass(frozen=True)
class MapOf:
    values: object


@dataclass(frozen=True)
class Text:
    pattern: str
    meaning: str


@dataclass(frozen=True)
class Decodes:
    decode: Callable[[str], object]
    meaning: str


@dataclass(frozen=True)
class NonEmpty:
    items: list
    least: int = 1
    most: int | None = None


_NUM = (int, float)
_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))
_STAT = {"mode?": Text(r"[0-7]{1,4}", "an octal mode such as \"0644\""), "uid?": _OPT_INT,
         "gid?": _OPT_INT, "type?": str}
_PATH = Decodes(decode_path, "a path (text, or b64: and base64)")
_OPT_PATH = (_PATH, type(None))
_BY = [_PATH]
_USE = {"count": int, "by?": _BY, "first_seen?": _NUM}
# Words that reach the unit as vocabulary (RestrictAddressFamilies=, CapabilityBoundingSet=, DeviceAllow=)
_FAMILY = Text(r"AF_[A-Z0-9_]{1,20}", "an address family such as AF_INET")
_CAPABILITY = Text(r"CAP_[A-Z_]{1,30}", "a capability such as CAP_NET_ADMIN")
_SOCKET_ROW = {"family": _FAMILY, "type?": _OPT_STR, "count?": int, "by?": _BY}
_ADDRESS_ROW = {"family": _FAMILY, "type?": _OPT_STR, "address?": _OPT_PATH, "port?": _OPT_INT,
                "errno?": _OPT_STR, "by?": _BY}

PROFILE_SHAPE = {
    "host": {"hostname?": _OPT_STR, "kernel?": _OPT_STR, "architecture?": _OPT_STR,
             "ip_local_port_range?": (NonEmpty([int], least=2, most=2), type(None))},
    "run": {"command": NonEmpty([_PATH]), "executable?": _PATH, "exit_status": _OPT_INT,
            "exit_signal?": _OPT_STR, "ended_by": str, "duration": _NUM,
            "requested_duration?": (int, float, type(None)), "started?": _NUM,
            "user?": {"uid?": _OPT_INT, "name?": _OPT_STR}, "notify_socket?": _OPT_PATH,
            "environment?": MapOf(_PATH), "main_pid?": _OPT_INT,
            "signals_received?": [{"pid": int, "signal": str, "from_pid?": _OPT_INT}],
            "exercises?": [{"command": str, "at?": (int, float, type(None)), "exit?": _OPT_INT,
                            "signals_to_target?": [{"signal": str, "pid": int}],
                            "target_alive_after?": bool}]},
    "processes": [{"pid": int, "ppid": _OPT_INT, "exe?": _OPT_PATH, "identity_changes": [{"call": str}],
                   "execs?": [{"path": _PATH, "argv?": [_PATH], "time?": _NUM}]}],
    "processes_not_listed?": MapOf(int),
    "syscalls": MapOf({"count": int, "errors?": MapOf(int)}),
    "files": [{"path": _PATH, "ops": MapOf(_USE), "stat?": _STAT, "dir_stat?": _STAT,
               "write_uids?": [_OPT_INT],
               "failed?": [{"op": str, "errno": str, "count": int, "by?": _BY}]}],
    "devices?": [{"path": _PATH, "kind": str, "major": int, "minor": int,
                  "access": Text(r"[rwm]{0,3}", "device access such as \"rw\""), "stat?": _STAT,
                  "by?": _BY}],
    "ioctls?": [{"path": _PATH, "request": str}],
    "network": {"sockets": [_SOCKET_ROW], "socket_failures?": [_SOCKET_ROW], "binds": [_ADDRESS_ROW],
                "listens?": [{"socket?": _OPT_STR, "errno?": _OPT_STR}], "connects": [_ADDRESS_ROW], "sends?": [_ADDRESS_ROW],
                "accepts?": [{"socket?": _OPT_STR, "peer?": _OPT_STR}], "setsockopts": [{"level": str, "option": str, "count?": int}],
                "netlink?": [{"protocol": str, "op": str, "detail?": _OPT_STR, "count?": int}]},
    "behaviour?": [{"kind": str, "detail": str, "count": int, "by?": _BY, "call?": str, "errno?": _OPT_STR,
                    "namespace?": _OPT_STR, "messages?": [str]}],
    "executables?": [{"path": _PATH}],
    "capabilities?": {"method?": _OPT_STR, "required?": [_CAPABILITY], "lost_events?": int,
                      "uses?": [{"capability": _CAPABILITY, "status?": str, "count?": int, "call_site?": str,
                                 "reason?": _OPT_STR, "exe?": _OPT_PATH,
                                 "targets?": [_PATH], "alternatives?": [str]}]},
    "parser": {"lines": int, "unparsed": int, "unparsed_examples?": [str]},
    "complete?": bool,
    "incomplete?": [str],
    "merged?": {"policy": str, "sessions": NonEmpty([{"label": str, "architecture?": _OPT_STR,
                                                      "capability_method?": _OPT_STR}])},
}

_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer",
               float: "a number", bool: "true or false", type(None): "null"}


def shape_problem(profile: dict) -> str | None:
    """'field files[3].ops must be an object (found a string)', or None when PROFILE has the shape."""
    return _check(profile, PROFILE_SHAPE, "")


def _check(value, shape, where: str) -> str | None:
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return _wrong(where, dict, value)
        for key, sub in shape.items():
            name = key.rstrip("?")
            if name not in value:
                if key.endswith("?"):
                    continue
                return f"field {where + '.' if where else ''}{name} is missing"
            problem = _check(value[name], sub, f"{where}.{name}" if where else name)
            if problem:
                return problem
        return None
    if isinstance(shape, list):
        if not isinstance(value, list):
            return _wrong(where, list, value)
        for i, item in enumerate(value):
            problem = _check(item, shape[0], f"{where}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(shape, NonEmpty):
        if isinstance(value, list) and not value:
            return f"field {where} must not be empty"
        if isinstance(value, list) and not shape.least <= len(value) <= (shape.most or len(value)):
            return f"field {where} must hold {shape.least}" + (f" to {shape.most}" if shape.most != shape.least
                                                                else "") + f" items (found {len(value)})"
        return _check(value, shape.items, where)
    if isinstance(shape, Text):
        if not isinstance(value, str):
            return _wrong(where, str, value)
        if re.fullmatch(shape.pattern, value) is None:
            return f"field {where} must be {shape.meaning} (found {_short(value)})"
        return None
    if isinstance(shape, Decodes):
        if not isinstance(value, str):
            return _wrong(where, str, value)
        try:
            shape.decode(value)
        except ValueError:  # binascii.Error and UnicodeError are ValueErrors
            return f"field {where} must be {shape.meaning} (found {_short(value)})"
        return None
    if isinstance(shape, MapOf):
        if not isinstance(value, dict):
            return _wrong(where, dict, value)
        for key, item in value.items():
            problem = _check(item, shape.values, f"{where}[{json.dumps(key)}]")
            if problem:
                return problem
        return None
    if isinstance(shape, tuple) and not all(isinstance(t, type) for t in shape):
        # a choice between shapes (a path or null): the first that fits
        problems = [_check(value, choice, where) for choice in shape]
        return None if None in problems else problems[0]
    types = shape if isinstance(shape, tuple) else (shape,)
    # bool is an int to Python, never to a profile reader
    if isinstance(value, bool) and bool not in types:
        return _wrong(where, types[0], value)
    if not isinstance(value, types):
        return _wrong(where, types[0], value)
    return None


def _wrong(where: str, wanted: type, value) -> str:
    found = _TYPE_NAMES.get(type(value), type(value).__name__)
    return f"field {_short(where)} must be {_TYPE_NAMES.get(wanted, wanted.__name__)} (found {found})"


def _short(text) -> str:
    """A value from the file, made safe to print on one line."""
    text = repr(text) if not isinstance(text, str) else text
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 80 else text[:77] + "..."
