"""Start the target under the tracers, stream their output into facts, stop cleanly.

This is the edge where processes, pipes, cgroups and signals live; everything it
reads goes through pure parsers into the FactCollector. The order of a run keeps
the trace channel out of the target's reach:
  1. fork the launcher; it takes the service's identity, then says it is ready;
  2. move it into its own cgroup and arm the capability probe on its pid;
  3. attach strace (root, not an ancestor of the target) writing into an anonymous pipe;
  4. once the launcher's TracerPid is strace, open the gate: it execs the target.
"""

from __future__ import annotations

import json
import os
import pwd
import grp
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from . import __version__
from .capability_recorder import CapabilityRecorder
from .cgroup import TargetCgroup
from .facts.collector import FactCollector
from .facts.decode import StraceDecoder
from .filestat import describe_executables, record_file_modes
from .hoststamp import host_stamp
from .notify import NotifyListener
from .paths import encode_path
from .profile import SCHEMA
from .status import StatusLine, session_progress
from .tracing.kernel import FastMode
from .tracing.strace import (STRACE_FLAGS, AttachError, SpoolError, SpoolFollower, attach, open_trace_spool,
                             wait_attached)

# What systemd gives a service (not the invoking shell's $PATH, which may search /root).
SYSTEMD_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOCALE_FILES = ("/etc/locale.conf", "/etc/default/locale")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
LAUNCHER_READY_TIMEOUT = 30.0

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


SI_KERNEL = 0x80  # si_code of a signal the kernel sent: Ctrl-C from the terminal


class SignalForwarder:
    """Receives SIGINT/SIGTERM/SIGHUP synchronously in a thread of its own and forwards them.

    The signals are blocked in every thread of capprobe (threads inherit the mask) and
    taken with sigtimedwait(): a Python handler would run only in the main thread, which
    sleeps in read() on the trace pipe while a quiet target writes nothing, and the kernel
    may hand a process signal to any thread (measured: SIGTERM lost, 3 runs in 25). The
    launcher unblocks them again before exec'ing the target.
    """

    def __init__(self, on_signal) -> None:
        self._on_signal = on_signal
        self._stop = threading.Event()
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
        self._thread = threading.Thread(target=self._loop, name="capprobe-signals", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            info = signal.sigtimedwait(FORWARDED_SIGNALS, 0.2)
            if info is not None:
                self._on_signal(info.si_signo, info.si_code == SI_KERNEL)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)


