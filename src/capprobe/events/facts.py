"""Typed syscall facts: the one vocabulary between a tracer backend and the aggregation.

Every tracer backend turns what it saw into these records, and the aggregator
(``facts.collector.FactCollector.apply``) folds them into the profile's tables.
Nothing downstream of this module reads strace text or BPF records.

Conventions shared by every fact:
- ``pid`` is the thread id the kernel saw (strace's pid column, BPF's ``tid``);
  ``ts`` is wall-clock seconds (``time.time()`` scale) at syscall entry.
- ``call`` is the syscall's name as the kernel's syscall table spells it ("openat").
- ``errno`` is the symbolic name of a failure ("EACCES"), None on success.
- paths are exact bytes, absolute and normalized (``paths.resolve``); a backend that
  cannot resolve a path (unknown dirfd) leaves the fact out rather than guess.
- socket families, types, levels and options are the kernel headers' names
  ("AF_INET", "SOCK_STREAM", "SO_REUSEPORT"), as strace prints them; a number that
  has no name stays a decimal string.

Which backend fills what:
- strace (``facts.decode.StraceDecoder``, full mode): every type below, from the
  ``-yy -X verbose`` text. Its SyscallSeen carries the parsed line as ``operand``
  (decoded only when a capability check asks, see ``FactCollector.operand_at``).
- in-kernel backend (``tracing/kernel.py``, fast mode): SyscallSeen (``operand`` a
  string when it has one), the process timeline (Forked, Exec, Exited), and the
  facts its BPF program captures arguments for (file ops, sockets, binds,
  connects, netlink bytes decoded to NetlinkSent, ...). A type it does not fill
  is listed in the profile's method notes by that backend.

Records are frozen: the aggregator may keep them (signals) and a backend may
reuse one for several pids' bookkeeping without copying.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..facts.netlink import NetlinkOp

# -- every call ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SyscallSeen:
    """One completed syscall: counted by name and errno, and remembered in the process's
    recent-call window so a kernel capability check can find what it was about.

    operand: a str is the operand itself (path, address, option); anything else is the
    backend's own record of the call, turned into an operand only on demand by the
    ``operand_decoder`` the aggregator was given (strace: the parsed line)."""

    pid: int
    ts: float
    name: str
    errno: str | None = None
    ret: int | None = None  # None when unknown (strace's "?": exit_group, a killed call)
    operand: object = None


# -- the process timeline -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Forked:
    """PID created CHILD (fork, vfork, clone, clone3). A backend may deliver it twice for
    one child (strace shows the child's first call before the parent's clone returns:
    the first with thread=False, the second with the real flags); the second only adds."""

    pid: int  # the parent
    ts: float
    child: int
    thread: bool = False  # CLONE_THREAD: a thread of PID's thread group, not a process
    call: str = "clone"


@dataclass(frozen=True, slots=True)
class Adopted:
    """A task already running when the backend attached (`capprobe attach`), as /proc showed
    it. The first one adopted is the root; a thread (pid != tgid) is not listed on its own."""

    pid: int
    ts: float
    tgid: int
    ppid: int | None = None
    exe: bytes | None = None
    euid: int | None = None  # None: the uid of the root process


@dataclass(frozen=True, slots=True)
class Exec:
    """A successful execve/execveat: PID now runs PATH (a failed one is a FileOp "exec")."""

    pid: int
    ts: float
    path: bytes
    argv: tuple[bytes, ...] = ()
    call: str = "execve"


@dataclass(frozen=True, slots=True)
class Exited:
    """A traced process or thread ended: exit STATUS, or killed by SIGNAL ("SIGKILL")."""

    pid: int
    ts: float
    status: int | None = None
    signal: str | None = None


@dataclass(frozen=True, slots=True)
class SignalReceived:
    """A reload / log-reopen signal delivered to a traced process (run.signals_received)."""

    pid: int
    ts: float
    signal: str  # "SIGHUP"
    sender: int | None = None  # si_pid; None for a signal the kernel sent


@dataclass(frozen=True, slots=True)
class IdentityChanged:
    """setuid/setresuid/setgroups/capset and kin, successful or not.

    args: the arguments as strace prints them (the profile keeps them as evidence);
    euid: the effective uid a successful call set, None when it sets none."""

    pid: int
    ts: float
    call: str
    args: str
    result: int | None
    errno: str | None = None
    euid: int | None = None


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A record the backend could not read or decode: counted, with an example kept,
    so nothing is dropped silently."""

    text: str


# -- files --------------------------------------------------------------------

# FileOp.op values (the schema's write vocabulary, WRITE_OPS, is the collector's):
# read write create truncate delete rmdir rename_from rename_to link symlink chmod chown
# mkdir mknod utime xattr exec write_test device_denied


@dataclass(frozen=True, slots=True)
class FileOp:
    """PID did OP on PATH through CALL (failed with ERRNO when set)."""

    pid: int
    ts: float
    call: str
    path: bytes
    op: str
    errno: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceNumber:
    kind: str  # "char" | "block"
    major: int
    minor: int


@dataclass(frozen=True, slots=True)
class Opened:
    """open/openat/openat2/creat of PATH (the kernel's resolved path when the backend has it)
    with FLAGS (O_* bits); DEVICE when the opened file is a device node."""

    pid: int
    ts: float
    call: str
    path: bytes
    flags: int
    errno: str | None = None
    device: DeviceNumber | None = None


