"""The profile's schema: its vocabulary, and a typed read model of frozen rows, one type per section.

Each row type declares its KEY: the fields that make two rows the same fact (binds are
keyed by family, type, address, port and errno). The collector writes sections in that
order (facts/sections.py), merge unions rows by it, and diff compares by it. The JSON
format itself is docs/profile-schema.md; profile.py reads and checks it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import ClassVar

from .paths import decode_path

# -- vocabulary ----------------------------------------------------------------------------

WRITE_OPS = frozenset({
    "write", "create", "truncate", "delete", "rmdir", "rename_from", "rename_to",
    "link", "symlink", "chmod", "chown", "mkdir", "mknod", "utime", "xattr",
})
# A passed writability test (access(W_OK) and kin): nothing changed, so not in WRITE_OPS, yet
# the daemon refuses to start when the test fails, so the read-write plan needs it writable.
WRITE_TEST = "write_test"
WRITE_NEED_OPS = WRITE_OPS | {WRITE_TEST}
# ops that change a directory's entries: they need the directory itself writable
ENTRY_OPS = frozenset({"create", "delete", "rmdir", "rename_from", "rename_to", "link",
                       "symlink", "mkdir", "mknod"})

_ERRNO_WORD = re.compile(r"^E[A-Z0-9]+$")
_LISTEN_KIND = {"TCP": "tcp", "TCPV6": "tcp", "SCTP": "sctp", "SCTPV6": "sctp"}


def behaviour_fields(kind: str, detail: str) -> dict:
    """The fields of a behaviour row's DETAIL text: call ("bpf", "unshare:net"), syscall ("bpf",
    "unshare"), errno ("EPERM" or None), namespace ("net", "any" or None), messages (sd_notify
    words). The collector writes them beside the detail; older profiles have only the text."""
    words = detail.split()
    # the collector appends the errno for most kinds ("bpf EINVAL", "pid 42 EPERM")
    errno = words[-1] if len(words) > 1 and _ERRNO_WORD.match(words[-1]) else None
    call = " ".join(words[:-1]) if errno else detail
    syscall = re.split(r"[:\s]", call, maxsplit=1)[0] if call else ""
    namespace = call.split(":", 1)[1] if kind == "namespace" and ":" in call else None
    messages = tuple(m for m in detail.split(",") if "=" in m) if kind == "sd_notify" else ()
    return {"call": call, "syscall": syscall, "errno": errno, "namespace": namespace, "messages": messages}


def listened_ports(listens) -> set[tuple[str, int]]:
    """(protocol, port) of every socket listen() succeeded on ("TCP:[127.0.0.1:80]")."""
    out = set()
    for row in listens:
        if row.get("errno"):
            continue
        kind, _, local = (row.get("socket") or "").partition(":")
        port = local.rstrip("]").rpartition(":")[2]
        if port.isdigit():
            out.add((_LISTEN_KIND.get(kind.upper(), ""), int(port)))
    return out


# -- rows ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """A fact of one section. KEY names the fields that identify it; the rest is how often,
    since when and by which executables (paths encoded as in the JSON)."""

    KEY: ClassVar[tuple[str, ...]] = ()

    def key(self) -> tuple:
        return tuple(getattr(self, k) for k in self.KEY)

    @classmethod
    def from_json(cls, item: dict):
        values = {}
        for f in fields(cls):
            v = item.get(f.name, f.default)
            values[f.name] = _frozen(v)
        return cls(**values)


def _frozen(value):
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _frozen(v)) for k, v in value.items())
    return value


def json_key(row_type: type[Row], item: dict) -> tuple:
    """ROW_TYPE's key of a JSON row, without building the row (merge and diff of large sections)."""
    return tuple(_frozen(item.get(k)) for k in row_type.KEY)


@dataclass(frozen=True)
class Seen(Row):
    count: int = 1
    first_seen: float | None = None
    by: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileRow(Row):
    KEY: ClassVar = ("path",)
    path: str = ""
    ops: tuple = ()          # ((op, ((count, n), ...)), ...): the JSON object, frozen
    failed: tuple = ()
    stat: tuple = ()

    @property
    def raw_path(self) -> bytes:
        return decode_path(self.path)

    @property
    def op_names(self) -> frozenset[str]:
        return frozenset(op for op, _ in self.ops)


@dataclass(frozen=True)
class FailedFileOp(Seen):
    KEY: ClassVar = ("op", "errno")
    op: str = ""
    errno: str = ""


@dataclass(frozen=True)
class DeviceRow(Seen):
    KEY: ClassVar = ("path",)
    path: str = ""
    kind: str = ""
    major: int = 0
    minor: int = 0
    access: str = ""


@dataclass(frozen=True)
class IoctlRow(Seen):
    KEY: ClassVar = ("path", "request", "errno")
    path: str = ""
    request: str = ""
    errno: str | None = None


