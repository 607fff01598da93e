"""The syscall filter: SystemCallFilter=, SystemCallErrorNumber=, SystemCallArchitectures=.

Method: an allow-list of @system-service plus every observed syscall outside it,
then one deny line per risky group nothing observed belongs to.

How systemd reads several SystemCallFilter= lines (systemd.exec(5)): the first
line's polarity decides the mode (no "~": allow-list, everything else refused);
later lines add to the set ("name") or remove from it ("~name") in order.  So
the allow lines come first, and a "~@group" line is only written when the
EXPANDED group holds no observed syscall, or it would take that syscall away
again.  In allow-list mode a deny line for a group wholly outside the allow set
changes nothing in the filter; it is written anyway for the groups
`systemd-analyze security` scores, so the unit states the intent and keeps it
if someone widens the allow line later.

Why not @system-service alone: the seed unit's plain @system-service allow-list
killed restic with SIGSYS during Go runtime initialisation.  Every syscall the
run made stays allowed here, by construction.
"""

from __future__ import annotations

from capprobe.needs import SyscallNeed, syscall_needs
from capprobe.rules.base import Directive, RuleContext
from capprobe.rules.registry import rule
from capprobe.syscall_groups import syscall_groups

BASE_GROUP = "@system-service"

# The groups `systemd-analyze security` checks for "SystemCallFilter=~@...", in
# the order they are written.
DENY_CANDIDATES = (
    "@privileged", "@resources", "@mount", "@module", "@raw-io", "@reboot",
    "@swap", "@obsolete", "@debug", "@cpu-emulation", "@clock",
)


def decide_syscall_filter(observed: dict, groups: dict[str, frozenset[str]], *,
                          architecture: str | None = None) -> list[Directive]:
    """The syscall-filter directives for OBSERVED ({strace name: {"count": n, ...}}).

    GROUPS maps "@group" to its expanded syscall names (capprobe.syscall_groups).
    ARCHITECTURE is the traced host's (profile["host"]["architecture"]).
    """
    return syscall_filter_of(syscall_needs(observed, architecture), groups, architecture=architecture)


def syscall_filter_of(needs: tuple[SyscallNeed, ...], groups: dict[str, frozenset[str]], *,
                      architecture: str | None = None) -> list[Directive]:
    """The syscall-filter directives for the syscalls a Needs holds."""
    if not needs:
        return []   # no trace, no evidence: an allow-list from nothing would refuse everything
    counts = {s.name: s.count for s in needs}
    printed_as = {s.name: s.printed_as for s in needs if s.printed_as}

    def evidence(names) -> str:
        def one(n):
            alias = f" (strace: {', '.join(sorted(printed_as[n]))})" if n in printed_as else ""
            return f"{n} x{counts[n]}{alias}"
        return ", ".join(one(n) for n in sorted(names))

    base = groups[BASE_GROUP]
    known = groups["@known"]
    # Only @known names are written: for the x86_64 names, every @known name parses
    # (measured with systemd-analyze verify), while a name libseccomp lacks gets
    # "Failed to parse system call, ignoring".  A name outside @known but inside the
    # base group (uretprobe, in 252.39's @default) is left to the group, which
    # skips what libseccomp cannot resolve without a warning.
    extras = sorted(n for n in counts if n not in base and n in known)
    unknown = sorted(n for n in counts if n not in base and n not in known)
    allowed = set(extras) | (set(counts) & base)

    kept: list[str] = []
    denied: list[tuple[str, frozenset[str]]] = []
    for group in DENY_CANDIDATES:
        if group not in groups:
            continue   # writing a group this systemd does not have would fail the unit
        needed = allowed & groups[group]
        if needed:
            kept.append(f"{group} ({evidence(needed)})")
        else:
            denied.append((group, groups[group]))

    base_comment = (f"allow-list from one run: {len(counts)} distinct syscalls seen, "
                    f"{len(set(counts) & base)} of them in {BASE_GROUP} ({len(base)} names)")
    if kept:
        base_comment += "; not denied because seen: " + "; ".join(kept)
    if unknown:
        base_comment += ("; not written, unknown to this systemd (not in @known), so the filter "
                         "refuses them (EPERM here; ENOSYS on systemd >= 255): "
                         + evidence(unknown))
    out = [Directive("SystemCallFilter", (BASE_GROUP,), base_comment)]
    if extras:
        out.append(Directive(
            "SystemCallFilter", tuple(extras),
            f"seen outside {BASE_GROUP}, allowed so the service is not refused them "
            f"(a bare {BASE_GROUP} allow-list killed restic with SIGSYS at start-up): "
            + evidence(extras)))
    for group, members in denied:
        out.append(Directive("SystemCallFilter", ("~" + group,),
                             f"no syscall of {group} seen ({len(members)} names)"))
    out.append(Directive(
        "SystemCallErrorNumber", ("EPERM",),
        "denied calls fail with EPERM instead of killing the process with SIGSYS: the list "
        "comes from one run, so a path that run did not take gets an error the program can "
        "handle or log, not a crash"))
    arch_seen = "x86_64" if architecture == "x86_64" else "native-ABI"
    out.append(Directive(
        "SystemCallArchitectures", ("native",),
        f"only {arch_seen} syscalls were seen; the filter is built from native names, so "
        f"the other ABIs (i386 via int 0x80, x32) are refused outright"))
    return out


@rule("syscalls")
def syscall_filter(ctx: RuleContext) -> list[Directive]:
    groups = ctx.memo("syscall_groups", syscall_groups)
    needs = ctx.needs
    return syscall_filter_of(needs.syscalls, groups, architecture=needs.architectures[0] if needs.architectures else None)
