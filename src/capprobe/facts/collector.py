"""Events -> facts: aggregate a syscall stream into the profile's sections.

Memory grows with the number of distinct facts (paths, sockets, syscall names,
processes), never with the number of syscalls: every handler folds its event
into a counter keyed by the fact.

Handlers are a table from syscall name to a small method; a syscall with no
handler is only counted.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

from ..events.strace_line import (
    ProcessExit, SignalDelivery, StraceLineParser, Syscall, Unparsed, annotated_device, annotated_path, annotation,
    first_symbol, int_arg, split_args, string_arg, symbols, unescape,
)
from ..paths import encode_path, resolve

MAX_UNPARSED_EXAMPLES = 20
MAX_SIGNALS_KEPT = 64  # reload/reopen signals delivered to the target, in order (run.signals_received)
# A daemon that forks per request would otherwise grow the process table without
# bound; past this many pids, new processes are only counted by executable.
MAX_PROCESSES = 5000
RECENT_SYSCALLS = 64
RECENT_PER_NAME = 4
# An exited process's recent syscalls (~20 KB) are dropped, and past that cap the process
# itself; the last few exited are kept whole so a capability check the kernel probe
# delivers late still finds its executable and file.
MAX_EXITED_KEPT = 1024

O_ACCMODE, O_WRONLY, O_RDWR = 0o3, 0o1, 0o2
O_CREAT, O_TRUNC, O_PATH = 0o100, 0o1000, 0o10000000
AT_REMOVEDIR = 0x200
PROT_WRITE, PROT_EXEC = 0x2, 0x4
CLONE_FS, CLONE_THREAD = 0x200, 0x10000
NAMESPACE_FLAGS = {
    0x00020000: "mnt", 0x02000000: "cgroup", 0x04000000: "uts", 0x08000000: "ipc",
    0x10000000: "user", 0x20000000: "pid", 0x40000000: "net", 0x00000080: "time",
}
# errnos that mark a missing privilege; ENOENT only counts for writes (reads of
# missing files are how libraries probe, and would drown everything).
PRIVILEGE_ERRNOS = {"EACCES", "EPERM", "EROFS"}
WRITE_OPS = frozenset({
    "write", "create", "truncate", "delete", "rmdir", "rename_from", "rename_to",
    "link", "symlink", "chmod", "chown", "mkdir", "mknod", "utime", "xattr",
})
# A passed writability test (access(W_OK) and kin): nothing changed, so not in WRITE_OPS, yet
# the daemon refuses to start when the test fails, so the read-write plan needs it writable.
WRITE_TEST = "write_test"
WRITE_NEED_OPS = WRITE_OPS | {WRITE_TEST}
W_OK = 0x2
SD_NOTIFY_WORDS = (b"READY=1", b"STATUS=", b"WATCHDOG=", b"STOPPING=1", b"RELOADING=1",
                   b"MAINPID=", b"NOTIFY_ACCESS=", b"FDSTORE=", b"EXTEND_TIMEOUT_USEC=")
ROOT_EQUIVALENT_SOCKETS = {
    "/run/docker.sock", "/var/run/docker.sock", "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock", "/run/podman/podman.sock", "/run/crio/crio.sock",
    "/run/systemd/private",
}
INTERESTING_SOCKOPTS = {
    "IP_TRANSPARENT", "IPV6_TRANSPARENT", "SO_MARK", "SO_BINDTODEVICE", "IP_FREEBIND",
    "IPV6_FREEBIND", "SO_PRIORITY", "SO_RCVBUFFORCE", "SO_SNDBUFFORCE", "IP_RECVORIGDSTADDR",
    "SO_REUSEPORT", "SO_ATTACH_FILTER", "SO_ATTACH_BPF", "PACKET_ADD_MEMBERSHIP",
    "NETLINK_ADD_MEMBERSHIP", "SO_DEBUG", "IP_HDRINCL", "SO_BUSY_POLL",
}


@dataclass
class Proc:
    pid: int
    ppid: int | None
    exe: bytes | None
    cwd: list  # a one-element cell, shared between threads (CLONE_FS)
    first_seen: float
    tgid: int = 0
    execs: list = field(default_factory=list)
    identity: list = field(default_factory=list)
    exit_status: int | None = None
    exit_signal: str | None = None
    last_ts: float = 0.0
    threads: int = 0
    recorded: bool = True
    initial_exe: bytes | None = None  # inherited at fork, before any execve
    euid: int | None = None  # after the process's own setuid calls; None = the uid the run started as
    # (entry time, syscall, operand) of the latest syscalls: lets a kernel capability check
    # find the file, address or option it was about.
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_SYSCALLS))
    # and the last few of each syscall name: a check that reaches capprobe late (the probe's
    # reader polls) still finds its setsockopt after hundreds of other calls (openvpn's second
    # SO_SNDBUFFORCE had left the window and became a required CAP_NET_ADMIN)
    recent_by_name: dict = field(default_factory=dict)

    def remember(self, ts: float, name: str, operand) -> None:
        self.recent.append((ts, name, operand))
        self.recent_by_name.setdefault(name, deque(maxlen=RECENT_PER_NAME)).append((ts, operand))

    def forget_recent(self) -> None:
        self.recent.clear()
        self.recent_by_name.clear()


class FactCollector:
    """Folds parsed strace events into facts. Feed events, then call sections()."""

    def __init__(self, start_cwd: bytes, notify_socket: bytes | None = None,
                 attached: bool = False) -> None:
        self.start_cwd = start_cwd
        self.notify_socket = notify_socket
        # attached: strace attached to capprobe's launcher, which then execs the target;
        # the launcher's last syscalls before that first execve are not the target's.
        self._before_root_exec = attached
        self.root_pid: int | None = None
        self.procs: dict[int, Proc] = {}
        # pids with a line of their own (a clone's return value names a child strace may never see)
        self.reported_pids: set[int] = set()
        self._created = 0  # Procs ever made: the MAX_PROCESSES cap counts these, not the table
        self._exited: deque[int] = deque()
        self.collapsed_processes: dict[str, int] = {}
        self.lines = 0
        self.unparsed = 0
        self.unparsed_examples: list[str] = []
        self.signals_received: list[SignalDelivery] = []
        self.syscalls: dict[str, list] = {}  # name -> [count, {errno: count}]
        self.files: dict[bytes, dict] = {}  # path -> {"ops": {op: [n, first, set(exe)]}, ...}
        self.devices: dict[bytes, dict] = {}
        self.sockets: dict[tuple, list] = {}  # (family, type, proto) -> [n, exes]
        self.socket_inodes: dict[str, tuple] = {}  # "5819" -> (family, type, proto)
        self.socket_failures: dict[tuple, list] = {}
        self.binds: dict[tuple, list] = {}
        self.listens: dict[tuple, list] = {}
        self.connects: dict[tuple, list] = {}
        self.accepts: dict[tuple, list] = {}
        self.sends: dict[tuple, list] = {}
        self.sockopts: dict[tuple, list] = {}
        self.netlink: dict[tuple, list] = {}
        self.netlink_undecoded = 0
        self.special: dict[tuple, list] = {}  # (kind, detail) -> [n, first, exes]
        self.ioctls: dict[tuple, list] = {}
        self.last_ts = 0.0
        self.first_ts: float | None = None
        self._handlers = {name: getattr(self, meth) for name, meth in _HANDLERS.items()}
        self._in_flight_forks: list[int] = []
        # paths tested writable as root or the start uid: access() tests with the real uid, so a
        # daemon tests before it drops privileges what it will write as its own user later
        self._tested_with_start_identity: set[bytes] = set()
        self._current: Syscall | None = None
        self._parser = StraceLineParser()

    # -- entry points ---------------------------------------------------------

    def feed(self, event) -> None:
        self.lines += 1
        if isinstance(event, Syscall):
            self._syscall(event)
        elif isinstance(event, ProcessExit):
            self._process_exit(event)
        elif isinstance(event, SignalDelivery):
            if len(self.signals_received) < MAX_SIGNALS_KEPT:
                self.signals_received.append(event)
        elif isinstance(event, Unparsed):
            self.note_unparsed(event.line)

    def note_unparsed(self, line: str) -> None:
        self.unparsed += 1
        if len(self.unparsed_examples) < MAX_UNPARSED_EXAMPLES:
            self.unparsed_examples.append(line[:1000])

    def traced_pids(self) -> set[int]:
        return set(self.procs) | self.reported_pids  # the table forgets exited unlisted pids

    def is_reported(self, pid: int) -> bool:
        """Did strace itself report PID (a syscall or its exit)?"""
        return pid in self.reported_pids

    def exe_at_time(self, pid: int, ts: float) -> str:
        """The executable PID was running at time TS (by its execve events), encoded."""
        proc = self.procs.get(pid)
        if proc is None:
            return "?"
        if proc.tgid != pid and proc.tgid in self.procs and not proc.execs:
            proc = self.procs[proc.tgid]
        for ex in reversed(proc.execs):
            if ex["time"] <= ts:
                return ex["path"]
        if proc.initial_exe is not None:
            return encode_path(proc.initial_exe)
        return encode_path(proc.exe) if proc.exe and not proc.execs else "?"

    def operand_at(self, pid: int, ts: float, syscall: str | None) -> str | None:
        """Path or address of PID's latest syscall named SYSCALL entered before TS."""
        proc = self.procs.get(pid)
        if proc is None or syscall is None:
            return None
        window = (operand for entry_ts, name, operand in reversed(proc.recent)
                  if entry_ts <= ts and _same_syscall(name, syscall))
        found = self._first_operand(proc, window)
        if found is None:  # gone from the window: the last few calls of that name
            older = sorted(((entry_ts, order, operand) for name, entries in proc.recent_by_name.items()
                            if _same_syscall(name, syscall)
                            for order, (entry_ts, operand) in enumerate(entries) if entry_ts <= ts),
                           key=lambda c: (c[0], c[1]), reverse=True)  # of one call, the explicit operand first
            found = self._first_operand(proc, (operand for _, _, operand in older))
        return found

    def _first_operand(self, proc: Proc, operands) -> str | None:
        for operand in operands:
            if not isinstance(operand, Syscall):
                return operand
            found = self._lazy_operand(proc, operand)
            if found is not None:
                return found  # else an explicit operand of the same call may follow
        return None

    def _lazy_operand(self, proc: Proc, ev: Syscall) -> str | None:
        """The path a syscall was about, from its raw arguments (stat, access, ...)."""
        try:
            args = split_args(ev.args)
            if ev.name == "capset" and len(args) > 1:
                return args[1]  # the new sets decide whether CAP_SETPCAP mattered
            if ev.name in _DIRFD_FIRST and len(args) > 1:
                path = self._path(proc, args[1], args[0])
            else:
                path = next((self._path(proc, a) for a in args if a.startswith('"')), None)
        except (ValueError, IndexError):
            return None
        return encode_path(path) if path else None

    def first_exec_time(self, pid: int) -> float:
        """Entry time of PID's first successful execve (0 when it never exec'd)."""
        proc = self.procs.get(pid)
        return proc.execs[0]["time"] if proc is not None and proc.execs else 0.0

    def last_seen(self, pid: int) -> float:
        """Entry time of the latest syscall of PID that the stream has delivered."""
        proc = self.procs.get(pid)
        return proc.last_ts if proc is not None else 0.0

    # -- process bookkeeping -------------------------------------------------

    def _proc(self, pid: int, ts: float) -> Proc:
        proc = self.procs.get(pid)
        if proc is not None:
            return proc
        if self.root_pid is None:
            self.root_pid = pid
            proc = Proc(pid, None, None, [self.start_cwd], ts, tgid=pid)
        else:
            # strace may print a child's first syscall before the parent's fork
            # returns; the parent is then the one pid with a fork in flight.
            parent = self._forking_parent()
            if parent is not None:
                proc = Proc(pid, parent.pid, parent.exe, [parent.cwd[0]], ts, tgid=pid,
                            initial_exe=parent.exe, euid=parent.euid)
            else:
                proc = Proc(pid, None, None, [self.start_cwd], ts, tgid=pid)
        if self._created >= MAX_PROCESSES:
            proc.recorded = False
        self._created += 1
        self.procs[pid] = proc
        return proc

    def _forking_parent(self) -> Proc | None:
        pending = [p for p in self._in_flight_forks if p in self.procs]
        return self.procs[pending[-1]] if pending else None

    def feed_line(self, line: str) -> None:
        """Parse one strace line and fold it in; a line nothing can read is counted, never raised."""
        try:
            event = self._parser.feed(line)
        except Exception:  # noqa: BLE001 - e.g. a forged 5,000-digit pid: int() refuses it
            self.lines += 1
            self.note_unparsed(line)
            return
        if event is not None:
            self.feed(event)
        elif self._parser.last_unfinished is not None:
            pid, name = self._parser.last_unfinished
            if name in ("clone", "clone3", "fork", "vfork"):
                self._in_flight_forks.append(pid)

    def _process_exit(self, ev: ProcessExit) -> None:
        self.reported_pids.add(ev.pid)
        proc = self._proc(ev.pid, ev.ts)
        proc.exit_status, proc.exit_signal = ev.status, ev.signal
        self.last_ts = max(self.last_ts, ev.ts)
        self._retire(ev.pid)

    def _retire(self, pid: int) -> None:
        """Past the MAX_EXITED_KEPT latest exits, forget what an exited process needs no more:
        its recent syscalls, and the whole process when it is not listed (a thread, a pid past
        MAX_PROCESSES). Memory then stays bounded however many processes a daemon forks."""
        self._exited.append(pid)
        while len(self._exited) > MAX_EXITED_KEPT:
            old = self._exited.popleft()
            proc = self.procs.get(old)
            if proc is None:
                continue
            if proc.recorded or old == self.root_pid:
                proc.forget_recent()
            else:  # a pid reused since is made anew on its next line
                del self.procs[old]

    # -- syscall dispatch ----------------------------------------------------

    def _syscall(self, ev: Syscall) -> None:
        pid = ev.pid
        if self.first_ts is None:
            self.first_ts = ev.ts
        self.last_ts = ev.ts
        self.reported_pids.add(pid)
        proc = self._proc(pid, ev.ts)
        proc.last_ts = ev.ts
        self._current = ev
        # every syscall, operand worked out only if a capability check asks (cheap here)
        proc.remember(ev.ts, ev.name, ev)
        if self._before_root_exec and pid == self.root_pid:
            if ev.name not in ("execve", "execveat") or ev.ret != 0:
                return
            self._before_root_exec = False
        entry = self.syscalls.get(ev.name)
        if entry is None:
            entry = self.syscalls[ev.name] = [0, {}]
        entry[0] += 1
        if ev.errno:
            errs = entry[1]
            errs[ev.errno] = errs.get(ev.errno, 0) + 1
        handler = self._handlers.get(ev.name)
        if handler is not None:
            try:
                handler(ev, proc)
            except Exception:  # noqa: BLE001 - the trace is untrusted input (a target can forge lines)
                # An argument shape this handler did not expect: keep the line, never stop the session.
                self.note_unparsed(f"[{ev.name} arguments not understood] {ev.pid} {ev.name}({ev.args[:800]})")

    # -- helpers -------------------------------------------------------------

    def _exe_label(self, proc: Proc) -> str:
        return encode_path(proc.exe) if proc.exe else "?"

    def _bump(self, table: dict, key, proc: Proc, ts: float) -> list:
        entry = table.get(key)
        if entry is None:
            entry = table[key] = [0, ts, set()]
        entry[0] += 1
        entry[2].add(self._exe_label(proc))
        return entry

    def _file_op(self, path: bytes, op: str, proc: Proc, ts: float, errno: str | None = None) -> None:
        if errno is not None:
            if errno not in PRIVILEGE_ERRNOS and not (errno == "ENOENT" and op in WRITE_OPS):
                return
        cur = self._current
        if cur is not None and cur.pid == proc.pid:
            proc.remember(cur.ts, cur.name, encode_path(path))
        rec = self.files.get(path)
        if rec is None:
            rec = self.files[path] = {"ops": {}, "failed": {}}
        if errno is None:
            self._bump(rec["ops"], op, proc, ts)
            if op in WRITE_NEED_OPS:  # who owns what it wrote: the daemon may have dropped to its user
                rec.setdefault("write_uids", set()).add(proc.euid)
            if op == WRITE_TEST and not proc.euid:
                self._tested_with_start_identity.add(path)
        else:
            self._bump(rec["failed"], (op, errno), proc, ts)

    def _dir_of(self, proc: Proc, dirfd_arg: str | None) -> bytes:
        """The directory a relative path is resolved against (dirfd or cwd)."""
        if dirfd_arg is not None:
            annot = annotation(dirfd_arg)
            base = annotated_path(annot)
            if base is not None:
                if "AT_FDCWD" in dirfd_arg:
                    proc.cwd[0] = base  # strace just told us the cwd; stay in sync
                return base
        return proc.cwd[0]

    def _path(self, proc: Proc, path_arg: str, dirfd_arg: str | None = None) -> bytes | None:
        raw = string_arg(path_arg)
        if raw is None:
            return None
        if raw.startswith(b"/"):
            return resolve(b"/", raw)
        return resolve(self._dir_of(proc, dirfd_arg), raw)

    def _result_path(self, ev: Syscall, fallback: bytes | None) -> bytes | None:
        """Prefer the kernel's resolved path (-yy on the returned fd) over the request."""
        resolved = annotated_path(ev.annot) if ev.ret is not None and ev.ret >= 0 else None
        return resolved or fallback

    def _special(self, kind: str, detail: str, proc: Proc, ts: float) -> None:
        self._bump(self.special, (kind, detail), proc, ts)

    # -- processes -------------------------------------------------------------

    def h_fork(self, ev: Syscall, proc: Proc) -> None:
        if proc.pid in self._in_flight_forks:
            self._in_flight_forks.remove(proc.pid)
        if ev.ret is None or ev.ret <= 0:
            return
        flags = 0
        if ev.name == "clone":
            m = re.search(r"flags=(0x[0-9a-f]+|\d+)", ev.args)
            flags = int(m.group(1), 0) if m else 0
        elif ev.name == "clone3":
            m = re.search(r"flags=(0x[0-9a-f]+|\d+)", ev.args)
            flags = int(m.group(1), 0) if m else 0
        for bit, ns in NAMESPACE_FLAGS.items():
            if flags & bit and not (bit == 0x80 and ev.name == "clone"):  # 0x80 is CSIGNAL there
                self._special("namespace", f"{ev.name}:{ns}", proc, ev.ts)
        child = self.procs.get(ev.ret)
        if child is None:
            child = self._proc(ev.ret, ev.ts)
        child.ppid = proc.pid
        if not child.identity:
            child.euid = proc.euid
        if child.exe is None:
            child.exe = child.initial_exe = proc.exe
        if flags & CLONE_THREAD:
            child.tgid = proc.tgid
            child.recorded = False
            self.procs[proc.tgid].threads += 1 if proc.tgid in self.procs else 0
        if flags & (CLONE_FS | CLONE_THREAD):
            child.cwd = proc.cwd
        elif child.cwd is not proc.cwd and not child.execs:
            child.cwd = [proc.cwd[0]]

    def h_execve(self, ev: Syscall, proc: Proc) -> None:
        args = split_args(ev.args)
        if ev.name == "execveat":
            path = self._path(proc, args[1], args[0])
            argv_arg = args[2]
        else:
            path = self._path(proc, args[0])
            argv_arg = args[1]
        if path is None:
            return
        if ev.ret != 0:
            # Searching $PATH produces ENOENT for every directory tried: not a fact.
            if ev.errno in PRIVILEGE_ERRNOS:
                self._file_op(path, "exec", proc, ev.ts, ev.errno)
            return
        argv = [encode_path(unescape(a[1:a.rfind('"')])) for a in split_args(argv_arg.strip()[1:-1])
                if a.startswith('"')] if argv_arg.strip().startswith("[") else []
        proc.exe = path
        if proc.recorded:
            proc.execs.append({"path": encode_path(path), "argv": argv, "time": ev.ts})
        else:
            key = encode_path(path)
            self.collapsed_processes[key] = self.collapsed_processes.get(key, 0) + 1
        self._file_op(path, "exec", proc, ev.ts)

    def h_chdir(self, ev: Syscall, proc: Proc) -> None:
        if ev.ret != 0:
            return
        if ev.name == "fchdir":
            path = annotated_path(annotation(ev.args))
        else:
            path = self._path(proc, ev.args)
        if path is not None:
            proc.cwd[0] = path

    def h_identity(self, ev: Syscall, proc: Proc) -> None:
        euid = euid_set_by(ev.name, ev.args) if ev.ret == 0 else None
        if euid is not None:
            proc.euid = euid
            if euid:
                self._hand_write_tests_to(euid)
        if proc.recorded or proc.pid == proc.tgid:
            target = self.procs.get(proc.tgid, proc)
            if len(target.identity) < 50:
                target.identity.append({
                    "call": ev.name, "args": ev.args[:300], "result": ev.ret,
                    "errno": ev.errno, "time": ev.ts})

    def _hand_write_tests_to(self, uid: int) -> None:
        """The uid the service switched to needs what it tested writable before the switch."""
        for path in self._tested_with_start_identity:
            self.files[path].setdefault("write_uids", set()).add(uid)

    # -- files -----------------------------------------------------------------

    def h_access(self, ev: Syscall, proc: Proc) -> None:
        """access/faccessat/faccessat2 (euidaccess is faccessat with AT_EACCESS) asking for W_OK.

        A daemon tests its run or temporary directory at start and may write nothing there in a
        short run; a failed test stops it all the same, so a passed one is a write need. A test
        for R_OK/X_OK/F_OK only asks nothing of the unit's writable paths."""
        args = split_args(ev.args)
        at = ev.name != "access"
        if not (int_arg(args[1 + at]) or 0) & W_OK:
            return
        path = self._path(proc, args[at], args[0] if at else None)
        if path is not None:
            self._file_op(path, WRITE_TEST, proc, ev.ts, ev.errno)


    def h_open(self, ev: Syscall, proc: Proc) -> None:
        args = split_args(ev.args)
        if ev.name == "open":
            path_arg, dirfd, flags = args[0], None, int_arg(args[1]) or 0
        elif ev.name == "creat":
            path_arg, dirfd, flags = args[0], None, O_CREAT | O_WRONLY | O_TRUNC
        elif ev.name == "openat2":
            m = re.search(r"flags=(0x[0-9a-f]+|\d+)", args[2])
            path_arg, dirfd, flags = args[1], args[0], int(m.group(1), 0) if m else 0
        else:
            path_arg, dirfd, flags = args[1], args[0], int_arg(args[2]) or 0
        requested = self._path(proc, path_arg, dirfd)
        path = self._result_path(ev, requested)
        if path is None:
            return
        acc = flags & O_ACCMODE
        ops = []
        if flags & O_PATH:
            ops.append("read")
        else:
            if acc in (0, O_RDWR):
                ops.append("read")
            if acc in (O_WRONLY, O_RDWR):
                ops.append("write")
            if flags & O_CREAT:
                ops.append("create")
            if flags & O_TRUNC and acc:
                ops.append("truncate")
        for op in ops:
            self._file_op(path, op, proc, ev.ts, ev.errno)
        if ev.errno is None:
            dev = annotated_device(ev.annot)
            if dev is not None:
                rec = self.devices.get(path)
                if rec is None:
                    rec = self.devices[path] = {"kind": dev[0], "major": dev[1], "minor": dev[2],
                                                "access": set(), "ops": [0, ev.ts, set()], "ioctls": {}}
                if "read" in ops:
                    rec["access"].add("r")
                if "write" in ops:
                    rec["access"].add("w")
                rec["ops"][0] += 1
                rec["ops"][2].add(self._exe_label(proc))
        elif ev.errno in PRIVILEGE_ERRNOS and path.startswith(b"/dev/"):
            self._file_op(path, "device_denied", proc, ev.ts)

    def _path_call(self, ev: Syscall, proc: Proc, op: str, path_index: int,
                   dirfd_index: int | None = None) -> bytes | None:
        args = split_args(ev.args)
        dirfd = args[dirfd_index] if dirfd_index is not None else None
        path = self._path(proc, args[path_index], dirfd)
        if path is not None:
            self._file_op(path, op, proc, ev.ts, ev.errno)
        return path

    def h_mkdir(self, ev: Syscall, proc: Proc) -> None:
        if ev.errno == "EEXIST":
            return
        self._path_call(ev, proc, "mkdir", *((1, 0) if ev.name == "mkdirat" else (0,)))

    def h_unlink(self, ev: Syscall, proc: Proc) -> None:
        if ev.name == "unlinkat":
            args = split_args(ev.args)
            op = "rmdir" if (int_arg(args[2]) or 0) & AT_REMOVEDIR else "delete"
            self._path_call(ev, proc, op, 1, 0)
        elif ev.name == "rmdir":
            self._path_call(ev, proc, "rmdir", 0)
        else:
            self._path_call(ev, proc, "delete", 0)

    def h_rename(self, ev: Syscall, proc: Proc) -> None:
        args = split_args(ev.args)
        if ev.name == "rename":
            src, dst = self._path(proc, args[0]), self._path(proc, args[1])
        else:
            src, dst = self._path(proc, args[1], args[0]), self._path(proc, args[3], args[2])
        if src is not None:
            self._file_op(src, "rename_from", proc, ev.ts, ev.errno)
        if dst is not None:
            self._file_op(dst, "rename_to", proc, ev.ts, ev.errno)
            if ev.errno is None and src is not None:
                rec = self.files[dst]
                sources = rec.setdefault("renamed_from", set())
                if len(sources) < 20:
                    sources.add(encode_path(src))

    def h_link(self, ev: Syscall, proc: Proc) -> None:
        if ev.name == "link":
            self._path_call(ev, proc, "link", 1)
        elif ev.name == "linkat":
            self._path_call(ev, proc, "link", 3, 2)
        elif ev.name == "symlink":
            self._path_call(ev, proc, "symlink", 1)
        else:  # symlinkat(target, newdirfd, linkpath)
            self._path_call(ev, proc, "symlink", 2, 1)

    def h_chmod(self, ev: Syscall, proc: Proc) -> None:
        args = split_args(ev.args)
        if ev.name == "fchmod":
            path, mode_arg = annotated_path(annotation(args[0])), args[1]
        elif ev.name in ("fchmodat", "fchmodat2"):
            path, mode_arg = self._path(proc, args[1], args[0]), args[2]
        else:
            path, mode_arg = self._path(proc, args[0]), args[1]
        if path is None:
            return
        self._file_op(path, "chmod", proc, ev.ts, ev.errno)
        if ev.errno is None:
            self._note_mode(path, mode_arg)

    def _note_mode(self, path: bytes | None, mode_arg: str | None) -> None:
        """Keep the modes given to chmod: setuid/setgid bits decide RestrictSUIDSGID."""
        rec = self.files.get(path) if path is not None else None
        mode = int_arg(mode_arg) if mode_arg else None
        if rec is not None and mode is not None:
            modes = rec.setdefault("modes", set())
            if len(modes) < 20:
                modes.add(f"{mode:04o}")

    def h_chown(self, ev: Syscall, proc: Proc) -> None:
        args = split_args(ev.args)
        if ev.name == "fchown":
            path = annotated_path(annotation(args[0]))
            owner = args[1:3]
        elif ev.name == "fchownat":
            path = self._path(proc, args[1], args[0])
            owner = args[2:4]
            if path is not None and args[1] == '""':
                path = annotated_path(annotation(args[0]))  # AT_EMPTY_PATH: the fd itself
        else:
            path = self._path(proc, args[0])
            owner = args[1:3]
        if path is None:
            return
        self._file_op(path, "chown", proc, ev.ts, ev.errno)
        rec = self.files.get(path)
        if rec is not None:
            owners = rec.setdefault("owners", set())
            if len(owners) < 20:
                owners.add(":".join(str(int_arg(o)) for o in owner))

    def h_truncate(self, ev: Syscall, proc: Proc) -> None:
        if ev.name == "ftruncate":
            path = annotated_path(annotation(split_args(ev.args)[0]))
            if path:
                self._file_op(path, "truncate", proc, ev.ts, ev.errno)
        else:
            self._path_call(ev, proc, "truncate", 0)

    def h_mknod(self, ev: Syscall, proc: Proc) -> None:
        self._path_call(ev, proc, "mknod", *((1, 0) if ev.name == "mknodat" else (0,)))

    def h_utime(self, ev: Syscall, proc: Proc) -> None:
        args = split_args(ev.args)
        if ev.name == "utimensat":
            if args[1] == "NULL":
                path = annotated_path(annotation(args[0]))
                if path:
                    self._file_op(path, "utime", proc, ev.ts, ev.errno)
                return
            self._path_call(ev, proc, "utime", 1, 0)
        else:
            self._path_call(ev, proc, "utime", 0)

    def h_xattr(self, ev: Syscall, proc: Proc) -> None:
        if ev.name.startswith("f"):
            path = annotated_path(annotation(split_args(ev.args)[0]))
            if path:
                self._file_op(path, "xattr", proc, ev.ts, ev.errno)
        else:
            self._path_call(ev, proc, "xattr", 0)

    # -- network ---------------------------------------------------------------

    def h_socket(self, ev: Syscall, proc: Proc) -> None:
        args = split_args(ev.args)
        family = first_symbol(args[0]) or args[0]
        stype = next((s for s in symbols(args[1]) if s.startswith("SOCK_") and s not in
                      ("SOCK_CLOEXEC", "SOCK_NONBLOCK")), args[1])
        proto = first_symbol(args[2]) or args[2]
        if ev.name == "socketpair":
            proto = ""
        key = (family, stype, proto)
        if ev.errno is not None:
            # A refused family (EAFNOSUPPORT under RestrictAddressFamilies=, EPERM for
            # raw sockets) is evidence, but not a family the service got to use.
            self._bump(self.socket_failures, (*key, ev.errno), proc, ev.ts)
            return
        self._bump(self.sockets, key, proc, ev.ts)
        if ev.annot:
            inode = re.search(r"\[(\d+)\]", ev.annot)
            if inode:
                self.socket_inodes[inode.group(1)] = key

    def _socket_of(self, fd_arg: str) -> tuple | None:
        annot = annotation(fd_arg) or ""
        m = re.search(r"\[(\d+)\]", annot)
        if m and m.group(1) in self.socket_inodes:
            return self.socket_inodes[m.group(1)]
        return None

    def h_bind(self, ev: Syscall, proc: Proc) -> None:
        args = split_args(ev.args)
        addr = parse_sockaddr(args[1])
        if addr is None:
            return
        sock = self._socket_of(args[0])
        key = (addr["family"], sock[1] if sock else _annot_kind(args[0]), addr.get("addr", ""),
               addr.get("port"), ev.errno or "")
        self._bump(self.binds, key, proc, ev.ts)
        port = addr.get("port")
        proc.remember(ev.ts, ev.name, f"{addr.get('addr', '')}:{port}" if port is not None
                      else addr.get("addr", ""))

    def h_listen(self, ev: Syscall, proc: Proc) -> None:
        annot = annotation(split_args(ev.args)[0]) or ""
        self._bump(self.listens, (annot, ev.errno or ""), proc, ev.ts)

    def h_connect(self, ev: Syscall, proc: Proc) -> None:
        args = split_args(ev.args)
        addr = parse_sockaddr(args[1])
        if addr is None:
            return
        errno = ev.errno if ev.errno not in ("EINPROGRESS",) else None
        key = (addr["family"], addr.get("addr", ""), addr.get("port"), errno or "")
        self._bump(self.connects, key, proc, ev.ts)
        if addr["family"] == "AF_UNIX" and addr.get("addr") in ROOT_EQUIVALENT_SOCKETS:
            # whoever may talk to these can start a root container or unit: root in all but name (seed 003)
            self._special("root_equivalent_socket", addr["addr"] + (f" {errno}" if errno else ""), proc, ev.ts)
        if (addr["family"] == "AF_UNIX" and self.notify_socket is not None and errno is None
                and addr.get("addr") == encode_path(self.notify_socket)):
            self._special("sd_notify", "connect to $NOTIFY_SOCKET", proc, ev.ts)

    def h_accept(self, ev: Syscall, proc: Proc) -> None:
        if ev.errno or not ev.annot:
            return
        # "TCP:[127.0.0.1:80->127.0.0.1:53210]": keep the listening side and the
        # peer address (without its ephemeral port).
        m = re.match(r"(\w+):\[(.*)->(.*)\]$", ev.annot)
        if not m:
            return
        peer = m.group(3).rsplit(":", 1)[0].strip("[]")
        self._bump(self.accepts, (m.group(1), m.group(2), peer), proc, ev.ts)

    def h_send(self, ev: Syscall, proc: Proc) -> None:
        args = split_args(ev.args)
        sock = self._socket_of(args[0])
        family = sock[0] if sock else None
        payload_text = args[1] if len(args) > 1 else ""
        dest = None
        if ev.name == "sendto" and len(args) >= 5 and args[4] != "NULL":
            dest = parse_sockaddr(args[4])
        elif ev.name == "sendmsg":
            m = re.search(r"msg_name=(\{.*?\})", payload_text)
            if m:
                dest = parse_sockaddr(m.group(1))
        if family == "AF_NETLINK" or "NETLINK:" in (annotation(args[0]) or ""):
            self._netlink_send(ev, proc, sock, args)
            return
        if family == "AF_UNIX" or (dest and dest["family"] == "AF_UNIX") or "UNIX" in (annotation(args[0]) or ""):
            if self._is_sd_notify(payload_text, dest):
                words = [w.decode("ascii", "replace") for w in SD_NOTIFY_WORDS if w in unescape(payload_text)]
                self._special("sd_notify", ",".join(sorted(words)) or "message", proc, ev.ts)
        if dest is not None and dest["family"] in ("AF_INET", "AF_INET6", "AF_UNIX"):
            key = (dest["family"], dest.get("addr", ""), dest.get("port"), ev.errno or "")
            self._bump(self.sends, key, proc, ev.ts)

    def _is_sd_notify(self, payload_text: str, dest: dict | None) -> bool:
        if dest and self.notify_socket and dest.get("addr") == encode_path(self.notify_socket):
            return True
        raw = unescape(payload_text) if "=" in payload_text else b""
        return any(w in raw for w in SD_NOTIFY_WORDS[:4])

    def _netlink_send(self, ev: Syscall, proc: Proc, sock: tuple | None, args: list) -> None:
        from . import netlink  # the decoder is optional until it is needed
        protocol = sock[2] if sock else None
        if protocol is None:
            protocol = netlink.netlink_protocol_from_annotation(annotation(args[0]) or "")
        if not protocol:
            self.netlink_undecoded += 1
            return
        ops = netlink.decode_netlink_send(protocol, ev.name, ev.args)
        changing = [op for op in ops if op.changes_state]
        if changing:
            proc.remember(ev.ts, ev.name, " ".join(
                sorted({f"{op.op}{' ' + op.detail if op.detail else ''}" for op in changing})))
        for op in ops:
            key = (op.protocol, op.op, op.detail, ev.errno or "")
            entry = self._bump(self.netlink, key, proc, ev.ts)
            if len(entry) == 3:
                entry.append(op.changes_state)

    def h_setsockopt(self, ev: Syscall, proc: Proc) -> None:
        args = split_args(ev.args)
        level = first_symbol(args[1]) or args[1]
        opt = first_symbol(args[2]) or args[2]
        self._bump(self.sockopts, (level, opt, ev.errno or ""), proc, ev.ts)
        proc.remember(ev.ts, ev.name, opt)

    def h_ioctl(self, ev: Syscall, proc: Proc) -> None:
        args = split_args(ev.args)
        annot = annotation(args[0])
        if not annot or annotated_device(annot) is None:
            return  # only device ioctls decide anything (TUNSETIFF, ...)
        device_path = annotated_path(annot)
        if device_path is None:
            return  # "<char 10:200>" without a path before it: nothing to name
        request = first_symbol(args[1]) or args[1]
        path = encode_path(device_path)
        self._bump(self.ioctls, (path, request, ev.errno or ""), proc, ev.ts)
        proc.remember(ev.ts, ev.name, f"{request} {path}")

    # -- behaviour that decides hardening directives ------------------------

    def h_mmap(self, ev: Syscall, proc: Proc) -> None:
        args = split_args(ev.args)
        prot = int_arg(args[2]) or 0
        if ev.name == "mmap":
            if prot & PROT_WRITE and prot & PROT_EXEC:
                self._special("wx_memory", "mmap PROT_WRITE|PROT_EXEC", proc, ev.ts)
        elif prot & PROT_EXEC:
            # systemd's MemoryDenyWriteExecute refuses every mprotect adding
            # PROT_EXEC: seccomp cannot see whether the mapping was writable.
            self._special("wx_memory", f"{ev.name} PROT_EXEC", proc, ev.ts)

    def h_personality(self, ev: Syscall, proc: Proc) -> None:
        self._special("personality", ev.args.split(" ", 1)[0], proc, ev.ts)

    def h_sched(self, ev: Syscall, proc: Proc) -> None:
        if re.search(r"SCHED_(FIFO|RR|DEADLINE)", ev.args):
            self._special("realtime", ev.name, proc, ev.ts)

    def h_namespace(self, ev: Syscall, proc: Proc) -> None:
        if ev.name == "unshare":
            flags = int_arg(ev.args) or 0
        else:  # setns(fd, nstype)
            args = split_args(ev.args)
            flags = int_arg(args[1]) or 0
            if flags == 0:
                annot = annotation(args[0]) or ""
                m = re.search(r"(mnt|net|uts|ipc|pid|user|cgroup|time)", annot)
                self._special("namespace", f"setns:{m.group(1) if m else 'any'}", proc, ev.ts)
                return
        for bit, ns in NAMESPACE_FLAGS.items():
            if flags & bit:
                self._special("namespace", f"{ev.name}:{ns}", proc, ev.ts)

    def h_kind(self, ev: Syscall, proc: Proc) -> None:
        kind = _SPECIAL_KIND[ev.name]
        self._special(kind, ev.name + (f" {ev.errno}" if ev.errno else ""), proc, ev.ts)

    def h_adjtimex(self, ev: Syscall, proc: Proc) -> None:
        # adjtimex with modes=0 only reads the clock state (chrony, ntpd-free hosts).
        m = re.search(r"modes=(0x[0-9a-f]+|\d+)", ev.args)
        if m and int(m.group(1), 0):
            self._special("clock", ev.name, proc, ev.ts)

    def h_kill(self, ev: Syscall, proc: Proc) -> None:
        args = split_args(ev.args)
        target = int_arg(args[1] if ev.name == "tgkill" else args[0])
        if target is None or target <= 0:
            return
        if target not in self.procs:
            detail = f"pid {target}" + (f" {ev.errno}" if ev.errno else "")
            self._special("signal_other_process", detail, proc, ev.ts)

    # -- output -----------------------------------------------------------------

    def sections(self) -> dict:
        """The collected facts as the profile's JSON sections."""
        return facts_to_sections(self)


