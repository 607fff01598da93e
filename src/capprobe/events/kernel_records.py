"""The fast mode's bpftrace output -> records -> typed syscall facts (pure; no I/O).

bpftrace runs with ``-f json``: each printf is one JSON object whose "data" is one
tab-separated line (tracing/kernel_program.py writes the program; its record layout is
described at the top of probes/kernel_facts.bt). A call takes several lines: the ones its
entry probe printed (second path, argv, payload, destination) and the ones its exit probe
printed (the result R, first path, address). Lines of one probe run are contiguous for one
thread; entry and exit may come from different CPUs, so the entry's lines carry the entry
time and are joined to the R record that carries the same (``RecordAssembler``).

``KernelDecoder`` turns a joined call into the same facts (events/facts.py) the strace decoder
makes. A path is the text the target passed, normalised only lexically, against a cwd the
decoder followed itself (strace's at the switch, then fork, chdir); an open's path follows
only the symlinks root alone can change. Whatever would have to be named from live state after the call (a
dirfd, an fd argument, the cwd of a process first seen after the switch, ".." after a component
that may be a symlink) could have been changed by the target by then: it becomes an
``Unreadable`` with the reason, counted in ``unresolved``, never a fact. The ``Resolver`` (live
/proc) names sockets, the device behind an ioctl's fd (checked against the device number the
kernel read at the call), and follows in an opened path the symlinks only root can change.
"""

from __future__ import annotations

import errno as errno_names
import ipaddress
import json
import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Protocol

from ..facts.decode import NAMESPACE_FLAGS, euid_set_by
from ..facts.netlink import _NETLINK_PROTOCOL_NUMBERS, decode_netlink_bytes
from ..model import WRITE_TEST
from ..paths import resolve
from .facts import (
    Accepted,
    Bound,
    Connected,
    DeviceIoctl,
    DeviceNumber,
    Exec,
    Exited,
    FileOp,
    Forked,
    IdentityChanged,
    Listened,
    MemoryProtection,
    ModeChanged,
    NamespaceEntered,
    NetlinkSent,
    Opened,
    OwnerChanged,
    Renamed,
    Sent,
    SignalReceived,
    SignalSent,
    SockAddr,
    SocketOpened,
    SockoptSet,
    SyscallSeen,
    Unreadable,
)

GIDS_READ = 4  # kernel_program.GIDS_KEPT
STRLEN = 200  # BPFTRACE_STRLEN: str() keeps 199 bytes; a string that long may have been cut
AT_FDCWD = -100
AT_REMOVEDIR, AT_EMPTY_PATH = 0x200, 0x1000
W_OK = 0x2
O_WRONLY, O_CREAT, O_TRUNC = 0o1, 0o100, 0o1000
CLONE_FS, CLONE_THREAD = 0x200, 0x10000
CSIGNAL = 0x80
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET = 1, 2, 10, 16, 17

# bpftrace 0.17's JSON writer sign-extends bytes >= 0x80 ("\uffffffe9"); any other \u is one byte.
# Only after an odd run of backslashes: "\\uffffff41" is an escaped backslash and the text uffffff41.
_HIGH_BYTE = re.compile(r"(?<!\\)((?:\\\\)*)\\uffffff([0-9a-f]{2})")


# -- lines -> records ----------------------------------------------------------------


def json_data(line: bytes) -> tuple[str, object] | None:
    """(type, data) of one bpftrace JSON line; printf data as exact bytes (latin-1 str)."""
    text = _HIGH_BYTE.sub(r"\1\\u00\2", line.decode("latin-1"))
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    return str(obj.get("type")), obj.get("data")


@dataclass(frozen=True, slots=True)
class RawAddr:
    """A sockaddr as the program read it: family, port (host order), the 20 bytes after
    the port, or a unix path (abstract: without its leading NUL)."""

    family: int
    port: int = 0
    rest: bytes = b""
    unix_path: bytes | None = None
    abstract: bool = False


@dataclass(slots=True)
class KernelCall:
    """One decoded call: the R record plus the lines that belong to it."""

    ts_ns: int
    tgid: int
    tid: int
    exe_ino: int
    nr: int
    ret: int
    numbers: tuple[int, ...]
    path: bytes | None = None
    path2: bytes | None = None
    addr: RawAddr | None = None
    exec_path: bytes | None = None
    argv: list = field(default_factory=list)
    argv_cut: bool = False
    payload: bytes = b""
    payload_len: int = 0
    socket_family: int = 0
    socket_protocol: int = 0
    fd_target: bytes | None = None  # an ioctl's fd as /proc named it when the record was read
    local: RawAddr | None = None  # the socket's own address (accept: the connection's; bind, listen)
    sock: tuple[int, int, int, int] | None = None  # (family, type, protocol, inode) of that socket


@dataclass(frozen=True, slots=True)
class FirstSeen:
    """The first time syscall NR ended with ERR (0: success) in this run."""

    ts_ns: int
    tgid: int
    tid: int
    nr: int
    err: int


@dataclass(frozen=True, slots=True)
class TaskExit:
    ts_ns: int
    tgid: int
    tid: int
    code: int  # as wait(2) encodes it


@dataclass(frozen=True, slots=True)
class SignalDelivered:
    ts_ns: int
    tgid: int
    tid: int
    signal: int
    sender: int  # 0: not known (the kernel sent it, or it was generated before the program ran)


