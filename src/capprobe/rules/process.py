"""How the service starts and behaves as a process: Type=, ExecStart=, and process-level locks."""

from __future__ import annotations

import shlex

from ..facts.decode import euid_set_by
from ..needs import PERSONALITY_HARMLESS
from ..paths import decode_path, display_path
from ..render.quoting import render_value
from .base import Directive, RuleContext
from .evidence import behaviour, short_exes, toggle_unless_seen
from .registry import rule

ONESHOT_SECONDS = 60  # a run that ended by itself within this time is a job, not a daemon
# Variables systemd (or capprobe standing in for it) sets itself: never the operator's Environment=.
SERVICE_MANAGER_VARIABLES = frozenset({"NOTIFY_SOCKET", "PATH", "LANG"})


@rule("process")
def service_type(ctx: RuleContext):
    run = ctx.profile["run"]
    notify = behaviour(ctx, "sd_notify")
    if notify:
        yield Directive("Type", ("notify",), f"sd_notify messages seen ({notify[0]['detail']}, "
                        f"x{notify[0]['count']}, by {short_exes(notify)})", hardening=False)
    elif run.get("ended_by") == "exit" and run.get("duration", 1e9) < ONESHOT_SECONDS:
        yield Directive("Type", ("oneshot",), f"the traced run exited by itself after {run['duration']:.1f} s "
                        f"(status {run['exit_status']}): a job, not a daemon", hardening=False)
    else:
        yield Directive("Type", ("exec",), "a long-running process that does not notify readiness; "
                        "exec reports a failed start", hardening=False)


@rule("process")
def exec_start(ctx: RuleContext):
    if ctx.options.exec_start:
        argv = [a.encode() for a in ctx.options.exec_start]
        yield Directive("ExecStart", tuple(argv), "given with --exec", hardening=False)
        return
    run = ctx.profile["run"]
    argv = [decode_path(run.get("executable", run["command"][0]))] + [decode_path(a) for a in run["command"][1:]]
    yield Directive("ExecStart", tuple(argv), "the traced command line", hardening=False)


@rule("process")
def exec_reload(ctx: RuleContext):
    """ExecReload= only for a reload that was exercised: SIGHUP to the main process, survived."""
    run = ctx.profile["run"]
    for exercise in run.get("exercises", []):
        hup = [s for s in exercise.get("signals_to_target", [])
               if s["signal"] == "SIGHUP" and s["pid"] == run.get("main_pid")]
        if hup and exercise.get("target_alive_after"):
            # The shell's own kill: /bin/kill (procps) is missing from minimal systems (203/EXEC,
            # measured in the vm-tests rootfs). systemd sets $MAINPID in a control process's
            # environment; "$$" keeps it from expanding it first.
            uid = _main_process_uid_change(ctx)
            # A main process that left the unit's uid can only be signalled with CAP_KILL, which the
            # bounding set lacks ("kill: Operation not permitted", dnsmasq in vm-tests): "+" runs
            # this one fixed command with full privileges, outside the sandbox.
            shell = "+/bin/sh" if uid is not None else "/bin/sh"
            yield Directive("ExecReload", (shell, "-c", b"kill -HUP $MAINPID"),
                            f"--exercise {exercise['command']!r} sent SIGHUP to the main process "
                            f"{exercise.get('at') or 0:.1f} s into the run, and it was still running afterwards"
                            + (f"; '+': the main process switched to uid {uid}, and signalling it needs CAP_KILL"
                               if uid is not None else ""),
                            hardening=False)
            return


def _main_process_uid_change(ctx: RuleContext) -> int | None:
    """The uid the main process ($MAINPID) switched to itself, or None when it kept the unit's."""
    run = ctx.profile["run"]
    start = run.get("user", {}).get("uid", 0)
    main = next((p for p in ctx.profile.get("processes", []) if p["pid"] == run.get("main_pid")), None)
    uids = [uid for change in (main or {}).get("identity_changes", []) if change.get("result") == 0
            for uid in [euid_set_by(change["call"], change.get("args", ""))] if uid is not None]
    return uids[-1] if uids and uids[-1] != start else None


