"""strace text -> typed syscall facts (events/facts.py): the full-mode backend's decoder.

The line parser (events/strace_line.py) splits a line into pid, time, name, raw
argument text and result. This module takes the arguments apart, for the calls
that matter, and hands typed facts to the aggregator (``FactCollector.apply``).
What it keeps is what strace text needs to be read, and nothing the profile holds:
- each task's working directory (a cell shared by CLONE_FS threads), for relative paths;
- socket inode -> (family, type, protocol), from the ``-yy`` annotations of socket();
- the pids with a fork in flight: strace may print a child's first call before the
  parent's clone returns.

Where a call's operands sit is data (the ``_FILES``, ``_OPENS``, ... tables below,
like ``execveat: path at 1, dirfd at 0``); the handlers do not branch on the name.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from ..events.facts import (
    Accepted, Adopted, Bound, ClockAdjusted, Connected, DeviceIoctl, DeviceNumber, Exec, Exited, FileOp, Forked,
    IdentityChanged, Listened, MemoryProtection, ModeChanged, NamespaceEntered, NetlinkSent, Opened,
    OwnerChanged, Personality, RealtimeScheduling, Renamed, Sent, SignalReceived, SignalSent, SockAddr,
    SockoptSet, SocketOpened, Unreadable,
)
from ..events.strace_line import (
    ProcessExit, SignalDelivery, StraceLineParser, Syscall, annotated_device, annotated_path, annotation,
    first_symbol, int_arg, split_args, string_arg, symbols, unescape,
)
from ..model import WRITE_TEST
from ..paths import encode_path, resolve
from .collector import FactCollector
from .netlink import decode_netlink_send, netlink_protocol_from_annotation

# After this many exits, an exited task's decode state (its cwd) is dropped: memory stays
# bounded however many processes a daemon forks (the aggregator keeps as many, see there).
MAX_EXITED_KEPT = 1024

O_WRONLY, O_CREAT, O_TRUNC = 0o1, 0o100, 0o1000
AT_REMOVEDIR = 0x200
W_OK = 0x2
PROT_EXEC = 0x4
CLONE_FS, CLONE_THREAD = 0x200, 0x10000
CSIGNAL = 0x80  # clone()'s exit signal byte, the same bit as CLONE_NEWTIME in clone3
NAMESPACE_FLAGS = {
    0x00020000: "mnt", 0x02000000: "cgroup", 0x04000000: "uts", 0x08000000: "ipc",
    0x10000000: "user", 0x20000000: "pid", 0x40000000: "net", 0x00000080: "time",
}
_FORKS = ("clone", "clone3", "fork", "vfork")


@dataclass(frozen=True, slots=True)
class Operands:
    """Where a call's operands sit, as argument indexes (None: the call has none)."""

    path: int | None = None  # a path string; empty or NULL names DIRFD's own file (AT_EMPTY_PATH)
    dirfd: int | None = None  # the directory fd a relative PATH starts from (else the cwd)
    fd: int | None = None  # an fd that is the file itself (fchmod, ftruncate)
    value: int | None = None  # the call's other operand: flags, mode, owner, argv


