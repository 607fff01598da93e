"""What a profiled program needs, decided once from its profile: the neutral layer every output reads.

The systemd unit (rules/*), the OCI seccomp, docker, compose and k8s exports and the
report all render a `Needs`; none of them re-derives a decision from the profile.
What only one output decides stays with it (the unit's User=/DynamicUser= choice and
its setup-script ownership trade read the operator's options, not just the profile).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass

from .model import ENTRY_OPS, WRITE_NEED_OPS, WRITE_TEST, behaviour_fields, listened_ports
from .paths import decode_path

KERNEL_METHODS = ("tracefs", "bpftrace")  # capabilities the kernel itself reported
NOT_REQUIRED = ("advisory", "optional", "superseded", "possible", "denied")
IDENTITY_CALLS = ("setuid", "setresuid", "setreuid", "setgid", "setresgid", "setgroups")

# Where a written path lies decides how each output opens it.
API_FILESYSTEMS = (b"/proc/", b"/sys/", b"/dev/")
TMP_DIRS = (b"/tmp/", b"/var/tmp/")
RUNTIME_DIRS = (b"/run/",)
HOME_DIRS = (b"/home/", b"/root/", b"/run/user/")
MANAGED_DIRECTORIES = (
    (b"/var/lib/", "StateDirectory"),
    (b"/var/log/", "LogsDirectory"),
    (b"/run/", "RuntimeDirectory"),
    (b"/var/cache/", "CacheDirectory"),
)
CREATE_OPS = frozenset({"mkdir", "create", "rename_to", "symlink", "link", "mknod"})

# What PrivateDevices=yes (and any container runtime) still provides (systemd.exec(5)).
PSEUDO_DEVICES = {b"/dev/null", b"/dev/zero", b"/dev/full", b"/dev/random", b"/dev/urandom",
                  b"/dev/tty", b"/dev/ptmx", b"/dev/stdin", b"/dev/stdout", b"/dev/stderr"}
PSEUDO_PREFIXES = (b"/dev/pts/", b"/dev/shm/", b"/dev/fd/", b"/dev/mqueue/", b"/dev/hugepages/")

INET = ("AF_INET", "AF_INET6")
BIND_PROTOCOL = {"SOCK_STREAM": "tcp", "SOCK_DGRAM": "udp", "SOCK_SEQPACKET": "sctp"}
# Linux's default net.ipv4.ip_local_port_range, for profiles whose host stamp lacks it.
DEFAULT_LOCAL_PORT_RANGE = (32768, 60999)
# One executable binding this many distinct ports of one protocol, none listened on, picks
# them at random (a resolver's source port per query: unbound and dnsmasq draw from 1024-65535).
RANDOMISED_PORTS_MIN = 8
PERSONALITY_HARMLESS = {"0xffffffff", "0", "PER_LINUX", "0 /* PER_LINUX */"}


def under(path: bytes, prefixes) -> bool:
    return any(path.startswith(p) or path + b"/" == p for p in prefixes)


# -- the rows --------------------------------------------------------------------------

@dataclass(frozen=True)
class CapabilityEvidence:
    """One kernel check behind a capability: where, by what, on what."""

    call_site: str | None
    reason: str | None
    syscall: str | None
    exe: str | None                 # encoded path (capprobe.paths)
    targets: tuple[str, ...]        # encoded paths, ports...
    count: int
    confirmed_difference: str | None = None  # capprobe confirm: what broke without it


@dataclass(frozen=True)
class CapabilityNeed:
    name: str                                   # "CAP_NET_ADMIN"
    evidence: tuple[CapabilityEvidence, ...]
    through_alternative: bool = False           # chosen for an either-or check


@dataclass(frozen=True)
class Identity:
    user: str | None          # the user the run was taken as
    uid: int | None
    gid: int | None
    runs_as_root: bool
    changes_identity: bool    # the program itself calls setuid/setgid...: it must start as root
    switches: tuple[str, ...]  # those calls


@dataclass(frozen=True)
class WrittenPath:
    """A path changed, created or tested writable by the service."""

    path: bytes
    ops: frozenset[str]         # the write ops only (WRITE_NEED_OPS)
    by: tuple[str, ...]
    is_dir: bool                # recorded as a directory (or made with mkdir)
    created: bool               # the service brought it into existence
    tmp: bool                   # under /tmp or /var/tmp
    runtime: bool               # under /run
    api: bool                   # under /proc, /sys or /dev: not a file-system write
    tested_only: bool           # access(W_OK) passed, never written


@dataclass(frozen=True)
class WritableDirectory:
    """A directory an output must make writable (or a file written in place, alone): kind "tmp",
    "runtime" (empty at each start: a tmpfs will do) or "state" (kept between runs: a volume or
    ReadWritePaths=)."""

    path: bytes
    kind: str


@dataclass(frozen=True)
class FamilyNeed:
    family: str
    count: int
    by: tuple[str, ...]


@dataclass(frozen=True)
class Port:
    family: str
    type: str | None
    address: str | None
    port: int
    protocol: str               # "tcp", "udp", "sctp", "" (unknown)
    by: tuple[str, ...]


@dataclass(frozen=True)
class BindPlan:
    """Which binds form the service's listening set, and what a bind filter may restrict."""

    listening: tuple[dict, ...]     # listen()ed, or a stable port bound once
    ephemeral: tuple[dict, ...]     # port 0, ports in ip_local_port_range, randomised ports
    restricted: tuple[str, ...]     # protocols ("tcp", "udp"; "" = any) the filter closes
    unrestricted_why: str           # why the other protocols get no filter ("" when none)