_SYSCALL_FAMILIES = [
    {"open", "openat", "openat2", "creat"},
    {"chown", "lchown", "fchown", "fchownat"},
    {"chmod", "fchmod", "fchmodat", "fchmodat2"},
    {"unlink", "unlinkat", "rmdir"},
    {"rename", "renameat", "renameat2"},
    {"mkdir", "mkdirat"},
    {"execve", "execveat"},
    {"utimensat", "utimes", "utime", "futimesat"},
    {"stat", "newfstatat", "lstat", "fstat", "statx"},
    {"access", "faccessat", "faccessat2"},
]


# where the effective uid is among a successful call's arguments ("-1": unchanged)
_EUID_ARGUMENT = {"setuid": 0, "setreuid": 1, "setresuid": 1}


def euid_set_by(call: str, args_text: str) -> int | None:
    """The effective uid a successful CALL with these (strace) arguments sets, or None."""
    position = _EUID_ARGUMENT.get(call)
    if position is None:
        return None
    args = split_args(args_text)
    return int(args[position]) if len(args) > position and args[position].strip().isdigit() else None


_DIRFD_FIRST = {"newfstatat", "statx", "faccessat", "faccessat2", "openat", "openat2", "readlinkat",
                "fchownat", "fchmodat", "mkdirat", "unlinkat", "utimensat", "execveat", "mknodat",
                "name_to_handle_at", "fspick", "open_tree"}


