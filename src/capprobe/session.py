"""Start the target under the tracers, stream their output into facts, stop cleanly.

This is the edge where processes, FIFOs and signals live; everything it reads
goes through pure parsers into the FactCollector.
"""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import grp
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from . import __version__
from .capability_recorder import CapabilityRecorder
from .facts.collector import FactCollector
from .hoststamp import host_stamp
from .profile import SCHEMA

STRACE_FLAGS = ["-f", "-q", "-ttt", "-n", "-yy", "-X", "verbose", "-s", "4096",
                "-e", "signal=none"]
# What systemd gives a service (not the invoking shell's $PATH, which may search /root).
SYSTEMD_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


WORKDIR_PREFIX = "capprobe-run-"


def reclaim_stale_workdirs() -> None:
    """Remove FIFO directories left by sessions that were killed (their pid is gone)."""
    from .tracing.tracefs import _pid_alive
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        if not name.startswith(WORKDIR_PREFIX):
            continue
        owner = name[len(WORKDIR_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not _pid_alive(int(owner)):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


SI_KERNEL = 0x80  # si_code of a signal the kernel sent: Ctrl-C from the terminal


class SignalForwarder:
    """Receives SIGINT/SIGTERM/SIGHUP synchronously in a thread of its own and forwards them.

    The signals are blocked in every thread of capprobe (threads inherit the mask) and
    taken with sigtimedwait(): a Python handler would run only in the main thread, which
    sleeps in read() on the FIFO while a quiet target writes nothing, and the kernel may
    hand a process signal to any thread (measured: SIGTERM lost, 3 runs in 25). The
    launcher unblocks them again before exec'ing strace.
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


@dataclass
class RunResult:
    profile: dict
    exit_code: int
    notes: list[str] = field(default_factory=list)


def resolve_command(argv0: str) -> str:
    """The executable strace will run, or a SessionError (127 missing, 126 not executable)."""
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


def identity_spec(opts: RunOptions) -> dict | None:
    """What the launcher must change before strace runs, or None to start as we are."""
    if opts.user is None and opts.caps == "all" and not opts.drop_caps:
        return None
    from .capabilities import cap_number
    try:
        drop = sorted({cap_number(c) for c in opts.drop_caps})
    except ValueError as e:
        raise SessionError(f"capprobe: {e}") from None
    spec: dict = {"caps": opts.caps, "uid": None, "gid": None, "groups": [], "drop": drop}
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


def _set_pdeathsig() -> None:
    # If capprobe dies, strace dies with it; the kernel then detaches the
    # target, which goes on running instead of staying stopped under ptrace.
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class _Target:
    """Signals for the traced program: forwarded, or sent when --duration ends."""

    def __init__(self, strace: subprocess.Popen | None, collector: FactCollector | None) -> None:
        self.strace = strace
        self.collector = collector
        self.ended_by: str | None = None
        self._pending: list[int] = []  # signals that came before the target existed

    def send_pending(self) -> None:
        pending, self._pending = self._pending, []
        for signum in pending:
            self.signal(signum)

    def root_pid(self) -> int | None:
        if self.collector is not None and self.collector.root_pid is not None:
            return self.collector.root_pid
        try:
            import psutil
            children = psutil.Process(self.strace.pid).children()
            return children[0].pid if children else None
        except Exception:  # noqa: BLE001 - psutil may race with exit; nothing to signal then
            return None

    def signal(self, signum: int) -> None:
        pid = self.root_pid() if self.strace is not None else None
        if pid is None:
            # not started yet (or strace has not forked it): the read loop sends it later
            self._pending.append(signum)
            return
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def kill_all(self) -> None:
        """SIGKILL every traced process still alive (after the grace period)."""
        import psutil
        if self.strace is None:
            return
        try:
            descendants = psutil.Process(self.strace.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        for p in descendants:
            try:
                p.kill()
            except psutil.Error:
                pass


def run_session(opts: RunOptions, status=lambda msg: None) -> RunResult:
    """Trace OPTS.command to its end and return the profile and the exit code."""
    if not opts.command:
        raise SessionError("capprobe: no command given (usage: capprobe run [OPTIONS] -- CMD [ARGS...])")
    exe = resolve_command(opts.command[0])
    strace = shutil.which("strace")
    if strace is None:
        raise SessionError("capprobe: strace is not installed (apt-get install strace)")
    spec = identity_spec(opts)
    notes: list[str] = []
    start_cwd = os.path.abspath(opts.cwd or os.getcwd())

    reclaim_stale_workdirs()
    workdir = tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-")
    notify_sock = recorder = None
    read_fd = fifo_keepalive = -1
    started = time.time()
    forwarder = None
    timers: list[threading.Timer] = []
    collector = None
    # Signals that come before the target exists are held and sent once it does.
    target = _Target(None, None)

    def forward(signum: int, from_terminal: bool) -> None:
        if target.ended_by is None:
            target.ended_by = signal.Signals(signum).name
        if signum == signal.SIGINT and from_terminal:
            return  # Ctrl-C reached the target directly; a second SIGINT could abort its cleanup
        target.signal(signum)

    try:
        # First, before any thread exists: every later thread inherits the blocked mask.
        forwarder = SignalForwarder(forward)
        fifo = os.path.join(workdir, "strace.fifo")
        os.mkfifo(fifo, 0o600)
        # Like systemd, offer a notification socket: a daemon that speaks sd_notify
        # shows it only when NOTIFY_SOCKET is set (it decides Type=notify).
        notify_path = os.path.join(workdir, "notify")
        notify_sock = NotifyListener(notify_path)
        if spec is not None and spec.get("uid") is not None:
            # strace runs as the service user and must open its end of the FIFO.
            for path in (workdir, fifo, notify_path):
                os.chown(path, spec["uid"], spec["gid"])
        collector = FactCollector(os.fsencode(start_cwd), os.fsencode(notify_path))
        target_env = dict(os.environ, NOTIFY_SOCKET=notify_path)
        if spec is not None and spec.get("uid") is not None:
            # As systemd does for User=: the service sees its own user's environment.
            pw = pwd.getpwuid(spec["uid"])
            target_env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name, SHELL=pw.pw_shell,
                              PATH=SYSTEMD_DEFAULT_PATH)
        # Open our end first (non-blocking) so strace's open for writing does not block.
        read_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(read_fd, True)
        # A FIFO reads as EOF while no writer has it open: hold a writer ourselves
        # until strace has opened its end (see _wait_for_writer).
        fifo_keepalive = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)

        # strace finds the command on $PATH itself, so the target's argv[0] stays as typed.
        argv = [strace, *STRACE_FLAGS, "-o", fifo, "--", *opts.command]
        # The launcher takes the service's identity, then waits at a gate until the
        # capability probe is armed on its pid, then becomes strace.
        gate_r, gate_w = os.pipe()
        argv = [sys.executable, "-m", "capprobe.launch", "--gate", str(gate_r),
                json.dumps(spec or {}), "--", *argv]

        target.collector = collector
        try:
            proc = subprocess.Popen(argv, cwd=start_cwd, preexec_fn=_set_pdeathsig,
                                    pass_fds=(gate_r,), env=target_env)
        finally:
            os.close(gate_r)
        target.strace = proc
        try:
            recorder = CapabilityRecorder.start(opts.cap_probe, proc.pid, collector, notes)
        finally:
            os.close(gate_w)  # open the gate: strace and the target start now

        if opts.duration is not None:
            def end_duration():
                target.ended_by = target.ended_by or "duration"
                target.signal(signal.SIGTERM)
                t = threading.Timer(opts.grace, target.kill_all)
                t.daemon = True
                timers.append(t)
                t.start()
            t = threading.Timer(opts.duration, end_duration)
            t.daemon = True
            timers.append(t)
            t.start()

        _wait_for_writer(read_fd, fifo_keepalive, proc)
        fifo_keepalive = -1
        with os.fdopen(read_fd, "rb", buffering=1 << 16) as stream:
            read_fd = -1
            lines = 0
            for raw in stream:
                collector.feed_line(raw.decode("latin-1"))
                lines += 1
                if not lines & 0x1F:
                    recorder.drain()
                    if target._pending:
                        target.send_pending()
        rc = proc.wait()
    finally:
        for t in timers:
            t.cancel()
        if forwarder is not None:
            forwarder.close()
        for fd in (read_fd, fifo_keepalive):
            if fd >= 0:
                os.close(fd)
        if recorder is not None:
            recorder.stop()
        if notify_sock is not None:
            notify_sock.close()
        shutil.rmtree(workdir, ignore_errors=True)
    ended = time.time()

    exit_code, exit_signal = _target_exit(collector, rc)
    profile = {
        "schema": SCHEMA,
        "host": host_stamp(),
        "run": {
            "command": opts.command,
            "executable": exe,
            "cwd": start_cwd,
            "user": _user_label(spec),
            "caps_at_start": _caps_label(spec),
            "started": round(started, 6),
            "ended": round(ended, 6),
            "duration": round(ended - started, 3),
            "exit_status": exit_code,
            "exit_signal": exit_signal,
            "ended_by": target.ended_by or "exit",
            "tracer": {"backend": "strace", "flags": STRACE_FLAGS},
            # capprobe's stand-in for /run/systemd/notify: not a place the service shares
            "notify_socket": notify_path,
            "capprobe": __version__,
        },
        **collector.sections(),
    }
    profile["executables"] = describe_executables(profile["processes"])
    record_file_modes(profile)
    profile["capabilities"] = recorder.section(profile)
    return RunResult(profile, exit_code, notes)


MAX_STAT_PATHS = 20000


def record_file_modes(profile: dict) -> None:
    """Mode and owner of every file and device used, as they are at the end of the run.

    Who may open them decides the identity a unit can use: a 0600 root file or a
    crw------- device cannot be opened by DynamicUser=, whatever the capabilities.
    """
    from .paths import decode_path
    for entry in profile["files"][:MAX_STAT_PATHS] + profile.get("devices", []):
        try:
            st = os.stat(decode_path(entry["path"]))
        except OSError:
            entry["stat"] = {"missing": True}
            continue
        entry["stat"] = {"mode": f"{st.st_mode & 0o7777:04o}", "uid": st.st_uid, "gid": st.st_gid,
                         "type": "dir" if os.path.isdir(decode_path(entry["path"])) else "other"}


def describe_executables(processes: list[dict]) -> list[dict]:
    """Setuid/setgid bits and file capabilities of every executed file (NoNewPrivileges)."""
    from .paths import decode_path
    seen: dict[str, dict] = {}
    for proc in processes:
        for ex in proc["execs"]:
            path = ex["path"]
            if path in seen:
                continue
            raw = decode_path(path)
            entry = {"path": path, "setuid": False, "setgid": False, "file_caps": False, "owner": None}
            try:
                st = os.stat(raw)
                entry.update(setuid=bool(st.st_mode & 0o4000), setgid=bool(st.st_mode & 0o2000),
                             owner=st.st_uid)
                try:
                    entry["file_caps"] = bool(os.getxattr(raw, "security.capability"))
                except OSError:
                    pass
            except OSError:
                entry["missing"] = True
            seen[path] = entry
    return list(seen.values())


class NotifyListener:
    """A datagram socket standing in for systemd's notification socket; drained so senders never block."""

    def __init__(self, path: str) -> None:
        import socket
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.settimeout(0.5)
        self.messages = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="capprobe-notify", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._closed.is_set():
            try:
                if self.sock.recv(4096):
                    self.messages += 1
            except OSError:
                continue

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self.sock.close()


def _wait_for_writer(read_fd: int, keepalive: int, proc: subprocess.Popen) -> None:
    """Drop our own writer once strace writes (so it holds the FIFO) or has exited."""
    import select
    try:
        while proc.poll() is None:
            readable, _, _ = select.select([read_fd], [], [], 0.2)
            if readable:
                break
    finally:
        os.close(keepalive)


def _target_exit(collector: FactCollector, rc: int) -> tuple[int, str | None]:
    """Exit code the shell would see for the target: N, or 128+N for signal N."""
    root = collector.procs.get(collector.root_pid) if collector.root_pid else None
    if root is not None and root.exit_signal:
        num = signal.Signals[root.exit_signal].value if root.exit_signal in signal.Signals.__members__ else 0
        return 128 + num, root.exit_signal
    if root is not None and root.exit_status is not None:
        return root.exit_status, None
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
        return {"set": "none", "bounding": [], "ambient": []}
    label = {"set": "all", "ambient": "all in the bounding set" if spec.get("uid") is not None else []}
    if spec.get("drop"):
        label["dropped"] = [cap_name(c) for c in spec["drop"]]
    return label