@dataclass(frozen=True)
class DeviceNeed:
    path: bytes
    kind: str          # "char", "block"
    major: int
    minor: int
    access: str        # "r", "rw", ...
    count: int
    by: tuple[str, ...]
    ioctls: tuple[str, ...]


@dataclass(frozen=True)
class SyscallNeed:
    name: str                        # as systemd and libseccomp spell it
    count: int
    printed_as: tuple[str, ...] = ()  # strace's spelling when it differs ("syscall_0x1c4")


@dataclass(frozen=True)
class Behaviour:
    """What decides the process-level locks; each flag set only when the run did it."""

    namespaces: tuple[str, ...]      # types created or joined ("net", "user"...)
    namespaces_any: bool             # joined one of unknown type (setns with a 0 type)
    setuid_exec: tuple[str, ...]     # setuid/setgid/file-capability executables run
    wx_memory: bool
    personality: bool                # a personality() change other than to Linux
    realtime: bool
    kernel_tunables: tuple[str, ...]  # paths written under /proc/sys or /sys
    kernel_modules: bool
    kernel_log: bool
    mount: bool
    clock: bool
    hostname: bool
    ptrace: bool
    sysv_ipc: bool
    keyring: bool
    bpf: bool
    notify: bool                     # spoke sd_notify
    other_processes: bool            # read other processes' /proc entries


@dataclass(frozen=True)
class Needs:
    capabilities: tuple[CapabilityNeed, ...]
    capability_method: str
    checked_not_required: tuple[str, ...]   # capabilities with a check that was not needed (advisory,
                                            # optional...); one may also be required by another check
    identity: Identity
    written: tuple[WrittenPath, ...]
    writable_dirs: tuple[WritableDirectory, ...]
    read_only_root: bool          # every write lies in a tmp or runtime directory (tmpfs mounts suffice)
    families: tuple[FamilyNeed, ...]
    binds: BindPlan
    listening: tuple[Port, ...]
    devices: tuple[DeviceNeed, ...]
    syscalls: tuple[SyscallNeed, ...]
    architectures: tuple[str, ...]  # the traced host's native ABI ("x86_64")
    executables: tuple[str, ...]    # encoded paths
    behaviour: Behaviour

    @property
    def capability_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.capabilities)

    @property
    def family_names(self) -> tuple[str, ...]:
        return tuple(f.family for f in self.families)

    @property
    def network(self) -> bool:
        """A socket of a family other than AF_UNIX: the service needs the host's network
        (no PrivateNetwork=, no --network=none)."""
        return not set(self.family_names) <= {"AF_UNIX"}

    @property
    def syscall_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.syscalls)


