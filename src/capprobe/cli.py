"""Command line: parse options, call one function, print. Nothing else lives here."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import click

from . import __version__
from .paths import decode_path, printable
from .profile import ProfileError, load_profile, save_profile, write_atomically
from .render.export import ExportFormat
from .rules.base import RuleContext, UnitOptions
from .session import RunOptions, SessionError, parse_env_assignments, run_session
from .validate import InvalidField, validate_profile


def _fail(message: str, code: int = 2) -> None:
    click.echo(printable(message if message.startswith("capprobe:") else f"capprobe: {message}"), err=True)
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
def cli() -> None:
    """capprobe: watch a service run and learn the privileges it really uses."""


def main() -> None:
    """Entry point: one line for any failure (CAPPROBE_DEBUG=1 shows the traceback)."""
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("CAPPROBE_DEBUG"):
            raise
        click.echo(printable(f"capprobe: internal error: {type(e).__name__}: {e} "
                             "(CAPPROBE_DEBUG=1 shows where; please report it)"), err=True)
        sys.exit(70)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
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
@click.option("--drop-cap", "drop_caps", multiple=True, metavar="CAP",
              help="Start without this capability (repeatable): confirms which alternative of an "
                   "either-or check the kernel accepts.")
@click.option("--cap-probe", "cap_probe", type=click.Choice(["auto", "tracefs", "bpftrace", "off"]),
              default="auto", show_default=True,
              help="How to see capability checks: auto = tracefs, else bpftrace, else inferred from syscalls.")
@click.option("--no-cap-probe", is_flag=True, help="Same as --cap-probe off.")
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE",
              help="Pass this variable to the target (repeatable; the unit gets it as Environment=). "
                   "Otherwise the target sees only what systemd gives a service.")
@click.option("--exercise", "exercises", multiple=True, metavar="CMD",
              help="Run this shell command while the target runs (repeatable, one after another), e.g. "
                   "'kill -HUP $MAINPID' or a client request; $MAINPID is the target's pid. Not traced.")
@click.option("--exercise-delay", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds after the target starts before the first exercise, and between two.")
@click.option("--confirm", "confirm_caps", is_flag=True,
              help="After the run, re-run it once per doubtful capability without it; one it works "
                   "without becomes optional (see `capprobe confirm`).")
@click.option("--check", default=None, metavar="CMD",
              help="With --confirm: a shell command that must succeed while each re-run runs (a daemon's "
                   "health check); it replaces comparing the runs' facts.")
@click.option("--reset", default=None, metavar="CMD",
              help="With --confirm: a shell command run before each re-run to restore the state this run "
                   "started from (remove what it created).")
@click.option("--unit", "unit_name", default=None,
              help="Name of the unit to synthesize beside the profile (default: <command>.service).")
@click.option("--no-unit", is_flag=True, help="Write only the profile.")
@click.option("-q", "--quiet", is_flag=True, help="No status line and no summary on stderr.")
@click.option("--checkpoint", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="Write the profile every SECONDS while the run goes on (atomically, marked incomplete "
                   "until the final one), so a crash loses at most that much.")
@click.option("--fast/--full", default=False, show_default=True,
              help="--fast: strace while the service starts, then only the kernel's first-seen facts "
                   "(bpftrace; the steady state runs near full speed). --full: strace throughout.")
@click.option("--settle", type=click.FloatRange(min=0, max=60), default=2.0, show_default=True, metavar="SECONDS",
              help="--fast switches to the kernel side after SECONDS without a new fact (or at READY=1); "
                   "0: from the start (the target waits until the kernel program is attached).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def run(output, force, duration, grace, user, group, caps, drop_caps, cap_probe, no_cap_probe, env, exercises,
        exercise_delay, confirm_caps, check, reset, unit_name, no_unit, quiet, checkpoint, fast, settle,
        command) -> None:
    """Trace COMMAND (after --), write its profile and a hardened unit beside it."""
    command = list(command)
    if (check is not None or reset is not None) and not confirm_caps:
        _fail("--check and --reset go with --confirm")
    if output is None:
        output = default_profile_path(command)
    else:
        _check_output_path(output)
        if output.exists() and not force:
            _fail(f"{output} exists; use --force to replace it")
    unit_path = None
    if not no_unit:
        name = _unit_name(unit_name or os.path.basename(command[0]) or "service")
        unit_path = output.parent / f"{name}.service"
        if unit_path.exists() and not force:
            _fail(f"{unit_path} exists; use --force to replace it, or --unit NAME")
    try:
        run_env = parse_env_assignments(list(env))
    except SessionError as e:
        _fail(str(e), e.exit_code)
    opts = RunOptions(command=command, duration=duration, grace=grace, user=user,
                      group=group, caps=caps, cap_probe="off" if no_cap_probe else cap_probe,
                      drop_caps=list(drop_caps), env=run_env, exercises=list(exercises),
                      exercise_delay=exercise_delay, live_status=not quiet, fast=fast, settle=settle)
    status = (lambda msg: None) if quiet else (lambda msg: click.echo(printable(f"capprobe: {msg}"), err=True))
    if checkpoint is not None:
        from .checkpoint import Checkpoints
        opts.checkpoint = Checkpoints(output, checkpoint, force, status)
    try:
        result = run_session(opts, status=status)
    except SessionError as e:
        _fail(str(e), e.exit_code)
    try:
        save_profile(result.profile, output, force=force or (opts.checkpoint is not None
                                                             and opts.checkpoint.final_may_replace))
    except ProfileError as e:
        _fail(str(e))
    if not quiet:
        from .render.summary import one_paragraph
        for note in result.notes:
            click.echo(printable(f"capprobe: {note}"), err=True)
        click.echo(one_paragraph(result.profile, str(output)), err=True)
    # the base profile is on disk first: a confirmation cut short loses only the re-runs
    profile = (_confirm_and_save(result.profile, opts, check, reset, output, quiet, must_confirm=False)
               if confirm_caps else result.profile)
    if unit_path is not None:
        options = UnitOptions(name=unit_path.name[:-len(".service")], user=user, group=group)
        _write_unit(profile, options, str(unit_path), force, quiet)
    sys.exit(result.exit_code)


def _confirm_and_save(profile: dict, opts: RunOptions, check: str | None, reset: str | None, dest: Path,
                      quiet: bool, must_confirm: bool) -> dict:
    """Confirm PROFILE's doubtful capabilities by re-runs, write it to DEST (replaced), return it.

    When confirmation cannot run, MUST_CONFIRM (`capprobe confirm`) fails; `run --confirm`
    says so and goes on with the profile it has.
    """
    from .confirm import ConfirmError, confirm
    say = (lambda msg: None) if quiet else (lambda msg: click.echo(printable(f"capprobe: {msg}"), err=True))
    try:
        profile = confirm(profile, opts, check, say, reset)
    except (ConfirmError, SessionError) as e:
        if must_confirm:
            _fail(str(e), getattr(e, "exit_code", 1))
        click.echo(printable(f"capprobe: confirm: {str(e).removeprefix('capprobe: ')}; "
                             "the capabilities stay unconfirmed"), err=True)
        return profile
    try:
        save_profile(profile, dest, force=True)
    except ProfileError as e:
        _fail(str(e))
    say(f"confirm: profile written to {dest}")
    return profile


def _unit_name(text: str) -> str:
    """A unit name from user input or a command name: safe characters only."""
    name = text[:-len(".service")] if text.endswith(".service") else text
    name = os.path.basename(name)
    if not name or any(not (c.isalnum() or c in "-_.@") for c in name):
        _fail(f"not a usable unit name: {text!r} (letters, digits, - _ . @)")
    return name


def _write_unit(profile: dict, options: "UnitOptions", dest: str, force: bool, quiet: bool,
                setup: Path | None = None, tmpfiles: Path | None = None) -> None:
    from .synthesis import synthesize
    result = synthesize(profile, options)
    data = result.unit_text.encode()
    if dest == "-":
        sys.stdout.write(result.unit_text)
    else:
        try:
            write_atomically(Path(dest), data, force)
        except ProfileError as e:
            _fail(str(e))
    if setup is not None:
        from .render.setup_script import setup_script
        from .render.tmpfiles import tmpfiles_snippet
        from .rules.ownership import ownership_plan
        try:
            write_atomically(setup, setup_script(profile, options).encode(), force, mode=0o755)
            plan = ownership_plan(RuleContext(profile, options))
            if plan.grants:  # the script carries these lines too; this copy is for review and packaging
                write_atomically(tmpfiles or setup.parent / f"{options.name}.conf",
                                 tmpfiles_snippet(plan, options.name).encode(), force)
        except ProfileError as e:
            _fail(str(e))
    if quiet:
        return
    for note in result.notes:
        click.echo(printable(f"capprobe: {note}"), err=True)
    for message in result.verify_messages:
        click.echo(printable(f"capprobe: systemd-analyze verify: {message}"), err=True)
    hardened = sum(1 for d in result.directives if d.hardening)
    where = "stdout" if dest == "-" else dest
    click.echo(printable(f"capprobe: unit written to {where}: {hardened} hardening settings, capabilities: "
                         f"{' '.join(profile.get('capabilities', {}).get('required', [])) or 'none'}"), err=True)
    if result.exposure is not None:
        from .render.summary import profile_warnings
        # A low score on a unit made from a failed or partial run would read as a good unit.
        caveat = (" - WARNING: scores the unit's text only; the profile it came from is a failed or "
                  "incomplete run (see above)") if profile_warnings(profile) else ""
        click.echo(f"capprobe: exposure (systemd-analyze security): {result.baseline_exposure} -> "
                   f"{result.exposure} {result.exposure_label}{caveat}", err=True)


@cli.command()
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("-o", "--output", default=None, help="Unit file to write ('-' for stdout; default: NAME.service).")
@click.option("--user", default=None, help="Run the service as this user (User=, Group=).")
@click.option("--group", default=None, help="Group for --user.")
@click.option("--dynamic-user", is_flag=True, help="DynamicUser=yes.")
@click.option("--exec", "exec_line", default=None, help="ExecStart= command line instead of the traced one.")
@click.option("--name", default=None, help="Unit name (default: from -o or the traced command).")
@click.option("--setup", type=click.Path(path_type=Path), default=None,
              help="Also write a setup script (user, directories, ownership) to this file.")
@click.option("--tmpfiles", type=click.Path(path_type=Path), default=None,
              help="With --setup: where to write the tmpfiles.d snippet (default: NAME.conf beside the script).")
@click.option("--force", is_flag=True, help="Replace existing files.")
@click.option("-q", "--quiet", is_flag=True, help="No summary on stderr.")
def unit(profile, output, user, group, dynamic_user, exec_line, name, setup, tmpfiles, force, quiet) -> None:
    """Synthesize the minimal hardened systemd unit for PROFILE."""
    if user and dynamic_user:
        _fail("--user and --dynamic-user exclude each other")
    try:
        data = load_profile(profile)
    except ProfileError as e:
        _fail(str(e))
    if name is None:
        name = (os.path.basename(output) if output and output != "-" else
                os.path.basename(os.fsdecode(decode_path(data["run"]["command"][0]))) or "service")
    name = _unit_name(name)
    dest = output or f"{name}.service"
    if dest != "-":
        _check_output_path(Path(dest))
        if Path(dest).exists() and not force:
            _fail(f"{dest} exists; use --force to replace it")
    exec_start = None
    if exec_line is not None:
        import shlex
        try:
            exec_start = shlex.split(exec_line)
        except ValueError as e:
            _fail(f"cannot split --exec: {e}")
        if not exec_start:
            _fail("--exec is empty")
    if tmpfiles is not None and setup is None:
        _fail("--tmpfiles goes with --setup")
    try:
        validate_profile(data, user, group)
    except InvalidField as e:
        _fail(f"{profile}: {e}")
    options = UnitOptions(name=name, user=user, group=group, dynamic_user=dynamic_user, exec_start=exec_start)
    _write_unit(data, options, dest, force, quiet, setup, tmpfiles)


@cli.command()
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Where to write the confirmed profile (default: PROFILE itself, updated in place).")
@click.option("--force", is_flag=True, help="Replace the -o file if it exists.")
@click.option("--check", default=None, metavar="CMD",
              help="A shell command that must succeed while each re-run runs (a daemon's health check); "
                   "it replaces comparing the runs' facts.")
@click.option("--reset", default=None, metavar="CMD",
              help="A shell command run before each re-run to restore the state the profiled run started "
                   "from (remove what it created).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds each re-run lasts (default: the profiled run's --duration; a run that ended "
                   "on its own gets 3 times its time, at least 10 s).")
@click.option("--grace", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL when a re-run is stopped.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def confirm(profile, output, force, check, reset, duration, grace, quiet, command) -> None:
    """Re-run the workload of PROFILE once per doubtful capability, without it (after --: the
    command, default the profiled one); a capability it works without becomes optional."""
    from .confirm import ConfirmError, rerun_options
    try:
        data = load_profile(profile)
    except ProfileError as e:
        _fail(str(e))
    dest = output or profile
    if output is not None:
        _check_output_path(output)
        if output.exists() and not force and output.resolve() != Path(profile).resolve():
            _fail(f"{output} exists; use --force to replace it")
    try:
        opts = replace(rerun_options(data, list(command) or None, duration), grace=grace)
    except ConfirmError as e:
        _fail(f"{profile}: {e}")
    _confirm_and_save(data, opts, check, reset, dest, quiet, must_confirm=True)


@cli.command()
@click.argument("profile", type=click.Path(path_type=Path))
def show(profile) -> None:
    """Print a readable summary of PROFILE."""
    from .render.summary import render_summary
    try:
        data = load_profile(profile)
    except ProfileError as e:
        _fail(str(e))
    click.echo(render_summary(data))


@cli.command()
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


@cli.command()
@click.argument("unit_file", type=click.Path(path_type=Path))
@click.option("--check", default=None, help="A command that must succeed while the service runs (curl, a CLI call).")
@click.option("--duration", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds the service must stay up (a oneshot must finish).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def verify(unit_file, check, duration, command) -> None:
    """Run UNIT_FILE under this host's systemd; on failure, name the directive that caused it."""
    from .syscall_groups import syscall_groups
    from .verify.systemd_host import NoSystemd, require_systemd
    from .verify.tighten import verify_text
    try:
        require_systemd()
    except NoSystemd as e:
        _fail(str(e))
    try:
        text = Path(unit_file).read_text()
    except (OSError, UnicodeDecodeError) as e:
        _fail(f"cannot read {unit_file}: {e}")
    if command:
        from .render.quoting import render_line
        rendered = render_line("ExecStart", tuple(os.fsencode(c) for c in command))
        if rendered is None:
            _fail("the command after -- cannot be written as ExecStart=")
        text = "\n".join(f"ExecStart={rendered}" if line.startswith("ExecStart=") else line
                         for line in text.splitlines()) + "\n"
    name = _unit_name(os.path.basename(str(unit_file)))
    verdict = verify_text(text, name, duration, check, syscall_groups())
    _print_verdict(verdict)
    sys.exit(0 if verdict.passed else 1)


