"""Profile -> hardened unit: run the rules, render, score with systemd-analyze (edges here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

from .render.quoting import render_line
from .render.unit import render_unit
from .rules.base import Directive, RuleContext, UnitOptions
from .rules.registry import decide

_EXPOSURE = re.compile(r"Overall exposure level for \S+: ([0-9.]+) (\w+)")


@dataclass
class SynthesisResult:
    unit_text: str
    baseline_text: str
    directives: list[Directive]
    exposure: float | None = None
    exposure_label: str | None = None
    baseline_exposure: float | None = None
    verify_messages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def synthesize(profile: dict, options: UnitOptions, score: bool = True) -> SynthesisResult:
    """Decide every directive from PROFILE and render the unit; score it when systemd-analyze exists."""
    directives = decide(RuleContext(profile, options))
    unit = render_unit(directives, options, profile)
    baseline = render_unit(directives, options, profile, hardening=False)
    result = SynthesisResult(unit, baseline, directives, notes=_left_out(directives))
    if not score:
        return result
    if shutil.which("systemd-analyze") is None:
        result.notes.append("systemd-analyze not found: exposure not scored, unit not verified")
        return result
    result.exposure, result.exposure_label = exposure_of(unit, options.name)
    result.baseline_exposure, _ = exposure_of(baseline, options.name)
    result.verify_messages = verify_unit(unit, options.name)
    return result


def _left_out(directives: list[Directive]) -> list[str]:
    """One note per directive the unit could not carry (render_unit left a comment instead)."""
    notes = []
    for d in directives:
        if d.values and render_line(d.key, d.values) is None:
            hint = "; give the command with --exec" if d.key == "ExecStart" else ""
            notes.append(f"{d.key}= left out of the unit: a value cannot be written in unit syntax{hint}")
    return notes


def _with_unit_file(text: str, name: str, fn):
    with tempfile.TemporaryDirectory(prefix="capprobe-unit-") as d:
        path = os.path.join(d, f"{name}.service")
        with open(path, "w") as f:
            f.write(text)
        return fn(path)


def exposure_of(unit_text: str, name: str) -> tuple[float | None, str | None]:
    """`systemd-analyze security --offline=yes` overall exposure of a unit text."""
    def run(path):
        out = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", path],
                             capture_output=True, text=True, timeout=60)
        m = _EXPOSURE.search(out.stdout + out.stderr)
        return (float(m.group(1)), m.group(2)) if m else (None, None)
    return _with_unit_file(unit_text, name, run)


def security_table(unit_text: str, name: str) -> list[dict]:
    """`systemd-analyze security --offline=yes --json=short`: one row per setting it judges
    ({name, json_field, description, exposure, set}); empty when it cannot say."""
    def run(path):
        out = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", "--json=short",
                              path], capture_output=True, text=True, timeout=60, check=False)
        try:
            rows = json.loads(out.stdout)
        except ValueError:
            return []
        return rows if isinstance(rows, list) else []
    return _with_unit_file(unit_text, name, run)


def verify_unit(unit_text: str, name: str) -> list[str]:
    """`systemd-analyze verify` messages about the unit itself (empty = accepted)."""
    def run(path):
        out = subprocess.run(["systemd-analyze", "verify", "--man=no", "--no-pager", path],
                             capture_output=True, text=True, timeout=60)
        lines = (out.stdout + out.stderr).splitlines()
        base = os.path.basename(path)
        return [line for line in lines if base in line and "Failed to" not in line
                or "Unknown" in line or "Invalid" in line]
    return _with_unit_file(unit_text, name, run)