# strace prints x86_64 names as the kernel's syscall table spells them, and so
# does libseccomp, whose names systemd uses: measured on strace 6.1, every name
# of this host's asm/unistd_64.h is accepted by both, unchanged (newfstatat,
# fadvise64, pread64, umount2 ...; the "_llseek"/"fadvise64_64"/"stat64"
# spellings exist only in the 32-bit ABI, which SystemCallArchitectures=native
# refuses anyway).  The one difference: a syscall newer than the strace build is
# printed as its number, "syscall_0x1c4" (strace 6.1 knows up to 450).  This is
# the x86_64 table (arch/x86/entry/syscalls/syscall_64.tbl) for those numbers;
# 424 on is the numbering all architectures share since Linux 5.1.
X86_64_SYSCALL_NUMBERS = {
    332: "statx", 333: "io_pgetevents", 334: "rseq", 335: "uretprobe", 336: "uprobe",
    424: "pidfd_send_signal", 425: "io_uring_setup", 426: "io_uring_enter",
    427: "io_uring_register", 428: "open_tree", 429: "move_mount", 430: "fsopen",
    431: "fsconfig", 432: "fsmount", 433: "fspick", 434: "pidfd_open", 435: "clone3",
    436: "close_range", 437: "openat2", 438: "pidfd_getfd", 439: "faccessat2",
    440: "process_madvise", 441: "epoll_pwait2", 442: "mount_setattr", 443: "quotactl_fd",
    444: "landlock_create_ruleset", 445: "landlock_add_rule", 446: "landlock_restrict_self",
    447: "memfd_secret", 448: "process_mrelease", 449: "futex_waitv",
    450: "set_mempolicy_home_node", 451: "cachestat", 452: "fchmodat2",
    453: "map_shadow_stack", 454: "futex_wake", 455: "futex_wait", 456: "futex_requeue",
    457: "statmount", 458: "listmount", 459: "lsm_get_self_attr", 460: "lsm_set_self_attr",
    461: "lsm_list_modules", 462: "mseal", 463: "setxattrat", 464: "getxattrat",
    465: "listxattrat", 466: "removexattrat", 467: "open_tree_attr", 468: "file_getattr",
    469: "file_setattr",
}

_STRACE_NUMBERED = re.compile(r"syscall_(0x[0-9a-f]+|\d+)")


def systemd_syscall_name(strace_name: str, architecture: str | None) -> str:
    """The name systemd knows STRACE_NAME by ("syscall_0x1c4" -> "fchmodat2" on x86_64)."""
    m = _STRACE_NUMBERED.fullmatch(strace_name)
    if m is None or architecture != "x86_64":
        return strace_name
    return X86_64_SYSCALL_NUMBERS.get(int(m.group(1), 0), strace_name)


# -- deciding ---------------------------------------------------------------------------

def needs_of(profile) -> Needs:
    """The needs of PROFILE (a loaded profile dict, or a model.Profile); pure."""
    profile = getattr(profile, "raw", profile)
    net = profile.get("network") or {}
    local_ports = tuple(profile.get("host", {}).get("ip_local_port_range") or DEFAULT_LOCAL_PORT_RANGE)
    plan = bind_plan(net.get("binds", []), net.get("listens", []), local_ports)
    written = written_paths(profile)
    caps = profile.get("capabilities") or {}
    architecture = (profile.get("host") or {}).get("architecture")
    return Needs(
        capabilities=capability_needs(profile),
        capability_method=caps.get("method") or "none",
        checked_not_required=tuple(sorted({u["capability"] for u in caps.get("uses", [])
                                           if u.get("status") in NOT_REQUIRED})),
        identity=identity_of(profile),
        written=written,
        writable_dirs=writable_dirs(written),
        read_only_root=all(w.api or w.tmp or w.runtime for w in written),
        families=families_of(profile),
        binds=plan,
        listening=tuple(Port(b["family"], b.get("type"), b.get("address"), b["port"], bind_protocol(b),
                             tuple(b.get("by") or ())) for b in plan.listening),
        devices=device_needs(profile),
        syscalls=syscall_needs(profile.get("syscalls") or {}, architecture),
        architectures=architectures_of(profile),
        executables=tuple(e["path"] for e in profile.get("executables", [])),
        behaviour=behaviour_of(profile),
    )