def _print_verdict(verdict) -> None:
    run = verdict.run
    if verdict.passed:
        click.echo(f"PASS: {run.name} ran under systemd (state {run.active_state}, result {run.result})"
                   + (", check passed" if run.check_status == 0 else ""))
        return
    click.echo(f"FAIL: {run.name}: result {run.result or '?'}, {run.exit_code or '?'} {run.exit_status}"
               + (f", start: {run.start_error}" if run.start_error else "")
               + (f", check exited {run.check_status}" if run.check_status not in (None, 0) else ""))
    for b in verdict.blames:
        click.echo(f"  caused by {b.directive}{' (' + b.item + ')' if b.item else ''}: {b.evidence}")
    if verdict.explanation:
        click.echo(f"  {verdict.explanation}")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-o", "--output", default=None, help="Unit file to write (default: <command>.service).")
@click.option("--unit", "start_unit", type=click.Path(path_type=Path), default=None,
              help="Start from this unit instead of profiling COMMAND.")
@click.option("--profile", "profile_out", type=click.Path(path_type=Path), default=None,
              help="Also keep the profile here.")
@click.option("--check", default=None, help="A command that must succeed while the service runs.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Seconds to profile the service, and to keep it up when verifying.")
@click.option("--user", default=None, help="Run the service as this user.")
@click.option("--dynamic-user", is_flag=True, help="DynamicUser=yes.")
@click.option("--force", is_flag=True, help="Replace existing files.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def tighten(output, start_unit, profile_out, check, duration, user, dynamic_user, force, command) -> None:
    """Profile COMMAND, synthesize its unit, verify it under systemd, relax only what breaks."""
    from .syscall_groups import syscall_groups
    from .verify.systemd_host import NoSystemd, require_systemd
    from .verify.tighten import tighten as tighten_loop
    try:
        require_systemd()
    except NoSystemd as e:
        _fail(str(e))
    command = list(command)
    if not command and start_unit is None:
        _fail("give the command after --, or a unit with --unit")
    base = os.path.basename(output) if output else (
        os.path.basename(str(start_unit)) if start_unit else os.path.basename(command[0]))
    name = _unit_name(base)
    dest = Path(output or f"{name}.service")
    _check_output_path(dest)
    if dest.exists() and not force and (start_unit is None or Path(start_unit).resolve() != dest.resolve()):
        _fail(f"{dest} exists; use --force to replace it")
    profile = None
    if start_unit is not None:
        try:
            text = Path(start_unit).read_text()
        except (OSError, UnicodeDecodeError) as e:
            _fail(f"cannot read {start_unit}: {e}")
    else:
        from .synthesis import synthesize
        try:
            result = run_session(RunOptions(command=command, duration=duration, user=user))
        except SessionError as e:
            _fail(str(e), e.exit_code)
        profile = result.profile
        if profile_out is not None:
            save_profile(profile, profile_out, force=force)
        text = synthesize(profile, UnitOptions(name=name, user=user, dynamic_user=dynamic_user),
                          score=False).unit_text
    final, verdict, relaxations = tighten_loop(text, name, duration, check, syscall_groups(), profile,
                                               say=lambda m: click.echo(m, err=True))
    _print_verdict(verdict)
    write_atomically(dest, final.encode(), force=True if start_unit is not None and
                     Path(start_unit).resolve() == dest.resolve() else force)
    click.echo(f"capprobe: {len(relaxations)} relaxation(s); unit written to {dest}"
               + ("" if verdict.passed else " (it still FAILS: see above)"), err=True)
    sys.exit(0 if verdict.passed else 1)


@cli.command(name="attach")
@click.argument("pid", type=click.IntRange(min=1))
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Detach after this many seconds (default: at Ctrl-C, SIGTERM, or when the target exits).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Profile file (default: <program>.profile.json, numbered if it exists).")
@click.option("--force", is_flag=True, help="Replace the output files if they exist.")
@click.option("--cap-probe", "cap_probe", type=click.Choice(["auto", "tracefs", "bpftrace", "off"]),
              default="auto", show_default=True, help="Kernel capability probe, as for run.")
@click.option("--no-unit", is_flag=True, help="Write only the profile.")
@click.option("-q", "--quiet", is_flag=True, help="No status line and no summary on stderr.")
def attach_command(pid, duration, output, force, cap_probe, no_unit, quiet) -> None:
    """Follow the running process PID (its threads and children) and detach, leaving it running."""
    from .attach import AttachOptions, attach_session
    program = os.path.basename(os.fsdecode(_readlink(f"/proc/{pid}/exe") or b"")) or f"pid{pid}"
    if output is None:
        output = default_profile_path([program])
    else:
        _check_output_path(output)
        if output.exists() and not force:
            _fail(f"{output} exists; use --force to replace it")
    unit_path = None if no_unit else output.parent / f"{_unit_name(program)}.service"
    if unit_path is not None and unit_path.exists() and not force:
        _fail(f"{unit_path} exists; use --force to replace it, or --no-unit")
    say = (lambda msg: None) if quiet else (lambda msg: click.echo(printable(f"capprobe: {msg}"), err=True))
    try:
        result = attach_session(AttachOptions(pid=pid, duration=duration, cap_probe=cap_probe,
                                                     live_status=not quiet), status=say)
    except SessionError as e:
        _fail(str(e), e.exit_code)
    try:
        save_profile(result.profile, output, force=force)
    except ProfileError as e:
        _fail(str(e))
    if not quiet:
        from .render.summary import one_paragraph
        for note in result.notes:
            say(note)
        click.echo(one_paragraph(result.profile, str(output)), err=True)
    if unit_path is not None:
        _write_unit(result.profile, UnitOptions(name=unit_path.name[:-len(".service")]), str(unit_path),
                    force, quiet)


def _readlink(path: str) -> bytes | None:
    try:
        return os.readlink(os.fsencode(path))
    except OSError:
        return None


@cli.command(name="export")
@click.option("--format", "fmt", required=True, type=click.Choice([f.value for f in ExportFormat]),
              help="oci-seccomp: the seccomp JSON runc/crun/podman/docker take; docker: `docker run` flags; "
                   "compose: a service snippet; k8s: a Pod with the container's securityContext.")
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="File to write (default: stdout).")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@click.option("--name", default=None, help="Service name (default: the traced program's).")
@click.option("--seccomp-file", default=None,
              help="Where the oci-seccomp export is kept, as docker, compose and k8s name it (default: NAME.seccomp.json).")