def _same_syscall(strace_name: str, kernel_name: str) -> bool:
    """strace's name vs the kernel stack's (chown is fchownat inside, and so on)."""
    if strace_name == kernel_name:
        return True
    return any(strace_name in fam and kernel_name in fam for fam in _SYSCALL_FAMILIES)


def _annot_kind(fd_arg: str) -> str:
    annot = annotation(fd_arg) or ""
    return annot.split(":", 1)[0] if ":" in annot else ""


_SOCKADDR_FAMILY = re.compile(r"sa_family=(?:0x[0-9a-f]+|\d+) /\* (AF_\w+) \*/|sa_family=(AF_\w+)")


def parse_sockaddr(text: str) -> dict | None:
    """{'family': 'AF_INET', 'addr': '127.0.0.1', 'port': 8080} from strace's sockaddr text."""
    m = _SOCKADDR_FAMILY.search(text)
    if not m:
        return None
    family = m.group(1) or m.group(2)
    out: dict = {"family": family}
    port = re.search(r"htons\((\d+)\)", text)
    if port:
        out["port"] = int(port.group(1))
    if family == "AF_INET":
        a = re.search(r'inet_addr\("([^"]*)"\)', text)
        out["addr"] = a.group(1) if a else ""
    elif family == "AF_INET6":
        a = re.search(r'inet_pton\(AF_INET6, "([^"]*)"', text)
        out["addr"] = a.group(1) if a else ""
    elif family == "AF_UNIX":
        a = re.search(r'sun_path=(@?)("(?:[^"\\]|\\.)*")', text)
        if a:
            raw = string_arg(a.group(2)) or b""
            out["addr"] = (a.group(1) and "@") + encode_path(raw) if a.group(1) else encode_path(raw)
        else:
            out["addr"] = ""
    elif family == "AF_NETLINK":
        g = re.search(r"nl_groups=(\w+)", text)
        out["addr"] = f"groups={g.group(1)}" if g else ""
    elif family == "AF_PACKET":
        p = re.search(r"sll_protocol=[^,]*?(ETH_P_\w+)", text)
        out["addr"] = p.group(1) if p else ""
    return out


