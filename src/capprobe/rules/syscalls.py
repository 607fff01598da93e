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

import re

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

# strace prints x86_64 names as the kernel's syscall table spells them, and so
# does libseccomp, whose names systemd uses: measured on strace 6.1, every name
# of this host's asm/unistd_64.h is accepted by both, unchanged (newfstatat,
# fadvise64, pread64, umount2 ...; the "_llseek"/"fadvise64_64"/"stat64"
# spellings exist only in the 32-bit ABI, which SystemCallArchitectures=native
# refuses anyway).  The one difference: a syscall newer than the strace build is
# printed as its number, "syscall_0x1c4" (strace 6.1 knows up to 450).  This is
# the x86_64 table (arch/x86/entry/syscalls/syscall_64.tbl) for those numbers;
# 424 on is the numbering all architectures share since Linux 5.1.
X86_64_SYSCALL_NUMBERS = {
    332: "statx", 333: "io_pgetevents", 334: "rseq", 335: "uretprobe", 336: "uprobe",
    424: "pidfd_send_signal", 425: "io_uring_setup", 426: "io_uring_enter",
    427: "io_uring_register", 428: "open_tree", 429: "move_mount", 430: "fsopen",
    431: "fsconfig", 432: "fsmount", 433: "fspick", 434: "pidfd_open", 435: "clone3",
    436: "close_range", 437: "openat2", 438: "pidfd_getfd", 439: "faccessat2",
    440: "process_madvise", 441: "epoll_pwait2", 442: "mount_setattr", 443: "quotactl_fd",
    444: "landlock_create_ruleset", 445: "landlock_add_rule", 446: "landlock_restrict_self",
    447: "memfd_secret", 448: "process_mrelease", 449: "futex_waitv",
    450: "set_mempolicy_home_node", 451: "cachestat", 452: "fchmodat2",
    453: "map_shadow_stack", 454: "futex_wake", 455: "futex_wait", 456: "futex_requeue",
    457: "statmount", 458: "listmount", 459: "lsm_get_self_attr", 460: "lsm_set_self_attr",
    461: "lsm_list_modules", 462: "mseal", 463: "setxattrat", 464: "getxattrat",
    465: "listxattrat", 466: "removexattrat", 467: "open_tree_attr", 468: "file_getattr",
    469: "file_setattr",
}

_STRACE_NUMBERED = re.compile(r"syscall_(0x[0-9a-f]+|\d+)")


def systemd_syscall_name(strace_name: str, architecture: str | None) -> str:
    """The name systemd knows STRACE_NAME by ("syscall_0x1c4" -> "fchmodat2" on x86_64)."""
    m = _STRACE_NUMBERED.fullmatch(strace_name)
    if m is None or architecture != "x86_64":
        return strace_name
    return X86_64_SYSCALL_NUMBERS.get(int(m.group(1), 0), strace_name)


def decide_syscall_filter(observed: dict, groups: dict[str, frozenset[str]], *,
                          architecture: str | None = None) -> list[Directive]:
    """The syscall-filter directives for OBSERVED ({strace name: {"count": n, ...}}).

    GROUPS maps "@group" to its expanded syscall names (capprobe.syscall_groups).
    ARCHITECTURE is the traced host's (profile["host"]["architecture"]).
    """
    if not observed:
        return []   # no trace, no evidence: an allow-list from nothing would refuse everything
    counts: dict[str, int] = {}
    printed_as: dict[str, set[str]] = {}
    for strace_name, entry in observed.items():
        name = systemd_syscall_name(strace_name, architecture)
        counts[name] = counts.get(name, 0) + int(entry.get("count", 0))
        if name != strace_name:
            printed_as.setdefault(name, set()).add(strace_name)

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
    architecture = (ctx.profile.get("host") or {}).get("architecture")
    return decide_syscall_filter(ctx.profile.get("syscalls") or {}, groups, architecture=architecture)