# file calls with one fixed operation (access: a W_OK test; unlinkat: rmdir with AT_REMOVEDIR)
_FILES = {
    "mkdir": ("mkdir", Operands(path=0)), "mkdirat": ("mkdir", Operands(path=1, dirfd=0)),
    "unlink": ("delete", Operands(path=0)), "rmdir": ("rmdir", Operands(path=0)),
    "unlinkat": ("delete", Operands(path=1, dirfd=0, value=2)),
    "link": ("link", Operands(path=1)), "linkat": ("link", Operands(path=3, dirfd=2)),
    "symlink": ("symlink", Operands(path=1)), "symlinkat": ("symlink", Operands(path=2, dirfd=1)),
    "truncate": ("truncate", Operands(path=0)), "ftruncate": ("truncate", Operands(fd=0)),
    "mknod": ("mknod", Operands(path=0)), "mknodat": ("mknod", Operands(path=1, dirfd=0)),
    "utime": ("utime", Operands(path=0)), "utimes": ("utime", Operands(path=0)),
    "futimesat": ("utime", Operands(path=1, dirfd=0)), "utimensat": ("utime", Operands(path=1, dirfd=0)),
    "setxattr": ("xattr", Operands(path=0)), "lsetxattr": ("xattr", Operands(path=0)),
    "removexattr": ("xattr", Operands(path=0)), "lremovexattr": ("xattr", Operands(path=0)),
    "fsetxattr": ("xattr", Operands(fd=0)), "fremovexattr": ("xattr", Operands(fd=0)),
    "access": (WRITE_TEST, Operands(path=0, value=1)),
    "faccessat": (WRITE_TEST, Operands(path=1, dirfd=0, value=2)),
    "faccessat2": (WRITE_TEST, Operands(path=1, dirfd=0, value=2)),
}
_OPENS = {  # value: the O_* flags (openat2: inside struct open_how); creat has none
    "open": Operands(path=0, value=1), "creat": Operands(path=0),
    "openat": Operands(path=1, dirfd=0, value=2), "openat2": Operands(path=1, dirfd=0, value=2),
}
_MODES = {  # value: the mode
    "chmod": Operands(path=0, value=1), "fchmod": Operands(fd=0, value=1),
    "fchmodat": Operands(path=1, dirfd=0, value=2), "fchmodat2": Operands(path=1, dirfd=0, value=2),
}
_OWNERS = {  # value: the uid, the gid after it
    "chown": Operands(path=0, value=1), "lchown": Operands(path=0, value=1), "fchown": Operands(fd=0, value=1),
    "fchownat": Operands(path=1, dirfd=0, value=2),
}
_RENAMES = {  # (source, destination)
    "rename": (Operands(path=0), Operands(path=1)),
    "renameat": (Operands(path=1, dirfd=0), Operands(path=3, dirfd=2)),
    "renameat2": (Operands(path=1, dirfd=0), Operands(path=3, dirfd=2)),
}
_EXECS = {"execve": Operands(path=0, value=1), "execveat": Operands(path=1, dirfd=0, value=2)}  # value: argv
_CHDIRS = {"chdir": Operands(path=0), "fchdir": Operands(fd=0)}
# calls whose path the capability probe may ask about, beyond the tables above (stat and kin)
_LOOKUPS = {
    "stat": Operands(path=0), "lstat": Operands(path=0), "readlink": Operands(path=0),
    "newfstatat": Operands(path=1, dirfd=0), "statx": Operands(path=1, dirfd=0),
    "readlinkat": Operands(path=1, dirfd=0), "name_to_handle_at": Operands(path=1, dirfd=0),
    "fspick": Operands(path=1, dirfd=0), "open_tree": Operands(path=1, dirfd=0),
}
_PATH_OPERANDS = {**_LOOKUPS, **_CHDIRS, **_EXECS, **{n: o for n, (o, _) in _RENAMES.items()},
                  **_OWNERS, **_MODES, **_OPENS, **{n: o for n, (_, o) in _FILES.items()}}
_TEXT_OPERAND = {"capset": 1}  # the new sets decide whether CAP_SETPCAP mattered
_NAME_OPERAND = {"sethostname": 0, "setdomainname": 0}  # a string that is not a path
# where the effective uid is among a successful call's arguments ("-1": unchanged)
_EUID_ARGUMENT = {"setuid": 0, "setreuid": 1, "setresuid": 1}
_SIGNAL_TARGET = {"kill": 0, "tkill": 0, "tgkill": 1}  # the pid (tgkill: the thread) signalled
_SENDTO_DEST = 4  # sendto(fd, buf, len, flags, dest_addr, addrlen)

_FLAGS_FIELD = re.compile(r"flags=(0x[0-9a-f]+|\d+)")
_INODE = re.compile(r"\[(\d+)\]")
_NAMESPACE_WORD = re.compile(r"(mnt|net|uts|ipc|pid|user|cgroup|time)")
_REALTIME = re.compile(r"SCHED_(FIFO|RR|DEADLINE)")
_MODES_FIELD = re.compile(r"modes=(0x[0-9a-f]+|\d+)")
_ACCEPTED = re.compile(r"(\w+):\[(.*)->(.*)\]$")  # "TCP:[127.0.0.1:80->127.0.0.1:53210]"
_MSG_NAME = re.compile(r"msg_name=(\{.*?\})")
_IOV_BASE = re.compile(r'iov_base=("(?:[^"\\]|\\.)*")')


