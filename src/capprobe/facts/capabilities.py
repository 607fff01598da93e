"""Decide what each kernel capability check means: call site, reason, required or advisory,
which capabilities would satisfy it, and the smallest capability set covering a run.

Pure: tables come from probes/capability_callsites.toml, checks from the tracefs parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from typing import Callable, Iterable

from capprobe.capabilities import cap_name
from capprobe.tracing.probe import CapCheck
from capprobe.probes import load_table

REQUIRED = "required"
ADVISORY = "advisory"
DEFAULT_BREADTH = 10

# Compiler clones keep the source function name before the first dot.
_COMPILER_SUFFIX = re.compile(r"\.(?:isra|constprop|part|cold|lto_priv|llvm)\b.*$")
# Syscall entry frames, outermost-first preference: __x64_sys_bind, __do_sys_clone,
# __se_sys_x, __ia32_sys_x, __sys_bind, ksys_mmap_pgoff ... -> the syscall name.
_SYSCALL_FRAME = re.compile(
    r"^(?:__x64_sys_|__ia32_sys_|__ia32_compat_sys_|__x64_compat_sys_|__se_sys_|"
    r"__do_sys_|__do_compat_sys_|__sys_|ksys_)(?P<name>\w+)$"
)
_SYSCALL_ALIASES = {"mmap_pgoff": "mmap"}
# Entries where the compiler folded the syscall wrapper away (measured: mmap from do_syscall_64).
_SYSCALL_BY_INNER_FRAME = {"vm_mmap_pgoff": "mmap"}


@dataclass(frozen=True)
class CallSiteTables:
    """The parsed capability_callsites table."""

    skip_frames: frozenset[str]
    breadth: dict[str, int]
    reasons: dict[tuple[str, str | None], str]          # (call_site, cap or None) -> reason
    advisory: dict[tuple[str, str | None], str]         # (call_site, cap or None) -> why
    either_or: tuple[dict, ...]
    # (call_site, cap or None) -> ((operand pattern, why), ...): advisory only for these operands
    advisory_by_operand: dict[tuple[str, str | None], tuple[tuple[re.Pattern, str], ...]] = \
        field(default_factory=dict)


@dataclass(frozen=True)
class CapabilityUse:
    """A classified capability check."""

    check: CapCheck
    cap: str                      # "CAP_NET_BIND_SERVICE"
    granted: bool
    call_site: str                # first frame that says why; "" when there was no stack
    syscall: str | None           # "bind", "clone", ... when the stack shows it
    reason: str                   # human reason, or the raw call-site name when unknown
    kind: str                     # REQUIRED or ADVISORY
    alternatives: frozenset[str]  # capabilities any one of which satisfies the check
    advisory_why: str | None = None

    @property
    def is_either_or(self) -> bool:
        return len(self.alternatives) > 1


@dataclass(frozen=True)
class UsePartition:
    """Classified checks of one run, split by what they mean for the capability set."""

    required: tuple[CapabilityUse, ...]    # granted, needed
    optional: tuple[CapabilityUse, ...]    # denied: needed only if the program failed because of it
    advisory: tuple[CapabilityUse, ...]    # decide a detail, never needed
    superseded: tuple[CapabilityUse, ...]  # denied first choice of an either-or check that then passed


def normalize_frame(frame: str) -> str:
    """'rtnl_link_get_net_capable.constprop.0+0x12/0x40' -> 'rtnl_link_get_net_capable'."""
    return _COMPILER_SUFFIX.sub("", frame.split("+", 1)[0])


@lru_cache(maxsize=1)
def load_callsite_tables() -> CallSiteTables:
    """Load and index probes/capability_callsites.toml (cached)."""
    return tables_from_dict(load_table("capability_callsites"))


def tables_from_dict(table: dict) -> CallSiteTables:
    """Index a capability_callsites table given as a dict (tests pass their own)."""
    def keyed(entries, value_field):
        return {(e["call_site"], e.get("cap")): e[value_field] for e in entries}

    advisory = [e for e in table.get("advisory", ()) if "operand" not in e]
    by_operand: dict[tuple[str, str | None], tuple[tuple[re.Pattern, str], ...]] = {}
    for e in table.get("advisory", ()):
        if "operand" in e:
            key = (e["call_site"], e.get("cap"))
            by_operand[key] = (*by_operand.get(key, ()), (re.compile(e["operand"]), e["why"]))
    return CallSiteTables(
        skip_frames=frozenset(table.get("skip_frames", ())),
        breadth=dict(table.get("breadth", {})),
        reasons=keyed(table.get("reason", ()), "reason"),
        advisory=keyed(advisory, "why"),
        either_or=tuple(table.get("either_or", ())),
        advisory_by_operand=by_operand,
    )


def _lookup(table: dict[tuple[str, str | None], str], call_site: str, cap: str) -> str | None:
    """Entry for (call_site, cap), falling back to the call site's capability-less entry."""
    return table.get((call_site, cap), table.get((call_site, None)))


def split_stack(stack: Iterable[str], skip_frames: frozenset[str]) -> tuple[list[str], str]:
    """Return (check-chain frames up to and including the call site, call site)."""
    chain: list[str] = []
    for frame in stack:
        name = normalize_frame(frame)
        chain.append(name)
        if name not in skip_frames:
            return chain, name
    return chain, ""


def syscall_from_stack(stack: Iterable[str]) -> str | None:
    """Syscall the check happened in, from the outermost syscall-entry frame."""
    stack = tuple(stack)
    for frame in reversed(stack):
        match = _SYSCALL_FRAME.match(normalize_frame(frame))
        if match:
            name = match["name"]
            return _SYSCALL_ALIASES.get(name, name)
    for frame in stack:
        inner = _SYSCALL_BY_INNER_FRAME.get(normalize_frame(frame))
        if inner:
            return inner
    return None


