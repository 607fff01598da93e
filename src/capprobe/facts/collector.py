"""Typed syscall facts -> the profile's tables: the aggregation every tracer backend feeds.

A backend's decoder (``facts.decode.StraceDecoder`` for strace, ``tracing/kernel.py``
for the in-kernel backend) turns what it saw into ``events.facts`` records and hands
them to ``FactCollector.apply``. Nothing here reads strace text.

Memory grows with the number of distinct facts (paths, sockets, syscall names,
processes), never with the number of syscalls: every fact is folded into a counter
keyed by what it is about.

The collector also keeps the process timeline (who forked whom, what each process
ran when, its latest calls), which the kernel capability probe asks about
(``exe_at_time``, ``operand_at``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..events.facts import (
    Accepted, Adopted, Bound, ClockAdjusted, Connected, DeviceIoctl, Exec, Exited, FileOp, Forked, IdentityChanged,
    Listened, MemoryProtection, ModeChanged, NamespaceEntered, NetlinkSent, Opened, OwnerChanged, Personality,
    RealtimeScheduling, Renamed, Sent, SignalReceived, SignalSent, SockoptSet, SocketOpened, SyscallSeen,
    Unreadable,
)
from ..model import WRITE_NEED_OPS, WRITE_OPS, WRITE_TEST  # the schema's vocabulary
from ..paths import encode_path
from .sections import build_sections

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
MAX_IDENTITY_CHANGES = 50
MAX_KEPT_PER_FILE = 20  # owners, modes, rename sources of one file

O_ACCMODE, O_WRONLY, O_RDWR = 0o3, 0o1, 0o2
O_CREAT, O_TRUNC, O_PATH = 0o100, 0o1000, 0o10000000
PROT_WRITE, PROT_EXEC = 0x2, 0x4
EXEC_CALLS = ("execve", "execveat")
# errnos that mark a missing privilege; ENOENT only counts for writes (reads of
# missing files are how libraries probe, and would drown everything).
PRIVILEGE_ERRNOS = {"EACCES", "EPERM", "EROFS"}
SD_NOTIFY_WORDS = (b"READY=1", b"STATUS=", b"WATCHDOG=", b"STOPPING=1", b"RELOADING=1",
                   b"MAINPID=", b"NOTIFY_ACCESS=", b"FDSTORE=", b"EXTEND_TIMEOUT_USEC=")
ROOT_EQUIVALENT_SOCKETS = {
    "/run/docker.sock", "/var/run/docker.sock", "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock", "/run/podman/podman.sock", "/run/crio/crio.sock",
    "/run/systemd/private",
}
# Calls that are a behaviour by being made at all (successful or not): kind of behaviour.
PRIVILEGED_CALLS = {
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


@dataclass
class Proc:
    pid: int
    ppid: int | None
    exe: bytes | None
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
        entry = (ts, name, operand)  # one tuple in both windows
        self.recent.append(entry)
        by_name = self.recent_by_name.get(name)
        if by_name is None:
            by_name = self.recent_by_name[name] = deque(maxlen=RECENT_PER_NAME)
        by_name.append(entry)

    def forget_recent(self) -> None:
        self.recent.clear()
        self.recent_by_name.clear()


@dataclass(frozen=True)
class FactCounts:
    """The facts so far, counted for a live status line."""

    processes: int = 0
    syscalls: int = 0
    written_paths: int = 0
    ports: frozenset[str] = frozenset()  # bound successfully


class FactCollector:
    """Folds typed syscall facts into the profile's tables: ``apply`` them, then call ``sections()``.

    notify_socket: the $NOTIFY_SOCKET address offered to the target (sd_notify is read from it).
    attached: the backend attached to capprobe's launcher, which then execs the target; the
    launcher's last syscalls before that first execve are not the target's.
    operand_decoder: set by a backend whose SyscallSeen operands are its raw records
    (``StraceDecoder``): (pid, record) -> operand, asked only when a capability check needs one.
    lines: records the backend read (the backend counts them: one record may be several facts).
    """

    def __init__(self, notify_socket: bytes | None = None, attached: bool = False) -> None:
        self.notify_socket = notify_socket
        self._notify_address = encode_path(notify_socket) if notify_socket is not None else None
        self._before_root_exec = attached
        self.operand_decoder = None
        self.root_pid: int | None = None
        self.procs: dict[int, Proc] = {}
        # pids with a record of their own (a clone's return value names a child the backend may never see)
        self.reported_pids: set[int] = set()
        self._created = 0  # Procs ever made: the MAX_PROCESSES cap counts these, not the table
        self._exited: deque[int] = deque()
        self.collapsed_processes: dict[str, int] = {}
        self.lines = 0
        self.unparsed = 0
        self.unparsed_examples: list[str] = []
        self.signals_received: list[SignalReceived] = []
        self.syscalls: dict[str, list] = {}  # name -> [count, {errno: count}]
        self.files: dict[bytes, dict] = {}  # path -> {"ops": {op: [n, first, set(exe)]}, ...}
        self.devices: dict[bytes, dict] = {}
        self.sockets: dict[tuple, list] = {}  # (family, type, proto) -> [n, first, exes]
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
        # paths tested writable as root or the start uid: access() tests with the real uid, so a
        # daemon tests before it drops privileges what it will write as its own user later
        self._tested_with_start_identity: set[bytes] = set()
        self._appliers = {fact_type: getattr(self, method) for fact_type, method in _APPLIERS.items()}

    # -- entry points ---------------------------------------------------------

    def apply(self, fact) -> None:
        """Fold one fact (``events.facts``) into the tables."""
        if self._before_root_exec and type(fact) in _TARGET_FACTS and fact.pid == self.root_pid:
            if type(fact) is not Exec:
                return  # the launcher's, before it became the target
            self._before_root_exec = False
        self._appliers[type(fact)](fact)

    def seen(self, pid: int, ts: float, name: str, errno: str | None, ret: int | None, operand) -> None:
        """``apply(SyscallSeen(...))`` without making the record: the call every syscall makes."""
        if self.first_ts is None:
            self.first_ts = ts
        self.last_ts = ts
        self.reported_pids.add(pid)
        proc = self.procs.get(pid)
        if proc is None:
            proc = self._proc(pid, ts)
        proc.last_ts = ts
        # every syscall; its operand is worked out only if a capability check asks
        proc.remember(ts, name, operand)
        if self._before_root_exec and pid == self.root_pid:
            if name not in EXEC_CALLS or ret != 0:
                return
            self._before_root_exec = False
        entry = self.syscalls.get(name)
        if entry is None:
            entry = self.syscalls[name] = [0, {}]
        entry[0] += 1
        if errno:
            errs = entry[1]
            errs[errno] = errs.get(errno, 0) + 1
        kind = PRIVILEGED_CALLS.get(name)
        if kind is not None:
            self._special(kind, name + (f" {errno}" if errno else ""), proc, ts)

    def traced_pids(self) -> set[int]:
        return set(self.procs) | self.reported_pids  # the table forgets exited unlisted pids

    def is_reported(self, pid: int) -> bool:
        """Did the backend itself report PID (a syscall or its exit)?"""
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
        found = self._first_operand(pid, window)
        if found is None:  # gone from the window: the last few calls of that name
            older = sorted(((entry_ts, order, operand) for name, entries in proc.recent_by_name.items()
                            if _same_syscall(name, syscall)
                            for order, (entry_ts, _, operand) in enumerate(entries) if entry_ts <= ts),
                           key=lambda c: (c[0], c[1]), reverse=True)  # of one call, the explicit operand first
            found = self._first_operand(pid, (operand for _, _, operand in older))
        return found

    def _first_operand(self, pid: int, operands) -> str | None:
        for operand in operands:
            if operand is None:
                continue
            if isinstance(operand, str):
                return operand
            found = self.operand_decoder(pid, operand) if self.operand_decoder is not None else None
            if found is not None:
                return found  # else an explicit operand of the same call may follow
        return None

    def first_exec_time(self, pid: int) -> float:
        """Entry time of PID's first successful execve (0 when it never exec'd)."""
        proc = self.procs.get(pid)
        return proc.execs[0]["time"] if proc is not None and proc.execs else 0.0

    def last_seen(self, pid: int) -> float:
        """Entry time of the latest syscall of PID that the stream has delivered."""
        proc = self.procs.get(pid)
        return proc.last_ts if proc is not None else 0.0

    def sections(self) -> dict:
        """The collected facts as the profile's JSON sections."""
        return build_sections(self)

    def progress(self) -> FactCounts:
        """What a live status line shows of the facts so far (a pass over the files: ask it
        twice a second, not once a line)."""
        return FactCounts(
            processes=sum(1 for p in self.procs.values() if p.recorded),
            syscalls=sum(entry[0] for entry in self.syscalls.values()),
            written_paths=sum(1 for rec in self.files.values() if not WRITE_OPS.isdisjoint(rec["ops"])),
            ports=frozenset(str(key[3]) for key in self.binds if key[3] and not key[4]))  # (.., port, errno)

    # -- process timeline -----------------------------------------------------

    def _proc(self, pid: int, ts: float, parent: Proc | None = None) -> Proc:
        proc = self.procs.get(pid)
        if proc is not None:
            return proc
        if self.root_pid is None:
            self.root_pid = pid
        if parent is not None:
            proc = Proc(pid, parent.pid, parent.exe, ts, tgid=pid, initial_exe=parent.exe, euid=parent.euid)
        else:
            proc = Proc(pid, None, None, ts, tgid=pid)
        if self._created >= MAX_PROCESSES:
            proc.recorded = False
        self._created += 1
        self.procs[pid] = proc
        return proc

    def _seen_fact(self, f: SyscallSeen) -> None:
        self.seen(f.pid, f.ts, f.name, f.errno, f.ret, f.operand)

    def _adopted(self, f: Adopted) -> None:
        if self.root_pid is None:
            self.root_pid = f.pid
        self.procs[f.pid] = Proc(f.pid, f.ppid, f.exe, f.ts, tgid=f.tgid, initial_exe=f.exe, euid=f.euid,
                                 recorded=f.pid == f.tgid)
        if f.pid != f.tgid and f.tgid in self.procs:
            self.procs[f.tgid].threads += 1
        self._created += 1

    def _forked(self, f: Forked) -> None:
        proc = self._proc(f.pid, f.ts)
        child = self.procs.get(f.child)
        if child is None:
            child = self._proc(f.child, f.ts, proc)
        child.ppid = proc.pid
        if not child.identity:
            child.euid = proc.euid
        if child.exe is None:
            child.exe = child.initial_exe = proc.exe
        if f.thread:
            child.tgid = proc.tgid
            child.recorded = False
            if proc.tgid in self.procs:
                self.procs[proc.tgid].threads += 1

    def _exec(self, f: Exec) -> None:
        proc = self._proc(f.pid, f.ts)
        proc.exe = f.path
        if proc.recorded:
            proc.execs.append({"path": encode_path(f.path), "argv": [encode_path(a) for a in f.argv],
                               "time": f.ts})
        else:
            key = encode_path(f.path)
            self.collapsed_processes[key] = self.collapsed_processes.get(key, 0) + 1
        self._file_op(f.path, "exec", proc, f.ts, f.call)

    def _exited_fact(self, f: Exited) -> None:
        self.reported_pids.add(f.pid)
        proc = self._proc(f.pid, f.ts)
        proc.exit_status, proc.exit_signal = f.status, f.signal
        self.last_ts = max(self.last_ts, f.ts)
        self._retire(f.pid)

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
            else:  # a pid reused since is made anew on its next record
                del self.procs[old]

    def _signal_received(self, f: SignalReceived) -> None:
        if len(self.signals_received) < MAX_SIGNALS_KEPT:
            self.signals_received.append(f)

    def _unreadable(self, f: Unreadable) -> None:
        self.unparsed += 1
        if len(self.unparsed_examples) < MAX_UNPARSED_EXAMPLES:
            self.unparsed_examples.append(f.text[:1000])

    def _identity_changed(self, f: IdentityChanged) -> None:
        proc = self._proc(f.pid, f.ts)
        if f.euid is not None:
            proc.euid = f.euid
            if f.euid:
                self._hand_write_tests_to(f.euid)
        if proc.recorded or proc.pid == proc.tgid:
            target = self.procs.get(proc.tgid, proc)
            if len(target.identity) < MAX_IDENTITY_CHANGES:
                target.identity.append({"call": f.call, "args": f.args[:300], "result": f.result,
                                        "errno": f.errno, "time": f.ts})

    def _hand_write_tests_to(self, uid: int) -> None:
        """The uid the service switched to needs what it tested writable before the switch."""
        for path in self._tested_with_start_identity:
            self.files[path].setdefault("write_uids", set()).add(uid)

    # -- helpers -------------------------------------------------------------

    def _bump(self, table: dict, key, proc: Proc, ts: float) -> list:
        entry = table.get(key)
        if entry is None:
            entry = table[key] = [0, ts, set()]
        entry[0] += 1
        entry[2].add(encode_path(proc.exe) if proc.exe else "?")
        return entry

    def _special(self, kind: str, detail: str, proc: Proc, ts: float) -> None:
        self._bump(self.special, (kind, detail), proc, ts)

    # -- files -----------------------------------------------------------------

    def _file_op(self, path: bytes, op: str, proc: Proc, ts: float, call: str, errno: str | None = None) -> None:
        if errno is not None:
            if errno not in PRIVILEGE_ERRNOS and not (errno == "ENOENT" and op in WRITE_OPS):
                return
        proc.remember(ts, call, encode_path(path))
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

    def _file_op_fact(self, f: FileOp) -> None:
        self._file_op(f.path, f.op, self._proc(f.pid, f.ts), f.ts, f.call, f.errno)

    def _opened(self, f: Opened) -> None:
        proc = self._proc(f.pid, f.ts)
        flags = f.flags
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
            self._file_op(f.path, op, proc, f.ts, f.call, f.errno)
        if f.errno is None:
            if f.device is not None:
                rec = self.devices.get(f.path)
                if rec is None:
                    rec = self.devices[f.path] = {"kind": f.device.kind, "major": f.device.major,
                                                  "minor": f.device.minor, "access": set(),
                                                  "ops": [0, f.ts, set()], "ioctls": {}}
                if "read" in ops:
                    rec["access"].add("r")
                if "write" in ops:
                    rec["access"].add("w")
                rec["ops"][0] += 1
                rec["ops"][2].add(encode_path(proc.exe) if proc.exe else "?")
        elif f.errno in PRIVILEGE_ERRNOS and f.path.startswith(b"/dev/"):
            self._file_op(f.path, "device_denied", proc, f.ts, f.call)

    def _renamed(self, f: Renamed) -> None:
        proc = self._proc(f.pid, f.ts)
        if f.src is not None:
            self._file_op(f.src, "rename_from", proc, f.ts, f.call, f.errno)
        if f.dst is not None:
            self._file_op(f.dst, "rename_to", proc, f.ts, f.call, f.errno)
            if f.errno is None and f.src is not None:
                sources = self.files[f.dst].setdefault("renamed_from", set())
                if len(sources) < MAX_KEPT_PER_FILE:
                    sources.add(encode_path(f.src))

    def _mode_changed(self, f: ModeChanged) -> None:
        """Keep the modes given to chmod: setuid/setgid bits decide RestrictSUIDSGID."""
        self._file_op(f.path, "chmod", self._proc(f.pid, f.ts), f.ts, f.call, f.errno)
        rec = self.files.get(f.path)
        if f.errno is None and rec is not None and f.mode is not None:
            modes = rec.setdefault("modes", set())
            if len(modes) < MAX_KEPT_PER_FILE:
                modes.add(f"{f.mode:04o}")

    def _owner_changed(self, f: OwnerChanged) -> None:
        self._file_op(f.path, "chown", self._proc(f.pid, f.ts), f.ts, f.call, f.errno)
        rec = self.files.get(f.path)
        if rec is not None:
            owners = rec.setdefault("owners", set())
            if len(owners) < MAX_KEPT_PER_FILE:
                owners.add(f"{f.uid}:{f.gid}")

    def _device_ioctl(self, f: DeviceIoctl) -> None:
        proc = self._proc(f.pid, f.ts)
        path = encode_path(f.path)
        self._bump(self.ioctls, (path, f.request, f.errno or ""), proc, f.ts)
        proc.remember(f.ts, "ioctl", f"{f.request} {path}")

    # -- network ---------------------------------------------------------------

    def _socket_opened(self, f: SocketOpened) -> None:
        key = (f.family, f.type, f.protocol or "")
        # A refused family (EAFNOSUPPORT under RestrictAddressFamilies=, EPERM for
        # raw sockets) is evidence, but not a family the service got to use.
        if f.errno is not None:
            self._bump(self.socket_failures, (*key, f.errno), self._proc(f.pid, f.ts), f.ts)
        else:
            self._bump(self.sockets, key, self._proc(f.pid, f.ts), f.ts)

    def _bound(self, f: Bound) -> None:
        proc = self._proc(f.pid, f.ts)
        a = f.address
        self._bump(self.binds, (a.family, f.socket_type or "", a.address, a.port, f.errno or ""), proc, f.ts)
        proc.remember(f.ts, "bind", f"{a.address}:{a.port}" if a.port is not None else a.address)

    def _listened(self, f: Listened) -> None:
        self._bump(self.listens, (f.socket, f.errno or ""), self._proc(f.pid, f.ts), f.ts)

    def _connected(self, f: Connected) -> None:
        proc = self._proc(f.pid, f.ts)
        a = f.address
        errno = f.errno if f.errno != "EINPROGRESS" else None  # a non-blocking connect under way
        self._bump(self.connects, (a.family, a.address, a.port, errno or ""), proc, f.ts)
        if a.family != "AF_UNIX":
            return
        if a.address in ROOT_EQUIVALENT_SOCKETS:
            # whoever may talk to these can start a root container or unit: root in all but name (seed 003)
            self._special("root_equivalent_socket", a.address + (f" {errno}" if errno else ""), proc, f.ts)
        if errno is None and self._notify_address is not None and a.address == self._notify_address:
            self._special("sd_notify", "connect to $NOTIFY_SOCKET", proc, f.ts)

    def _accepted(self, f: Accepted) -> None:
        self._bump(self.accepts, (f.protocol, f.local, f.peer), self._proc(f.pid, f.ts), f.ts)

    def _sent(self, f: Sent) -> None:
        proc = self._proc(f.pid, f.ts)
        dest = f.dest
        if f.family == "AF_UNIX" or (dest is not None and dest.family == "AF_UNIX"):
            to_notify = dest is not None and self._notify_address is not None and dest.address == self._notify_address
            if to_notify or any(w in f.payload for w in SD_NOTIFY_WORDS[:4]):
                words = [w.decode("ascii", "replace") for w in SD_NOTIFY_WORDS if w in f.payload]
                self._special("sd_notify", ",".join(sorted(words)) or "message", proc, f.ts)
        if dest is not None and dest.family in ("AF_INET", "AF_INET6", "AF_UNIX"):
            self._bump(self.sends, (dest.family, dest.address, dest.port, f.errno or ""), proc, f.ts)

    def _netlink_sent(self, f: NetlinkSent) -> None:
        if not f.protocol:
            self.netlink_undecoded += 1
            return
        proc = self._proc(f.pid, f.ts)
        changing = {f"{op.op}{' ' + op.detail if op.detail else ''}" for op in f.ops if op.changes_state}
        if changing:
            proc.remember(f.ts, f.call, " ".join(sorted(changing)))
        for op in f.ops:
            entry = self._bump(self.netlink, (op.protocol, op.op, op.detail, f.errno or ""), proc, f.ts)
            if len(entry) == 3:
                entry.append(op.changes_state)

    def _sockopt_set(self, f: SockoptSet) -> None:
        proc = self._proc(f.pid, f.ts)
        self._bump(self.sockopts, (f.level, f.option, f.errno or ""), proc, f.ts)
        proc.remember(f.ts, "setsockopt", f.option)

    # -- behaviour that decides hardening directives ------------------------

    def _memory_protection(self, f: MemoryProtection) -> None:
        if not f.prot & PROT_EXEC:
            return
        if f.call == "mmap":
            if f.prot & PROT_WRITE:
                self._special("wx_memory", "mmap PROT_WRITE|PROT_EXEC", self._proc(f.pid, f.ts), f.ts)
        else:
            # systemd's MemoryDenyWriteExecute refuses every mprotect adding
            # PROT_EXEC: seccomp cannot see whether the mapping was writable.
            self._special("wx_memory", f"{f.call} PROT_EXEC", self._proc(f.pid, f.ts), f.ts)

    def _namespace_entered(self, f: NamespaceEntered) -> None:
        self._special("namespace", f"{f.call}:{f.namespace}", self._proc(f.pid, f.ts), f.ts)

    def _personality(self, f: Personality) -> None:
        self._special("personality", f.persona, self._proc(f.pid, f.ts), f.ts)

    def _realtime(self, f: RealtimeScheduling) -> None:
        self._special("realtime", f.call, self._proc(f.pid, f.ts), f.ts)

    def _clock_adjusted(self, f: ClockAdjusted) -> None:
        self._special("clock", f.call, self._proc(f.pid, f.ts), f.ts)

    def _signal_sent(self, f: SignalSent) -> None:
        if f.target not in self.procs:
            detail = f"pid {f.target}" + (f" {f.errno}" if f.errno else "")
            self._special("signal_other_process", detail, self._proc(f.pid, f.ts), f.ts)