def architectures_of(profile: dict) -> tuple[str, ...]:
    """The traced host's architecture; every session's, for a merged profile."""
    sessions = (profile.get("merged") or {}).get("sessions") or [profile.get("host") or {}]
    return tuple(sorted({s["architecture"] for s in sessions if s.get("architecture")}))


def is_kernel_method(method: str | None) -> bool:
    """Whether the capabilities came from the kernel's own record (each merged session's too)."""
    return bool(method) and set(method.split("+")) <= set(KERNEL_METHODS)


def capability_needs(profile: dict) -> tuple[CapabilityNeed, ...]:
    """The kernel's required set, each with the checks behind it (the first three shown by outputs)."""
    caps = profile.get("capabilities") or {}
    uses = caps.get("uses", [])
    out = []
    for cap in caps.get("required", []):
        rows = [u for u in uses if u["capability"] == cap and u.get("status") in ("required", "inferred")]
        alternative = False
        if not rows and is_kernel_method(caps.get("method")):
            # chosen through an either-or check (e.g. IP_TRANSPARENT also accepts NET_ADMIN)
            rows = [u for u in uses if cap in u.get("alternatives", []) and u.get("status") == "required"]
            alternative = bool(rows)
        out.append(CapabilityNeed(cap, tuple(_evidence(u) for u in rows), alternative))
    return tuple(out)


def _evidence(use: dict) -> CapabilityEvidence:
    return CapabilityEvidence(use.get("call_site"), use.get("reason"), use.get("syscall"), use.get("exe"),
                              tuple(use.get("targets") or ()), use.get("count", 1),
                              (use.get("confirmed_by") or {}).get("first_difference"))


def identity_of(profile: dict) -> Identity:
    user = (profile.get("run") or {}).get("user") or {}
    uid = user.get("uid")
    switches = tuple(c["call"] for p in profile.get("processes", []) for c in p.get("identity_changes", [])
                     if c["call"] in IDENTITY_CALLS and not _to_own_id(c, uid, user.get("gid")))
    return Identity(user.get("name"), uid, user.get("gid"), uid in (None, 0), bool(switches), switches)


def _to_own_id(change: dict, uid: int | None, gid: int | None) -> bool:
    """setuid(65534) by a service run as 65534 (busybox drops to its real ids at every start)
    switches nothing: it does not make the service start as root."""
    own = uid if "uid" in change["call"] else gid
    ids = {int(x) for x in re.findall(r"-?\d+", str(change.get("args") or ""))} - {-1}
    return change["call"] != "setgroups" and own is not None and bool(ids) and ids <= {own}


def written_paths(profile: dict) -> tuple[WrittenPath, ...]:
    """Every path the service changed successfully, or tested writable (write_test: not written
    in the run, but the service stops when the test fails)."""
    rows = []
    for f in profile.get("files", []):
        ops = frozenset(f["ops"]) & WRITE_NEED_OPS
        if not ops:
            continue
        p = decode_path(f["path"])
        by = tuple(sorted({b for use in f["ops"].values() for b in use.get("by", [])}))
        rows.append(WrittenPath(
            path=p, ops=ops, by=by,
            is_dir="mkdir" in ops or (f.get("stat") or {}).get("type") == "dir",
            created=bool(CREATE_OPS & set(f["ops"])),
            tmp=under(p, TMP_DIRS) or p in (b"/tmp", b"/var/tmp"),
            runtime=under(p, RUNTIME_DIRS) and not under(p, HOME_DIRS),
            api=under(p, API_FILESYSTEMS),
            tested_only=ops == {WRITE_TEST}))
    return tuple(rows)


