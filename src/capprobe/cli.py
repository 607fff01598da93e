"""Command line: parse options, call one function, print. Nothing else lives here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import __version__
from .profile import ProfileError, load_profile, save_profile
from .session import RunOptions, SessionError, run_session


def _fail(message: str, code: int = 2) -> None:
    click.echo(message if message.startswith("capprobe:") else f"capprobe: {message}", err=True)
    sys.exit(code)


def _check_output_path(path: Path) -> None:
    """Reject paths capprobe would write wrongly or that hide a mistake."""
    text = os.fsdecode(path)
    if "\n" in text or "\r" in text:
        _fail(f"refusing an output path with a line break in it: {text!r}")
    if path.is_dir():
        _fail(f"{text} is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        _fail(f"cannot write {text}: directory {parent} does not exist")


def default_profile_path(command: list[str]) -> Path:
    """<command>.profile.json in the current directory, numbered if that exists."""
    stem = os.path.basename(command[0]) or "target"
    candidate = Path(f"{stem}.profile.json")
    n = 1
    while candidate.exists():
        candidate = Path(f"{stem}.profile.{n}.json")
        n += 1
    return candidate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="capprobe")
def main() -> None:
    """capprobe: watch a service run and learn the privileges it really uses."""


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Profile file to write (default: <command>.profile.json here).")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop the target after SECONDS (SIGTERM, then SIGKILL after --grace).")
@click.option("--grace", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL when --duration ends the target.")
@click.option("--user", default=None, help="Run the target as this user, all capabilities ambient.")
@click.option("--group", default=None, help="Primary group for --user.")
@click.option("--caps", type=click.Choice(["all", "none"]), default="all", show_default=True,
              help="'none' starts the target with no capabilities at all, to see what fails.")
@click.option("--no-cap-probe", is_flag=True, help="Do not ask the kernel for capability checks.")
@click.option("-q", "--quiet", is_flag=True, help="No summary on stderr.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def run(output, force, duration, grace, user, group, caps, no_cap_probe, quiet, command) -> None:
    """Trace COMMAND (after --) and write its profile."""
    command = list(command)
    if output is None:
        output = default_profile_path(command)
    else:
        _check_output_path(output)
        if output.exists() and not force:
            _fail(f"{output} exists; use --force to replace it")
    opts = RunOptions(command=command, duration=duration, grace=grace, user=user,
                      group=group, caps=caps, cap_probe="off" if no_cap_probe else "auto")
    status = (lambda msg: None) if quiet else (lambda msg: click.echo(f"capprobe: {msg}", err=True))
    try:
        result = run_session(opts, status=status)
    except SessionError as e:
        _fail(str(e), e.exit_code)
    try:
        save_profile(result.profile, output, force=force)
    except ProfileError as e:
        _fail(str(e))
    if not quiet:
        from .render.summary import one_paragraph
        for note in result.notes:
            click.echo(f"capprobe: {note}", err=True)
        click.echo(one_paragraph(result.profile, str(output)), err=True)
    sys.exit(result.exit_code)


@main.command()
@click.argument("profile", type=click.Path(path_type=Path))
def show(profile) -> None:
    """Print a readable summary of PROFILE."""
    from .render.summary import render_summary
    try:
        data = load_profile(profile)
    except ProfileError as e:
        _fail(str(e))
    click.echo(render_summary(data))


@main.command()
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Where to write the demo profile (default: a temporary directory).")
def demo(output) -> None:
    """Profile the bundled example service and show what was found."""
    from .demo import run_demo
    try:
        code = run_demo(output)
    except (SessionError, ProfileError) as e:
        _fail(str(e), getattr(e, "exit_code", 2))
    sys.exit(code)


if __name__ == "__main__":
    main()