@rule("process")
def environment(ctx: RuleContext):
    """Environment= from the operator's --env values; what a unit cannot carry safely is left out."""
    given = ctx.profile["run"].get("environment") or {}
    kept, own = [], []
    for name in sorted(given):
        if name in SERVICE_MANAGER_VARIABLES:
            own.append(name)
            continue
        # (a name that is not text is left out below: quoting refuses the "?")
        assignment = name.encode("utf-8", "replace") + b"=" + decode_path(given[name])
        if render_value("Environment", assignment) is None:
            # rendered as a comment only: the operator gives it with EnvironmentFile= instead
            yield Directive("Environment", (assignment,), f"{name} was given with --env, but its value "
                            "(a control character such as a newline, or not UTF-8) is not written into a "
                            "unit: pass it with EnvironmentFile=", hardening=False)
            continue
        kept.append(assignment)
    if kept:
        names = ", ".join(a.split(b"=", 1)[0].decode() for a in kept)
        skipped = f"; {', '.join(own)} left out: systemd sets it for the service" if own else ""
        yield Directive("Environment", tuple(kept), f"given with --env when traced: {names}{skipped}",
                        hardening=False)


@rule("process")
def no_new_privileges(ctx: RuleContext):
    privileged = ctx.needs.behaviour.setuid_exec
    if privileged:
        names = ", ".join(display_path(e) for e in privileged[:3])
        yield Directive("NoNewPrivileges", ("no",), f"executed a setuid/setgid/file-capability binary: {names}")
    else:
        n = len(ctx.needs.executables)
        yield Directive("NoNewPrivileges", ("yes",), f"none of the {n} executed files is setuid, setgid "
                        "or has file capabilities")


@rule("process")
def lock_personality(ctx: RuleContext):
    changes = [b for b in behaviour(ctx, "personality") if b["detail"] not in PERSONALITY_HARMLESS]
    if ctx.needs.behaviour.personality:
        yield Directive("LockPersonality", ("no",), f"personality({changes[0]['detail']}) by {short_exes(changes)}")
    else:
        yield Directive("LockPersonality", ("yes",), "no personality() change seen")


@rule("process")
def memory_deny_write_execute(ctx: RuleContext):
    yield from toggle_unless_seen(ctx, "MemoryDenyWriteExecute", ("wx_memory",), "no W+X mapping and no mprotect(PROT_EXEC) seen")


@rule("process")
def restrict_realtime(ctx: RuleContext):
    yield from toggle_unless_seen(ctx, "RestrictRealtime", ("realtime",), "no realtime scheduling requested")


@rule("process")
def restrict_suid_sgid(ctx: RuleContext):
    setid = [f for f in ctx.profile["files"] if any(int(m, 8) & 0o6000 for m in f.get("modes", []))]
    if setid:
        yield Directive("RestrictSUIDSGID", ("no",), f"set a setuid/setgid mode on {display_path(setid[0]['path'])}")
    else:
        yield Directive("RestrictSUIDSGID", ("yes",), "no setuid/setgid file mode set")


@rule("process")
def remove_ipc(ctx: RuleContext):
    # IPC objects seen may be meant to outlive the service: then RemoveIPC=no
    yield from toggle_unless_seen(ctx, "RemoveIPC", ("sysv_ipc", "posix_mqueue"),
                                  "no SysV IPC or POSIX message queue seen")


@rule("process")
def keyring_mode(ctx: RuleContext):
    keys = behaviour(ctx, "keyring")
    if keys:
        yield Directive("KeyringMode", ("shared",), f"kernel keyring used ({keys[0]['detail']})")
    else:
        yield Directive("KeyringMode", ("private",), "no kernel keyring call seen")


@rule("process")
def umask(ctx: RuleContext):
    yield Directive("UMask", ("0077",), "files the service creates are private to it")


def split_exec(text: str) -> list[str]:
    """--exec "..." split like a shell would (for UnitOptions.exec_start)."""
    return shlex.split(text)