def writable_dirs(written: tuple[WrittenPath, ...]) -> tuple[WritableDirectory, ...]:
    """What an output must open for writing, outermost only: /tmp and /var/tmp, /run/NAME, else
    the directory whose entries the service changes (or a file written in place, alone), hash
    fan-out directories as their parent."""
    found: dict[bytes, str] = {}
    for w in written:
        if w.api:
            continue
        target = os.path.dirname(w.path) if w.ops & ENTRY_OPS else w.path
        if w.tmp:
            found.setdefault(b"/var/tmp" if w.path.startswith(b"/var/tmp") else b"/tmp", "tmp")
        elif w.runtime:
            name = w.path[len(b"/run/"):].split(b"/", 1)[0]
            found.setdefault(b"/run/" + name if target != b"/run" else b"/run", "runtime")
        else:
            found.setdefault(target, "state")
    for parent, children in fan_out_groups(found).items():
        for child in children:
            del found[child]
        found.setdefault(parent, "state")
    # sorted by components, every entry below K comes right after K: one walk keeps the outermost
    kept: dict[bytes, str] = {}
    outer: bytes | None = None
    for p in sorted(found, key=lambda path: path.split(b"/")):
        if outer is None or not (p == outer or p.startswith(outer.rstrip(b"/") + b"/")):
            outer = p
            kept[p] = found[p]
    return tuple(WritableDirectory(p, k) for p, k in kept.items())


_FAN_OUT = re.compile(rb"^[0-9a-f]{2}$")


def fan_out_groups(paths) -> dict[bytes, list[bytes]]:
    """{parent: children} of hash fan-out directories (restic data/3f, git objects/ab), two or
    more per parent: the next run writes into other ones, so outputs open the parent instead
    of the few this run happened to use."""
    by_parent: dict[bytes, list[bytes]] = {}
    for p in paths:
        if _FAN_OUT.match(os.path.basename(p)):
            by_parent.setdefault(os.path.dirname(p), []).append(p)
    return {parent: children for parent, children in by_parent.items() if len(children) >= 2}


def families_of(profile: dict) -> tuple[FamilyNeed, ...]:
    rows: dict[str, list[dict]] = {}
    for s in (profile.get("network") or {}).get("sockets", []):
        rows.setdefault(s["family"], []).append(s)
    return tuple(FamilyNeed(f, sum(s.get("count", 1) for s in rs),
                            tuple(dict.fromkeys(b for s in rs for b in s.get("by", []))))
                 for f, rs in sorted(rows.items()))


def bind_protocol(bind: dict) -> str:
    """"tcp", "udp", "sctp" for a bind row's socket type; "" when unknown."""
    return BIND_PROTOCOL.get(bind.get("type") or "", "")


def bind_plan(binds: list[dict], listens: list[dict], local_ports: tuple[int, int]) -> BindPlan:
    """Split successful IP binds into the listening set and source binds; pure.

    systemd's filter sees every explicit bind(), source binds included, and matches port 0
    like any other port: restricting a protocol that also makes source binds would refuse
    them (a resolver's next query, Go's IPv6 probe on port 0).
    """
    binds = [b for b in binds if b["family"] in INET and not b.get("errno")]
    listened = listened_ports(listens)
    spread: dict[tuple[str, str], set[int]] = {}
    for b in binds:
        if b.get("port") and (bind_protocol(b), b["port"]) not in listened:
            for exe in b.get("by") or [""]:
                spread.setdefault((exe, bind_protocol(b)), set()).add(b["port"])

    def spread_of(b: dict) -> int:
        return max(len(spread.get((exe, bind_protocol(b)), ())) for exe in b.get("by") or [""])

    def ephemeral_why(b: dict) -> str | None:
        port = b.get("port")
        if (bind_protocol(b), port) in listened:
            return None
        if not port:
            return "port 0 (the kernel picks)"
        # One port in the range, bound by an executable that binds no other, is a stable
        # service port that happens to lie there (WireGuard's 51820): only a second one
        # makes it a source port.
        if local_ports[0] <= port <= local_ports[1] and spread_of(b) >= 2:
            return f"inside ip_local_port_range {local_ports[0]}-{local_ports[1]}"
        if port >= 1024 and spread_of(b) >= RANDOMISED_PORTS_MIN:
            return f"one of {RANDOMISED_PORTS_MIN}+ distinct ports bound by one executable"
        return None

    listening, ephemeral, reasons = [], [], {}
    for b in binds:
        why = ephemeral_why(b)
        if why is None:
            listening.append(b)
        else:
            ephemeral.append(b)
            reasons.setdefault(bind_protocol(b) or "ip", why)
    source_protocols = {bind_protocol(b) for b in ephemeral}
    if not ephemeral:
        restricted = {bind_protocol(b) for b in listening}
    elif "" in source_protocols:
        restricted = set()  # a source bind of unknown protocol: any filter might refuse it
    else:  # close only the protocols that make no source binds ("" could only be "any")
        restricted = {bind_protocol(b) for b in listening} - source_protocols - {""}
    counts = Counter(bind_protocol(b) or "ip" for b in ephemeral)
    why = "; ".join(f"{n} {proto} source binds (e.g. {reasons[proto]})" for proto, n in sorted(counts.items()))
    return BindPlan(tuple(listening), tuple(ephemeral), tuple(sorted(restricted)), why)