_SPECIAL_KIND = {
    "mount": "mount", "umount2": "mount", "umount": "mount", "pivot_root": "mount",
    "move_mount": "mount", "fsopen": "mount", "fsmount": "mount", "open_tree": "mount",
    "fsconfig": "mount", "mount_setattr": "mount",
    "init_module": "kernel_module", "finit_module": "kernel_module", "delete_module": "kernel_module",
    "settimeofday": "clock", "clock_settime": "clock", "clock_adjtime": "clock", "stime": "clock",
    "sethostname": "hostname", "setdomainname": "hostname",
    "ptrace": "ptrace", "process_vm_readv": "ptrace", "process_vm_writev": "ptrace",
    "shmget": "sysv_ipc", "shmat": "sysv_ipc", "semget": "sysv_ipc", "msgget": "sysv_ipc",
    "mq_open": "posix_mqueue",
    "add_key": "keyring", "request_key": "keyring", "keyctl": "keyring",
    "bpf": "bpf", "perf_event_open": "perf", "syslog": "kernel_log", "reboot": "reboot",
    "kexec_load": "kernel_module", "kexec_file_load": "kernel_module",
    "swapon": "swap", "swapoff": "swap", "acct": "acct", "iopl": "raw_io", "ioperm": "raw_io",
    "chroot": "chroot", "quotactl": "quota", "vhangup": "tty",
}