@dataclass(frozen=True, slots=True)
class Control:
    """Handshake answer ("H", n), the switch ("M", ts_ns), end-of-run figures ("U", unpaired),
    ("lost", n), ("calls", {(nr, err): count})."""

    kind: str
    value: object


Record = KernelCall | FirstSeen | TaskExit | SignalDelivered | Control


class RecordAssembler:
    """Feeds bpftrace JSON lines; collects finished records in .ready (in arrival order).

    A call is finished once its R record and its entry lines are both in, or on flush().
    """

    def __init__(self, entry_printing: frozenset[int] = frozenset()) -> None:
        """ENTRY_PRINTING: the syscall numbers whose entry probe prints lines of its own."""
        self.entry_printing = entry_printing
        self.ready: list[Record] = []
        self.unreadable: list[str] = []
        self._entries: dict[tuple[int, int], KernelCall] = {}  # (tid, entry ns) -> entry lines so far
        self._open: dict[int, KernelCall] = {}  # tid -> the record its next lines belong to
        self._waiting: dict[tuple[int, int], KernelCall] = {}  # R records whose entry lines may follow

    def feed(self, line: bytes) -> None:
        parsed = json_data(line)
        if parsed is None:
            if line.strip():
                self.unreadable.append(line[:300].decode("latin-1"))
            return
        kind, data = parsed
        if kind == "printf" and isinstance(data, str):
            try:
                # only the newline the program's printf adds: a path may end in its own
                self._printf(data.removesuffix("\n").encode("latin-1"))
            except (ValueError, IndexError):
                self.unreadable.append(data[:300])
        elif kind == "lost_events" and isinstance(data, dict):
            self.ready.append(Control("lost", int(data.get("events", 0))))
        elif kind == "map" and isinstance(data, dict) and "@calls" in data:
            calls = {}
            for key, count in (data["@calls"] or {}).items():
                nr, err = (int(x) for x in str(key).split(","))
                calls[(nr, err)] = int(count)
            self.ready.append(Control("calls", calls))

    def _printf(self, data: bytes) -> None:
        kind, _, rest = data.partition(b"\t")
        if kind == b"R":
            f = rest.split(b"\t")
            ts, tgid, tid, ino, nr, ret = (int(x) for x in f[:6])
            call = KernelCall(ts, tgid, tid, ino, nr, ret, tuple(int(x) for x in f[6:]))
            entry = self._entries.pop((tid, ts), None)
            if entry is not None:
                _take_entry(call, entry)
                self.ready.append(call)
            elif nr in self.entry_printing:
                self._waiting[(tid, ts)] = call
            else:
                self.ready.append(call)
            self._open[tid] = call
        elif kind in (b"2", b"E", b"P"):
            f = rest.split(b"\t", 2)
            tid, ts = int(f[0]), int(f[1])
            entry = KernelCall(ts, 0, tid, 0, -1, 0, ())
            if kind == b"2":
                entry.path2 = f[2]
            elif kind == b"E":
                entry.exec_path = f[2]
            else:  # P: family, length, protocol of the socket sent on
                family, length, protocol = (int(x) for x in f[2].split(b"\t"))
                entry.socket_family, entry.payload_len, entry.socket_protocol = family, length, protocol
            waiting = self._waiting.pop((tid, ts), None)
            if waiting is not None:  # the exit's lines came first (another CPU's buffer)
                _take_entry(waiting, entry)
                self.ready.append(waiting)
            else:
                self._entries[(tid, ts)] = entry
            self._open[tid] = entry
        elif kind in (b"1", b"N", b"U", b"W", b"A", b"a", b"L"):
            f = rest.split(b"\t", 1)
            target = self._open.get(int(f[0]))
            if target is None:
                self.unreadable.append(data[:300].decode("latin-1"))
                return
            tail = f[1] if len(f) > 1 else b""
            if kind == b"1":
                target.path = tail
            elif kind == b"A":
                target.argv.append(tail)
            elif kind == b"a":
                target.argv_cut = True
            elif kind == b"L":
                family, stype, protocol, port, v4, *v6, inode = (int(x) for x in tail.split(b"\t"))
                # laid out like a sockaddr's tail: IPv4 at 0, IPv6 at 4 (after sin6_flowinfo)
                target.local = RawAddr(family, port, struct.pack("<I", v4)
                                       + b"".join(struct.pack("<I", w) for w in v6))
                target.sock = (family, stype, protocol, inode)
            elif kind == b"U":
                abstract, length, path = tail.split(b"\t", 2)
                if abstract == b"1" and int(length) > 3:  # sun_family, the leading NUL, the name
                    path = path[:int(length) - 3]
                target.addr = RawAddr(AF_UNIX, unix_path=path, abstract=abstract == b"1")
            elif kind == b"N":
                head, q1, q2, q3 = (int(x) for x in tail.split(b"\t"))
                port = head >> 16
                target.addr = RawAddr(head & 0xFFFF, ((port & 0xFF) << 8) | (port >> 8),
                                      struct.pack("<QQI", q1, q2, q3 & 0xFFFFFFFF))
            else:  # W: 64 payload bytes at index i
                i, *words = tail.split(b"\t")
                chunk = b"".join(struct.pack("<Q", int(w, 16)) for w in words)
                start = int(i) * 64
                target.payload = target.payload[:start].ljust(start, b"\0") + chunk
        elif kind == b"S":
            ts, tgid, tid, _ino, nr, err = (int(x) for x in rest.split(b"\t"))
            self.ready.append(FirstSeen(ts, tgid, tid, nr, err))
        elif kind == b"X":
            ts, tgid, tid, _ino, code = (int(x) for x in rest.split(b"\t"))
            self.ready.append(TaskExit(ts, tgid, tid, code))
        elif kind == b"G":
            ts, tgid, tid, sig, sender = (int(x) for x in rest.split(b"\t"))
            self.ready.append(SignalDelivered(ts, tgid, tid, sig, sender))
        elif kind in (b"H", b"M", b"U"):
            self.ready.append(Control(kind.decode(), int(rest.split(b"\t")[0])))
        else:
            self.unreadable.append(data[:300].decode("latin-1"))

    def flush(self) -> None:
        """The run is over: calls still waiting for entry lines go as they are."""
        self.ready.extend(self._waiting.values())
        self._waiting.clear()
        self._entries.clear()

    def take(self) -> list[Record]:
        out, self.ready = self.ready, []
        return out


