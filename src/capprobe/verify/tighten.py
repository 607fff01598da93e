"""verify and tighten: prove a unit under systemd; relax only what a failure points to."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from ..facts.decode import collect_strace
from ..rules.base import Directive
from ..tracing.strace import STRACE_FLAGS
from .attribute import Blame, allowed_by_filter, blame_from_status, blame_from_trace, relax_unit_text
from .systemd_host import UnitRun, run_unit, traced_rerun_dir

STRACE = "/usr/bin/strace"
MAX_RELAXATIONS = 8


@dataclass
class Verdict:
    passed: bool
    run: UnitRun
    blames: list[Blame] = field(default_factory=list)
    explanation: str = ""


def unit_settings(unit_text: str) -> list[tuple[str, str]]:
    """(key, value) of every setting line, in order (comments and sections skipped)."""
    out = []
    for line in unit_text.splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.append((key.strip(), value.strip()))
    return out


def verify_text(unit_text: str, name: str, duration: float, check: str | None, groups,
                profile: dict | None = None) -> Verdict:
    """Start the unit under systemd; on failure, find the directive to blame."""
    settings = unit_settings(unit_text)
    oneshot = ("Type", "oneshot") in settings
    run = run_unit(unit_text, f"capprobe-verify-{name}", duration, check)
    if run.passed(oneshot):
        return Verdict(True, run)
    status_blame = blame_from_status(run.exit_code, run.exit_status)
    blames = traced_blames(unit_text, name, duration, check, groups, profile)
    if status_blame is not None and not any(b.directive == status_blame.directive for b in blames):
        blames.insert(0, status_blame)
    explanation = "" if blames else (
        f"the unit failed (result {run.result or '?'}, {run.exit_code or '?'} {run.exit_status}"
        f"{', ' + run.start_error if run.start_error else ''}) and neither systemd's status nor a "
        "traced re-run points at a directive")
    return Verdict(False, run, blames, explanation)


def traced_rerun_text(unit_text: str, trace_dir: str) -> str:
    """The same unit, its command under strace writing to a runtime directory.

    The syscall filter comes off (strace needs ptrace, and the re-run must show
    which calls the filter would have refused); everything else stays.
    """
    out = []
    for line in unit_text.splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line and not line.startswith("#") else ""
        if key in ("SystemCallFilter", "SystemCallErrorNumber"):
            continue
        if key == "ExecStart":
            line = (f"ExecStart={STRACE} {' '.join(STRACE_FLAGS)} "
                    f"-o {trace_dir}/trace -- " + line.split("=", 1)[1])
        out.append(line)
        if line.strip() == "[Service]":
            out += [f"RuntimeDirectory={os.path.basename(trace_dir)}", "RuntimeDirectoryPreserve=yes",
                    "NotifyAccess=all"]
    return "\n".join(out) + "\n"


def traced_blames(unit_text: str, name: str, duration: float, check: str | None, groups,
                  profile: dict | None) -> list[Blame]:
    """Blames from a traced re-run of the unit (needs strace on the host)."""
    if not os.access(STRACE, os.X_OK):
        return []
    rerun_name = f"capprobe-trace-{name}"
    trace_dir = traced_rerun_dir(rerun_name)
    shutil.rmtree(trace_dir, ignore_errors=True)
    run_unit(traced_rerun_text(unit_text, trace_dir), rerun_name, duration, check)
    try:
        with open(os.path.join(trace_dir, "trace"), "rb") as f:
            collector = collect_strace(raw.decode("latin-1") for raw in f)
    except OSError:
        return []
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)
    traced = collector.sections()
    from ..facts.inference import infer_capabilities
    traced["run"] = (profile or {}).get("run", {"user": {}})
    traced.setdefault("host", (profile or {}).get("host", {}))
    traced["capabilities"] = {"uses": [u for u in infer_capabilities(traced) if u["status"] == "denied"]}
    settings = unit_settings(unit_text)
    families = {v for k, line in settings if k == "RestrictAddressFamilies" for v in line.split()}
    bind_allowed = ({v for k, v in settings if k == "SocketBindAllow"}
                    if any(k == "SocketBindDeny" for k, _ in settings) else None)
    filter_lines = [Directive("SystemCallFilter", tuple(v.split()), "") for k, v in settings
                    if k == "SystemCallFilter"]
    return blame_from_trace(traced, allowed_by_filter(filter_lines, groups), families, bind_allowed)


def tighten(unit_text: str, name: str, duration: float, check: str | None, groups,
            profile: dict | None = None, say=print) -> tuple[str, Verdict, list[str]]:
    """Verify; relax exactly the blamed items; repeat up to a bound. Returns the tightest passing unit."""
    relaxations: list[str] = []
    for _ in range(MAX_RELAXATIONS + 1):
        verdict = verify_text(unit_text, name, duration, check, groups, profile)
        if verdict.passed:
            return unit_text, verdict, relaxations
        precise = [b for b in verdict.blames if b.item is not None]
        if not precise:
            reason = verdict.explanation or (verdict.blames[0].evidence if verdict.blames else "no evidence")
            say(f"capprobe: stopping, nothing precise to relax: {reason}")
            return unit_text, verdict, relaxations
        for blame in precise:
            try:
                unit_text, what = relax_unit_text(unit_text, blame, groups)
            except ValueError as e:
                say(f"capprobe: stopping: {e}")
                return unit_text, verdict, relaxations
            relaxations.append(what)
            say(f"capprobe: relaxed {what}")
    say(f"capprobe: still failing after {MAX_RELAXATIONS} rounds of relaxation; stopping")
    return unit_text, verdict, relaxations
