"""`capprobe demo`: profile the bundled example service, show what was found."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from importlib import resources
from pathlib import Path

import click

from .profile import save_profile
from .render.summary import render_summary
from .session import RunOptions, run_session


def _free_privileged_port() -> int:
    """A loopback port below 1024 that nothing listens on (the demo's service needs one)."""
    for port in (880, 881, 882, 843, 853, 873, 990, 993, 995):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise click.ClickException("no free port below 1024 on 127.0.0.1 for the demo service")


def _python() -> str:
    # Debian's interpreter keeps the trace about the service, not a version manager's shims.
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def run_demo(output: Path | None) -> int:
    """Run the demo; returns the exit code."""
    if os.geteuid() != 0:
        raise click.ClickException("the demo needs root (it watches capability checks in the kernel)")
    work = Path(tempfile.mkdtemp(prefix="capprobe-demo-"))
    try:
        service = work / "notes_service.py"
        service.write_bytes(resources.files("capprobe.examples").joinpath("notes_service.py").read_bytes())
        config = work / "notes.toml"
        config.write_text(f'data_dir = "{work}/data"\nlog_file = "{work}/notes.log"\n')
        port = _free_privileged_port()
        command = [_python(), str(service), "--config", str(config), "--port", str(port)]
        click.echo(f"capprobe demo: profiling the example service: {' '.join(command)}", err=True)
        # no --duration: the example ends by itself once it has answered its own health check,
        # and a run that stops before its --duration is reported as a failed one
        result = run_session(RunOptions(command=command), status=lambda m: None)
        dest = output or work / "notes_service.profile.json"
        save_profile(result.profile, dest, force=output is None)
        click.echo(render_summary(result.profile))
        click.echo(f"\nprofile: {dest}")
        from .rules.base import UnitOptions
        from .synthesis import synthesize
        unit = synthesize(result.profile, UnitOptions(name="notes", dynamic_user=True))
        click.echo("\n--- notes.service, synthesized from the profile (--dynamic-user) ---")
        click.echo(unit.unit_text)
        if unit.exposure is not None:
            click.echo(f"exposure (systemd-analyze security --offline=yes): without hardening "
                       f"{unit.baseline_exposure} -> with it {unit.exposure} {unit.exposure_label}")
        for note in unit.notes:
            click.echo(f"note: {note}")
        return result.exit_code
    finally:
        if output is None:
            click.echo("(the demo's temporary files are removed; use -o FILE to keep the profile)", err=True)
        shutil.rmtree(work, ignore_errors=True)