def _take_entry(call: KernelCall, entry: KernelCall) -> None:
    call.path2 = entry.path2 if entry.path2 is not None else call.path2
    call.exec_path = entry.exec_path
    call.argv = entry.argv or call.argv
    call.argv_cut = call.argv_cut or entry.argv_cut
    if entry.socket_family or entry.payload_len or entry.payload or entry.addr:
        call.socket_family, call.payload_len = entry.socket_family, entry.payload_len
        call.socket_protocol = entry.socket_protocol
        call.payload = entry.payload
        call.addr = entry.addr or call.addr


# -- names ---------------------------------------------------------------------------------

_UNISTD = re.compile(r"#define __NR_(\w+)\s+(\d+)")
STRACE_KNOWS_UP_TO = 450  # strace 6.1 prints a newer syscall as its number (needs.py)


def syscall_numbers(unistd_text: str) -> dict[str, int]:
    """Syscall name -> number, from asm/unistd_64.h text."""
    return {name: int(n) for name, n in _UNISTD.findall(unistd_text)}


def syscall_names(numbers: dict[str, int]) -> dict[int, str]:
    """Syscall number -> name as strace spells it (past its table: the number, "syscall_0x1c4")."""
    return {n: (name if n <= STRACE_KNOWS_UP_TO else f"syscall_{n:#x}") for name, n in numbers.items()}


FAMILIES = {int(f): f.name for f in socket.AddressFamily}
SOCK_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 4: "SOCK_RDM", 5: "SOCK_SEQPACKET",
              6: "SOCK_DCCP", 10: "SOCK_PACKET"}
IP_PROTOCOLS = {0: "IPPROTO_IP", 1: "IPPROTO_ICMP", 6: "IPPROTO_TCP", 17: "IPPROTO_UDP", 58: "IPPROTO_ICMPV6",
                132: "IPPROTO_SCTP", 136: "IPPROTO_UDPLITE", 255: "IPPROTO_RAW", 262: "IPPROTO_MPTCP"}
ETH_PROTOCOLS = {0x0003: "ETH_P_ALL", 0x0800: "ETH_P_IP", 0x0806: "ETH_P_ARP", 0x86DD: "ETH_P_IPV6"}
LEVELS = {1: "SOL_SOCKET", 0: "SOL_IP", 6: "SOL_TCP", 17: "SOL_UDP", 41: "SOL_IPV6", 263: "SOL_PACKET",
          270: "SOL_NETLINK", 58: "SOL_ICMPV6", 255: "SOL_RAW"}
# linux/socket.h, in.h, tcp.h, in6.h as strace names them
_SO = ["SO_DEBUG", "SO_REUSEADDR", "SO_TYPE", "SO_ERROR", "SO_DONTROUTE", "SO_BROADCAST", "SO_SNDBUF", "SO_RCVBUF", "SO_KEEPALIVE", "SO_OOBINLINE", "SO_NO_CHECK", "SO_PRIORITY", "SO_LINGER", "SO_BSDCOMPAT", "SO_REUSEPORT", "SO_PASSCRED", "SO_PEERCRED", "SO_RCVLOWAT", "SO_SNDLOWAT", "SO_RCVTIMEO_OLD", "SO_SNDTIMEO_OLD", "SO_SECURITY_AUTHENTICATION", "SO_SECURITY_ENCRYPTION_TRANSPORT", "SO_SECURITY_ENCRYPTION_NETWORK", "SO_BINDTODEVICE", "SO_ATTACH_FILTER", "SO_DETACH_FILTER", "SO_PEERNAME", "SO_TIMESTAMP_OLD", "SO_ACCEPTCONN", "SO_PEERSEC", "SO_SNDBUFFORCE", "SO_RCVBUFFORCE", "SO_PASSSEC", "SO_TIMESTAMPNS_OLD", "SO_MARK", "SO_TIMESTAMPING_OLD", "SO_PROTOCOL", "SO_DOMAIN", "SO_RXQ_OVFL", "SO_WIFI_STATUS", "SO_PEEK_OFF", "SO_NOFCS", "SO_LOCK_FILTER", "SO_SELECT_ERR_QUEUE", "SO_BUSY_POLL", "SO_MAX_PACING_RATE", "SO_BPF_EXTENSIONS", "SO_INCOMING_CPU", "SO_ATTACH_BPF", "SO_ATTACH_REUSEPORT_CBPF", "SO_ATTACH_REUSEPORT_EBPF", "SO_CNX_ADVICE", "SCM_TIMESTAMPING_OPT_STATS", "SO_MEMINFO", "SO_INCOMING_NAPI_ID", "SO_COOKIE", "SCM_TIMESTAMPING_PKTINFO", "SO_PEERGROUPS", "SO_ZEROCOPY", "SO_TXTIME", "SO_BINDTOIFINDEX"]
_IP = {1: "IP_TOS", 2: "IP_TTL", 3: "IP_HDRINCL", 4: "IP_OPTIONS", 6: "IP_RECVOPTS", 7: "IP_RETOPTS",
       8: "IP_PKTINFO", 10: "IP_MTU_DISCOVER", 11: "IP_RECVERR", 12: "IP_RECVTTL", 13: "IP_RECVTOS",
       14: "IP_MTU", 15: "IP_FREEBIND", 19: "IP_TRANSPARENT", 20: "IP_RECVORIGDSTADDR", 24: "IP_BIND_ADDRESS_NO_PORT",
       32: "IP_MULTICAST_IF", 33: "IP_MULTICAST_TTL", 34: "IP_MULTICAST_LOOP", 35: "IP_ADD_MEMBERSHIP",
       36: "IP_DROP_MEMBERSHIP"}
