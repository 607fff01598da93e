"""Parse strace output lines into events (pure functions, no I/O).

Expected strace flags: ``-f -q -ttt -n -yy -X verbose -s 4096 -e signal=SIGHUP,SIGUSR1,SIGUSR2``.
A line looks like::

    2881  1795445073.887792 [  83] mkdir("d", 0777) = 0
    2880  1795445073.865276 [  58] vfork( <unfinished ...>
    2880  1795445073.865768 [  58] <... vfork resumed>) = 2881
    2881  1795445073.888376 [ 231] +++ exited with 0 +++

This module is the hot path: a traced daemon produces millions of lines, so the
line is only split into pid, time, name, raw argument text and result here;
arguments are taken apart later, and only for the syscalls that matter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Numbers are bounded: a forged 5,000-digit pid would make int() raise, so it stays Unparsed.
_HEAD = re.compile(r"(\d{1,10})\s+(\d{1,12}\.\d{1,9})\s+(?:\[\s*(\d+)\]\s+)?")
# The common line in one match: pid, time, syscall number, name and "(".
_CALL = re.compile(r"(\d{1,10})\s+(\d{1,12}\.\d{1,9})\s+(?:\[\s*\d+\]\s+)?([a-z_0-9]+)\(")
_RESUMED = re.compile(r"<\.\.\. ([a-z_0-9]+) resumed>")
# What matters when looking for the ")" closing the argument list: quoted strings and
# -yy annotations are skipped whole (they may hold parentheses). An annotation follows a
# number (fd) or a comment ("AT_FDCWD */</cwd>") and may nest one level
# ("</dev/net/tun<char 10:200>>").
_ARG_SPECIAL = re.compile(r'["()<]')
_ANNOTATION = re.compile(r"<(?:->|[^<>\\]|\\.|<[^<>]*>)*>")
# strace pads some results to a column ("exit(0)  = ?" from a thread): any run of spaces.
_RESULT = re.compile(
    r" += (?P<ret>-?\d{1,20}(?!\d)|0x[0-9a-fA-F]{1,16}(?![0-9a-fA-F])|\?)"
    r"(?P<annot><(?:->|[^<>\\]|\\.|<[^<>]*>)*>)?"
    r"(?: (?P<errno>E[A-Z0-9]+) \()?"
)
_EXITED = re.compile(r"\+\+\+ exited with (\d+) \+\+\+")
_KILLED = re.compile(r"\+\+\+ killed by (SIG[A-Z0-9]+)( \(core dumped\))? \+\+\+")
_UNFINISHED = " <unfinished ...>"
_DETACHED = " <detached ...>"
# "--- SIGHUP {si_signo=1 /* SIGHUP */, si_code=0 /* SI_USER */, si_pid=4242, si_uid=0} ---"
# (-X verbose; "si_signo=SIGHUP, si_code=SI_USER" without it)
_SIGNAL = re.compile(r"--- (SIG[A-Z0-9]+) \{si_signo=[^,]*, si_code=[^,]*(?:, si_pid=(\d{1,10}))?")


@dataclass(slots=True)
class Syscall:
    """One completed syscall (unfinished/resumed halves already joined)."""

    pid: int
    ts: float
    name: str
    args: str  # raw text between the parentheses
    ret: int | None  # None for "?" (exit_group, or lost to a signal)
    errno: str | None  # "ENOENT" when the call failed
    annot: str | None  # -yy annotation of the result, without the angle brackets


@dataclass(slots=True)
class ProcessExit:
    """A traced process ended ("+++ exited with N +++" / "+++ killed by SIG +++")."""

    pid: int
    ts: float
    status: int | None
    signal: str | None


@dataclass(slots=True)
class SignalDelivery:
    """A signal delivered to a traced process ("--- SIGHUP {...} ---"): a reload, a log reopen."""

    pid: int
    ts: float
    signal: str
    sender: int | None  # si_pid: the process that sent it (None for a kernel-sent signal)


@dataclass(slots=True)
class Unparsed:
    """A line the parser could not read; kept so nothing is dropped silently."""

    line: str


Event = Syscall | ProcessExit | SignalDelivery | Unparsed


class StraceLineParser:
    """Turns lines into events, joining ``<unfinished ...>``/``resumed`` by pid."""

    def __init__(self) -> None:
        # pid -> (name, ts, partial argument text) of a call strace split in two
        self._pending: dict[int, tuple[str, float, str]] = {}
        # (pid, name) when the last line fed was the first half of a split call
        self.last_unfinished: tuple[int, str] | None = None

    def feed(self, line: str) -> Event | None:
        """Parse one line; returns None for the first half of a split call."""
        line = line.rstrip("\n")
        self.last_unfinished = None
        call = _CALL.match(line)
        if call is not None:  # hot path: a plain syscall line
            pid, ts, name = int(call.group(1)), float(call.group(2)), call.group(3)
            body = line[call.end():]
            close = _find_close(body, 1)
            if close is not None:
                return _complete(pid, ts, name, body[:close], body[close + 1:], line)
            if body.endswith(_UNFINISHED):
                self._pending[pid] = (name, ts, body[: -len(_UNFINISHED)])
                self.last_unfinished = (pid, name)
                return None
            if body.endswith(_DETACHED):
                return None  # in progress when strace let go (`capprobe attach` detaching): no result
            return Unparsed(line)
        head = _HEAD.match(line)
        if head is None:
            return Unparsed(line) if line.strip() else None
        pid = int(head.group(1))
        ts = float(head.group(2))
        rest = line[head.end():]
        if rest.startswith("<..."):
            return self._resumed(pid, ts, rest, line)
        if rest.startswith("+++"):
            return self._exit(pid, ts, rest, line)
        if rest.startswith("---"):
            m = _SIGNAL.match(rest)  # only the signals -e signal= names are printed
            return SignalDelivery(pid, ts, m.group(1), int(m.group(2)) if m.group(2) else None) if m else None
        return Unparsed(line)  # not "name(" either: _CALL would have matched

    def _resumed(self, pid: int, ts: float, rest: str, line: str) -> Event | None:
        m = _RESUMED.match(rest)
        if m is None:
            return Unparsed(line)
        name = m.group(1)
        body = rest[m.end():]
        first = self._pending.pop(pid, None)
        if first is not None and first[0] == name:
            ts, prefix = first[1], first[2]
        else:
            prefix = ""  # the first half was never seen (e.g. attached mid-call)
        close = _find_close(body, 1)
        if close is None:
            if body.endswith(_UNFINISHED):  # resumed and unfinished again
                self._pending[pid] = (name, ts, prefix + body[: -len(_UNFINISHED)])
                return None
            return Unparsed(line)
        return _complete(pid, ts, name, prefix + body[:close], body[close + 1:], line)

    def _exit(self, pid: int, ts: float, rest: str, line: str) -> Event:
        self._pending.pop(pid, None)
        m = _EXITED.match(rest)
        if m:
            return ProcessExit(pid, ts, int(m.group(1)), None)
        m = _KILLED.match(rest)
        if m:
            return ProcessExit(pid, ts, None, m.group(1))
        return Unparsed(line)


def _find_close(text: str, depth: int) -> int | None:
    """Index of the ")" that brings the parenthesis depth to 0, or None.

    A quoted string is skipped with str.find, not a regular expression stepping through it
    character by character: a write of 4 KiB is 16 KiB of "\\x.." escapes, and that regex
    took 80 % of the parse of an nginx trace.
    """
    pos = 0
    while (m := _ARG_SPECIAL.search(text, pos)) is not None:
        i = m.start()
        c = text[i]
        if c == '"':
            pos = _string_end(text, i)
        elif c == "<":
            a = _ANNOTATION.match(text, i) if i and text[i - 1] in "0123456789/" else None
            pos = a.end() if a else i + 1
        elif c == "(":
            depth += 1
            pos = i + 1
        else:
            depth -= 1
            if depth == 0:
                return i
            pos = i + 1
    return None


def _string_end(text: str, start: int) -> int:
    """Index after the quote closing the string opened at START (an unescaped one: an even
    run of backslashes before it), or START + 1 when it is never closed (a plain character)."""
    end = start
    while (end := text.find('"', end + 1)) >= 0:
        before = end - 1
        while text[before] == "\\":
            before -= 1
        if (end - 1 - before) % 2 == 0:
            return end + 1
    return start + 1


def _complete(pid: int, ts: float, name: str, args: str, tail: str, line: str) -> Event:
    m = _RESULT.match(tail)
    if m is None:
        return Unparsed(line)
    ret_text = m.group("ret")
    if ret_text == "?":
        ret = None
    elif ret_text.startswith("0x"):
        ret = int(ret_text, 16)
    else:
        ret = int(ret_text)
    annot = m.group("annot")
    return Syscall(pid, ts, name, args, ret, m.group("errno"), annot[1:-1] if annot else None)


# ---------------------------------------------------------------------------
# Argument helpers: used by the fact handlers, only on syscalls they care about.

_SPLIT_TOKEN = re.compile(
    r'"(?:[^"\\]|\\.)*"(?:\.\.\.)?|(?<=[\d/])<(?:->|[^<>\\]|\\.|<[^<>]*>)*>|/\*.*?\*/|[(){}\[\],]'
)


def split_args(args: str) -> list[str]:
    """Split an argument list at top-level commas (strings, structs, arrays kept whole)."""
    parts: list[str] = []
    depth = 0
    start = 0
    for tok in _SPLIT_TOKEN.finditer(args):
        t = tok.group()
        if t in "([{":
            depth += 1
        elif t in ")]}":
            depth -= 1
        elif t == "," and depth == 0:
            parts.append(args[start:tok.start()].strip())
            start = tok.end()
    last = args[start:].strip()
    if last or parts:
        parts.append(last)
    return parts


_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{2})|(.))", re.DOTALL)
_SIMPLE_ESCAPES = {b"n": b"\n", b"t": b"\t", b"r": b"\r", b"v": b"\v", b"f": b"\f",
                   b"a": b"\a", b"b": b"\b", b'"': b'"', b"\\": b"\\", b"'": b"'",
                   b"?": b"?", b"<": b"<", b">": b">", b"|": b"|"}


def _unescape_match(m: re.Match) -> bytes:
    if m.group(1) is not None:
        return bytes([int(m.group(1), 8) & 0xFF])
    if m.group(2) is not None:
        return bytes([int(m.group(2), 16)])
    return _SIMPLE_ESCAPES.get(m.group(3), m.group(3))


def unescape(text: str) -> bytes:
    """Undo strace's C-style escaping; strace output is ASCII, the result exact bytes."""
    raw = text.encode("latin-1", "backslashreplace")
    if b"\\" not in raw:
        return raw
    return _ESCAPE.sub(_unescape_match, raw)