class SessionError(Exception):
    """A run cannot start; the message is one line, exit_code what capprobe exits with."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class RunOptions:
    command: list[str]
    duration: float | None = None
    grace: float = 5.0
    user: str | None = None
    group: str | None = None
    caps: str = "all"  # "all": keep every capability (ambient for --user); "none": drop all
    cap_probe: str = "auto"  # "auto" | "tracefs" | "bpftrace" | "off"
    drop_caps: list[str] = field(default_factory=list)  # e.g. ["CAP_NET_RAW"]: confirm an either-or choice
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # --env NAME=VALUE: the unit's Environment=
    exercises: list[str] = field(default_factory=list)  # --exercise CMD: shell commands run during the run
    exercise_delay: float = 1.0  # before the first exercise, between two, and before judging survival
    notify_forward: str | None = None  # systemd's $NOTIFY_SOCKET: pass the target's sd_notify on (service exec)
    on_started: object = None  # called with the target's pid once it runs (service exec: forking readiness)
    checkpoint: object = None  # --checkpoint S: a checkpoint.Checkpoints, written from the read loop
    live_status: bool = False  # the status line on stderr while it runs (drawn only on a terminal)
    fast: bool = False  # --fast: strace for the start-up, then the kernel's first-seen maps (tracing/kernel.py)
    settle: float = 2.0  # --settle S: fast mode switches after S seconds without a new fact (or READY=1)
    no_new_privileges: bool = False  # the unit's NoNewPrivileges=yes (service exec): set before the exec


@dataclass
class RunResult:
    profile: dict
    exit_code: int
    notes: list[str] = field(default_factory=list)


def resolve_command(argv0: str) -> str:
    """The executable the launcher will exec, or a SessionError (127 missing, 126 not executable)."""
    if "/" in argv0:
        if not os.path.exists(argv0):
            raise SessionError(f"capprobe: {argv0}: no such file", 127)
        if os.path.isdir(argv0) or not os.access(argv0, os.X_OK):
            raise SessionError(f"capprobe: {argv0}: not executable", 126)
        return os.path.abspath(argv0)
    found = shutil.which(argv0)
    if found is None:
        raise SessionError(f"capprobe: {argv0}: command not found", 127)
    return found


def strace_missing() -> str:
    """The one line for a host without strace: what to install, and what works without it."""
    return ("capprobe: strace is not installed, and run and attach trace syscalls with it: install it "
            "(Debian/Ubuntu: apt-get install strace; Fedora/RHEL: dnf install strace; Alpine: apk add strace), "
            "or profile on a staging host that has it")


def identity_spec(opts: RunOptions) -> dict | None:
    """What the launcher must change before it execs the target, or None to start as we are."""
    if opts.user is None and opts.caps == "all" and not opts.drop_caps and not opts.no_new_privileges:
        return None
    from .capabilities import cap_number
    try:
        drop = sorted({cap_number(c) for c in opts.drop_caps})
    except ValueError as e:
        raise SessionError(f"capprobe: {e}") from None
    spec: dict = {"caps": opts.caps, "uid": None, "gid": None, "groups": [], "drop": drop,
                  "no_new_privileges": opts.no_new_privileges}
    if opts.user is not None:
        try:
            pw = pwd.getpwnam(opts.user) if not opts.user.isdigit() else pwd.getpwuid(int(opts.user))
        except KeyError:
            raise SessionError(f"capprobe: no such user: {opts.user}") from None
        gid = pw.pw_gid
        if opts.group is not None:
            try:
                gid = (grp.getgrnam(opts.group) if not opts.group.isdigit()
                       else grp.getgrgid(int(opts.group))).gr_gid
            except KeyError:
                raise SessionError(f"capprobe: no such group: {opts.group}") from None
        spec.update(uid=pw.pw_uid, gid=gid,
                    groups=sorted({gid, *os.getgrouplist(pw.pw_name, gid)}))
    if os.geteuid() != 0:
        raise SessionError("capprobe: --user, --caps and --drop-cap need root")
    return spec


def parse_env_assignments(items: list[str]) -> dict[str, str]:
    """--env NAME=VALUE options as a dict, or a one-line SessionError."""
    env: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not ENV_NAME.match(name):
            raise SessionError(f"capprobe: --env wants NAME=VALUE with a name of letters, digits and _: {item!r}")
        if name == "NOTIFY_SOCKET":
            raise SessionError("capprobe: --env NOTIFY_SOCKET: capprobe sets it to its own stand-in for "
                               "systemd's socket, which shows whether the service notifies")
        env[name] = value
    return env


def locale_lang(text: str) -> str | None:
    """LANG= from a locale.conf / /etc/default/locale text (shell-style, maybe quoted)."""
    for line in text.splitlines():
        name, eq, value = line.strip().partition("=")
        if eq and name == "LANG":
            return value.strip().strip("\"'") or None
    return None


def service_environment(spec: dict | None, notify_address: str, operator_env: dict[str, str]) -> dict[str, str]:
    """The environment systemd (252) gives the service, not the invoking shell's.

    PATH is systemd's default; LANG comes from the system locale; HOME, USER, LOGNAME
    and SHELL only with User= (root's too when User=root), none without it.
    """
    env = {"PATH": SYSTEMD_DEFAULT_PATH}
    for path in LOCALE_FILES:
        try:
            with open(path) as f:
                lang = locale_lang(f.read())
        except OSError:
            continue
        if lang:
            env["LANG"] = lang
        break
    if spec is not None and spec.get("uid") is not None:
        pw = pwd.getpwuid(spec["uid"])
        env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name, SHELL=pw.pw_shell)
    env["NOTIFY_SOCKET"] = notify_address
    env.update(operator_env)
    return env


class _Target:
    """The target's root process and its cgroup: signals forwarded, or sent when --duration ends."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.pid: int | None = None
        self.cgroup: TargetCgroup | None = None
        self.ended_by: str | None = None
        self.timers: list[threading.Timer] = []
        self._pending: list[int] = []  # signals that came before the target existed
        self._lock = threading.Lock()

    def started(self, pid: int) -> None:
        with self._lock:
            self.pid, pending, self._pending = pid, self._pending, []
        for signum in pending:
            self.signal(signum)

    def signal(self, signum: int) -> None:
        with self._lock:
            if self.pid is None:
                self._pending.append(signum)
                return
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass
        if signum == signal.SIGTERM:
            # Stop it the way systemd stops a service (KillMode=control-group): SIGTERM to the
            # main process, then to every other process of its cgroup, SIGKILL after --grace.
            if self.cgroup is not None:
                for pid in self.cgroup.poll() - {self.pid}:
                    try:
                        os.kill(pid, signum)
                    except ProcessLookupError:
                        pass
            self.later(self.grace, self.kill_all)

    def later(self, seconds: float, action) -> None:
        t = threading.Timer(seconds, action)
        t.daemon = True
        self.timers.append(t)
        t.start()

    def end_duration(self) -> None:
        self.ended_by = self.ended_by or "duration"
        self.signal(signal.SIGTERM)

    def kill_all(self) -> None:
        """SIGKILL every process of the target still alive (after the grace period)."""
        if self.cgroup is not None:
            self.cgroup.kill()
            return
        import psutil  # without a cgroup only the tree still attached to the root is found
        try:
            root = psutil.Process(self.pid)
            members = [*root.children(recursive=True), root]
        except psutil.Error:
            members = []
        for p in members:
            try:
                p.kill()
            except psutil.Error:
                pass


class ExerciseRunner:
    """Runs the --exercise commands one after another while the target runs (a reload, a request).

    Each runs as `/bin/sh -c CMD`, started by capprobe itself, never by the target: strace
    follows only the target's own descendants, so the exercise's syscalls stay out of the
    profile, and it is outside the target's cgroup. $MAINPID is the target's main pid, as
    systemd gives it to ExecReload=. The signals capprobe blocks for itself are unblocked
    in the exercise (a `timeout` in it must be able to stop its child), and it gets a session
    of its own, so a Ctrl-C meant for the target does not hit it and a stop kills it whole.
    """

    def __init__(self, commands: list[str], delay: float, main_pid: int, target_alive, say,
                 origin: float) -> None:
        self.records: list[dict] = [{"command": c, "at": None, "exit": None} for c in commands]
        self._delay = delay
        self._main_pid = main_pid
        self._target_alive = target_alive
        self._say = say
        self._origin = origin  # "at" counts from the run's start, like run.signals_received
        self._stop = threading.Event()
        self._current: int | None = None  # the running exercise's pid (= its process group)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="capprobe-exercises", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for record in self.records:
            if self._stop.wait(self._delay):
                return  # the target ended first: this one and the rest stay "at": null
            self._exercise(record)
            if self._stop.wait(self._delay):
                return  # too soon to tell whether the target survived it
            record["target_alive_after"] = self._target_alive()

    def _exercise(self, record: dict) -> None:
        env = dict(os.environ, MAINPID=str(self._main_pid))
        out_r, out_w = os.pipe()
        with self._lock:
            if self._stop.is_set():
                os.close(out_r)
                os.close(out_w)
                return
            start = time.time()
            # posix_spawn, not a preexec_fn (unsafe beside threads): an empty signal mask (dash
            # clears its own, another /bin/sh may not) and a session of its own, stdout and
            # stderr into a pipe we count
            try:
                self._current = pid = os.posix_spawn(
                    "/bin/sh", ["/bin/sh", "-c", record["command"]], env,
                    file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                                  (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, out_w, 2)],
                    setsid=True, setsigmask=())
            except OSError as e:
                os.close(out_r)
                os.close(out_w)
                record.update(at=round(start - self._origin, 3), exit=127)  # the shell's "not found"
                self._say(f"EXERCISE FAILED: {record['command']!r} could not start: {e.strerror}")
                return
        os.close(out_w)
        output_bytes = 0
        with os.fdopen(out_r, "rb") as out:
            while chunk := out.read(1 << 16):
                output_bytes += len(chunk)
        _, status = os.waitpid(pid, 0)
        end = time.time()
        with self._lock:
            self._current = None
        exit_code, _ = _target_exit(os.waitstatus_to_exitcode(status))
        record.update(at=round(start - self._origin, 3), exit=exit_code, pid=pid,
                      seconds=round(end - start, 3), output_bytes=output_bytes, _window=(start, end))
        if exit_code != 0:
            self._say(f"EXERCISE FAILED: {record['command']!r} exited {exit_code} "
                      f"({output_bytes} bytes of output); the session goes on")

    def stop(self) -> None:
        """The target ended: kill a running exercise, start no other."""
        self._stop.set()
        with self._lock:
            if self._current is not None:
                try:
                    os.killpg(self._current, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._thread.join(timeout=10)


def process_running(pid: int) -> bool:
    """PID exists and has not exited (a zombie its parent has not reaped yet has)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def exercise_records(records: list[dict], signals: list, not_exercises: set[int]) -> list[dict]:
    """The exercises for the profile, each with the signals it delivered to the target.

    A signal counts as the exercise's when the exercise's shell sent it (`kill` is a
    builtin) or when another process sent it while the exercise ran (`/bin/kill`, a
    client's reload command), unless that sender is in NOT_EXERCISES (the target's own
    processes, capprobe forwarding the operator's signal).
    """
    out = []
    for record in records:
        window = record.get("_window")
        delivered = [] if window is None else [
            {"signal": s.signal, "pid": s.pid} for s in signals
            if s.sender == record["pid"] or (window[0] <= s.ts <= window[1] + 0.5
                                             and s.sender is not None and s.sender not in not_exercises)]
        out.append({**{k: v for k, v in record.items() if not k.startswith("_")},
                    **({"signals_to_target": delivered} if window is not None else {})})
    return out


def _start_launcher(exe: str, opts: RunOptions, spec: dict | None, env: dict[str, str],
                    cwd: str) -> tuple[subprocess.Popen, int]:
    """Fork the launcher and wait until it has taken the service's identity: (process, gate fd)."""
    ready_r, ready_w = os.pipe()
    gate_r, gate_w = os.pipe()
    argv = [sys.executable, "-m", "capprobe.tracing.launcher", "--ready", str(ready_w), "--gate", str(gate_r),
            json.dumps({**(spec or {}), "env": env}), "--", exe, *opts.command]
    try:
        launcher = subprocess.Popen(argv, cwd=cwd, pass_fds=(ready_w, gate_r))
    except BaseException:
        os.close(gate_w)
        raise
    finally:
        os.close(ready_w)
        os.close(gate_r)
    try:
        readable, _, _ = select.select([ready_r], [], [], LAUNCHER_READY_TIMEOUT)
        answer = os.read(ready_r, 4096) if readable else b""
    finally:
        os.close(ready_r)
    if answer == b"R":
        return launcher, gate_w
    os.close(gate_w)
    if not readable:
        launcher.kill()
    rc = launcher.wait()
    if answer.startswith(b"E"):
        raise SessionError("capprobe: " + answer[1:].decode(errors="replace"), 126)
    raise SessionError(f"capprobe: the launcher ended ({rc}) before starting the target", 126)


@dataclass
class SessionState:
    """One traced session, filled in as its parts start: what its profile is built from."""
    opts: RunOptions
    exe: str
    spec: dict | None
    start_cwd: str
    started: float
    target: _Target
    notes: list[str]
    notify: NotifyListener | None = None
    collector: FactCollector | None = None
    recorder: CapabilityRecorder | None = None
    main_pid: int | None = None  # $MAINPID: the target's own process (the launcher exec'd it)
    exercises: ExerciseRunner | None = None
    spool: dict | None = None  # the trace spool's figures (SpoolStats.as_dict)
    trace_lost: str | None = None  # why part of strace's output never reached capprobe


def run_session(opts: RunOptions, status=lambda msg: None) -> RunResult:
    """Trace OPTS.command to its end and return the profile and the exit code."""
    if not opts.command:
        raise SessionError("capprobe: no command given (usage: capprobe run [OPTIONS] -- CMD [ARGS...])")
    exe = resolve_command(opts.command[0])
    strace = shutil.which("strace")
    if strace is None:
        raise SessionError(strace_missing())
    spec = identity_spec(opts)
    state = SessionState(opts, exe, spec, os.path.abspath(opts.cwd or os.getcwd()), time.time(),
                         _Target(opts.grace), [])
    target = state.target
    forwarder = tracer = launcher = fast = None
    trace_r = gate_w = -1
    gate_opened = False

    def forward(signum: int, from_terminal: bool) -> None:
        if target.ended_by is None and signum != signal.SIGHUP:  # a SIGHUP asks for a reload, not a stop
            target.ended_by = signal.Signals(signum).name
        if signum == signal.SIGINT and from_terminal:
            return  # Ctrl-C reached the target directly; a second SIGINT could abort its cleanup
        target.signal(signum)

    try:
        # First, before any thread exists: every later thread inherits the blocked mask.
        forwarder = SignalForwarder(forward)
        target.cgroup = TargetCgroup.create(state.notes)
        # Like systemd, offer a notification socket: a daemon that speaks sd_notify
        # shows it only when NOTIFY_SOCKET is set (it decides Type=notify).
        state.notify = NotifyListener(target.cgroup.is_member if target.cgroup is not None else lambda pid: True,
                                      forward_to=opts.notify_forward)
        state.collector = FactCollector(os.fsencode(state.notify.address),
                                        attached=True)
        if opts.fast:  # compiling the kernel program takes seconds: it starts now, beside the start-up
            fast = FastMode.start(target.cgroup, state.collector, state.notify, opts.settle, status, state.notes)
        env = service_environment(spec, state.notify.address, opts.env)
        launcher, gate_w = _start_launcher(exe, opts, spec, env, state.start_cwd)
        state.main_pid = launcher.pid
        if target.cgroup is not None:
            target.cgroup.add(launcher.pid)
            target.cgroup.watch()
        target.started(launcher.pid)
        state.recorder = CapabilityRecorder.start(opts.cap_probe, launcher.pid, state.collector, state.notes)
        try:
            trace_r, trace_w = open_trace_spool()
        except SpoolError as e:
            raise SessionError(str(e), 1) from None
        try:
            tracer = attach(strace, launcher.pid, trace_w, detachable=fast is not None)
        finally:
            os.close(trace_w)
        state.recorder.exclude_pid(tracer.pid)  # strace's own /proc reads of the target are not the target's
        try:
            wait_attached(launcher.pid, tracer)
        except AttachError as e:
            raise SessionError(f"capprobe: {e}", 1) from None
        if fast is not None:
            fast.before_start()  # --settle 0: the kernel program must be attached before the target starts
        os.write(gate_w, b"G")  # the target starts now, traced from its execve on
        os.close(gate_w)
        gate_w = -1
        gate_opened = True
        if opts.on_started is not None:
            opts.on_started(launcher.pid)
        if opts.duration is not None:
            target.later(opts.duration, target.end_duration)
        if opts.exercises:
            # not launcher.poll(): it answers "running" while the main thread holds the wait lock
            state.exercises = ExerciseRunner(opts.exercises, opts.exercise_delay, launcher.pid,
                                             lambda: launcher.returncode is None and process_running(launcher.pid),
                                             status, state.started)
        stream_fd, trace_r = trace_r, -1  # follow_trace closes it
        checkpoint = opts.checkpoint
        live = StatusLine(lambda: session_progress(state.collector, state.recorder), opts.live_status)

        def tick() -> None:
            live.tick()
            if checkpoint is not None:
                checkpoint.tick(state)
            if fast is not None:
                fast.tick(tracer)  # may detach strace: the service has settled
        with live:  # strace's lines, then (fast mode, once strace detached) the kernel's alone
            strace_decoder = StraceDecoder(state.collector, os.fsencode(state.start_cwd))
            state.spool = follow_trace(stream_fd, tracer, strace_decoder, state.recorder, tick)
            tracer.wait()
            state.trace_lost = tracer.lost_output()
            if fast is not None:
                fast.follow(lambda: launcher.poll() is None, state.recorder.drain, tick, strace_decoder.cwds())
        rc = launcher.wait()
    finally:
        for t in target.timers:
            t.cancel()
        if state.exercises is not None:
            state.exercises.stop()
        if forwarder is not None:
            forwarder.close()
        for fd in (trace_r, gate_w):
            if fd >= 0:
                os.close(fd)  # a launcher still at the gate sees EOF and exits without exec
        if tracer is not None and tracer.poll() is None:
            tracer.kill()
            tracer.wait()
        if fast is not None:
            fast.finish()  # bpftrace ends here, whatever happened
        if state.recorder is not None:
            state.recorder.stop()
        if state.notify is not None:
            state.notify.close()
        if launcher is not None and not gate_opened:
            launcher.wait()  # it saw the closed gate and exits without starting the target
        never_traced = untraced_members(target.cgroup, state.collector)
        if target.cgroup is not None:
            target.cgroup.remove()
    profile = session_profile(state, time.time(), rc, never_traced)
    if fast is not None:
        fast.annotate(profile)
    return RunResult(profile, _target_exit(rc)[0], state.notes)


def follow_trace(trace_r: int, tracer: subprocess.Popen, decoder: StraceDecoder, recorder: CapabilityRecorder,
                 tick=None) -> dict:
    """Fold strace's lines from the spool TRACE_R (closed here) into the facts until TRACER has
    exited (once every traced process is gone, or it detached) and every line is read; TICK is
    called between batches and while waiting. Returns the spool's figures."""
    follower = SpoolFollower(trace_r, tracer.pid)
    feed_line, drain = decoder.feed_line, recorder.drain
    try:
        for batch in follower.batches():
            for lines, line in enumerate(batch, 1):
                feed_line(line)
                if not lines & 0x1F:
                    drain()  # often: a check must meet its syscall within the per-pid window
            drain()
            if tick is not None:
                tick()
    finally:
        follower.close()
    return follower.stats.as_dict()


def session_profile(state: SessionState, ended: float, rc: int | None, never_traced: list[int]) -> dict:
    """The profile of a `run` session from its state, once the target has ended with RC (None: it
    still runs, a checkpoint)."""
    opts, collector, notify = state.opts, state.collector, state.notify
    exit_code, exit_signal = _target_exit(rc) if rc is not None else (None, None)
    incomplete = [state.trace_lost] if state.trace_lost else []
    if never_traced:
        incomplete.append(f"{len(never_traced)} process(es) of the target were never traced (started with "
                          "CLONE_UNTRACED, or lost by the tracer): their syscalls and files are missing")
    run = {
        # stored like paths: exact bytes, "b64:" when an argument is not UTF-8
        "command": [encode_path(os.fsencode(arg)) for arg in opts.command],
        "executable": encode_path(os.fsencode(state.exe)),
        "cwd": state.start_cwd,
        "user": _user_label(state.spec),
        "caps_at_start": _caps_label(state.spec),
        # --env values as given, encoded like paths ("b64:" when not UTF-8)
        "environment": {name: encode_path(os.fsencode(value)) for name, value in opts.env.items()},
        "started": round(state.started, 6),
        "ended": round(ended, 6),
        "duration": round(ended - state.started, 3),
        "exit_status": exit_code,
        "exit_signal": exit_signal,
        "ended_by": state.target.ended_by or ("exit" if rc is not None else "still running"),
        "requested_duration": opts.duration,  # None: the target was to run until it exits
        "tracer": {"backend": "strace", "flags": STRACE_FLAGS, **({"spool": state.spool} if state.spool else {})},
        # capprobe's stand-in for /run/systemd/notify: not a place the service shares
        "notify_socket": notify.address,
        "notifications": notify.received,
        "main_pid": state.main_pid,
        # reload/log-reopen signals (SIGHUP, SIGUSR1, SIGUSR2) the target's processes received
        "signals_received": signals_received(collector, state.started),
        "exercises": exercise_records(state.exercises.records if state.exercises else [],
                                      collector.signals_received, collector.traced_pids() | {os.getpid()}),
        "capprobe": __version__,
    }
    if notify.dropped or notify.rejected:
        run["notifications_not_recorded"] = {"past_limit": notify.dropped,
                                             "from_outside_the_target": notify.rejected}
    return profile_from_facts(run, collector, state.recorder, incomplete, state.notes)


def signals_received(collector: FactCollector, started: float) -> list[dict]:
    """run.signals_received: the reload/log-reopen signals the target's processes received."""
    return [{"pid": s.pid, "signal": s.signal, "from_pid": s.sender, "at": round(s.ts - started, 3)}
            for s in collector.signals_received]


def profile_from_facts(run: dict, collector: FactCollector, recorder: CapabilityRecorder,
                       incomplete: list[str], notes: list[str]) -> dict:
    """The profile around RUN (how the target was watched): the collector's facts, the executables
    and file modes as they are now, the capabilities (this stops the kernel probe), completeness.
    Lines for the operator go to NOTES."""
    profile = {"schema": SCHEMA, "host": host_stamp(), "run": run, **collector.sections()}
    profile["executables"] = describe_executables(profile["processes"])
    notes += privileged_exec_notes(profile["executables"])
    record_file_modes(profile)
    profile["capabilities"] = recorder.section(profile)
    incomplete = [*incomplete, *recorder.incomplete_reasons()]
    profile["complete"] = not incomplete
    profile["incomplete"] = incomplete
    return profile


def untraced_members(cgroup: TargetCgroup | None, collector: FactCollector | None) -> list[int]:
    """Pids that were in the target's cgroup but never in strace's stream."""
    if cgroup is None or collector is None:
        return []
    cgroup.poll()
    return sorted(pid for pid in cgroup.seen if not collector.is_reported(pid))


def privileged_exec_notes(executables: list[dict]) -> list[str]:
    """One line per setuid/setgid/file-capability program the target ran.

    strace is root, so the kernel lets a traced exec keep such privilege (ptracer_capable);
    what the program did with it is in the profile as the service's own need.
    """
    notes = []
    for ex in executables:
        kinds = [kind for kind, flag in (("setuid", ex.get("setuid")), ("setgid", ex.get("setgid")),
                                         ("file capabilities", ex.get("file_caps"))) if flag]
        if kinds:
            notes.append(f"{ex['path']} has {'/'.join(kinds)} (owner uid {ex.get('owner')}): it ran with that "
                         "privilege under capprobe's root tracer; with NoNewPrivileges= it would run without it")
    return notes


def _target_exit(rc: int) -> tuple[int, str | None]:
    """Exit code the shell would see for the target (waitpid's, exact): N, or 128+N for signal N."""
    if rc < 0:
        return 128 - rc, signal.Signals(-rc).name
    return rc, None

def _user_label(spec: dict | None) -> dict:
    if spec is None or spec.get("uid") is None:
        uid = os.geteuid()
        return {"uid": uid, "name": _name(uid), "gid": os.getegid(), "as_invoked": True}
    return {"uid": spec["uid"], "name": _name(spec["uid"]), "gid": spec["gid"],
            "groups": spec["groups"], "as_invoked": False}


def _name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _caps_label(spec: dict | None) -> dict:
    from .capabilities import cap_name
    if spec is None:
        return {"set": "inherited from capprobe (all, if run as root)"}
    if spec["caps"] == "none":
        label = {"set": "none", "bounding": [], "ambient": []}
    else:
        label = {"set": "all", "ambient": "all in the bounding set" if spec.get("uid") is not None else []}
        if spec.get("drop"):
            label["dropped"] = [cap_name(c) for c in spec["drop"]]
    if spec.get("no_new_privileges"):
        label["no_new_privileges"] = True  # an execve gained no privilege (setuid, file capabilities)
    return label
