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

from ..model import WRITE_NEED_OPS
from ..paths import decode_path, display_path
from ..rules.base import Directive
from ..model import ENTRY_OPS

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

    read_only: dict[bytes, str] = {}
    for f in traced.get("files", []):
        for fail in f.get("failed", []):
            if fail["errno"] == "EROFS" and fail["op"] in WRITE_NEED_OPS:  # a failed W_OK test too
                raw = decode_path(f["path"])
                target = os.path.dirname(raw) if fail["op"] in ENTRY_OPS else raw
                read_only.setdefault(target, f"{fail['op']} {display_path(f['path'])} failed with EROFS "
                                             f"(x{fail['count']})")
    for target, why in sorted(read_only.items()):
        # one directory opens everything below it: never a second item for the same failure
        if not any(other != target and target.startswith(other.rstrip(b"/") + b"/") for other in read_only):
            add("ReadWritePaths", os.fsdecode(target), why)
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


def relax_unit_text(unit_text: str, blame: Blame,
                    groups: dict[str, frozenset[str]] | None = None) -> tuple[str, str]:
    """The unit text with exactly the one item of BLAME opened; returns (new text, what changed).

    Works on text so that hand-edited units can be verified and tightened too; every
    changed line is preceded by a comment saying why. Raises ValueError when there is
    nothing precise to open (the caller stops instead of loosening blindly).
    """
    from ..render.quoting import render_value
    if blame.item is None:
        raise ValueError(f"{blame.directive}: nothing precise to open ({blame.evidence})")
    groups = groups or {}
    lines = unit_text.splitlines()
    why = f"# relaxed by capprobe tighten: {_one_line(blame.evidence)}"
    keys = [_key(line) for line in lines]

    def value_of(i: int) -> str:
        return lines[i].split("=", 1)[1].strip()

    def set_line(i: int, text: str) -> None:
        lines[i:i + 1] = [why, text]

    def insert_after(anchor_keys: tuple[str, ...], text: str) -> None:
        idx = max((i for i, k in enumerate(keys) if k in anchor_keys), default=None)
        if idx is None:
            idx = next(i for i, line in enumerate(lines) if line.strip() == "[Service]")
        lines[idx + 1:idx + 1] = [why, text]

    item, directive = blame.item, blame.directive
    if directive == "ReadWritePaths":
        rendered = render_value("ReadWritePaths", os.fsencode(item))
        if rendered is None:
            raise ValueError(f"{item!r} cannot be written in unit syntax")
        insert_after(("ReadWritePaths", "ProtectSystem"), f"ReadWritePaths={rendered}")
    elif directive in ("RestrictAddressFamilies", "CapabilityBoundingSet"):
        render_value(directive, item)  # a word: raises if it is not one
        idx = [i for i, k in enumerate(keys) if k == directive]
        if not idx:
            raise ValueError(f"no {directive}= line: {item} is not restricted by this unit")
        current = value_of(idx[-1]).split()
        if item in current:
            raise ValueError(f"{directive} already allows {item}; the failure has another cause")
        words = [w for w in current if w != "none"] + [item]
        set_line(idx[-1], f"{directive}={' '.join(words)}")
        if directive == "CapabilityBoundingSet" and any(k in ("User", "DynamicUser") for k in keys):
            keys = [_key(line) for line in lines]
            amb = [i for i, k in enumerate(keys) if k == "AmbientCapabilities"]
            if amb:
                set_line(amb[-1], f"AmbientCapabilities={' '.join(value_of(amb[-1]).split() + [item])}")
            else:
                insert_after(("CapabilityBoundingSet",), f"AmbientCapabilities={item}")
        if directive == "RestrictAddressFamilies" and item != "AF_UNIX":
            lines = [line for line in lines if _key(line) != "PrivateNetwork"]
    elif directive == "SystemCallFilter":
        render_value("SystemCallFilter", item)
        idx = [i for i, k in enumerate(keys) if k == "SystemCallFilter"]
        allow = [i for i in idx if not value_of(i).startswith("~")]
        if not allow:
            raise ValueError("no allow-list SystemCallFilter= line to add to")
        denies = [i for i in idx if value_of(i).startswith("~") and item in _expand(value_of(i), groups)]
        for i in reversed(denies):  # a later deny line would take the syscall away again
            lines[i] = f"# {lines[i]}  (disabled by capprobe tighten: it denies {item})"
        set_line(allow[0], f"SystemCallFilter={value_of(allow[0])} {item}")
    elif directive == "SocketBindAllow":
        render_value("SocketBindAllow", item)
        insert_after(("SocketBindAllow",), f"SocketBindAllow={item}")
    else:
        raise ValueError(f"no precise relaxation for {directive}")
    return "\n".join(lines) + "\n", f"{directive} += {item} ({blame.evidence})"


def _key(line: str) -> str:
    return line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith(("#", ";")) else ""


def _expand(value: str, groups: dict[str, frozenset[str]]) -> set[str]:
    names: set[str] = set()
    for word in value.lstrip("~").split():
        names |= set(groups.get(word, ())) if word.startswith("@") else {word}
    return names


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)[:200]