def euid_set_by(call: str, args_text: str) -> int | None:
    """The effective uid a successful CALL with these (strace) arguments sets, or None."""
    position = _EUID_ARGUMENT.get(call)
    if position is None:
        return None
    args = split_args(args_text)
    return int(args[position]) if len(args) > position and args[position].strip().isdigit() else None


class _Task:
    """What reading one task's strace lines needs: its cwd cell (shared by CLONE_FS threads)."""

    __slots__ = ("cwd", "execd")

    def __init__(self, cwd: list) -> None:
        self.cwd = cwd  # one-element list
        self.execd = False


class StraceDecoder:
    """Reads strace lines (capprobe's STRACE_FLAGS) and applies their facts to SINK (a FactCollector)."""

    def __init__(self, sink: FactCollector, start_cwd: bytes) -> None:
        self.sink = sink
        self.start_cwd = start_cwd
        self._apply = sink.apply
        self._seen = sink.seen
        self._parser = StraceLineParser()
        self._tasks: dict[int, _Task] = {}
        self._root_seen = False
        self._exited: deque[int] = deque()
        self._in_flight_forks: list[int] = []
        self._socket_inodes: dict[str, tuple[str, str, str | None]] = {}  # "5819" -> (family, type, protocol)
        self._handlers = {name: getattr(self, method) for name, method in _HANDLERS.items()}
        sink.operand_decoder = self.operand

    # -- entry points ---------------------------------------------------------

    def cwds(self) -> dict[int, bytes]:
        """Each task's cwd as the trace left it (fast mode's kernel side starts from these)."""
        return {pid: task.cwd[0] for pid, task in self._tasks.items()}

    def feed_line(self, line: str) -> None:
        """Parse one strace line and apply its facts; a line nothing can read is counted, never raised."""
        try:
            event = self._parser.feed(line)
        except Exception:  # noqa: BLE001 - e.g. a forged 5,000-digit pid: int() refuses it
            self.sink.lines += 1
            self._apply(Unreadable(line))
            return
        if event is None:
            unfinished = self._parser.last_unfinished
            if unfinished is not None and unfinished[1] in _FORKS:
                self._in_flight_forks.append(unfinished[0])
            return
        self.sink.lines += 1
        if type(event) is Syscall:  # the hot path: every syscall, most of them with no handler
            task = self._tasks.get(event.pid)
            if task is None:
                task = self._task(event.pid, event.ts)
            self._seen(event.pid, event.ts, event.name, event.errno, event.ret, event)
            handler = self._handlers.get(event.name)
            if handler is not None:
                self._handle(handler, event, task)
        elif type(event) is ProcessExit:
            self._task(event.pid, event.ts)
            self._apply(Exited(event.pid, event.ts, event.status, event.signal))
            self._retire(event.pid)
        elif type(event) is SignalDelivery:
            self._apply(SignalReceived(event.pid, event.ts, event.signal, event.sender))
        else:
            self._apply(Unreadable(event.line))

    def adopt_running(self, pid: int, tgid: int, ppid: int | None, exe: bytes | None, cwd: list,
                      euid: int | None, ts: float) -> None:
        """A task already running when strace attached (`capprobe attach`), as /proc showed it: its
        relative paths resolve in its own cwd (CWD: one cell per process, shared by its threads)."""
        self._tasks[pid] = _Task(cwd)
        self._root_seen = True
        self._apply(Adopted(pid, ts, tgid, ppid, exe, euid))

    def operand(self, pid: int, ev: Syscall) -> str | None:
        """The path (or text) a syscall was about, from its raw arguments: asked only when a
        kernel capability check needs it (stat, access, a failed open, ...)."""
        task = self._tasks.get(pid) or _Task([self.start_cwd])
        try:
            args = split_args(ev.args)
            position = _TEXT_OPERAND.get(ev.name)
            if position is not None:
                return args[position] if len(args) > position else None
            position = _NAME_OPERAND.get(ev.name)
            if position is not None:
                name = string_arg(args[position])
                return encode_path(name) if name is not None else None
            where = _PATH_OPERANDS.get(ev.name)
            if where is not None and where.path is not None:
                path = self._path(task, args[where.path], args[where.dirfd] if where.dirfd is not None else None)
            else:
                path = next((self._path(task, a) for a in args if a.startswith('"')), None)
        except (ValueError, IndexError):
            return None
        return encode_path(path) if path else None

    # -- tasks -------------------------------------------------------------------

    def _task(self, pid: int, ts: float) -> _Task:
        task = self._tasks.get(pid)
        if task is not None:
            return task
        parent = None
        if self._root_seen:
            # strace may print a child's first syscall before the parent's fork
            # returns; the parent is then the one pid with a fork in flight.
            pending = [p for p in self._in_flight_forks if p in self._tasks]
            parent = pending[-1] if pending else None
        self._root_seen = True
        task = self._tasks[pid] = _Task([self._tasks[parent].cwd[0] if parent is not None else self.start_cwd])
        if parent is not None:
            self._apply(Forked(parent, ts, pid))
        return task

    def _retire(self, pid: int) -> None:
        self._exited.append(pid)
        while len(self._exited) > MAX_EXITED_KEPT:
            self._tasks.pop(self._exited.popleft(), None)  # a pid reused since is made anew

    def _handle(self, handler, ev: Syscall, task: _Task) -> None:
        try:
            handler(ev, task)
        except Exception:  # noqa: BLE001 - the trace is untrusted input (a target can forge lines)
            # An argument shape this handler did not expect: keep the line, never stop the session.
            self._apply(Unreadable(f"[{ev.name} arguments not understood] {ev.pid} {ev.name}({ev.args[:800]})"))

    # -- paths -------------------------------------------------------------------

    def _dir_of(self, task: _Task, dirfd_arg: str | None) -> bytes:
        """The directory a relative path is resolved against (dirfd or cwd)."""
        if dirfd_arg is not None:
            base = annotated_path(annotation(dirfd_arg))
            if base is not None:
                if "AT_FDCWD" in dirfd_arg:
                    task.cwd[0] = base  # strace just told us the cwd; stay in sync
                return base
        return task.cwd[0]

    def _path(self, task: _Task, path_arg: str, dirfd_arg: str | None = None) -> bytes | None:
        raw = string_arg(path_arg)
        if raw is None:
            return None
        if raw.startswith(b"/"):
            return resolve(b"/", raw)
        return resolve(self._dir_of(task, dirfd_arg), raw)

    def _operand_path(self, task: _Task, args: list[str], where: Operands) -> bytes | None:
        """The file a call is about: its fd's -yy annotation, or its path (relative to its dirfd)."""
        if where.fd is not None:
            return annotated_path(annotation(args[where.fd]))
        dirfd = args[where.dirfd] if where.dirfd is not None else None
        if dirfd is not None and args[where.path] in ("NULL", '""'):
            return annotated_path(annotation(dirfd))  # AT_EMPTY_PATH, utimensat(fd, NULL): the fd itself
        return self._path(task, args[where.path], dirfd)

    # -- processes -------------------------------------------------------------

    def h_fork(self, ev: Syscall, task: _Task) -> None:
        if ev.pid in self._in_flight_forks:
            self._in_flight_forks.remove(ev.pid)
        if ev.ret is None or ev.ret <= 0:
            return
        flags = 0
        if ev.name in ("clone", "clone3"):
            m = _FLAGS_FIELD.search(ev.args)
            flags = int(m.group(1), 0) if m else 0
        for bit, ns in NAMESPACE_FLAGS.items():
            if flags & bit and not (bit == CSIGNAL and ev.name == "clone"):
                self._apply(NamespaceEntered(ev.pid, ev.ts, ev.name, ns))
        child = self._tasks.get(ev.ret)
        if child is None:
            child = self._tasks[ev.ret] = _Task([task.cwd[0]])
        if flags & (CLONE_FS | CLONE_THREAD):
            child.cwd = task.cwd
        elif child.cwd is not task.cwd and not child.execd:
            child.cwd = [task.cwd[0]]
        self._apply(Forked(ev.pid, ev.ts, ev.ret, bool(flags & CLONE_THREAD), ev.name))

    def h_exec(self, ev: Syscall, task: _Task) -> None:
        where = _EXECS[ev.name]
        args = split_args(ev.args)
        path = self._operand_path(task, args, where)
        if path is None:
            return
        if ev.ret != 0:
            if ev.errno is not None:  # the aggregator keeps only the privilege errnos: $PATH search is ENOENT
                self._apply(FileOp(ev.pid, ev.ts, ev.name, path, "exec", ev.errno))
            return
        argv_arg = args[where.value].strip()
        argv = tuple(unescape(a[1:a.rfind('"')]) for a in split_args(argv_arg[1:-1])
                     if a.startswith('"')) if argv_arg.startswith("[") else ()
        task.execd = True
        self._apply(Exec(ev.pid, ev.ts, path, argv, ev.name))

    def h_chdir(self, ev: Syscall, task: _Task) -> None:
        if ev.ret != 0:
            return
        path = self._operand_path(task, split_args(ev.args), _CHDIRS[ev.name])
        if path is not None:
            task.cwd[0] = path

    def h_identity(self, ev: Syscall, task: _Task) -> None:
        euid = euid_set_by(ev.name, ev.args) if ev.ret == 0 else None
        self._apply(IdentityChanged(ev.pid, ev.ts, ev.name, ev.args, ev.ret, ev.errno, euid))

    # -- files -----------------------------------------------------------------

    def h_file(self, ev: Syscall, task: _Task) -> None:
        op, where = _FILES[ev.name]
        args = split_args(ev.args)
        if where.value is not None:  # access mode / unlinkat flags
            flags = int_arg(args[where.value]) or 0
            if op == WRITE_TEST and not flags & W_OK:
                return  # R_OK/X_OK/F_OK tests ask nothing of the writable paths
            if flags & AT_REMOVEDIR and op == "delete":
                op = "rmdir"
        path = self._operand_path(task, args, where)
        if path is not None:
            self._apply(FileOp(ev.pid, ev.ts, ev.name, path, op, ev.errno))

    def h_open(self, ev: Syscall, task: _Task) -> None:
        where = _OPENS[ev.name]
        args = split_args(ev.args)
        if where.value is None:  # creat()
            flags = O_CREAT | O_WRONLY | O_TRUNC
        elif args[where.value].startswith("{"):  # openat2's struct open_how
            m = _FLAGS_FIELD.search(args[where.value])
            flags = int(m.group(1), 0) if m else 0
        else:
            flags = int_arg(args[where.value]) or 0
        requested = self._operand_path(task, args, where)
        # the kernel's resolved path (-yy on the returned fd) wins over the request
        resolved = annotated_path(ev.annot) if ev.ret is not None and ev.ret >= 0 else None
        path = resolved or requested
        if path is None:
            return
        dev = annotated_device(ev.annot) if ev.errno is None else None
        self._apply(Opened(ev.pid, ev.ts, ev.name, path, flags, ev.errno,
                           DeviceNumber(*dev) if dev is not None else None))

    def h_rename(self, ev: Syscall, task: _Task) -> None:
        src, dst = _RENAMES[ev.name]
        args = split_args(ev.args)
        self._apply(Renamed(ev.pid, ev.ts, ev.name, self._operand_path(task, args, src),
                            self._operand_path(task, args, dst), ev.errno))

    def h_chmod(self, ev: Syscall, task: _Task) -> None:
        where = _MODES[ev.name]
        args = split_args(ev.args)
        path = self._operand_path(task, args, where)
        if path is not None:
            self._apply(ModeChanged(ev.pid, ev.ts, ev.name, path, int_arg(args[where.value]), ev.errno))

    def h_chown(self, ev: Syscall, task: _Task) -> None:
        where = _OWNERS[ev.name]
        args = split_args(ev.args)
        path = self._operand_path(task, args, where)
        if path is not None:
            uid, gid = (int_arg(a) for a in (args[where.value:where.value + 2] + ["?", "?"])[:2])
            self._apply(OwnerChanged(ev.pid, ev.ts, ev.name, path, uid, gid, ev.errno))

    # -- network ---------------------------------------------------------------

    def h_socket(self, ev: Syscall, task: _Task) -> None:
        args = split_args(ev.args)
        family = first_symbol(args[0]) or args[0]
        stype = next((s for s in symbols(args[1]) if s.startswith("SOCK_") and s not in
                      ("SOCK_CLOEXEC", "SOCK_NONBLOCK")), args[1])
        proto = None if ev.name == "socketpair" else first_symbol(args[2]) or args[2]
        if ev.errno is None and ev.annot:
            inode = _INODE.search(ev.annot)
            if inode:
                self._socket_inodes[inode.group(1)] = (family, stype, proto)
        self._apply(SocketOpened(ev.pid, ev.ts, ev.name, family, stype, proto, ev.errno))

    def _socket_of(self, fd_arg: str) -> tuple[str, str, str | None] | None:
        m = _INODE.search(annotation(fd_arg) or "")
        return self._socket_inodes.get(m.group(1)) if m else None

    def h_bind(self, ev: Syscall, task: _Task) -> None:
        args = split_args(ev.args)
        addr = parse_sockaddr(args[1])
        if addr is None:
            return
        sock = self._socket_of(args[0])
        # without socket(): strace's own word for the socket ("TCP" of "TCP:[...]")
        annot = annotation(args[0]) or ""
        stype = sock[1] if sock else annot.split(":", 1)[0] if ":" in annot else None
        self._apply(Bound(ev.pid, ev.ts, addr, stype or None, ev.errno))

    def h_listen(self, ev: Syscall, task: _Task) -> None:
        self._apply(Listened(ev.pid, ev.ts, annotation(split_args(ev.args)[0]) or "", ev.errno))

    def h_connect(self, ev: Syscall, task: _Task) -> None:
        addr = parse_sockaddr(split_args(ev.args)[1])
        if addr is not None:
            self._apply(Connected(ev.pid, ev.ts, addr, ev.errno))

    def h_accept(self, ev: Syscall, task: _Task) -> None:
        if ev.errno or not ev.annot:
            return
        m = _ACCEPTED.match(ev.annot)
        if m:
            peer = m.group(3).rsplit(":", 1)[0].strip("[]")  # without its ephemeral port
            self._apply(Accepted(ev.pid, ev.ts, m.group(1), m.group(2), peer))

    def h_send(self, ev: Syscall, task: _Task) -> None:
        args = split_args(ev.args)
        sock = self._socket_of(args[0])
        annot = annotation(args[0]) or ""
        family = sock[0] if sock else None
        if family == "AF_NETLINK" or "NETLINK:" in annot:
            protocol = sock[2] if sock else None
            if protocol is None:
                protocol = netlink_protocol_from_annotation(annot)
            ops = tuple(decode_netlink_send(protocol, ev.name, ev.args)) if protocol else ()
            self._apply(NetlinkSent(ev.pid, ev.ts, ev.name, protocol or None, ops, ev.errno))
            return
        payload_text = args[1] if len(args) > 1 else ""
        dest = None
        if ev.name == "sendto":
            if len(args) > _SENDTO_DEST and args[_SENDTO_DEST] != "NULL":
                dest = parse_sockaddr(args[_SENDTO_DEST])
        else:  # sendmsg
            m = _MSG_NAME.search(payload_text)
            if m:
                dest = parse_sockaddr(m.group(1))
        if family is None and "UNIX" in annot:
            family = "AF_UNIX"
        payload = b""
        if family == "AF_UNIX" or (dest is not None and dest.family == "AF_UNIX"):
            payload = (string_arg(payload_text) or b"") if ev.name == "sendto" else \
                b"".join(unescape(m.group(1)[1:-1]) for m in _IOV_BASE.finditer(payload_text))
        self._apply(Sent(ev.pid, ev.ts, ev.name, family, dest, payload, ev.errno))

    def h_setsockopt(self, ev: Syscall, task: _Task) -> None:
        args = split_args(ev.args)
        self._apply(SockoptSet(ev.pid, ev.ts, first_symbol(args[1]) or args[1], first_symbol(args[2]) or args[2],
                               ev.errno))

    def h_ioctl(self, ev: Syscall, task: _Task) -> None:
        args = split_args(ev.args)
        annot = annotation(args[0])
        if not annot or annotated_device(annot) is None:
            return  # only device ioctls decide anything (TUNSETIFF, ...)
        device_path = annotated_path(annot)
        if device_path is None:
            return  # "<char 10:200>" without a path before it: nothing to name
        self._apply(DeviceIoctl(ev.pid, ev.ts, device_path, first_symbol(args[1]) or args[1], ev.errno))

    # -- behaviour that decides hardening directives ------------------------

    def h_mmap(self, ev: Syscall, task: _Task) -> None:
        prot = int_arg(split_args(ev.args)[2]) or 0
        if prot & PROT_EXEC:
            self._apply(MemoryProtection(ev.pid, ev.ts, ev.name, prot))

    def h_personality(self, ev: Syscall, task: _Task) -> None:
        self._apply(Personality(ev.pid, ev.ts, ev.args.split(" ", 1)[0]))

    def h_sched(self, ev: Syscall, task: _Task) -> None:
        if _REALTIME.search(ev.args):
            self._apply(RealtimeScheduling(ev.pid, ev.ts, ev.name))

    def h_namespace(self, ev: Syscall, task: _Task) -> None:
        if ev.name == "unshare":
            flags = int_arg(ev.args) or 0
        else:  # setns(fd, nstype)
            args = split_args(ev.args)
            flags = int_arg(args[1]) or 0
            if flags == 0:  # any type: the fd's annotation may tell
                m = _NAMESPACE_WORD.search(annotation(args[0]) or "")
                self._apply(NamespaceEntered(ev.pid, ev.ts, ev.name, m.group(1) if m else "any"))
                return
        for bit, ns in NAMESPACE_FLAGS.items():
            if flags & bit:
                self._apply(NamespaceEntered(ev.pid, ev.ts, ev.name, ns))

    def h_adjtimex(self, ev: Syscall, task: _Task) -> None:
        m = _MODES_FIELD.search(ev.args)
        if m and int(m.group(1), 0):  # modes=0 only reads the clock state
            self._apply(ClockAdjusted(ev.pid, ev.ts, ev.name))

    def h_kill(self, ev: Syscall, task: _Task) -> None:
        target = int_arg(split_args(ev.args)[_SIGNAL_TARGET[ev.name]])
        if target is not None and target > 0:
            self._apply(SignalSent(ev.pid, ev.ts, ev.name, target, ev.errno))