_TCP = {1: "TCP_NODELAY", 2: "TCP_MAXSEG", 3: "TCP_CORK", 4: "TCP_KEEPIDLE", 5: "TCP_KEEPINTVL", 6: "TCP_KEEPCNT",
        7: "TCP_SYNCNT", 8: "TCP_LINGER2", 9: "TCP_DEFER_ACCEPT", 10: "TCP_WINDOW_CLAMP", 11: "TCP_INFO",
        12: "TCP_QUICKACK", 13: "TCP_CONGESTION", 18: "TCP_USER_TIMEOUT", 23: "TCP_FASTOPEN", 30: "TCP_FASTOPEN_CONNECT"}
_IPV6 = {16: "IPV6_UNICAST_HOPS", 17: "IPV6_MULTICAST_IF", 18: "IPV6_MULTICAST_HOPS", 19: "IPV6_MULTICAST_LOOP",
         20: "IPV6_ADD_MEMBERSHIP", 21: "IPV6_DROP_MEMBERSHIP", 26: "IPV6_V6ONLY", 49: "IPV6_RECVPKTINFO",
         67: "IPV6_TCLASS", 75: "IPV6_TRANSPARENT", 76: "IPV6_UNICAST_IF", 77: "IPV6_RECVFRAGSIZE"}
OPTIONS = {
    1: {i: name for i, name in enumerate(_SO, 1)}, 0: _IP, 6: _TCP, 41: _IPV6,
    270: {1: "NETLINK_ADD_MEMBERSHIP", 2: "NETLINK_DROP_MEMBERSHIP", 3: "NETLINK_PKTINFO",
          11: "NETLINK_NO_ENOBUFS", 12: "NETLINK_LISTEN_ALL_NSID", 16: "NETLINK_GET_STRICT_CHK"},
    263: {1: "PACKET_ADD_MEMBERSHIP", 2: "PACKET_DROP_MEMBERSHIP"},
}
IOCTLS = {0x400454CA: "TUNSETIFF", 0x400454CB: "TUNSETPERSIST", 0x800454D2: "TUNGETIFF", 0x5401: "TCGETS",
          0x5413: "TIOCGWINSZ", 0x5421: "FIONBIO", 0x5451: "FIOCLEX", 0x541B: "FIONREAD"}
SIGNALS = {int(s): s.name for s in __import__("signal").Signals}


# a call interrupted by a signal, restarted by the kernel or turned into EINTR: strace names them
KERNEL_RESTART_ERRNOS = {512: "ERESTARTSYS", 513: "ERESTARTNOINTR", 514: "ERESTARTNOHAND", 515: "ENOIOCTLCMD",
                         516: "ERESTART_RESTARTBLOCK"}


def errno_name(err: int) -> str:
    return errno_names.errorcode.get(err) or KERNEL_RESTART_ERRNOS.get(err, str(err))


def _signed32(value: int) -> int:
    """An int argument the program widened without its sign (AT_FDCWD, uid -1)."""
    return value - (1 << 32) if (1 << 31) <= value < (1 << 32) else value


def protocol_name(family: int, protocol: int) -> str:
    if family in (AF_INET, AF_INET6):
        return IP_PROTOCOLS.get(protocol, str(protocol))
    if family == AF_NETLINK:
        return _NETLINK_PROTOCOL_NUMBERS.get(protocol, str(protocol))
    if family == AF_PACKET:
        swapped = ((protocol & 0xFF) << 8) | ((protocol >> 8) & 0xFF)
        return ETH_PROTOCOLS.get(swapped, str(protocol))
    return str(protocol)


def _ipv6_text(packed: bytes) -> str:
    """As inet_ntop (and so strace) writes it: an IPv4-mapped address ends in dotted quad."""
    address = ipaddress.IPv6Address(packed)
    return f"::ffff:{address.ipv4_mapped}" if address.ipv4_mapped else address.compressed