def device_needs(profile: dict) -> tuple[DeviceNeed, ...]:
    """The real devices opened (pseudo-devices every sandbox provides left out)."""
    ioctls: dict[str, set[str]] = {}
    for i in profile.get("ioctls", []):
        ioctls.setdefault(i["path"], set()).add(i["request"])
    out = []
    for d in profile.get("devices", []):
        p = decode_path(d["path"])
        if p in PSEUDO_DEVICES or p.startswith(PSEUDO_PREFIXES):
            continue
        out.append(DeviceNeed(p, d["kind"], d["major"], d["minor"], d["access"], d.get("count", 1),
                              tuple(d.get("by", [])), tuple(sorted(ioctls.get(d["path"], ())))))
    return tuple(out)


def syscall_needs(observed: dict, architecture: str | None) -> tuple[SyscallNeed, ...]:
    """Each syscall seen under the name systemd and libseccomp know it by, with its count."""
    counts: dict[str, int] = {}
    printed_as: dict[str, set[str]] = {}
    for strace_name, entry in observed.items():
        name = systemd_syscall_name(strace_name, architecture)
        counts[name] = counts.get(name, 0) + int(entry.get("count", 0))
        if name != strace_name:
            printed_as.setdefault(name, set()).add(strace_name)
    return tuple(SyscallNeed(n, counts[n], tuple(sorted(printed_as.get(n, ())))) for n in sorted(counts))


def behaviour_of(profile: dict) -> Behaviour:
    # fields a profile stores win; an older profile has only the detail text to read them from
    rows = [{**behaviour_fields(b["kind"], b.get("detail") or ""), **b} for b in profile.get("behaviour", [])]

    def seen(kind: str) -> bool:
        return any(b["kind"] == kind for b in rows)

    namespaces = [b for b in rows if b["kind"] == "namespace"]
    return Behaviour(
        namespaces=tuple(sorted({b["namespace"] for b in namespaces if b.get("namespace") not in (None, "any")})),
        namespaces_any=any(b.get("namespace") == "any" for b in namespaces),
        setuid_exec=tuple(e["path"] for e in profile.get("executables", [])
                          if e.get("setuid") or e.get("setgid") or e.get("file_caps")),
        wx_memory=seen("wx_memory"),
        personality=any(b["kind"] == "personality" and b["detail"] not in PERSONALITY_HARMLESS for b in rows),
        realtime=seen("realtime"),
        kernel_tunables=tuple(b["detail"] for b in rows if b["kind"] == "write_kernel_tunable"),
        kernel_modules=seen("kernel_module"),
        kernel_log=seen("kernel_log"),
        mount=seen("mount"),
        clock=seen("clock"),
        hostname=seen("hostname"),
        ptrace=seen("ptrace"),
        sysv_ipc=seen("sysv_ipc"),
        keyring=seen("keyring"),
        bpf=seen("bpf"),
        notify=seen("sd_notify"),
        other_processes=seen("read_other_process"),
    )
