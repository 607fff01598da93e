"""The kernel capability probe: its interface, and the types every backend shares.

A capability probe records each capability check the kernel makes (``cap_capable``)
for one process tree, and hands every check on as a ``CapCheck``. Backends, each in a
file of its own beside this one:
- ``tracefs.CapabilityProbe``: a private tracefs instance on the capability:cap_capable
  tracepoint, with kernel stacks (first choice);
- ``bpftrace.BpftraceCapabilityProbe``: a bpftrace program on the same tracepoint, or on
  a kprobe where the tracepoint is missing (fallback 1).
``capability_recorder.CapabilityRecorder`` picks one; when none can run, capabilities are
inferred from the syscall facts (fallback 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol


@dataclass(frozen=True)
class CapCheck:
    """One capability check the kernel made for a traced task."""

    pid: int          # thread id the kernel ran the check for (attribute by pid + time)
    comm: str         # as printed at read time: may be stale or "<...>"
    cpu: int
    mono_ts: float    # CLOCK_MONOTONIC seconds (tracefs trace_clock "mono", bpftrace nsecs)
    cap: int          # kernel capability number
    granted: bool     # ret == 0
    stack: tuple[str, ...]  # innermost first, function names without +offset/size


class ProbeUnavailable(RuntimeError):
    """The capability probe cannot run here; .reason says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class ProbeStats:
    """What a finished probe saw besides the checks themselves."""

    checks: int = 0
    lost_events: int = 0            # capability checks the kernel recorded but we never read
    excluded_checks: int = 0        # checks of exclude_pid() pids dropped on delivery
    unparsed_count: int = 0
    unparsed_examples: list[str] = field(default_factory=list)
    orphan_stacks: int = 0
    callback_errors: list[BaseException] = field(default_factory=list)
    instance_left_behind: str | None = None  # tracefs: rmdir kept failing (reclaimed by a later probe)


OnCheck = Callable[[CapCheck], None]


class CapabilityProbeBackend(Protocol):
    """What every capability probe backend offers; constructed as ``Backend(root_pid, on_check=None)``.

    Arm it (start) before the target does anything interesting. on_check runs on the
    backend's reader thread; without one the checks are collected in ``checks``.
    """

    root_pid: int
    checks: list[CapCheck]
    stats: ProbeStats

    def start(self) -> CapabilityProbeBackend:
        """Begin recording; ProbeUnavailable (one line why) when this backend cannot run here."""

    def stop(self) -> ProbeStats:
        """Deliver every check still buffered, count what was lost, release everything."""

    def exclude_pid(self, pid: int) -> None:
        """Never record PID's checks (capprobe's own tracer)."""

    def mono_to_wall(self, mono_ts: float) -> float:
        """A CapCheck.mono_ts as time.time() seconds (the syscall facts' clock)."""


class CheckDelivery:
    """What every capability probe backend shares: hand each check on, count, never lose one.

    Checks of excluded pids (capprobe's own tracer) are dropped here: the kernel-side filter
    of each backend keeps most of them out, this catches those buffered before exclusion.
    """

    stats: ProbeStats
    on_check: OnCheck | None
    checks: list[CapCheck]
    excluded_pids: frozenset[int] = frozenset()

    def exclude_pid(self, pid: int) -> None:
        """Drop pid's checks (capprobe's own tracer); backends add a kernel-side filter."""
        self.excluded_pids = self.excluded_pids | {pid}

    def _deliver(self, checks: list[CapCheck]) -> None:
        for check in checks:
            if check.pid in self.excluded_pids:
                self.stats.excluded_checks += 1
                continue
            self.stats.checks += 1
            if self.on_check is None:
                self.checks.append(check)
                continue
            try:
                self.on_check(check)
            except Exception as error:  # keep recording; report at the end
                self.stats.callback_errors.append(error)