def string_arg(arg: str) -> bytes | None:
    """The bytes of a quoted string argument ('"/etc/x"'), None if it is not one."""
    if len(arg) >= 2 and arg[0] == '"':
        end = arg.rfind('"')
        if end > 0:
            return unescape(arg[1:end])
    return None


def annotation(arg: str) -> str | None:
    """The -yy annotation of an fd argument: '3</etc/x>' -> '/etc/x' (still escaped)."""
    start = arg.find("<")
    if start < 0 or not arg.endswith(">"):
        return None
    return arg[start + 1:-1]


def annotated_path(annot: str | None) -> bytes | None:
    """A file path from an annotation, without a device suffix ("<char 10:200>")."""
    if not annot or not annot.startswith("/"):
        return None
    dev = annot.find("<")
    if dev >= 0:
        annot = annot[:dev]
    if annot.endswith(" (deleted)"):
        annot = annot[: -len(" (deleted)")]
    return unescape(annot)


_DEVICE = re.compile(r"<(char|block) (\d+):(\d+)>$")


def annotated_device(annot: str | None) -> tuple[str, int, int] | None:
    """('char', 10, 200) from '/dev/net/tun<char 10:200>', else None."""
    if not annot:
        return None
    m = _DEVICE.search(annot)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def int_arg(arg: str) -> int | None:
    """Numeric value of '0x241 /* O_WRONLY|O_CREAT|O_TRUNC */', '-100 /* AT_FDCWD */', '0777'."""
    token = arg.split(" ", 1)[0].split("<", 1)[0]
    try:
        if token.startswith(("0x", "-0x")):
            return int(token, 16)
        if len(token) > 1 and token.startswith("0") and token.isdigit():
            return int(token, 8)
        return int(token)
    except ValueError:
        return None


_COMMENT = re.compile(r"/\* (.*?) \*/")


def symbols(arg: str) -> list[str]:
    """Symbolic names strace wrote in comments: '0x80002 /* O_RDWR|O_CLOEXEC */' -> [...]."""
    names: list[str] = []
    for c in _COMMENT.findall(arg):
        names.extend(p.strip() for p in c.split("|"))
    return names


def first_symbol(arg: str) -> str | None:
    found = symbols(arg)
    return found[0] if found else None