_SOCKADDR_FAMILY = re.compile(r"sa_family=(?:0x[0-9a-f]+|\d+) /\* (AF_\w+) \*/|sa_family=(AF_\w+)")
_PORT = re.compile(r"htons\((\d+)\)")
_INET = re.compile(r'inet_addr\("([^"]*)"\)')
_INET6 = re.compile(r'inet_pton\(AF_INET6, "([^"]*)"')
_SUN_PATH = re.compile(r'sun_path=(@?)("(?:[^"\\]|\\.)*")')
_NL_GROUPS = re.compile(r"nl_groups=(\w+)")
_SLL_PROTOCOL = re.compile(r"sll_protocol=[^,]*?(ETH_P_\w+)")


def parse_sockaddr(text: str) -> SockAddr | None:
    """SockAddr('AF_INET', '127.0.0.1', 8080) from strace's sockaddr text."""
    m = _SOCKADDR_FAMILY.search(text)
    if not m:
        return None
    family = m.group(1) or m.group(2)
    port = _PORT.search(text)
    address = ""
    if family == "AF_INET":
        a = _INET.search(text)
        address = a.group(1) if a else ""
    elif family == "AF_INET6":
        a = _INET6.search(text)
        address = a.group(1) if a else ""
    elif family == "AF_UNIX":
        a = _SUN_PATH.search(text)
        if a:
            address = a.group(1) + encode_path(string_arg(a.group(2)) or b"")
    elif family == "AF_NETLINK":
        g = _NL_GROUPS.search(text)
        address = f"groups={g.group(1)}" if g else ""
    elif family == "AF_PACKET":
        p = _SLL_PROTOCOL.search(text)
        address = p.group(1) if p else ""
    return SockAddr(family, address, int(port.group(1)) if port else None)


_HANDLERS = {
    **{name: "h_fork" for name in _FORKS},
    **{name: "h_exec" for name in _EXECS},
    **{name: "h_chdir" for name in _CHDIRS},
    **{name: "h_identity" for name in ("setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
                                       "setgroups", "setfsuid", "setfsgid", "capset")},
    **{name: "h_file" for name in _FILES},
    **{name: "h_open" for name in _OPENS},
    **{name: "h_rename" for name in _RENAMES},
    **{name: "h_chmod" for name in _MODES},
    **{name: "h_chown" for name in _OWNERS},
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
    **{name: "h_kill" for name in _SIGNAL_TARGET},
}


def decoded_syscalls() -> frozenset[str]:
    """The syscalls this decoder makes facts of (fast mode counts those its kernel side does not)."""
    return frozenset(_HANDLERS)


def collect_strace(lines, start_cwd: bytes = b"/", **collector_options) -> FactCollector:
    """A FactCollector fed with strace LINES (a recorded trace, a test's lines)."""
    collector = FactCollector(**collector_options)
    decoder = StraceDecoder(collector, start_cwd)
    for line in lines:
        decoder.feed_line(line)
    return collector
