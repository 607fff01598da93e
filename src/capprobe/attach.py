"""`capprobe attach PID`: follow a process tree that is already running, then leave it running.

The same probes as `capprobe run` (strace into a private pipe, the kernel capability probe),
armed on every process and thread of the tree at attach time; new children are followed
(strace -f, the probe's event-fork). Nothing of the target changes: it stays in its own
cgroup, keeps its parent and signals, and when capprobe detaches (--duration, Ctrl-C, a
SIGTERM to capprobe) strace lets go of every task and the target runs on untraced.

What happened before the attach is not in the trace. What /proc shows of it at attach time
(sockets already bound, files already open, capabilities held) is recorded apart, in
run.before_attach, never among the traced facts, and the profile is `complete: false` with
one line per directive family this makes uncertain.
"""

from __future__ import annotations

import os
import resource
import select
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

import psutil

from . import __version__
from .capabilities import cap_name
from .capability_recorder import CapabilityRecorder
from .facts.collector import FactCollector
from .facts.decode import StraceDecoder
from .paths import encode_path
from .session import (
    RunResult,
    SessionError,
    SignalForwarder,
    _name,
    follow_trace,
    process_running,
    profile_from_facts,
    signals_received,
    strace_missing,
)
from .status import StatusLine, session_progress
from .tracing.strace import (
    DETACH_GRACE,
    STRACE_FLAGS,
    AttachError,
    SpoolError,
    attach,
    open_trace_spool,
    tracer_of,
    wait_attached,
)

LISTED = 8  # examples named in each uncertainty line (the whole list is in run.before_attach)
CAP_SETS = ("CapEff", "CapPrm", "CapBnd")


@dataclass(frozen=True)
class AttachOptions:
    pid: int
    duration: float | None = None
    cap_probe: str = "auto"  # "auto" | "tracefs" | "bpftrace" | "off", as for run
    live_status: bool = False  # the status line on stderr (drawn only on a terminal)


@dataclass(frozen=True)
class RunningProcess:
    """One process of the tree as /proc showed it at attach time."""
    pid: int
    ppid: int
    tids: tuple[int, ...]
    exe: bytes | None
    cwd: bytes
    cmdline: tuple[str, ...]
    uids: tuple[int, int, int]  # real, effective, saved
    gids: tuple[int, int, int]
    started: float
    running_for: float  # seconds, on the kernel's boot clock (the wall clock may have been set since)
    caps: dict[str, list[str]]  # CapEff/CapPrm/CapBnd -> capability names


def check_target(pid: int) -> psutil.Process:
    """The process to attach to, or a one-line SessionError."""
    if pid in (os.getpid(), os.getppid()) or pid <= 1:
        raise SessionError(f"capprobe: will not attach to pid {pid} (capprobe itself, its parent, or init)")
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            raise SessionError(f"capprobe: pid {pid} has exited (a zombie)", 1)
        if not _exe(pid) and proc.ppid() == 2:
            raise SessionError(f"capprobe: pid {pid} is a kernel thread", 1)
    except psutil.NoSuchProcess:
        raise SessionError(f"capprobe: no process with pid {pid}", 1) from None
    except psutil.AccessDenied:
        raise SessionError(f"capprobe: pid {pid}: permission denied (attach needs root)", 1) from None
    tgid = _tgid(pid)
    if tgid is not None and tgid != pid:
        raise SessionError(f"capprobe: {pid} is a thread of process {tgid}: attach to {tgid}")
    tracer = tracer_of(pid)
    if tracer:
        raise SessionError(f"capprobe: pid {pid} is already traced by pid {tracer} (a debugger, strace?)", 1)
    return proc


def _tgid(tid: int) -> int | None:
    try:
        with open(f"/proc/{tid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Tgid:"))
    except (OSError, StopIteration, ValueError):
        return None


def _exe(pid: int) -> bytes | None:
    try:
        return os.readlink(os.fsencode(f"/proc/{pid}/exe"))
    except OSError:
        return None