def alternatives_for(cap: str, chain: list[str], tables: CallSiteTables) -> frozenset[str]:
    """Capabilities any one of which would satisfy this check (always contains cap)."""
    alternatives = {cap}
    for rule in tables.either_or:
        if "via" in rule and rule["via"] not in chain:
            continue
        if "caps" in rule and cap not in rule["caps"]:
            continue
        alternatives.update(cap if alt == "checked" else alt for alt in rule["alternatives"])
    return frozenset(alternatives)


def classify(check: CapCheck, tables: CallSiteTables | None = None,
             operand_of: Callable[[str | None], str | None] | None = None) -> CapabilityUse:
    """Classify one check: call site, syscall, reason, required/advisory, alternatives.

    operand_of(syscall) gives what the syscall was about, as the strace facts recorded it
    (the socket option, capset's new sets); asked only for call sites whose advisory
    entries depend on it.
    """
    tables = tables or load_callsite_tables()
    cap = cap_name(check.cap)
    chain, call_site = split_stack(check.stack, tables.skip_frames)
    syscall = syscall_from_stack(check.stack)
    advisory_why = _lookup(tables.advisory, call_site, cap) if call_site else None
    by_operand = tables.advisory_by_operand.get((call_site, cap)) \
        or tables.advisory_by_operand.get((call_site, None))
    if advisory_why is None and by_operand and operand_of is not None:
        operand = operand_of(syscall)
        if operand is not None:
            advisory_why = next((why for pattern, why in by_operand if pattern.search(operand)), None)
    reason = (_lookup(tables.reasons, call_site, cap) if call_site else None) \
        or call_site or "unknown call site (no stack)"
    return CapabilityUse(
        check=check,
        cap=cap,
        granted=check.granted,
        call_site=call_site,
        syscall=syscall,
        reason=reason,
        kind=ADVISORY if advisory_why else REQUIRED,
        alternatives=alternatives_for(cap, chain, tables),
        advisory_why=advisory_why,
    )


def partition_uses(uses: Iterable[CapabilityUse]) -> UsePartition:
    """Split classified checks into required / optional (denied) / advisory / superseded.

    An either-or check shows up as a denied first choice immediately followed, in the same
    task and call site, by a granted alternative (IP_TRANSPARENT without CAP_NET_RAW; DAC read
    without CAP_DAC_READ_SEARCH). The denied one is then superseded, not optional, and the
    granted one also accepts the denied capability.
    """
    ordered = sorted(uses, key=lambda u: (u.check.pid, u.check.mono_ts))
    required, optional, advisory, superseded = [], [], [], []
    carried: dict[int, CapabilityUse] = {}  # pid -> denied use awaiting its alternative
    for use in ordered:
        pid = use.check.pid
        previous = carried.pop(pid, None)
        if previous is not None:
            if (use.granted and use.call_site == previous.call_site
                    and use.cap in previous.alternatives and use.kind == REQUIRED):
                superseded.append(previous)
                use = _with_alternatives(use, use.alternatives | previous.alternatives)
            else:
                optional.append(previous)
        if use.kind == ADVISORY:
            advisory.append(use)
        elif use.granted:
            required.append(use)
        else:
            carried[pid] = use
    optional.extend(carried.values())
    return UsePartition(tuple(required), tuple(optional), tuple(advisory), tuple(superseded))


def _with_alternatives(use: CapabilityUse, alternatives: frozenset[str]) -> CapabilityUse:
    return CapabilityUse(use.check, use.cap, use.granted, use.call_site, use.syscall, use.reason,
                         use.kind, frozenset(alternatives), use.advisory_why)


def minimal_capability_set(requirements: Iterable[CapabilityUse | Iterable[str]],
                           breadth: dict[str, int] | None = None) -> set[str]:
    """Smallest set of capabilities satisfying every requirement; ties go to narrower sets.

    Each requirement is a CapabilityUse (its alternatives count) or a set of alternative
    capability names, any one of which satisfies it. Advisory uses must be filtered out first
    (see partition_uses); they are rejected here to keep that mistake loud.
    """
    if breadth is None:
        breadth = load_callsite_tables().breadth
    needs: set[frozenset[str]] = set()
    for requirement in requirements:
        if isinstance(requirement, CapabilityUse):
            if requirement.kind == ADVISORY:
                raise ValueError(f"advisory check passed as a requirement: {requirement}")
            needs.add(requirement.alternatives)
        else:
            needs.add(frozenset(requirement))
    if any(not need for need in needs):
        raise ValueError("a requirement with no alternatives cannot be satisfied")

    # Single-alternative requirements are forced; search only over what they leave uncovered.
    chosen = {next(iter(need)) for need in needs if len(need) == 1}
    open_needs = [need for need in needs if not need & chosen]
    if not open_needs:
        return chosen
    candidates = sorted(set().union(*open_needs), key=lambda c: (breadth.get(c, DEFAULT_BREADTH), c))
    for size in range(1, len(candidates) + 1):
        covering = [set(combo) for combo in combinations(candidates, size)
                    if all(need & set(combo) for need in open_needs)]
        if covering:
            best = min(covering, key=lambda combo: (
                sum(breadth.get(c, DEFAULT_BREADTH) for c in combo), sorted(combo)))
            return chosen | best
    raise AssertionError("unreachable: the union of all alternatives covers every requirement")