@click.option("--image", default="IMAGE", show_default=True, help="Container image for docker, compose and k8s.")
def export_command(fmt, profile, output, force, name, seccomp_file, image) -> None:
    """Export PROFILE's needs for another tool: a seccomp filter, docker flags, compose, Kubernetes."""
    from .render.export import ExportError, export, export_options
    if output is not None:
        _check_output_path(output)
        if output.exists() and not force:
            _fail(f"{output} exists; use --force to replace it")
    try:
        data = load_profile(profile)
        validate_profile(data, None, None)
    except ProfileError as e:
        _fail(str(e))
    except InvalidField as e:
        _fail(f"{profile}: {e}")
    if name is not None:
        name = _unit_name(name)
    try:
        text = export(data, ExportFormat(fmt), export_options(data, name, seccomp_file, image))
    except ExportError as e:
        _fail(f"{profile}: {e}")
    from .render.summary import profile_warnings
    for warning in profile_warnings(data):  # an export of a failed or partial run may miss needs
        click.echo(printable(f"capprobe: {warning}"), err=True)
    if output is None:
        sys.stdout.write(text)
        return
    try:
        write_atomically(output, text.encode(), force)
    except ProfileError as e:
        _fail(str(e))



@cli.group()
def service() -> None:
    """Profile an installed systemd service where it runs: start, let it work, finish."""