def _running_for(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        start_ticks = int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22, starttime
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def _caps(pid: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in CAP_SETS:
                    mask = int(value, 16)
                    out[name] = [cap_name(n) for n in range(mask.bit_length()) if mask >> n & 1]
    except (OSError, ValueError):
        pass
    return out


def snapshot(root: psutil.Process) -> list[RunningProcess]:
    """ROOT and its descendants as they are now, ROOT first (processes that vanish meanwhile are left out)."""
    out = []
    for p in [root, *root.children(recursive=True)]:
        try:
            with p.oneshot():
                out.append(RunningProcess(
                    pid=p.pid, ppid=p.ppid(), tids=tuple(sorted(t.id for t in p.threads())), exe=_exe(p.pid),
                    cwd=os.fsencode(p.cwd()), cmdline=tuple(p.cmdline()), uids=tuple(p.uids()),
                    gids=tuple(p.gids()), started=p.create_time(), running_for=_running_for(p.pid),
                    caps=_caps(p.pid)))
        except psutil.NoSuchProcess:
            continue
    return out


def pin(tree: list[RunningProcess]) -> dict[int, int]:
    """A pidfd for each process of TREE that is still the one the snapshot saw. While a pidfd's
    process has not exited, its pid is its own: the kernel reuses a pid only once it is gone."""
    pins = {}
    for p in tree:
        try:
            fd = os.pidfd_open(p.pid)
        except ProcessLookupError:
            continue  # exited already
        except OSError as e:  # EMFILE: more processes than the fd limit allows
            for held in pins.values():
                os.close(held)
            raise SessionError(f"capprobe: cannot hold a pidfd for each of the tree's {len(tree)} processes "
                               f"({e.strerror})", 1) from None
        try:
            same = psutil.Process(p.pid).create_time() == p.started
        except psutil.Error:
            same = False
        if same:
            pins[p.pid] = fd
        else:
            os.close(fd)
    return pins


def _exited(pidfd: int) -> bool:
    """Has the pidfd's process (or thread) exited? (poll, not select: a big tree's fds pass 1024)"""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def reused_pid(p: RunningProcess, pins: dict[int, int]) -> bool:
    """Does P's pid belong to another process now (P exited, and a new process got its pid)?"""
    fd = pins.get(p.pid)
    if fd is not None and not _exited(fd):
        return False  # still running: still P
    try:
        now = psutil.Process(p.pid)
        return not (now.status() == psutil.STATUS_ZOMBIE and now.create_time() == p.started)  # P, not reaped yet
    except psutil.Error:
        return False  # nobody has the pid


def _family(family: int) -> str:
    return {2: "AF_INET", 10: "AF_INET6", 1: "AF_UNIX"}.get(int(family), str(family))


def _socket_type(kind: int) -> str:
    return {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 5: "SOCK_SEQPACKET"}.get(int(kind), str(kind))


def bound_sockets(pids: list[int]) -> list[dict]:
    """Sockets of PIDS bound to a local address at attach time (listening, or UDP/unix bound), one row
    per address with the pids holding it (a socket inherited by workers is one row)."""
    rows: dict[tuple, set[int]] = {}
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="all")
        except psutil.Error:
            continue
        for c in conns:
            if not c.laddr or c.raddr or c.status not in (psutil.CONN_LISTEN, psutil.CONN_NONE):
                continue  # an accepted or outgoing connection: not a bind the service made
            address = c.laddr if isinstance(c.laddr, str) else f"{c.laddr.ip}"
            port = None if isinstance(c.laddr, str) else c.laddr.port
            if port == 0:
                continue
            rows.setdefault((_family(c.family), _socket_type(c.type), address, port), set()).add(pid)
    return [{"family": f, "type": t, "address": a, **({"port": p} if p is not None else {}), "pids": sorted(ps)}
            for (f, t, a, p), ps in sorted(rows.items(), key=lambda kv: tuple(map(str, kv[0])))]


def open_files(pids: list[int]) -> list[dict]:
    """Regular files PIDS had open at attach time, one row per path: the modes and the pids."""
    rows: dict[str, dict] = {}
    for pid in pids:
        try:
            files = psutil.Process(pid).open_files()
        except psutil.Error:
            continue
        for f in files:
            row = rows.setdefault(f.path, {"modes": set(), "pids": set()})
            row["modes"].add(f.mode)
            row["pids"].add(pid)
    return [{"path": encode_path(os.fsencode(path)), "modes": sorted(row["modes"]), "pids": sorted(row["pids"]),
             "written": bool(row["modes"] - {"r"})} for path, row in sorted(rows.items())]


def before_attach_facts(tree: list[RunningProcess]) -> dict:
    """What /proc shows of the tree's past at attach time (read, never traced)."""
    pids = [p.pid for p in tree]
    return {
        "processes": [{"pid": p.pid, "ppid": p.ppid, "threads": len(p.tids),
                       "exe": encode_path(p.exe) if p.exe else None,
                       "argv": [encode_path(os.fsencode(a)) for a in p.cmdline],
                       "uids": list(p.uids), "gids": list(p.gids), "started": round(p.started, 3),
                       "running_for": round(p.running_for, 1),
                       "capabilities": p.caps} for p in tree],
        "bound_sockets": bound_sockets(pids),
        "open_files": open_files(pids),
    }


def _some(items: list[str]) -> str:
    return ", ".join(items[:LISTED]) + (f" and {len(items) - LISTED} more" if len(items) > LISTED else "")


def command_of(p: RunningProcess) -> tuple[list[str], str | None]:
    """The command line for the profile, and why ExecStart= is uncertain (None: /proc's looks real).

    A daemon may overwrite its argv with a title ("nginx: master process ..."): then the
    command is the executable alone, and the line says so."""
    argv = list(p.cmdline)
    if argv and p.exe and runs_executable(argv[0], p.cwd, p.exe):
        return argv, None
    exe = os.fsdecode(p.exe) if p.exe else "?"
    shown = " ".join(argv)[:200] or "nothing"
    return [exe], (f"ExecStart=: pid {p.pid} shows a command line that does not start its executable {exe} "
                   f"({shown!r}: a title it wrote itself, or an argv[0] its exec chose); the unit runs {exe} "
                   "without arguments: give the real command line with `capprobe unit --exec`")


def runs_executable(argv0: str, cwd: bytes, exe: bytes) -> bool:
    """Does ARGV0 (as the target's cwd and $PATH find it) name the file the kernel runs, EXE?

    argv[0] is what the exec that started the target chose to put there (`exec -a`), and a
    process may rewrite it: only the executable itself is what the kernel saw."""
    if "/" in argv0:
        found = os.path.join(os.fsdecode(cwd), argv0)
    else:
        found = shutil.which(argv0)
    if found is None or not os.path.exists(found):
        return False
    return os.fsencode(os.path.realpath(found)) == exe.removesuffix(b" (deleted)")


def startup_uncertainty(pid: int, before: dict) -> list[str]:
    """One line per directive family a run that did not see start-up cannot decide for sure."""
    root = before["processes"][0]
    age = root["running_for"]
    sockets = [f"{s['type'].removeprefix('SOCK_').lower()} {s['address']}" + (f":{s['port']}" if "port" in s else "")
               for s in before["bound_sockets"]]
    held = sorted({c for p in before["processes"] for c in p["capabilities"].get("CapEff", [])})
    bounding = root["capabilities"].get("CapBnd", [])
    held_text = (f"every capability of the bounding set ({len(held)})" if held and set(held) >= set(bounding)
                 else _some(held))
    written = [f["path"] for f in before["open_files"] if f["written"]]
    lines = [(f"start-up not seen: capprobe attached to pid {pid}, running for {age:.0f} s; what the tree did "
              "before (its binds, capability checks, files opened, readiness notification) is not in the trace")]
    lines.append("SocketBindAllow=, RestrictAddressFamilies=, PrivateNetwork=: binds made before the attach are "
                 "not seen; " + (f"already bound at attach (run.before_attach.bound_sockets): {_some(sockets)}"
                                 if sockets else "nothing was bound at attach"))
    lines.append("CapabilityBoundingSet=, AmbientCapabilities=, User=: capability checks at start (a bind "
                 "below 1024, a chown, a switch of user) are not seen; "
                 + (f"held at attach (effective): {held_text}" if held else "no capability was held at attach"))
    lines.append(f"ReadWritePaths=, ProtectSystem=, ProtectHome=, PrivateTmp=: {len(before['open_files'])} "
                 "file(s) opened before the attach are not in the trace (run.before_attach.open_files)"
                 + (f"; open for writing: {_some(written)}" if written else ""))
    lines.append("Type=: a readiness notification at start is not seen (Type=notify cannot be decided)")
    return lines


def _task_alive(tid: int, p: RunningProcess, pins: dict[int, int]) -> bool:
    """Is TID a live task of process P, P still the process the snapshot saw (its pin)?"""
    fd = pins.get(p.pid)
    if fd is None or _exited(fd):
        return False  # P exited: its pid may be another process's by now
    try:
        with open(f"/proc/{p.pid}/task/{tid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")  # a traced thread that exited stays a zombie until strace waits


def _arm_task(recorder: CapabilityRecorder, tid: int, p: RunningProcess, pins: dict[int, int]) -> None:
    """Add task TID of P to the probe's pid filter, never leaving a dead task's pid in it.

    The kernel takes a pid out of the filter when its task exits; a pid added after its task
    had exited stays, and the next process to get it, anywhere on the host, would have its
    capability checks (and its children's) recorded as the target's. A task alive after the
    add was alive during it (a pid is not reused while its task lives)."""
    if not _task_alive(tid, p, pins):
        return  # gone: nothing to follow
    recorder.probe.add_pid(tid)
    if not _task_alive(tid, p, pins):  # it exited meanwhile, maybe before it was added
        recorder.exclude_pid(tid)


def arm_probe(recorder: CapabilityRecorder, tree: list[RunningProcess], pins: dict[int, int]) -> list[str]:
    """Add every task of the tree to the capability probe (it starts with the root's main thread);
    the reasons it cannot, if any."""
    probe = recorder.probe
    tasks = [(t, p) for p in tree for t in p.tids if t != tree[0].pid]
    if probe is None or not tasks:
        return []
    if not hasattr(probe, "add_pid"):
        return [(f"the {recorder.method} capability probe follows only pid {tree[0].pid}'s main thread and its "
                 f"new children: the checks of the {len(tasks)} other task(s) already running are not recorded")]
    for tid, p in tasks:
        _arm_task(recorder, tid, p, pins)
    return []


ARM_ROUNDS = 3


def arm_late_tasks(recorder: CapabilityRecorder, root: psutil.Process, armed: set[int],
                   pins: dict[int, int]) -> list[RunningProcess]:
    """Add to the capability probe the tasks born between the snapshot and the probe's arming
    (their creators were not followed yet, so event-fork did not add them; such a thread would
    check capabilities unrecorded for as long as it lives), until a fresh look finds none (at most
    ARM_ROUNDS looks: a tree that forks all the time always shows new tasks, most of them already
    followed through their armed parents). PINS gains the new processes' pidfds. Returns the
    tree as the first fresh look saw it."""
    probe = recorder.probe
    current = snapshot(root) if root.is_running() else []
    tree = current
    for _ in range(ARM_ROUNDS if probe is not None and hasattr(probe, "add_pid") else 0):
        fresh = [(t, p) for p in tree for t in p.tids if t not in armed]
        if not fresh:
            break
        pins.update(pin([p for p in tree if p.pid not in pins]))
        for tid, p in fresh:
            _arm_task(recorder, tid, p, pins)
        armed |= {t for t, _ in fresh}
        tree = snapshot(root) if root.is_running() else []
    return current


UNTRACED_EVERY = 0.1  # seconds between two looks at the tree for tasks strace does not follow


class UntracedWatch:
    """Looks at the tree, while strace follows it, for tasks strace does not: a process or thread
    started with CLONE_UNTRACED does what it likes in no trace. (`run` has the target's cgroup for
    this; an attached tree keeps its own.) A task that lives less than UNTRACED_EVERY may be missed."""

    def __init__(self, root: psutil.Process, tracer_pid: int, detaching) -> None:
        self._root, self._tracer, self._detaching = root, tracer_pid, detaching
        self._next = 0.0
        self.untraced: set[int] = set()

    def tick(self) -> None:
        now = time.monotonic()
        if now < self._next or self._detaching():
            return
        self._next = now + UNTRACED_EVERY
        if not self._root.is_running():
            return  # its pid may be another process's now
        found = {tid for tid in _tree_tasks(self._root.pid) if _untraced(tid, self._tracer)}
        if found and not self._detaching():  # strace lets go of every task once asked to detach
            self.untraced |= found

    def reason(self) -> list[str]:
        if not self.untraced:
            return []
        return [f"{len(self.untraced)} task(s) of the tree were not traced (started with CLONE_UNTRACED, or "
                f"lost by the tracer; tids {_some([str(t) for t in sorted(self.untraced)])}): their syscalls "
                "and files are missing"]


def _tree_tasks(pid: int) -> set[int]:
    """Every thread of PID and its descendants, from the kernel's own lists (/proc/P/task/T/children):
    a look costs what the tree holds, not a pass over every process of the host."""
    tasks, todo = set(), [pid]
    while todo:
        process = todo.pop()
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{process}/task")]
        except OSError:
            continue
        for tid in tids:
            tasks.add(tid)
            try:
                with open(f"/proc/{process}/task/{tid}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
            except OSError:
                pass
    return tasks


def _untraced(tid: int, tracer_pid: int) -> bool:
    """Is TID alive and traced by nobody (or by another tracer than strace)?"""
    try:
        with open(f"/proc/{tid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("State:", "TracerPid:")))
    except (OSError, ValueError):
        return False
    if fields.get("State", " Z").split()[0] in ("Z", "X"):
        return False  # an exited task: strace let go of it
    return int(fields.get("TracerPid", tracer_pid)) != tracer_pid


def attach_session(opts: AttachOptions, status=lambda msg: None) -> RunResult:
    """Follow OPTS.pid's running tree until --duration, a signal to capprobe, or the tree's end; detach."""
    strace = shutil.which("strace")
    if strace is None:
        raise SessionError(strace_missing())
    root = check_target(opts.pid)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a pidfd per process of a big tree
    notes: list[str] = []
    started = time.time()
    tree = snapshot(root)
    if not tree:
        raise SessionError(f"capprobe: pid {opts.pid} exited", 1)
    before = before_attach_facts(tree)
    main = tree[0]
    root_euid = main.uids[1]
    notify_socket = _notify_socket(main.pid)
    pins = pin(tree)
    ended_by: list[str] = []
    forwarder = recorder = tracer = None
    trace_r = -1
    timers: list[threading.Timer] = []

    def detach(reason: str) -> None:
        if not ended_by:
            ended_by.append(reason)
        if tracer is not None:
            tracer.detach()  # strace lets go of every task and exits (killed if it gets stuck)

    try:
        forwarder = SignalForwarder(lambda signum, _: detach(signal.Signals(signum).name))
        collector = FactCollector(notify_socket)
        decoder = StraceDecoder(collector, main.cwd)
        for p in tree:
            cwd = [p.cwd]  # one cell per process, shared by its threads
            euid = None if p.uids[1] == root_euid else p.uids[1]
            for tid in (p.pid, *(t for t in p.tids if t != p.pid)):
                decoder.adopt_running(tid, p.pid, p.ppid if tid == p.pid else p.pid, p.exe, cwd, euid, started)
        recorder = CapabilityRecorder.start(opts.cap_probe, main.pid, collector, notes)
        incomplete = arm_probe(recorder, tree, pins)
        try:
            trace_r, trace_w = open_trace_spool()
        except SpoolError as e:
            raise SessionError(str(e), 1) from None
        try:
            tracer = attach(strace, [p.pid for p in tree], trace_w, detachable=True)
        finally:
            os.close(trace_w)
        recorder.exclude_pid(tracer.pid)
        try:
            for p in tree:
                if p is main or tracer_of(p.pid) is not None:  # a child that exited meanwhile is no failure
                    wait_attached(p.pid, tracer)
        except AttachError as e:
            raise SessionError(f"capprobe: attaching to pid {opts.pid}: {e}", 1) from None
        reused = [str(p.pid) for p in tree if tracer_of(p.pid) == tracer.pid and reused_pid(p, pins)]
        if reused:  # strace followed a process outside the tree: its facts would be the target's
            raise SessionError(f"capprobe: pid(s) {_some(reused)} of pid {opts.pid}'s tree exited while capprobe "
                               "attached, and another process reused the pid: nothing recorded; attach again", 1)
        if ended_by:
            detach(ended_by[0])  # a signal came while strace was attaching
        current = arm_late_tasks(recorder, root, {t for p in tree for t in p.tids}, pins)
        for fd in pins.values():  # what they pinned is checked and armed: the fds go back now
            os.close(fd)
        pins.clear()
        missed = [p.pid for p in current if tracer_of(p.pid) != tracer.pid]
        if missed:
            incomplete.append(f"{len(missed)} process(es) started while capprobe attached were not traced "
                              f"(pids {_some([str(p) for p in missed])})")
        status(f"attached to pid {opts.pid} ({len(tree)} process(es), "
               f"{sum(len(p.tids) for p in tree)} task(s)); Ctrl-C detaches")
        if opts.duration is not None:
            timer = threading.Timer(opts.duration, detach, ("duration",))
            timer.daemon = True
            timers.append(timer)
            timer.start()
        stream_fd, trace_r = trace_r, -1
        live = StatusLine(lambda: session_progress(collector, recorder), opts.live_status)
        watch = UntracedWatch(root, tracer.pid, lambda: bool(ended_by) or tracer.poll() is not None)

        def tick() -> None:
            live.tick()
            watch.tick()
        with live:
            spool = follow_trace(stream_fd, tracer, decoder, recorder, tick)
        tracer.wait()
        incomplete += watch.reason()
        if stuck := tracer.stuck_detaching():
            incomplete.append(stuck)
        if lost := tracer.lost_output():
            incomplete.append(lost)
    finally:
        for fd in pins.values():
            os.close(fd)
        for t in timers:
            t.cancel()
        if forwarder is not None:
            forwarder.close()
        if trace_r >= 0:
            os.close(trace_r)
        if tracer is not None and tracer.poll() is None:
            tracer.send_signal(signal.SIGINT)
            try:
                tracer.wait(timeout=DETACH_GRACE)
            except subprocess.TimeoutExpired:  # never leave strace holding the target
                tracer.kill()  # the kernel detaches the tasks of a tracer that dies
                tracer.wait()
        if recorder is not None:
            recorder.stop()
    ended = time.time()
    still_running = root.is_running() and process_running(main.pid)  # is_running: not a reused pid
    command, rewritten = command_of(main)
    main_proc = collector.procs.get(main.pid)
    run = {
        "mode": "attach",
        "startup_seen": False,
        "command": [encode_path(os.fsencode(a)) for a in command],
        "executable": encode_path(main.exe) if main.exe else None,
        "cwd": os.fsdecode(main.cwd),
        "user": {"uid": main.uids[0], "name": _name(main.uids[0]), "gid": main.gids[0], "as_invoked": False},
        "caps_at_start": {"set": "not seen: attached to a running process",
                          "effective_at_attach": main.caps.get("CapEff", [])},
        "environment": {},
        "target_started": round(main.started, 3),
        "started": round(started, 6),
        "ended": round(ended, 6),
        "duration": round(ended - started, 3),
        "exit_status": None if still_running or main_proc is None else main_proc.exit_status,
        "exit_signal": None if still_running or main_proc is None else main_proc.exit_signal,
        "ended_by": "exit" if not still_running else (ended_by[0] if ended_by else "exit"),
        "still_running": still_running,  # capprobe detached; the target went on
        "requested_duration": opts.duration,
        "tracer": {"backend": "strace", "flags": STRACE_FLAGS, "attached_to": [p.pid for p in tree],
                   "spool": spool},
        "notify_socket": encode_path(notify_socket) if notify_socket else None,  # systemd's, if it has one
        "notifications": [],
        "main_pid": main.pid,
        "signals_received": signals_received(collector, started),
        "exercises": [],
        "before_attach": before,
        "capprobe": __version__,
    }
    incomplete = startup_uncertainty(main.pid, before) + ([rewritten] if rewritten else []) + incomplete
    profile = profile_from_facts(run, collector, recorder, incomplete, notes)
    return RunResult(profile, 0, notes)


def _notify_socket(pid: int) -> bytes | None:
    """The target's $NOTIFY_SOCKET (systemd's), so its sd_notify messages are recognised as such."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"NOTIFY_SOCKET="):
                    return item.split(b"=", 1)[1]
    except OSError:
        pass
    return None
