"""What a new profile needs that a baseline did not, and what it no longer needs: a gate for upgrades.

Both sides are compared as Needs (capprobe.needs), so the diff speaks of the same
decisions the unit and the exports render, never of raw trace noise (counts, pids,
source ports the kernel picked).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .needs import Behaviour, Needs, needs_of
from .paths import display_path, encode_path
from .profile import read_profile

# The categories, in the order they are printed.
# "written" compares what an output must open for writing (needs.writable_dirs), not each file:
# a new file in a directory already opened needs nothing more.
CATEGORIES = ("capabilities", "written", "families", "ports", "devices", "syscalls", "executables", "behaviour")


@dataclass(frozen=True)
class Item:
    category: str
    name: str           # what it is, printable: "CAP_NET_RAW", "/srv/data/db", "tcp 0.0.0.0:8080"
    evidence: str = ""  # why the new profile needs it (capabilities: call site, executable, target)
    path: bytes | None = None  # a written location: one inside another is covered by it

    def covered_by(self, others: list["Item"]) -> bool:
        """Whether OTHERS hold this item: the same one, or (written) a location around it."""
        if self.path is None:
            return any(o.category == self.category and o.name == self.name for o in others)
        return any(o.path is not None and (self.path == o.path or self.path.startswith(o.path.rstrip(b"/") + b"/"))
                   for o in others)


@dataclass(frozen=True)
class ProfileDiff:
    added: tuple[Item, ...]     # needed by NEW, not by BASELINE
    removed: tuple[Item, ...]   # needed by BASELINE, no longer by NEW

    @property
    def needs_more(self) -> bool:
        return bool(self.added)

    def to_json(self) -> dict:
        def grouped(items):
            return {c: [{"name": i.name, **({"evidence": i.evidence} if i.evidence else {})}
                        for i in items if i.category == c] for c in CATEGORIES}
        return {"needs_more": self.needs_more, "added": grouped(self.added), "removed": grouped(self.removed)}


def diff_needs(baseline: Needs, new: Needs) -> ProfileDiff:
    """Compare two Needs; pure."""
    old_items, new_items = _items(baseline), _items(new)

    def touches(item: Item, others: list[Item]) -> bool:
        # a location is still needed while anything written lies at, inside or around it
        return item.covered_by(others) or any(o.covered_by([item]) for o in others if o.path is not None)
    return ProfileDiff(tuple(i for i in new_items if not i.covered_by(old_items)),
                       tuple(i for i in old_items if not touches(i, new_items)))


def _items(needs: Needs) -> list[Item]:
    items = [Item("capabilities", c.name, _capability_evidence(c.evidence)) for c in needs.capabilities]
    inside = _written_inside(needs)
    items += [Item("written", _show(d.path), _written_words(d, inside.get(d.path, [])), d.path)
              for d in needs.writable_dirs]
    items += [Item("families", f.family, f"x{f.count} by {', '.join(display_path(b) for b in f.by[:3])}")
              for f in needs.families]
    items += [Item("ports", f"{p.protocol or p.type or '?'} {p.address or '*'}:{p.port} ({p.family})",
                   f"by {', '.join(display_path(b) for b in p.by[:3])}") for p in needs.listening]
    items += [Item("devices", f"{_show(d.path)} {d.access or 'r'}",
                   f"{d.kind} {d.major}:{d.minor}" + (f", ioctl {' '.join(d.ioctls)}" if d.ioctls else ""))
              for d in needs.devices]
    items += [Item("syscalls", s.name, f"x{s.count}") for s in needs.syscalls]
    items += [Item("executables", display_path(e)) for e in needs.executables]
    items += [Item("behaviour", name, detail) for name, detail in _behaviour_flags(needs.behaviour)]
    return items


def _show(raw: bytes) -> str:
    return display_path(encode_path(raw))


def _written_inside(needs: Needs) -> dict[bytes, list]:
    """{writable location: the written paths at or below it}, one walk up per path."""
    places = {d.path for d in needs.writable_dirs}
    out: dict[bytes, list] = {}
    for w in needs.written:
        p = w.path
        while p not in places and p not in (b"/", b""):
            p = os.path.dirname(p)
        if p in places:
            out.setdefault(p, []).append(w)
    return out


def _written_words(d, inside: list) -> str:
    """'state: 3 written, e.g. /srv/a/db (create,write by python3)': what made D writable."""
    if not inside:
        return d.kind
    w = inside[0]
    by = ", ".join(display_path(b).rsplit("/", 1)[-1] for b in w.by[:3])
    return f"{d.kind}: {len(inside)} written, e.g. {_show(w.path)} ({','.join(sorted(w.ops))} by {by})"


def _capability_evidence(evidence) -> str:
    parts = []
    for e in evidence[:3]:
        exe = display_path(e.exe) if e.exe else "?"
        target = f" on {e.targets[0]}" if e.targets else ""
        parts.append(f"{e.reason or e.call_site} (call site {e.call_site or '?'}, {e.syscall or '?'}() by {exe}"
                     f"{target}, x{e.count})")
    return "; ".join(parts)


def _behaviour_flags(b: Behaviour) -> list[tuple[str, str]]:
    """Each behaviour the run showed, as a comparable name."""
    out = [(f"namespace {ns}", "") for ns in b.namespaces]
    if b.namespaces_any:
        out.append(("namespace of any type", ""))
    out += [("setuid executable " + display_path(e), "") for e in b.setuid_exec]
    out += [("kernel tunable " + display_path(t), "") for t in b.kernel_tunables]
    flags = asdict(b)
    out += [(name.replace("_", " "), "") for name, value in flags.items() if value is True]
    return out


def render_diff(d: ProfileDiff, baseline: str, new: str) -> str:
    """The diff as text for a terminal or a change request."""
    if not d.added and not d.removed:
        return f"{new} needs nothing that {baseline} did not, and nothing less\n"
    lines = [f"{new} needs more than {baseline}:" if d.needs_more else f"{new} needs nothing more than {baseline}"]
    for sign, items in (("+", d.added), ("-", d.removed)):
        if sign == "-" and items:
            lines.append(f"no longer needed (in {baseline}, not in {new}):")
        for c in CATEGORIES:
            for i in items:
                if i.category == c:
                    lines.append(f"  {sign} {c:<12} {i.name}" + (f"  [{i.evidence}]" if i.evidence else ""))
    return "\n".join(lines) + "\n"


def diff_files(baseline: Path, new: Path, as_json: bool) -> tuple[str, int]:
    """(output, exit status) of `capprobe diff`: 1 when NEW needs more, else 0."""
    d = diff_needs(needs_of(read_profile(baseline)), needs_of(read_profile(new)))
    text = json.dumps(d.to_json(), indent=1) + "\n" if as_json else render_diff(d, str(baseline), str(new))
    return text, 1 if d.needs_more else 0