def _say(msg: str) -> None:
    click.echo(printable(f"capprobe: {msg}"), err=True)


@service.command("start")
@click.argument("name")
@click.option("--lift-sandbox", is_flag=True,
              help="Profile a unit with ProtectSystem=, PrivateTmp=, SystemCallFilter= and the like, although "
                   "its commands run outside them while profiled.")
def service_start(name, lift_sandbox) -> None:
    """Run NAME's commands under capprobe (a runtime drop-in) and restart it."""
    from .service import ServiceError, start
    try:
        start(name, say=_say, lift_sandbox=lift_sandbox)
    except ServiceError as e:
        _fail(str(e), e.exit_code)


@service.command("finish")
@click.argument("name")
@click.option("-o", "--output-dir", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="Where to write NAME.profile.json, NAME.service, NAME.hardening.conf, NAME.setup.sh.")
@click.option("--force", is_flag=True, help="Replace existing files.")
@click.option("--apply", "apply_", is_flag=True,
              help="Install the hardening as a drop-in, restart, verify; roll back if the service fails.")
@click.option("--check", default=None, metavar="CMD", help="With --apply: a command that must succeed (curl ...).")
@click.option("--duration", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="With --apply: seconds the hardened service must stay up.")
def service_finish(name, output_dir, force, apply_, check, duration) -> None:
    """Restore NAME's unit exactly, merge its commands' profiles, write the hardened unit."""
    from .service import ServiceError, finish
    try:
        code = finish(name, output_dir, force=force, apply=apply_, check=check, duration=duration, say=_say)
    except ServiceError as e:
        _fail(str(e), e.exit_code)
    sys.exit(code)