def sockaddr(raw: RawAddr) -> SockAddr:
    """The SockAddr strace's text would have given for RAW (decode.parse_sockaddr)."""
    family = FAMILIES.get(raw.family, str(raw.family))
    if raw.family == AF_INET:
        return SockAddr(family, str(ipaddress.IPv4Address(raw.rest[:4])), raw.port)
    if raw.family == AF_INET6:
        return SockAddr(family, _ipv6_text(raw.rest[4:20]), raw.port)
    if raw.family == AF_UNIX:
        from ..paths import encode_path
        return SockAddr(family, ("@" if raw.abstract else "") + encode_path(raw.unix_path or b""))
    if raw.family == AF_NETLINK:
        return SockAddr(family, f"groups={struct.unpack_from('<I', raw.rest, 4)[0]:08x}")
    if raw.family == AF_PACKET:
        proto = ((raw.port & 0xFF) << 8) | (raw.port >> 8)  # sll_protocol sits where a port would
        return SockAddr(family, ETH_PROTOCOLS.get(proto, ""))
    return SockAddr(family)


def _listening(call: KernelCall) -> str | None:
    """strace's -yy text of a listening TCP socket, "TCP:[127.0.0.1:80]", from the kernel's socket."""
    if call.sock is None or call.local is None or call.sock[1] != 1 or call.sock[2] != 6:
        return None
    local = sockaddr(call.local)
    if call.local.family == AF_INET6:
        return f"TCPv6:[[{local.address}]:{local.port}]"
    return f"TCP:[{local.address}:{local.port}]"


# -- records -> facts ---------------------------------------------------------------------


class Resolver(Protocol):
    """What the live system says about a task when its record is read (tracing/kernel.py reads
    /proc): for sockets, a device the kernel already named by its number, and the symlinks of
    an opened path that only root can change."""

    def fd_path(self, tgid: int, fd: int) -> bytes | None: ...
    def through_root_symlinks(self, path: bytes) -> bytes: ...
    def device(self, path: bytes) -> DeviceNumber | None: ...
    def socket_name(self, tgid: int, fd: int) -> str | None: ...
    def socket_type(self, tgid: int, fd: int) -> str | None: ...


# path argument (index among the call's arguments) and its dirfd, per call; None: no dirfd
_PATH_AT = {
    "open": (0, None), "creat": (0, None), "openat": (1, 0), "openat2": (1, 0),
    "mkdir": (0, None), "mkdirat": (1, 0), "unlink": (0, None), "unlinkat": (1, 0), "rmdir": (0, None),
    "chmod": (0, None), "fchmodat": (1, 0), "chown": (0, None), "lchown": (0, None), "fchownat": (1, 0),
    "truncate": (0, None), "access": (0, None), "faccessat": (1, 0), "faccessat2": (1, 0),
    "utimensat": (1, 0), "mknod": (0, None), "mknodat": (1, 0), "chdir": (0, None),
    "execve": (0, None), "execveat": (1, 0),
    "link": (1, None), "linkat": (3, 2), "symlink": (1, None), "symlinkat": (2, 1),
    "rename": (0, None), "renameat": (1, 0), "renameat2": (1, 0),
}
_SECOND_PATH_AT = {"rename": (1, None), "renameat": (3, 2), "renameat2": (3, 2)}
_FILE_OPS = {"mkdir": "mkdir", "mkdirat": "mkdir", "unlink": "delete", "unlinkat": "delete", "rmdir": "rmdir",
             "truncate": "truncate", "mknod": "mknod", "mknodat": "mknod",
             "utimensat": "utime", "link": "link", "linkat": "link", "symlink": "symlink", "symlinkat": "symlink",
             "access": WRITE_TEST, "faccessat": WRITE_TEST, "faccessat2": WRITE_TEST}
# calls whose fd argument is named from /proc as soon as the record comes (before the program
# closes it); only ioctl, and only to name a device the kernel identified by its number
FD_CALLS = frozenset({"ioctl"})
S_IFMT, S_IFCHR, S_IFBLK = 0o170000, 0o020000, 0o060000
MINOR_BITS = 20  # the kernel's own dev_t: major << 20 | minor
# why a path is not named: the target can change what these lead to between its call and the read
FROM_PROC = "named from /proc after the call, which the target can change (--full sees it)"
VIA_DIRFD = f"relative to a directory fd: {FROM_PROC}"
VIA_FD = f"fd argument: {FROM_PROC}"
CWD_UNSEEN = f"relative to the cwd of a process first seen after the switch: {FROM_PROC}"
CWD_FCHDIR = f"relative to a cwd set by fchdir: {FROM_PROC}"
CWD_SHARED = "relative to a cwd another process shares (CLONE_FS) or left (unshare): not followed (--full sees it)"
CWD_RACED = "relative to a cwd changed while strace detached: not followed (--full sees it)"
DOT_DOT = "'..' after a component that may be a symlink: the kernel resolves it, not the text (--full sees it)"
UNDECODED = "not decoded by the kernel side (--full decodes it)"


