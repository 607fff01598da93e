"""Kernel capability checks -> the profile's "capabilities" section (pure, streaming).

Checks arrive from the tracefs reader in kernel order. Each is classified
(capprobe.facts.capabilities), paired with its either-or alternative the same
way partition_uses() does, tied to the syscall in progress in the strace
stream (same pid, entry time before the check), and folded into counters, so a
long session costs memory per distinct use, not per check (plain mmap alone
makes one advisory check each).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..paths import encode_path
from .capabilities import ADVISORY, REQUIRED, CapabilityUse, classify, load_callsite_tables, \
    minimal_capability_set

STATUS_REQUIRED = "required"
STATUS_OPTIONAL = "optional"        # denied, and the program carried on
STATUS_ADVISORY = "advisory"        # checked only to decide a detail: not required
STATUS_SUPERSEDED = "superseded"    # denied first choice of an either-or check that then passed


@dataclass
class _Agg:
    count: int
    first_seen: float
    pid: int
    paths: set = field(default_factory=set)


class CapabilityUseAggregator:
    """Fold classified checks into distinct uses; exe and path come from the strace facts."""

    def __init__(self, collector, tables=None) -> None:
        self.collector = collector
        self.tables = tables or load_callsite_tables()
        self._carried: dict[int, tuple[CapabilityUse, float]] = {}
        self._uses: dict[tuple, _Agg] = {}
        self.checks = 0

    def add(self, check, wall_ts: float) -> None:
        """One CapCheck (kernel order), with its time on the strace clock."""
        self.checks += 1
        pid = check.pid
        use = classify(check, self.tables,
                       lambda syscall: self.collector.operand_at(pid, wall_ts, syscall))
        previous = self._carried.pop(pid, None)
        if previous is not None:
            prev_use, prev_ts = previous
            if (use.granted and use.call_site == prev_use.call_site
                    and use.cap in prev_use.alternatives and use.kind == REQUIRED):
                self._fold(prev_use, STATUS_SUPERSEDED, prev_ts)
                use = CapabilityUse(use.check, use.cap, use.granted, use.call_site, use.syscall,
                                    use.reason, use.kind, use.alternatives | prev_use.alternatives,
                                    use.advisory_why)
            else:
                self._fold(prev_use, STATUS_OPTIONAL, prev_ts)
        if use.kind == ADVISORY:
            self._fold(use, STATUS_ADVISORY, wall_ts)
        elif use.granted:
            self._fold(use, STATUS_REQUIRED, wall_ts)
        else:
            self._carried[pid] = (use, wall_ts)

    def required_so_far(self) -> frozenset[str]:
        """The capabilities found required up to now (a live status line)."""
        return frozenset(key[1] for key in self._uses if key[0] == STATUS_REQUIRED)

    def finish(self) -> None:
        for use, ts in self._carried.values():
            self._fold(use, STATUS_OPTIONAL, ts)
        self._carried.clear()

    def _fold(self, use: CapabilityUse, status: str, ts: float) -> None:
        pid = use.check.pid
        exe = self.collector.exe_at_time(pid, ts)
        key = (status, use.cap, use.call_site, use.syscall, use.reason,
               use.alternatives, exe, use.advisory_why)
        agg = self._uses.get(key)
        if agg is None:
            agg = self._uses[key] = _Agg(0, ts, pid)
        agg.count += 1
        if status != STATUS_ADVISORY and len(agg.paths) < 10:
            target = self.collector.operand_at(pid, ts, use.syscall)
            if target:
                agg.paths.add(target)

    def section(self, method: str, probe_stats=None, self_privileged_exes: frozenset[str] = frozenset()) -> dict:
        """The "capabilities" section: required set, every distinct use, losses.

        SELF_PRIVILEGED_EXES: setuid-root or file-capability programs the unprivileged service
        ran. What the kernel granted them came from their own bits, not from the service's
        capabilities, so it does not make the unit grant anything (issue 8: not unless proven).
        """
        uses = []
        needs = []
        for key, agg in sorted(self._uses.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[1].first_seen)):
            status, cap, call_site, syscall, reason, alternatives, exe, why = key
            if status == STATUS_REQUIRED and exe in self_privileged_exes:
                status, why = STATUS_ADVISORY, (
                    f"granted to {exe.rsplit('/', 1)[-1]} by its own setuid-root bit or file capabilities, "
                    "not by the service's capabilities (it keeps them under NoNewPrivileges=no with this "
                    "capability in the bounding set); not granted by the unit unless confirmed")
            row = {
                "capability": cap, "status": status, "method": method, "count": agg.count,
                "exe": exe, "pid": agg.pid, "syscall": syscall, "call_site": call_site or None,
                "reason": reason, "first_seen": round(agg.first_seen, 6),
            }
            if len(alternatives) > 1:
                row["alternatives"] = sorted(alternatives)
            if why:
                row["why_not_required"] = why
            if agg.paths:
                row["targets"] = sorted(agg.paths)
            uses.append(row)
            if status == STATUS_REQUIRED:
                needs.append(alternatives or frozenset({cap}))
        required = sorted(minimal_capability_set(needs, self.tables.breadth)) if needs else []
        out = {"method": method, "required": required, "checks": self.checks, "uses": uses}
        if probe_stats is not None:
            out["lost_events"] = probe_stats.lost_events
            out["unparsed"] = probe_stats.unparsed_count
            if probe_stats.unparsed_examples:
                out["unparsed_examples"] = probe_stats.unparsed_examples
        return out


def describe_target(raw: bytes | str) -> str:
    return encode_path(raw) if isinstance(raw, bytes) else raw
