"""Parse the output of probes/cap_capable_{tracepoint,kprobe}.bt (bpftrace -B none).

Pure: no I/O. Lines go in one at a time, CapCheck records come out (the same records the
tracefs parser makes, so classify() and the aggregator take either). One record per check,
written by a single bpftrace printf, so its lines are never interleaved with another's:

    CAPCHECK 2706065514079 1 7889 7889 10 0 python3
            cap_capable+131
            security_capable+59
            __inet_bind+490
    CAPEND

Besides the checks the program prints control lines the probe waits on:

    CAPPROBE BEGIN <nsecs>             the program is loaded (the probes attach around it)
    CAPPROBE MARK <nsecs> <tid>        the controller's handshake check was seen
    @sent: <n>                         checks emitted so far; printed right after each MARK
    Lost <n> events                    bpftrace's perf buffer overflowed
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from capprobe.events.tracefs_records import MAX_UNPARSED_EXAMPLES, frame_function
from capprobe.tracing.probe import CapCheck

_HEADER = re.compile(
    r"^CAPCHECK (?P<ns>\d{1,20}) (?P<cpu>\d{1,6}) (?P<pid>\d{1,10}) (?P<tid>\d{1,10}) (?P<cap>-?\d{1,10})"
    r" (?P<ret>-?\d{1,10})"
    r"(?: (?P<comm>.*))?$"
)
_END = "CAPEND"
# Numbers are bounded in every pattern: a forged 5,000-digit number would make int() raise.
_BEGIN = re.compile(r"^CAPPROBE BEGIN (?P<ns>\d{1,20})\s*$")
_MARK = re.compile(r"^CAPPROBE MARK (?P<ns>\d{1,20}) (?P<tid>\d{1,10})\s*$")
_SENT = re.compile(r"^@sent: (?P<n>\d{1,20})\s*$")
_OTHER_MAP = re.compile(r"^@\w+(?:\[.*\])?: ")
_LOST = re.compile(r"^Lost (?P<n>\d{1,20}) events\s*$")
# Frames: "        __inet_bind+490", maybe "func+0x1a/0x40" or "func+12 [module]"; bpftrace
# prints a bare hex address when it cannot resolve one.
_FRAME = re.compile(r"^\s+(?P<frame>\S+)")
_NOISE = ("Attaching ",)


@dataclass(frozen=True)
class Mark:
    """One handshake seen by the program: when, and how many checks it had sent by then."""

    mono_ns: int
    tid: int
    sent: int | None = None  # filled from the "@sent: N" line that follows


@dataclass
class _Pending:
    pid: int
    comm: str
    cpu: int
    mono_ns: int
    cap: int
    granted: bool
    stack: list[str]

    def freeze(self) -> CapCheck:
        return CapCheck(self.pid, self.comm, self.cpu, self.mono_ns / 1e9, self.cap,
                        self.granted, tuple(self.stack))


class BpftraceCapParser:
    """Streaming parser: feed() lines, get CapChecks once each record's CAPEND is read."""

    def __init__(self) -> None:
        self._open: _Pending | None = None
        self._await_sent = False
        self.begin_ns: int | None = None
        self.marks: list[Mark] = []
        self.records = 0              # CAPCHECK headers seen (complete or not)
        self.lost_events = 0          # from "Lost N events"
        self.truncated_records = 0    # a record cut short (no CAPEND before the next line)
        self.unparsed_count = 0
        self.unparsed_examples: list[str] = []

    @property
    def last_sent(self) -> int | None:
        """The @sent value of the latest MARK that has one."""
        for mark in reversed(self.marks):
            if mark.sent is not None:
                return mark.sent
        return None

    def feed(self, line: str) -> list[CapCheck]:
        """Consume one output line; return the check it completed (if any).

        Never raises: a line nothing can read is counted as unparsed."""
        try:
            return self._feed(line)
        except Exception:  # noqa: BLE001 - e.g. a 5,000-digit number: int() refuses it
            self._note_unparsed(line)
            return []

    def _feed(self, line: str) -> list[CapCheck]:
        line = line.rstrip("\r\n")
        if self._open is not None:
            if line == _END:
                done, self._open = self._open, None
                return [done.freeze()]
            frame = _FRAME.match(line)
            if frame:
                self._open.stack.append(frame_function(frame["frame"]))
                return []
            if not line.strip():
                return []  # kstack starts with a newline
            # Anything else: the record lost its end (cannot happen with one printf per
            # record, but keep the check rather than drop it) and this line is new.
            done, self._open = self._open, None
            self.truncated_records += 1
            return [done.freeze(), *self._feed(line)]

        if not line.strip() or line.startswith(_NOISE):
            return []
        header = _HEADER.match(line)
        if header:
            self.records += 1
            self._open = _Pending(
                pid=int(header["tid"]), comm=(header["comm"] or "").strip(),
                cpu=int(header["cpu"]), mono_ns=int(header["ns"]), cap=int(header["cap"]),
                granted=int(header["ret"]) == 0, stack=[],
            )
            return []
        if match := _MARK.match(line):
            self.marks.append(Mark(int(match["ns"]), int(match["tid"])))
            self._await_sent = True
            return []
        if match := _SENT.match(line):
            if self._await_sent and self.marks:
                last = self.marks[-1]
                self.marks[-1] = Mark(last.mono_ns, last.tid, int(match["n"]))
            self._await_sent = False
            return []
        if match := _LOST.match(line):
            self.lost_events += int(match["n"])
            return []
        if match := _BEGIN.match(line):
            self.begin_ns = int(match["ns"])
            return []
        if _OTHER_MAP.match(line):
            return []  # map dumps at exit
        self._note_unparsed(line)
        return []

    def flush(self) -> list[CapCheck]:
        """End of input: a record still open lost its end; keep what it has."""
        if self._open is None:
            return []
        done, self._open = self._open, None
        self.truncated_records += 1
        return [done.freeze()]

    def _note_unparsed(self, line: str) -> None:
        self.unparsed_count += 1
        if len(self.unparsed_examples) < MAX_UNPARSED_EXAMPLES:
            self.unparsed_examples.append(line[:1000])


def parse_lines(lines) -> tuple[list[CapCheck], BpftraceCapParser]:
    """Parse a whole recorded output; return the checks and the parser (for its counters)."""
    parser = BpftraceCapParser()
    checks: list[CapCheck] = []
    for line in lines:
        checks.extend(parser.feed(line))
    checks.extend(parser.flush())
    return checks, parser