_HANDLERS = {
    "clone": "h_fork", "clone3": "h_fork", "fork": "h_fork", "vfork": "h_fork",
    "execve": "h_execve", "execveat": "h_execve",
    "chdir": "h_chdir", "fchdir": "h_chdir",
    "access": "h_access", "faccessat": "h_access", "faccessat2": "h_access",
    "setuid": "h_identity", "setgid": "h_identity", "setreuid": "h_identity",
    "setregid": "h_identity", "setresuid": "h_identity", "setresgid": "h_identity",
    "setgroups": "h_identity", "setfsuid": "h_identity", "setfsgid": "h_identity",
    "capset": "h_identity",
    "open": "h_open", "openat": "h_open", "openat2": "h_open", "creat": "h_open",
    "mkdir": "h_mkdir", "mkdirat": "h_mkdir",
    "unlink": "h_unlink", "unlinkat": "h_unlink", "rmdir": "h_unlink",
    "rename": "h_rename", "renameat": "h_rename", "renameat2": "h_rename",
    "link": "h_link", "linkat": "h_link", "symlink": "h_link", "symlinkat": "h_link",
    "chmod": "h_chmod", "fchmod": "h_chmod", "fchmodat": "h_chmod", "fchmodat2": "h_chmod",
    "chown": "h_chown", "lchown": "h_chown", "fchown": "h_chown", "fchownat": "h_chown",
    "truncate": "h_truncate", "ftruncate": "h_truncate",
    "mknod": "h_mknod", "mknodat": "h_mknod",
    "utimensat": "h_utime", "utimes": "h_utime", "utime": "h_utime", "futimesat": "h_utime",
    "setxattr": "h_xattr", "lsetxattr": "h_xattr", "fsetxattr": "h_xattr",
    "removexattr": "h_xattr", "lremovexattr": "h_xattr", "fremovexattr": "h_xattr",
    "socket": "h_socket", "socketpair": "h_socket",
    "bind": "h_bind", "listen": "h_listen", "connect": "h_connect",
    "accept": "h_accept", "accept4": "h_accept",
    "sendto": "h_send", "sendmsg": "h_send",
    "setsockopt": "h_setsockopt", "ioctl": "h_ioctl",
    "mmap": "h_mmap", "mprotect": "h_mmap", "pkey_mprotect": "h_mmap",
    "personality": "h_personality",
    "sched_setscheduler": "h_sched", "sched_setattr": "h_sched",
    "unshare": "h_namespace", "setns": "h_namespace",
    "adjtimex": "h_adjtimex",
    "kill": "h_kill", "tkill": "h_kill", "tgkill": "h_kill",
    **{name: "h_kind" for name in _SPECIAL_KIND},
}


def facts_to_sections(c: FactCollector) -> dict:
    """Render collector state as plain JSON-ready data (sorted, stable)."""
    from .sections import build_sections
    return build_sections(c)