@service.command("exec", hidden=True, context_settings={"ignore_unknown_options": True,
                                                       "allow_interspersed_args": False})
@click.argument("name")
@click.argument("kind")
@click.argument("index", type=int)
@click.option("--user", default=None)
@click.option("--group", default=None)
@click.option("--keep-caps", default=None)
@click.option("--no-new-privileges", is_flag=True)
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def service_exec(name, kind, index, user, group, keep_caps, no_new_privileges, command) -> None:
    """What the drop-in of `service start` runs in place of each command (not for direct use)."""
    from .service import ServiceError, exec_command
    command = list(command)[1:] if command[:1] == ("--",) else list(command)  # click keeps a "--" after arguments
    try:
        code = exec_command(name, kind, index, user, group, keep_caps, command, status=_say,
                            no_new_privileges=no_new_privileges)
    except ServiceError as e:
        _fail(str(e), e.exit_code)
    sys.exit(code)


@cli.command()
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("--html", "html_path", type=click.Path(path_type=Path), required=True,
              help="The HTML page to write (one self-contained file).")
@click.option("--diff", "baseline", type=click.Path(path_type=Path), default=None,
              help="A baseline profile: the page also shows what PROFILE needs that it did not, and the reverse.")
@click.option("--name", default=None, help="Service name (default: the traced program's).")
@click.option("--force", is_flag=True, help="Replace the HTML file if it exists.")
def report(profile, html_path, baseline, name, force) -> None:
    """Write one HTML page about PROFILE: the unit with its evidence, exposure before -> after,
    capabilities, written paths, and with --diff what changed since a baseline."""
    from .render.report import report_page
    _check_output_path(html_path)
    if html_path.exists() and not force:
        _fail(f"{html_path} exists; use --force to replace it")
    loaded = []
    for path in (profile, baseline):
        if path is None:
            continue
        try:
            loaded.append(load_profile(path))
            validate_profile(loaded[-1], None, None)
        except ProfileError as e:
            _fail(str(e))
        except InvalidField as e:
            _fail(f"{path}: {e}")
    data, old = loaded[0], (loaded[1] if baseline is not None else None)
    name = _unit_name(name or os.path.basename(os.fsdecode(decode_path(data["run"]["command"][0]))) or "service")
    try:
        write_atomically(html_path, report_page(data, name, old).encode(), force)
    except ProfileError as e:
        _fail(str(e))
    click.echo(f"capprobe: report written to {printable(str(html_path))}", err=True)


@cli.command()
@click.argument("profiles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The merged profile to write.")
@click.option("--force", is_flag=True, help="Replace the output file if it exists (never an input).")
def merge(profiles, output, force) -> None:
    """Union several sessions' profiles into one; each fact says which session saw it."""
    from .merge import merge_files
    _check_output_path(output)
    try:
        click.echo(f"capprobe: {merge_files(list(profiles), output, force)}", err=True)
    except ProfileError as e:
        _fail(str(e))


@cli.command()
@click.argument("baseline", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def diff(baseline, new, as_json) -> None:
    """What NEW needs that BASELINE did not, and what it no longer needs.
    Exit 1 when NEW needs more, 0 when not, 2 on bad input."""
    from .diff import diff_files
    try:
        text, code = diff_files(baseline, new, as_json)
    except ProfileError as e:
        _fail(str(e))
    click.echo(text, nl=False)
    sys.exit(code)


if __name__ == "__main__":
    main()
