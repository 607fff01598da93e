"""Why did a unit fail, and which one directive to relax (pure functions).

Evidence comes in two kinds: what systemd reports (the exit status it sets
when it cannot apply a setting, e.g. 218/CAPABILITIES, 226/NAMESPACE; SIGSYS
from a seccomp kill), and a traced re-run of the same unit, whose profile shows
the calls that failed (EROFS on a path, EAFNOSUPPORT on socket(), EPERM on a
syscall outside the filter, a capability the kernel inference marks denied).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..facts.collector import WRITE_OPS
from ..paths import decode_path, display_path
from ..rules.base import Directive
from ..rules.evidence import ENTRY_OPS

# systemd's exit statuses for a failed set-up step (systemd.exec(5), "Process exit codes")
SETUP_STATUS = {
    200: ("WorkingDirectory", "CHDIR"), 203: ("ExecStart", "EXEC"), 216: ("Group", "GROUP"),
    217: ("User", "USER"), 218: ("CapabilityBoundingSet", "CAPABILITIES"),
    225: ("PrivateNetwork", "NETWORK"), 226: ("ReadWritePaths", "NAMESPACE"),
    227: ("NoNewPrivileges", "NO_NEW_PRIVILEGES"), 228: ("SystemCallFilter", "SECCOMP"),
    230: ("LockPersonality", "PERSONALITY"), 232: ("RestrictAddressFamilies", "ADDRESS_FAMILIES"),
    233: ("RuntimeDirectory", "RUNTIME_DIRECTORY"), 237: ("KeyringMode", "KEYRING"),
    238: ("StateDirectory", "STATE_DIRECTORY"), 239: ("CacheDirectory", "CACHE_DIRECTORY"),
    240: ("LogsDirectory", "LOGS_DIRECTORY"),
}
SIGSYS = 31


@dataclass(frozen=True)
class Blame:
    """One directive that caused a failure, the item to add, and the evidence."""

    directive: str
    item: str | None       # the one syscall/path/family/capability/port to open, if known
    evidence: str


def blame_from_status(exit_code: str, exit_status: int | None) -> Blame | None:
    """systemd's own verdict: a set-up exit status, or death by SIGSYS."""
    if exit_code == "killed" and exit_status == SIGSYS or exit_code == "dumped" and exit_status == SIGSYS:
        return Blame("SystemCallFilter", None, "the process was killed by SIGSYS (seccomp)")
    if exit_code == "exited" and exit_status in SETUP_STATUS:
        directive, name = SETUP_STATUS[exit_status]
        return Blame(directive, None, f"systemd could not set up the service: status {exit_status}/{name}")
    return None


def blame_from_trace(traced: dict, allowed_syscalls: frozenset[str] | None,
                     families: set[str], bind_allowed: set[str] | None) -> list[Blame]:
    """Failures in the profile of a traced re-run under the unit, each tied to one directive."""
    blames: list[Blame] = []
    seen: set[tuple[str, str]] = set()

    def add(directive: str, item: str, evidence: str) -> None:
        if (directive, item) not in seen:
            seen.add((directive, item))
            blames.append(Blame(directive, item, evidence))

    for f in traced.get("files", []):
        for fail in f.get("failed", []):
            if fail["errno"] == "EROFS" and fail["op"] in WRITE_OPS:
                raw = decode_path(f["path"])
                target = os.path.dirname(raw) if fail["op"] in ENTRY_OPS else raw
                add("ReadWritePaths", os.fsdecode(target),
                    f"{fail['op']} {display_path(f['path'])} failed with EROFS (x{fail['count']})")
    for s in traced.get("network", {}).get("socket_failures", []):
        if s["errno"] == "EAFNOSUPPORT" and s["family"] not in families:
            add("RestrictAddressFamilies", s["family"], f"socket({s['family']}) failed with EAFNOSUPPORT")
    if bind_allowed is not None:
        for b in traced.get("network", {}).get("binds", []):
            proto = {"SOCK_STREAM": "tcp", "SOCK_DGRAM": "udp"}.get(b.get("type") or "")
            item = f"{proto}:{b['port']}" if proto else None
            if b.get("errno") in ("EPERM", "EACCES") and item and item not in bind_allowed and b["port"] >= 1024:
                add("SocketBindAllow", item, f"bind to {b.get('address')}:{b['port']} failed with {b['errno']}")
    if allowed_syscalls is not None:
        for name, entry in sorted(traced.get("syscalls", {}).items()):
            if name not in allowed_syscalls:
                add("SystemCallFilter", name, f"{name}() called x{entry['count']} but not allowed by the filter")
    for cap in traced.get("capabilities", {}).get("uses", []):
        if cap.get("status") == "denied":
            add("CapabilityBoundingSet", cap["capability"],
                f"{cap.get('reason', '')}: refused with {cap.get('evidence', 'EPERM')}")
    return blames