@dataclass(frozen=True)
class SocketRow(Seen):
    KEY: ClassVar = ("family", "type", "protocol")
    family: str = ""
    type: str | None = None
    protocol: str | None = None


@dataclass(frozen=True)
class SocketFailureRow(Seen):
    KEY: ClassVar = ("family", "type", "protocol", "errno")
    family: str = ""
    type: str | None = None
    protocol: str | None = None
    errno: str | None = None


@dataclass(frozen=True)
class BindRow(Seen):
    KEY: ClassVar = ("family", "type", "address", "port", "errno")
    family: str = ""
    type: str | None = None
    address: str | None = None
    port: int | None = None
    errno: str | None = None


@dataclass(frozen=True)
class ListenRow(Seen):
    KEY: ClassVar = ("socket", "errno")
    socket: str | None = None
    errno: str | None = None


@dataclass(frozen=True)
class PeerRow(Seen):
    """A connect() or a send to an address."""
    KEY: ClassVar = ("family", "address", "port", "errno")
    family: str = ""
    address: str | None = None
    port: int | None = None
    errno: str | None = None


@dataclass(frozen=True)
class AcceptRow(Seen):
    KEY: ClassVar = ("socket", "local", "peer")
    socket: str | None = None
    local: str | None = None
    peer: str | None = None


@dataclass(frozen=True)
class SockoptRow(Seen):
    KEY: ClassVar = ("level", "option", "errno")
    level: str = ""
    option: str = ""
    errno: str | None = None


@dataclass(frozen=True)
class NetlinkRow(Seen):
    KEY: ClassVar = ("protocol", "op", "detail", "errno")
    protocol: str = ""
    op: str = ""
    detail: str | None = None
    errno: str | None = None
    changes_state: bool | None = None


@dataclass(frozen=True)
class BehaviourRow(Seen):
    """Behaviour that decides a hardening setting, with its detail's fields as fields."""
    KEY: ClassVar = ("kind", "detail")
    kind: str = ""
    detail: str = ""
    call: str = ""
    syscall: str = ""
    errno: str | None = None
    namespace: str | None = None
    messages: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, item: dict):
        # fields the profile stores win; an older profile has only the detail text
        return super().from_json({**behaviour_fields(item["kind"], item.get("detail") or ""), **item})


@dataclass(frozen=True)
class ExecutableRow(Row):
    KEY: ClassVar = ("path",)
    path: str = ""
    setuid: bool = False
    setgid: bool = False
    file_caps: bool = False
    owner: int | None = None


@dataclass(frozen=True)
class CapabilityUseRow(Seen):
    KEY: ClassVar = ("capability", "status", "call_site", "syscall", "exe", "reason")
    capability: str = ""
    status: str | None = None
    method: str | None = None
    call_site: str | None = None
    syscall: str | None = None
    exe: str | None = None
    reason: str | None = None
    targets: tuple[str, ...] = ()
    alternatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProcessRow(Row):
    """A process of one session: pids mean nothing across sessions, so never merged by key."""
    KEY: ClassVar = ("pid",)
    pid: int = 0
    ppid: int | None = None
    exe: str | None = None


# Where each section's rows live in the JSON, and their type. Nested keyed lists (a file's
# failed ops) are named by their parent's type in NESTED.
SECTIONS: dict[tuple[str, ...], type[Row]] = {
    ("files",): FileRow,
    ("devices",): DeviceRow,
    ("ioctls",): IoctlRow,
    ("network", "sockets"): SocketRow,
    ("network", "socket_failures"): SocketFailureRow,
    ("network", "binds"): BindRow,
    ("network", "listens"): ListenRow,
    ("network", "connects"): PeerRow,
    ("network", "sends"): PeerRow,
    ("network", "accepts"): AcceptRow,
    ("network", "setsockopts"): SockoptRow,
    ("network", "netlink"): NetlinkRow,
    ("behaviour",): BehaviourRow,
    ("executables",): ExecutableRow,
    ("capabilities", "uses"): CapabilityUseRow,
}
NESTED: dict[tuple[type[Row], str], type[Row]] = {
    (FileRow, "failed"): FailedFileOp,
}


@dataclass(frozen=True)
class Profile:
    """A loaded profile: the typed rows of each section, and the JSON they came from."""

    raw: dict
    rows: dict  # section path -> tuple of rows

    def section(self, *path: str) -> tuple:
        return self.rows.get(tuple(path), ())

    @classmethod
    def from_json(cls, profile: dict) -> "Profile":
        rows = {}
        for path, row_type in SECTIONS.items():
            rows[path] = tuple(row_type.from_json(item) for item in section_items(profile, path))
        return cls(profile, rows)


def section_items(profile: dict, path: tuple[str, ...]) -> list:
    """The JSON rows at PATH ([] when a section is absent)."""
    node = profile
    for name in path:
        node = node.get(name) if isinstance(node, dict) else None
        if node is None:
            return []
    return node