_APPLIERS = {
    SyscallSeen: "_seen_fact", Adopted: "_adopted", Forked: "_forked", Exec: "_exec", Exited: "_exited_fact",
    SignalReceived: "_signal_received", Unreadable: "_unreadable", IdentityChanged: "_identity_changed",
    FileOp: "_file_op_fact", Opened: "_opened", Renamed: "_renamed", ModeChanged: "_mode_changed",
    OwnerChanged: "_owner_changed", DeviceIoctl: "_device_ioctl",
    SocketOpened: "_socket_opened", Bound: "_bound", Listened: "_listened", Connected: "_connected",
    Accepted: "_accepted", Sent: "_sent", NetlinkSent: "_netlink_sent", SockoptSet: "_sockopt_set",
    MemoryProtection: "_memory_protection", NamespaceEntered: "_namespace_entered", Personality: "_personality",
    RealtimeScheduling: "_realtime", ClockAdjusted: "_clock_adjusted", SignalSent: "_signal_sent",
}
# What a process did, as opposed to its place in the timeline: the launcher's, before its exec
# of the target, is left out (SyscallSeen decides by itself, in seen()).
_TARGET_FACTS = frozenset(_APPLIERS) - {SyscallSeen, Adopted, Forked, Exited, SignalReceived, Unreadable}

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


def _same_syscall(name: str, kernel_name: str) -> bool:
    """The backend's name vs the kernel stack's (chown is fchownat inside, and so on)."""
    if name == kernel_name:
        return True
    return any(name in fam and kernel_name in fam for fam in _SYSCALL_FAMILIES)
