"""Parse tracefs text output of the capability:cap_capable event (with options/stacktrace=1).

Pure: no I/O. Lines go in one at a time, CapCheck records come out. The tracefs output
interleaves CPUs, and a `<stack trace>` entry follows its event on the same pid and CPU:

    bash-2504    [001] .....    53.392654: cap_capable: cred 0000..., cap 21, ret 0
    bash-2504    [001] .....    53.392657: <stack trace>
 => trace_event_raw_event_cap_capable
 => cap_capable
 => security_vm_enough_memory_mm
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from capprobe.tracing.probe import CapCheck

MAX_UNPARSED_EXAMPLES = 20


# Entry header. The comm may contain spaces and dashes, so it is matched lazily up to the
# last "-PID" that is followed by the CPU column. Optional parts: the "(TGID)" column
# (options/record-tgid) and the irq-info flags column (options/irq-info).
_ENTRY = re.compile(
    r"^\s*(?P<comm>.*?)-(?P<pid>\d{1,10})\s+"
    r"(?:\(\s*[-\d]+\)\s+)?"
    r"\[(?P<cpu>\d{1,6})\]\s+"
    r"(?:[^\s:]{4,6}\s+)?"
    r"(?P<ts>\d+\.\d+):\s+(?P<body>.*?)\s*$"
)
# Numbers are bounded in every pattern: a forged 5,000-digit number would make int() raise.
_CAP_CAPABLE = re.compile(r"^cap_capable:.*\bcap (?P<cap>-?\d{1,10}), ret (?P<ret>-?\d{1,10})")
_STACK_HEADER = "<stack trace>"
_STACK_FRAME = re.compile(r"^\s*=>\s*(?P<frame>\S+)")
# trace_pipe reports ring-buffer overruns inline.
_LOST = re.compile(r"^\s*CPU:(?P<cpu>\d{1,6}) \[LOST (?P<count>\d{1,20}) EVENTS\]\s*$")


def frame_function(frame: str) -> str:
    """Function name of a stack frame: 'do_ip_setsockopt+0x5a/0x1230' -> 'do_ip_setsockopt'."""
    return frame.split("+", 1)[0]


@dataclass
class _Pending:
    pid: int
    comm: str
    cpu: int
    mono_ts: float
    cap: int
    granted: bool
    stack: list[str]
    stack_seen: bool = False

    def freeze(self) -> CapCheck:
        return CapCheck(self.pid, self.comm, self.cpu, self.mono_ts, self.cap, self.granted,
                        tuple(self.stack))


class CapCheckParser:
    """Streaming parser: feed() lines, get CapChecks once each event's stack is complete."""

    def __init__(self) -> None:
        self._pending: dict[tuple[int, int], _Pending] = {}
        # Event whose stack is being read (stack lines carry no pid/cpu of their own).
        self._collecting: _Pending | None = None
        self.unparsed_count = 0
        self.unparsed_examples: list[str] = []
        self.lost_events = 0          # from "CPU:N [LOST M EVENTS]" lines
        self.orphan_stacks = 0        # stacks without a preceding event (e.g. event lost)
        self._orphan_stack_open = False

    def feed(self, line: str) -> list[CapCheck]:
        """Consume one line of trace/trace_pipe output; return the checks it completed.

        Never raises: a line nothing can read is counted as unparsed."""
        try:
            return self._feed(line)
        except Exception:  # noqa: BLE001 - e.g. a 5,000-digit pid: int() refuses it
            self._note_unparsed(line)
            return []

    def _feed(self, line: str) -> list[CapCheck]:
        line = line.rstrip("\n")
        frame_match = _STACK_FRAME.match(line)
        if frame_match:
            if self._collecting is not None:
                self._collecting.stack.append(frame_function(frame_match["frame"]))
            elif not self._orphan_stack_open:
                self._note_unparsed(line)
            return []

        # Any other line ends the stack being collected: that event is complete.
        done: list[CapCheck] = []
        if self._collecting is not None:
            finished = self._collecting
            self._collecting = None
            key = (finished.pid, finished.cpu)
            if self._pending.get(key) is finished:
                del self._pending[key]
            done.append(finished.freeze())
        self._orphan_stack_open = False

        if not line.strip() or line.lstrip().startswith("#"):
            return done
        lost = _LOST.match(line)
        if lost:
            self.lost_events += int(lost["count"])
            return done
        entry = _ENTRY.match(line)
        if not entry:
            self._note_unparsed(line)
            return done

        pid, cpu = int(entry["pid"]), int(entry["cpu"])
        key = (pid, cpu)
        body = entry["body"]
        if body == _STACK_HEADER:
            owner = self._pending.get(key)
            if owner is None or owner.stack_seen:
                self.orphan_stacks += 1
                self._orphan_stack_open = True  # swallow its frames without counting each
            else:
                owner.stack_seen = True
                self._collecting = owner
            return done

        event = _CAP_CAPABLE.match(body)
        if not event:
            self._note_unparsed(line)
            return done
        previous = self._pending.pop(key, None)
        if previous is not None:
            done.append(previous.freeze())  # its stack never came (stacktrace off or lost)
        self._pending[key] = _Pending(
            pid=pid, comm=entry["comm"].strip(), cpu=cpu, mono_ts=float(entry["ts"]),
            cap=int(event["cap"]), granted=int(event["ret"]) == 0, stack=[],
        )
        return done

    def flush(self) -> list[CapCheck]:
        """Emit every event still waiting for its stack (end of input)."""
        self._collecting = None
        self._orphan_stack_open = False
        done = sorted((p.freeze() for p in self._pending.values()), key=lambda c: c.mono_ts)
        self._pending.clear()
        return done

    def _note_unparsed(self, line: str) -> None:
        self.unparsed_count += 1
        if len(self.unparsed_examples) < MAX_UNPARSED_EXAMPLES:
            self.unparsed_examples.append(line[:1000])


def parse_lines(lines) -> tuple[list[CapCheck], CapCheckParser]:
    """Parse a whole recorded output; return the checks and the parser (for its counters)."""
    parser = CapCheckParser()
    checks: list[CapCheck] = []
    for line in lines:
        checks.extend(parser.feed(line))
    checks.extend(parser.flush())
    return checks, parser