@dataclass(frozen=True, slots=True)
class Renamed:
    """rename/renameat/renameat2; either side None when the backend could not name it."""

    pid: int
    ts: float
    call: str
    src: bytes | None
    dst: bytes | None
    errno: str | None = None


@dataclass(frozen=True, slots=True)
class ModeChanged:
    """chmod and kin; MODE None when the backend could not read it."""

    pid: int
    ts: float
    call: str
    path: bytes
    mode: int | None
    errno: str | None = None


@dataclass(frozen=True, slots=True)
class OwnerChanged:
    """chown and kin; -1 keeps that id, None when the backend could not read it."""

    pid: int
    ts: float
    call: str
    path: bytes
    uid: int | None
    gid: int | None
    errno: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceIoctl:
    """An ioctl on a device node (TUNSETIFF on /dev/net/tun)."""

    pid: int
    ts: float
    path: bytes
    request: str  # "TUNSETIFF", or the number as text when it has no name
    errno: str | None = None


# -- network ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SockAddr:
    """A socket address: ADDRESS is "127.0.0.1", "::1", a unix path (encoded, "@" for the
    abstract namespace), "groups=0x1" (netlink), "ETH_P_ALL" (packet); "" when none."""

    family: str
    address: str = ""
    port: int | None = None


@dataclass(frozen=True, slots=True)
class SocketOpened:
    """socket/socketpair (failed with ERRNO when set: a refused family is evidence too)."""

    pid: int
    ts: float
    call: str
    family: str
    type: str
    protocol: str | None  # None for socketpair
    errno: str | None = None


@dataclass(frozen=True, slots=True)
class Bound:
    pid: int
    ts: float
    address: SockAddr
    socket_type: str | None = None  # "SOCK_STREAM", or strace's "TCP"/"UDP" when that is all it knew
    errno: str | None = None


@dataclass(frozen=True, slots=True)
class Listened:
    pid: int
    ts: float
    socket: str  # the socket as described by the backend ("TCP:[127.0.0.1:80]"), "" unknown
    errno: str | None = None


@dataclass(frozen=True, slots=True)
class Connected:
    pid: int
    ts: float
    address: SockAddr
    errno: str | None = None  # EINPROGRESS is kept: the aggregator reads it as success


@dataclass(frozen=True, slots=True)
class Accepted:
    """An accepted connection: listening side LOCAL ("127.0.0.1:80") and PEER address."""

    pid: int
    ts: float
    protocol: str  # "TCP", "UNIX"
    local: str
    peer: str  # without its ephemeral port


@dataclass(frozen=True, slots=True)
class Sent:
    """sendto/sendmsg on a non-netlink socket: FAMILY of the socket (None unknown), DEST the
    explicit destination, PAYLOAD the bytes sent on a unix socket (sd_notify words are read
    from it; other sends may leave it empty)."""

    pid: int
    ts: float
    call: str
    family: str | None
    dest: SockAddr | None
    payload: bytes = b""
    errno: str | None = None


@dataclass(frozen=True, slots=True)
class NetlinkSent:
    """A send on a netlink socket: PROTOCOL ("NETLINK_ROUTE"; None: unknown, counted as
    undecoded) and the requests in it, decoded (``facts.netlink``)."""

    pid: int
    ts: float
    call: str
    protocol: str | None
    ops: tuple[NetlinkOp, ...] = ()
    errno: str | None = None


@dataclass(frozen=True, slots=True)
class SockoptSet:
    pid: int
    ts: float
    level: str  # "SOL_SOCKET"
    option: str  # "SO_REUSEPORT"
    errno: str | None = None


# -- behaviour that decides hardening directives --------------------------------


@dataclass(frozen=True, slots=True)
class MemoryProtection:
    """mmap/mprotect/pkey_mprotect with PROT bits (PROT_WRITE 0x2, PROT_EXEC 0x4)."""

    pid: int
    ts: float
    call: str
    prot: int


@dataclass(frozen=True, slots=True)
class NamespaceEntered:
    """clone/unshare/setns into a new NAMESPACE ("net", "mnt", ...; "any" for setns(fd, 0)
    when the backend cannot tell the fd's type)."""

    pid: int
    ts: float
    call: str
    namespace: str


@dataclass(frozen=True, slots=True)
class Personality:
    pid: int
    ts: float
    persona: str  # the argument as strace prints it ("0xffffffff", "PER_LINUX")


@dataclass(frozen=True, slots=True)
class RealtimeScheduling:
    """sched_setscheduler/sched_setattr asking for SCHED_FIFO, SCHED_RR or SCHED_DEADLINE."""

    pid: int
    ts: float
    call: str


@dataclass(frozen=True, slots=True)
class ClockAdjusted:
    """adjtimex/clock_adjtime that changes the clock (modes != 0; modes 0 only reads it)."""

    pid: int
    ts: float
    call: str


@dataclass(frozen=True, slots=True)
class SignalSent:
    """kill/tkill/tgkill to TARGET (> 0): the aggregator decides whether it left the tree."""

    pid: int
    ts: float
    call: str
    target: int
    errno: str | None = None


Fact = (SyscallSeen | Forked | Adopted | Exec | Exited | SignalReceived | IdentityChanged | Unreadable
        | FileOp | Opened | Renamed | ModeChanged | OwnerChanged | DeviceIoctl
        | SocketOpened | Bound | Listened | Connected | Accepted | Sent | NetlinkSent | SockoptSet
        | MemoryProtection | NamespaceEntered | Personality | RealtimeScheduling | ClockAdjusted
        | SignalSent)
