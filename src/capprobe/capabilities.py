"""Linux capability names and numbers (as in <linux/capability.h>, up to CAP_LAST_CAP = 40)."""

# Index = kernel capability number; the cap_capable tracepoint reports the number.
CAP_NAMES: tuple[str, ...] = (
    "CAP_CHOWN",  # 0
    "CAP_DAC_OVERRIDE",  # 1
    "CAP_DAC_READ_SEARCH",  # 2
    "CAP_FOWNER",  # 3
    "CAP_FSETID",  # 4
    "CAP_KILL",  # 5
    "CAP_SETGID",  # 6
    "CAP_SETUID",  # 7
    "CAP_SETPCAP",  # 8
    "CAP_LINUX_IMMUTABLE",  # 9
    "CAP_NET_BIND_SERVICE",  # 10
    "CAP_NET_BROADCAST",  # 11
    "CAP_NET_ADMIN",  # 12
    "CAP_NET_RAW",  # 13
    "CAP_IPC_LOCK",  # 14
    "CAP_IPC_OWNER",  # 15
    "CAP_SYS_MODULE",  # 16
    "CAP_SYS_RAWIO",  # 17
    "CAP_SYS_CHROOT",  # 18
    "CAP_SYS_PTRACE",  # 19
    "CAP_SYS_PACCT",  # 20
    "CAP_SYS_ADMIN",  # 21
    "CAP_SYS_BOOT",  # 22
    "CAP_SYS_NICE",  # 23
    "CAP_SYS_RESOURCE",  # 24
    "CAP_SYS_TIME",  # 25
    "CAP_SYS_TTY_CONFIG",  # 26
    "CAP_MKNOD",  # 27
    "CAP_LEASE",  # 28
    "CAP_AUDIT_WRITE",  # 29
    "CAP_AUDIT_CONTROL",  # 30
    "CAP_SETFCAP",  # 31
    "CAP_MAC_OVERRIDE",  # 32
    "CAP_MAC_ADMIN",  # 33
    "CAP_SYSLOG",  # 34
    "CAP_WAKE_ALARM",  # 35
    "CAP_BLOCK_SUSPEND",  # 36
    "CAP_AUDIT_READ",  # 37
    "CAP_PERFMON",  # 38
    "CAP_BPF",  # 39
    "CAP_CHECKPOINT_RESTORE",  # 40
)

_NUMBER_BY_NAME = {name: number for number, name in enumerate(CAP_NAMES)}


def cap_name(number: int) -> str:
    """Name of capability NUMBER; numbers newer than this table come back as CAP_<n>."""
    if 0 <= number < len(CAP_NAMES):
        return CAP_NAMES[number]
    return f"CAP_{number}"


def cap_number(name: str) -> int:
    """Number of capability NAME ("CAP_NET_ADMIN", "net_admin" or "CAP_<n>"); ValueError if unknown."""
    normalized = name.strip().upper()
    if not normalized.startswith("CAP_"):
        normalized = "CAP_" + normalized
    if normalized in _NUMBER_BY_NAME:
        return _NUMBER_BY_NAME[normalized]
    suffix = normalized[len("CAP_"):]
    if suffix.isdigit():
        return int(suffix)
    raise ValueError(f"unknown capability: {name!r}")
