"""Run the kernel capability probe beside strace and hand its checks to the facts.

The probe's reader thread only queues checks; the strace loop drains the queue
(capprobe's one thread that touches facts), so no fact is shared between threads.
When no kernel probe can run, capabilities are inferred from the strace facts
(fallback 2) and the profile says so.
"""

from __future__ import annotations

import queue
from collections import deque

from .facts.capability_uses import CapabilityUseAggregator
from .tracing.bpftrace import BpftraceCapabilityProbe
from .tracing.probe import CapabilityProbeBackend, ProbeUnavailable
from .tracing.tracefs import CapabilityProbe

# --cap-probe NAME -> backend, in the order "auto" tries them: tracefs first (this kernel's
# cap_capable tracepoint), then bpftrace (kprobes on kernels without it), then inference
# from the syscalls (fallback 2, in section()).
PROBE_BACKENDS: dict[str, type[CapabilityProbeBackend]] = {
    "tracefs": CapabilityProbe, "bpftrace": BpftraceCapabilityProbe,
}


class CapabilityRecorder:
    """Either a live tracefs probe, or nothing (then section() infers)."""

    def __init__(self, probe, collector, reason_off: str | None) -> None:
        self.probe = probe
        self.collector = collector
        self.reason_off = reason_off
        self.excluded_pids: set[int] = set()
        self.method = "tracefs"
        self.stats = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: deque = deque()
        self.aggregator = CapabilityUseAggregator(collector) if probe is not None else None

    @classmethod
    def start(cls, mode: str, launcher_pid: int, collector, notes: list[str]) -> "CapabilityRecorder":
        """Arm the probe on the launcher's pid (the target descends from it).

        "auto" falls back (tracefs, bpftrace, inference) and notes why; an explicit backend
        that cannot run is a SessionError: the user chose it, so no silent substitute.
        """
        if mode == "off":
            return cls(None, collector, "turned off with --cap-probe off")
        order = list(PROBE_BACKENDS) if mode == "auto" else [mode]
        recorder = cls(None, collector, None)
        reasons = []
        for name in order:
            try:
                probe = PROBE_BACKENDS[name](launcher_pid, on_check=recorder._queue.put)
                probe.start()
            except ProbeUnavailable as e:
                reasons.append(f"{name}: {getattr(e, 'reason', str(e))}")
                continue
            except OSError as e:
                reasons.append(f"{name}: {e.strerror or e}")
                continue
            recorder.probe, recorder.method = probe, name
            recorder.aggregator = CapabilityUseAggregator(collector)
            if reasons:
                notes.append(f"capability probe: {name} ({'; '.join(reasons)})")
            return recorder
        reason = "; ".join(reasons)
        if mode != "auto":
            from .session import SessionError  # imported here: session imports this module
            raise SessionError(f"--cap-probe {reason}")
        notes.append(f"no kernel capability probe ({reason}); capabilities are inferred from syscalls")
        recorder.reason_off = reason
        return recorder

    def exclude_pid(self, pid: int) -> None:
        """Never record pid's checks: capprobe's own tracer (strace reading the target's /proc
        asks CAP_SYS_PTRACE thousands of times once the target runs as another user).

        pid must not be an ancestor of the target: the kernel excludes its future children too.
        """
        self.excluded_pids.add(pid)
        if self.probe is not None:
            self.probe.exclude_pid(pid)

    def incomplete_reasons(self) -> list[str]:
        """One line per reason the recorded capabilities may miss checks (empty: complete)."""
        self.stop()
        lost = self.stats.lost_events if self.stats is not None else 0
        if not lost:
            return []
        return [f"the kernel probe ({self.method}) lost {lost} capability checks "
                "(ring buffer overrun): the required capabilities may be incomplete"]

    def drain(self, final: bool = False) -> None:
        """Fold queued checks whose syscall the strace stream has already delivered."""
        if self.probe is None:
            return
        while True:
            try:
                self._pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        waiting: list = []
        deferred_pids: set[int] = set()
        collector, pending = self.collector, self._pending
        horizon = collector.last_ts  # about where the strace stream is
        while pending:
            check = pending[0]
            pid = check.pid
            wall = self.probe.mono_to_wall(check.mono_ts)
            if not final and wall > horizon:
                # This check and the later ones (kernel order) are ahead of the parser: left as
                # they are. A parser far behind strace (the spool) would otherwise have every
                # drain walk all of them: 20,000 checks took 16 s instead of 0.5.
                break
            pending.popleft()
            if pid in self.excluded_pids:
                continue  # capprobe's own tracer
            if not final and (pid in deferred_pids or collector.last_seen(pid) < wall):
                # strace has not yet printed this pid's later syscalls: keep kernel
                # order per pid and wait, so the check finds its syscall and file.
                deferred_pids.add(pid)
                waiting.append(check)
                continue
            if pid == collector.root_pid and wall < collector.first_exec_time(pid):
                continue  # strace's child before it exec'd the target
            self.aggregator.add(check, wall)
        pending.extendleft(reversed(waiting))

    def stop(self) -> None:
        if self.probe is not None and self.stats is None:
            self.stats = self.probe.stop()

    def required_so_far(self) -> frozenset[str]:
        """The capabilities the kernel probe found required up to now (none yet when inferred)."""
        return self.aggregator.required_so_far() if self.aggregator is not None else frozenset()

    def section_so_far(self, profile: dict) -> dict:
        """The "capabilities" section as it stands, the probe still running (a checkpoint): a
        denied check still waiting for its either-or alternative is not in it yet."""
        if self.probe is None:
            return inferred_section(profile, self.reason_off)
        self.drain()
        return self.aggregator.section(self.method, None, self_privileged_executables(profile))

    def section(self, profile: dict) -> dict:
        """The profile's "capabilities" section, from the kernel or inferred."""
        if self.probe is not None:
            self.stop()
            self.drain(final=True)
            self.aggregator.finish()
            return self.aggregator.section(self.method, self.stats, self_privileged_executables(profile))
        return inferred_section(profile, self.reason_off)


def self_privileged_executables(profile: dict) -> frozenset[str]:
    """Programs that ran with more privilege than the service had: setuid-root or with file
    capabilities, exec'd by a service that did not start as root. (As root they change nothing.)"""
    if profile["run"]["user"].get("uid") == 0:
        return frozenset()
    return frozenset(ex["path"] for ex in profile.get("executables", [])
                     if (ex.get("setuid") and ex.get("owner") == 0) or ex.get("file_caps"))


def inferred_section(profile: dict, why: str | None) -> dict:
    """Fallback 2: capabilities inferred from the strace facts by the probes/ table."""
    try:
        from .facts.inference import inferred_required_set, infer_capabilities
    except ImportError:
        return {"method": "none", "why": why, "required": [], "uses": []}
    records = infer_capabilities(profile)
    return {"method": "inferred", "why_no_kernel_probe": why,
            "required": inferred_required_set(records), "uses": records}