def lexical_path(base: bytes, raw: bytes) -> bytes | None:
    """RAW (relative to BASE) made absolute by its text alone; None when that text may not be
    where the kernel went: a ".." after a component that may be a symlink (the kernel takes the
    symlink's target's parent, the text the component's)."""
    depth = 0
    for part in (raw if raw.startswith(b"/") else base + b"/" + raw).split(b"/"):
        if part == b"..":
            if depth:
                return None
        elif part and part != b".":
            depth += 1
    return resolve(base, raw)


def kernel_device(mode: int, rdev: int) -> DeviceNumber | None:
    """The device of an inode, as the kernel program read its i_mode and i_rdev."""
    if mode & S_IFMT not in (S_IFCHR, S_IFBLK):
        return None
    return DeviceNumber("char" if mode & S_IFMT == S_IFCHR else "block", rdev >> MINOR_BITS,
                        rdev & ((1 << MINOR_BITS) - 1))


class KernelDecoder:
    """Joined kernel calls -> facts; ARGS: the kind list per syscall (probes/kernel_syscalls.toml)."""

    def __init__(self, names: dict[int, str], args: dict[str, list[str]], resolver: Resolver,
                 wall_offset: float, undecoded: frozenset[str] = frozenset()) -> None:
        """UNDECODED: syscalls strace's decoder makes facts of that this one does not: their first
        sight after the switch is counted as unresolved."""
        self.names = names
        self.args = args
        self.resolver = resolver
        self.wall_offset = wall_offset  # wall seconds = monotonic ns / 1e9 + this
        self.undecoded = undecoded
        self.unresolved: dict[str, int] = {}  # "syscall: reason" -> count (the profile says so)
        self._cwd: dict[int, bytes | str] = {}  # tgid -> its cwd, or why it is not known
        self._cwd_raced_until = 0  # ns: a relative chdir before this was seen by strace too

    def adopt_cwds(self, cwds: dict[int, bytes], raced_until_ns: int = 0) -> None:
        """The cwd of each process at the switch, as strace's decoder followed it; a relative
        chdir the kernel saw before RACED_UNTIL_NS (strace still attached) may be in it already."""
        self._cwd.update(cwds)
        self._cwd_raced_until = raced_until_ns

    def wall(self, ts_ns: int) -> float:
        return ts_ns / 1e9 + self.wall_offset

    def name(self, nr: int) -> str:
        return self.names.get(nr, f"syscall_{nr}")

    def facts(self, record: Record) -> list:
        """The facts of one record (Control records have none)."""
        if isinstance(record, FirstSeen):
            if record.nr < 0:
                return []  # a call the kernel never ran (a task killed at its entry)
            name = self.name(record.nr)
            seen = SyscallSeen(record.tid, self.wall(record.ts_ns), name, errno_name(record.err) if record.err else None)
            if name in self.undecoded:
                return [self._unresolved(UNDECODED, name, record.tid), seen]
            return [seen]
        if isinstance(record, TaskExit):
            code = record.code
            status, sig = ((code >> 8) & 0xFF, None) if not code & 0x7F else (None, SIGNALS.get(code & 0x7F))
            return [Exited(record.tid, self.wall(record.ts_ns), status, sig)]
        if isinstance(record, SignalDelivered):
            return [SignalReceived(record.tid, self.wall(record.ts_ns), SIGNALS.get(record.signal, str(record.signal)),
                                   record.sender or None)]
        if isinstance(record, KernelCall):
            try:
                return self._call(record)
            except (ValueError, IndexError, struct.error) as e:
                return [Unreadable(f"[fast mode] {self.name(record.nr)} record not understood: {e}")]
        return []

    def _unresolved(self, reason: str, name: str, pid: int) -> Unreadable:
        key = f"{name}: {reason}"
        self.unresolved[key] = self.unresolved.get(key, 0) + 1
        return Unreadable(f"[fast mode] {reason}: {name} by pid {pid}")

    # -- operands --------------------------------------------------------------------------

    def _numbers(self, name: str, call: KernelCall) -> dict[int, int]:
        """Argument index -> value, for the numbers the program printed."""
        kinds = self.args.get(name, [])
        positions = [i for i, k in enumerate(kinds) if k in ("int", "u64p")]
        return {i: _signed32(v) for i, v in zip(positions, call.numbers)}

    def _path(self, call: KernelCall, raw: bytes | None, dirfd: int | None) -> bytes | str:
        """The absolute path as the target wrote it, or the reason it cannot be named."""
        if raw is None:
            return "path not read"
        if len(raw) >= STRLEN - 1:
            return f"path of {STRLEN - 1} bytes or more (the kernel program's string limit)"
        if raw.startswith(b"/"):
            base = b"/"
        elif dirfd is not None and dirfd != AT_FDCWD:
            return VIA_DIRFD
        else:
            base = self._cwd.get(call.tgid, CWD_UNSEEN)
            if isinstance(base, str):
                return base
        # the target's /proc/self (and /proc's own links into it), not capprobe's
        own = {b"self": b"", b"thread-self": b"/task/%d" % call.tid, b"net": b"/net", b"mounts": b"/mounts"}
        raw = re.sub(rb"^/+proc/+(self|thread-self|net|mounts)(?=/|$)",
                     lambda m: b"/proc/%d" % call.tgid + own[m.group(1)], raw)
        path = lexical_path(base, raw)
        return DOT_DOT if path is None else path

    def _call(self, call: KernelCall) -> list:
        name = self.name(call.nr)
        ts = self.wall(call.ts_ns)
        pid = call.tid
        errno = errno_name(-call.ret) if -4096 < call.ret < 0 else None
        n = self._numbers(name, call)
        out: list = []

        positions = [i for i, k in enumerate(self.args.get(name, [])) if k == "path"]

        def path_of(which: dict) -> bytes | None:
            where = which.get(name)
            if where is None:
                return None
            # the exit printed the first path argument, the entry the second
            raw = call.exec_path if name in ("execve", "execveat") else \
                call.path if not positions or where[0] == positions[0] else call.path2
            dirfd = n.get(where[1]) if where[1] is not None else None
            found = self._path(call, raw, dirfd)
            if isinstance(found, str):
                out.append(self._unresolved(found, name, pid))
                return None
            return found

        def fd_argument() -> None:
            out.append(self._unresolved(VIA_FD, name, pid))

        if name in ("clone", "clone3", "fork", "vfork"):
            flags = n.get(0, 0) if name in ("clone", "clone3") else 0
            if call.ret > 0:
                for bit, ns in NAMESPACE_FLAGS.items():
                    if flags & bit and not (bit == CSIGNAL and name == "clone"):
                        out.append(NamespaceEntered(pid, ts, name, ns))
                out.append(Forked(pid, ts, call.ret, bool(flags & CLONE_THREAD), name))
                if flags & CLONE_FS and not flags & CLONE_THREAD:  # one cwd, two processes
                    self._cwd[call.tgid] = self._cwd[call.ret] = CWD_SHARED
                elif not flags & CLONE_THREAD:
                    self._cwd[call.ret] = self._cwd.get(call.tgid, CWD_UNSEEN)
            return out
        if name in ("execve", "execveat"):
            path = path_of(_PATH_AT)
            if path is None:
                return out
            if call.ret != 0:
                if errno is not None:
                    out.append(FileOp(pid, ts, name, path, "exec", errno))
                return out
            if call.argv_cut or any(len(a) >= STRLEN - 1 for a in call.argv):
                out.append(self._unresolved("argv longer than the kernel program reads", name, pid))
            return out + [Exec(pid, ts, path, tuple(call.argv), name)]
        if name in ("chdir", "fchdir"):
            if call.ret != 0:
                return out
            if name == "fchdir":
                self._cwd[call.tgid] = CWD_FCHDIR
            elif call.path and not call.path.startswith(b"/") and call.ts_ns <= self._cwd_raced_until:
                self._cwd[call.tgid] = CWD_RACED  # strace may have applied it already
            else:
                path = self._path(call, call.path, None)
                self._cwd[call.tgid] = path  # or why it is not known: used when a path needs it
            return out
        if name in ("open", "creat", "openat", "openat2"):
            flags = O_CREAT | O_WRONLY | O_TRUNC if name == "creat" else n.get(2 if name.endswith("at") or
                                                                                 name == "openat2" else 1, 0)
            path = path_of(_PATH_AT)
            if path is None:
                return out
            path = self.resolver.through_root_symlinks(path)  # where the kernel went, as strace's -yy shows
            mode, rdev = self._kernel_file(name, call)
            device = kernel_device(mode, rdev) if errno is None else None
            return out + [Opened(pid, ts, name, path, flags, errno, device)]
        if name in ("rename", "renameat", "renameat2"):
            src, dst = path_of(_PATH_AT), path_of(_SECOND_PATH_AT)
            return out + [Renamed(pid, ts, name, src, dst, errno)]
        if name in _FILE_OPS:
            op = _FILE_OPS[name]
            if op == WRITE_TEST and not n.get(1 if name == "access" else 2, 0) & W_OK:
                return out
            if name == "unlinkat" and n.get(2, 0) & AT_REMOVEDIR:
                op = "rmdir"
            if name in ("mkdir", "mkdirat") and errno == "EEXIST":
                return out
            if name == "utimensat" and not call.path:  # futimens(): the fd itself
                fd_argument()
                return out
            path = path_of(_PATH_AT)
            return out + ([FileOp(pid, ts, name, path, op, errno)] if path is not None else [])
        if name in ("ftruncate", "fchmod", "fchown"):
            fd_argument()
            return out
        if name in ("chmod", "fchmodat"):
            path = path_of(_PATH_AT)
            return out + ([ModeChanged(pid, ts, name, path, n.get(1 if name == "chmod" else 2), errno)]
                          if path is not None else [])
        if name in ("chown", "lchown", "fchownat"):
            at = name == "fchownat"
            if at and not call.path:  # AT_EMPTY_PATH: the fd itself
                fd_argument()
                return out
            path = path_of(_PATH_AT)
            return out + ([OwnerChanged(pid, ts, name, path, n.get(1 + at), n.get(2 + at), errno)]
                          if path is not None else [])
        if name in ("socket", "socketpair"):
            family = n.get(0, 0)
            return [SocketOpened(pid, ts, name, FAMILIES.get(family, str(family)),
                                 SOCK_TYPES.get(n.get(1, 0) & 0xF, str(n.get(1, 0))),
                                 None if name == "socketpair" else protocol_name(family, n.get(2, 0)), errno)]
        if name in ("bind", "connect"):
            if call.addr is None:
                return []
            addr = sockaddr(call.addr)
            if name == "connect":
                return [Connected(pid, ts, addr, errno)]
            stype = SOCK_TYPES.get(call.sock[1] & 0xF) if call.sock else \
                self.resolver.socket_type(call.tgid, n.get(0, -1))
            return [Bound(pid, ts, addr, stype, errno)]
        if name == "listen":
            described = _listening(call) or self.resolver.socket_name(call.tgid, n.get(0, -1))
            return [Listened(pid, ts, described or "", errno)]
        if name in ("accept", "accept4"):
            if errno is not None or call.ret < 0:
                return []
            if call.local is None:
                return []  # not TCP: strace's decoder keeps TCP accepts only
            local = sockaddr(call.local)
            where = f"[{local.address}]:{local.port}" if call.local.family == AF_INET6 else \
                f"{local.address}:{local.port}"
            peer = sockaddr(call.addr).address if call.addr is not None else ""
            return [Accepted(pid, ts, "TCPv6" if call.local.family == AF_INET6 else "TCP", where, peer)]
        if name in ("sendto", "sendmsg"):
            dest = sockaddr(call.addr) if call.addr is not None else None
            family = call.socket_family
            if family == 0:
                family = self._family_of(call.tgid, n.get(0, -1))
            if family == AF_NETLINK:
                if call.payload_len > len(call.payload):
                    out.append(self._unresolved("netlink message longer than the kernel program reads "
                                                "(decoded from its start)", name, pid))
                protocol = _NETLINK_PROTOCOL_NUMBERS.get(call.socket_protocol) if call.socket_family else \
                    self.resolver.socket_name(call.tgid, n.get(0, -1))
                protocol = protocol if protocol and protocol.startswith("NETLINK_") else None
                ops = tuple(decode_netlink_bytes(protocol, call.payload[:call.payload_len])) if protocol else ()
                return out + [NetlinkSent(pid, ts, name, protocol, ops, errno)]
            payload = call.payload[:call.payload_len]
            return [Sent(pid, ts, name, FAMILIES.get(family) if family else None, dest, payload, errno)]
        if name == "setsockopt":
            level, option = n.get(1, 0), n.get(2, 0)
            return [SockoptSet(pid, ts, LEVELS.get(level, str(level)),
                               OPTIONS.get(level, {}).get(option, str(option)), errno)]
        if name == "ioctl":
            device = kernel_device(*self._kernel_file(name, call))
            if device is None:
                return []  # the kernel read the fd's inode at the call: not a device
            # the device is the kernel's; /proc only gives it a name, kept if it names that device
            path = call.fd_target or self.resolver.fd_path(call.tgid, n.get(0, -1))
            if path is None or self.resolver.device(path) != device:
                return [self._unresolved(f"ioctl on device {device.kind} {device.major}:{device.minor}: "
                                         f"{VIA_FD}", name, pid)]
            request = n.get(1, 0) & 0xFFFFFFFF
            return [DeviceIoctl(pid, ts, path, IOCTLS.get(request, f"{request:#x}"), errno)]
        if name in ("mmap", "mprotect"):
            prot = n.get(2, 0)
            return [MemoryProtection(pid, ts, name, prot)] if prot & 0x4 else []
        if name in ("kill", "tkill", "tgkill"):
            target = n.get(1 if name == "tgkill" else 0, 0)
            return [SignalSent(pid, ts, name, target, errno)] if target > 0 else []
        if name == "setgroups":
            size = n.get(0, 0)
            if size > GIDS_READ:
                out.append(self._unresolved("setgroups list longer than the kernel program reads", name, pid))
            gids = [g for g in call.numbers[1:1 + min(size, GIDS_READ)]]
            text = f"{size}, [{', '.join(str(g) for g in gids)}]"
            return out + [IdentityChanged(pid, ts, name, text, call.ret if call.ret >= 0 else -1, errno, None)]
        if name in ("setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid"):
            text = ", ".join(str(n.get(i, 0)) for i in range(len(self.args.get(name, []))))
            euid = euid_set_by(name, text) if call.ret == 0 else None
            return [IdentityChanged(pid, ts, name, text, call.ret if call.ret >= 0 else -1, errno, euid)]
        if name in ("unshare", "setns"):
            flags = n.get(0 if name == "unshare" else 1, 0)
            if name == "unshare" and flags & CLONE_FS and call.ret == 0:
                self._cwd[call.tgid] = CWD_SHARED  # a thread's own cwd from now on: not followed per thread
            if name == "setns" and flags == 0:
                return [NamespaceEntered(pid, ts, name, "any")]
            return [NamespaceEntered(pid, ts, name, ns) for bit, ns in NAMESPACE_FLAGS.items() if flags & bit]
        return []

    def _kernel_file(self, name: str, call: KernelCall) -> tuple[int, int]:
        """(i_mode, i_rdev) of the file the call's fd named, as the kernel program read them."""
        count = sum(1 for k in self.args.get(name, []) if k in ("int", "u64p"))
        extra = call.numbers[count:count + 2]
        return (extra[0], extra[1]) if len(extra) == 2 else (0, 0)

    def _family_of(self, tgid: int, fd: int) -> int:
        """A socket opened before the program attached: its family as /proc names it."""
        described = self.resolver.socket_name(tgid, fd) or ""
        if described.startswith("NETLINK"):
            return AF_NETLINK
        if described.startswith("UNIX"):
            return AF_UNIX
        return 0
