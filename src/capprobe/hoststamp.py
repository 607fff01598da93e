"""What machine a profile was taken on (a profile is only comparable with its host)."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

from . import __version__


def _first_line(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def _distribution() -> str | None:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME")
    except OSError:
        return None


def _local_port_range() -> list[int] | None:
    """net.ipv4.ip_local_port_range: the ports the kernel picks source ports from (bind rules)."""
    try:
        low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return None
    return [low, high]


def host_stamp() -> dict:
    """Kernel, architecture, distribution and tool versions of this host."""
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "architecture": platform.machine(),
        "distribution": _distribution(),
        "systemd": _first_line(["systemd-analyze", "--version"]),
        "strace": _first_line(["strace", "-V"]),
        "capprobe": __version__,
        "python": platform.python_version(),
        "ip_local_port_range": _local_port_range(),
    }