def allowed_by_filter(directives: list[Directive], groups: dict[str, frozenset[str]]) -> frozenset[str] | None:
    """The syscalls the unit's SystemCallFilter= lines allow, replayed in systemd's order."""
    lines = [d.values for d in directives if d.key == "SystemCallFilter"]
    if not lines:
        return None

    def expand(values) -> set[str]:
        names: set[str] = set()
        for v in values:
            v = v.lstrip("~")
            names |= set(groups.get(v, ())) if v.startswith("@") else {v}
        return names

    first = lines[0]
    if first and str(first[0]).startswith("~"):
        return None  # a deny-list: everything else allowed; nothing precise to compute
    allowed = expand(first) | set(groups.get("@default", ()))
    for values in lines[1:]:
        if values and str(values[0]).startswith("~"):
            allowed -= expand(values)
        else:
            allowed |= expand(values)
    return frozenset(allowed)


def relax(directives: list[Directive], blame: Blame,
          groups: dict[str, frozenset[str]] | None = None) -> tuple[list[Directive], str]:
    """Directives with exactly the one item of BLAME opened; returns (new list, what changed)."""
    if blame.item is None:
        raise ValueError(f"{blame.directive}: nothing precise to open ({blame.evidence})")
    out = list(directives)
    why = f"because {blame.evidence}"

    def append_to(key: str, value, missing_ok: bool = False):
        for i, d in enumerate(out):
            if d.key == key:
                if value in d.values:
                    return False
                out[i] = Directive(d.key, (*d.values, value), f"{d.comment}; relaxed: +{_show(value)} {why}",
                                   d.section, d.hardening, d.rule)
                return True
        if missing_ok:
            out.append(Directive(key, (value,), f"relaxed: {why}", rule="tighten"))
            return True
        return False

    if blame.directive == "ReadWritePaths":
        changed = append_to("ReadWritePaths", os.fsencode(blame.item), missing_ok=True)
    elif blame.directive == "RestrictAddressFamilies":
        out = [d for d in out if not (d.key == "RestrictAddressFamilies" and d.values == ("none",))] \
            if any(d.key == "RestrictAddressFamilies" and d.values == ("none",) for d in out) else out
        changed = append_to("RestrictAddressFamilies", blame.item, missing_ok=True)
        out = [d for d in out if d.key != "PrivateNetwork"] if blame.item != "AF_UNIX" else out
    elif blame.directive == "SystemCallFilter":
        first = next((i for i, d in enumerate(out) if d.key == "SystemCallFilter"), None)
        if first is None:
            raise ValueError("no SystemCallFilter= to relax")
        d = out[first]
        out[first] = Directive(d.key, (*d.values, blame.item), f"{d.comment}; relaxed: +{blame.item} {why}",
                               d.section, d.hardening, d.rule)
        # a later deny line naming a group with this syscall would take it away again
        groups = groups or {}
        out = [x for x in out if not (x.key == "SystemCallFilter" and x is not out[first] and x.values
                                      and str(x.values[0]).startswith("~")
                                      and blame.item in set().union(*(groups.get(v.lstrip("~"), ())
                                                                      for v in x.values)))]
        changed = True
    elif blame.directive == "CapabilityBoundingSet":
        changed = append_to("CapabilityBoundingSet", blame.item, missing_ok=True)
        if any(d.key == "AmbientCapabilities" or d.key == "User" or d.key == "DynamicUser" for d in out):
            append_to("AmbientCapabilities", blame.item, missing_ok=True)
    elif blame.directive == "SocketBindAllow":
        idx = next((i for i, d in enumerate(out) if d.key == "SocketBindDeny"), len(out))
        out.insert(idx, Directive("SocketBindAllow", (blame.item,), f"relaxed: {why}", rule="tighten"))
        changed = True
    else:
        raise ValueError(f"no precise relaxation for {blame.directive}")
    if not changed:
        raise ValueError(f"{blame.directive} already allows {blame.item}; the failure has another cause")
    return out, f"{blame.directive} += {blame.item} ({blame.evidence})"


def _show(value) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else str(value)
