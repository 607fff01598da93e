"""One self-contained HTML page to attach to a change request: the unit with its evidence,
exposure before -> after, the capabilities, the written paths as a tree, and what changed
since a baseline (capprobe.diff).

Rendered with jinja2 from templates/report.html.j2 (package data), autoescaping on: every
path and argument in a profile is untrusted text. `report_facts` gathers what the page shows
(running systemd-analyze); `render_report` only renders it.
"""

from __future__ import annotations

from dataclasses import dataclass

import jinja2

from .. import __version__
from ..diff import CATEGORIES, ProfileDiff, diff_needs
from ..needs import Needs, needs_of
from ..paths import display_path, printable
from ..rules.base import UnitOptions
from ..synthesis import SynthesisResult, security_table, synthesize
from .quoting import render_line
from .summary import profile_origin, profile_warnings

TEMPLATE = "report.html.j2"


@dataclass(frozen=True)
class UnitLine:
    key: str
    value: str | None        # None: the value cannot be written in unit syntax (left out)
    evidence: str
    hardening: bool
    rule: str


@dataclass(frozen=True)
class SettingRow:
    """One setting systemd-analyze judges, in the unit without hardening and in the unit."""

    name: str
    description_before: str
    description_after: str
    exposure_before: float | None
    exposure_after: float | None

    @property
    def improved(self) -> bool:
        return (self.exposure_before or 0) > (self.exposure_after or 0)


@dataclass(frozen=True)
class PathNode:
    """A directory or file of the written-paths tree; ops only where the service wrote."""

    name: str
    ops: tuple[str, ...] = ()
    by: tuple[str, ...] = ()    # executables' names
    children: tuple[PathNode, ...] = ()


@dataclass(frozen=True)
class Exposure:
    before: float | None
    after: float | None
    label: str | None
    settings: tuple[SettingRow, ...] = ()


@dataclass(frozen=True)
class ReportFacts:
    """Everything the page shows, gathered once."""

    title: str
    origin: str
    warnings: tuple[str, ...]
    needs: Needs
    unit_name: str
    unit_lines: tuple[UnitLine, ...]
    unit_text: str
    exposure: Exposure
    written_tree: tuple[PathNode, ...]
    notes: tuple[str, ...] = ()
    diff: ProfileDiff | None = None   # against a baseline
    baseline: str = ""                # which one


def report_page(profile: dict, name: str, baseline: dict | None = None) -> str:
    """The HTML page for PROFILE, with what changed since BASELINE when given. Runs systemd-analyze."""
    result = synthesize(profile, UnitOptions(name=name))
    return render_report(report_facts(profile, name, result, baseline))


def report_facts(profile: dict, name: str, result: SynthesisResult, baseline: dict | None = None) -> ReportFacts:
    needs = needs_of(profile)
    run = profile["run"]
    settings: tuple[SettingRow, ...] = ()
    if result.exposure is not None:
        settings = setting_rows(security_table(result.baseline_text, name), security_table(result.unit_text, name))
    return ReportFacts(
        title=f"{name}: what it needs",
        origin=printable(f"{profile_origin(profile)} (kernel {profile['host'].get('kernel')}), "
                         f"{run.get('duration', 0):.1f} s; report by capprobe {__version__}"),
        warnings=tuple(profile_warnings(profile)),
        needs=needs,
        unit_name=f"{name}.service",
        unit_lines=tuple(UnitLine(d.key, render_line(d.key, d.values) if d.values else "",
                                  printable(d.comment), d.hardening, d.rule) for d in result.directives),
        unit_text=result.unit_text,
        exposure=Exposure(result.baseline_exposure, result.exposure, result.exposure_label, settings),
        written_tree=path_tree((w.path, tuple(sorted(w.ops)), w.by) for w in needs.written if not w.api),
        notes=tuple(result.notes),
        diff=diff_needs(needs_of(baseline), needs) if baseline is not None else None,
        baseline=profile_origin(baseline) if baseline is not None else "",
    )


def setting_rows(before: list[dict], after: list[dict]) -> tuple[SettingRow, ...]:
    """Join systemd-analyze's rows of the two units by setting; the ones that changed first."""
    old = {r.get("name"): r for r in before}
    rows = [SettingRow(r.get("name") or "?", (old.get(r.get("name")) or {}).get("description") or "",
                       r.get("description") or "", _number((old.get(r.get("name")) or {}).get("exposure")),
                       _number(r.get("exposure"))) for r in after]
    return tuple(sorted(rows, key=lambda r: (-((r.exposure_before or 0) - (r.exposure_after or 0)),
                                             -(r.exposure_after or 0))))


def _number(text) -> float | None:
    """systemd-analyze writes each exposure as a string ("0.1"), null when the setting is fine."""
    try:
        return float(text) if text is not None else None
    except (TypeError, ValueError):
        return None


def path_tree(entries) -> tuple[PathNode, ...]:
    """Written paths ((bytes, ops, by) rows) as a tree of their components; pure."""
    root: dict = {}
    for path, ops, by in entries:
        node = root
        for part in path.strip(b"/").split(b"/"):
            node = node.setdefault(part, {})
        node[None] = (ops, by)
    return _nodes(root)


def _nodes(tree: dict) -> tuple[PathNode, ...]:
    out = []
    for part in sorted(k for k in tree if k is not None):
        child = tree[part]
        # a directory the service did not write, holding one entry, joins it: var/lib/app/
        while None not in child and len(child) == 1 and next(iter(child.values())):
            [(name, grandchild)] = child.items()
            if None in grandchild and len(grandchild) == 1:
                break  # a written file ends the chain: it is its own node
            part, child = part + b"/" + name, grandchild
        ops, by = child.get(None, ((), ()))
        out.append(PathNode(printable(part.decode("utf-8", "backslashreplace")), ops,
                            tuple(dict.fromkeys(display_path(b).rsplit("/", 1)[-1] for b in by)), _nodes(child)))
    return tuple(out)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("capprobe.render", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["path"] = display_path
    env.filters["raw_path"] = lambda raw: printable(raw.decode("utf-8", "backslashreplace"))
    env.globals["diff_categories"] = CATEGORIES
    env.filters["short_exe"] = lambda stored: display_path(stored).rsplit("/", 1)[-1] if stored else "?"
    return env


def render_report(facts: ReportFacts) -> str:
    return _environment().get_template(TEMPLATE).render(f=facts)
