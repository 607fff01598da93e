"""What docker, compose and Kubernetes each say in their own words, read once from `Needs`.

A container starts from nothing allowed, like the unit: every capability dropped and the
needed ones added, the root file system read-only with the written directories mounted
(a tmpfs for /tmp and /run/NAME, empty at each start like systemd's RuntimeDirectory=; a
named volume for state kept between runs), no new privileges unless a setuid program is run,
no network when only AF_UNIX sockets were used, the seccomp export as the filter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...needs import Needs
from ...paths import display_path, printable

# Characters the flag syntaxes give a meaning (docker's "SRC:DST:OPTS", tmpfs's "PATH:OPTS,OPT").
_FLAG_SYNTAX = re.compile(r"[:,=\s]")
NON_ROOT_CAPABILITIES = (
    "a non-root user gets added capabilities only where the runtime makes them ambient (podman does; "
    "Kubernetes does not, kubernetes#56374): otherwise give the executable file capabilities "
    "(setcap) in the image")


@dataclass(frozen=True)
class Mount:
    path: str
    kind: str            # "tmpfs" or "volume"
    volume: str = ""     # the named volume, for "volume"
    why: str = ""


@dataclass(frozen=True)
class ContainerSettings:
    capabilities: tuple[str, ...]          # "CAP_NET_BIND_SERVICE"
    capability_why: tuple[str, ...]        # one line of evidence each
    user: str | None                       # "uid:gid"
    user_why: str
    non_root: bool
    mounts: tuple[Mount, ...]
    devices: tuple[str, ...]               # "/dev/net/tun:/dev/net/tun:rw"
    no_network: bool
    network_why: str
    no_new_privileges: bool
    no_new_privileges_why: str
    seccomp_file: str
    left_out: tuple[str, ...]              # what a container cannot be told, each with why
    capability_caveat: str                 # "" or why added capabilities may not reach the program


def container_settings(needs: Needs, name: str, seccomp_file: str) -> ContainerSettings:
    left_out: list[str] = []
    mounts = []
    for d in needs.writable_dirs:
        path = flag_path(d.path)
        if path is None or path == "/":
            left_out.append(f"writable directory {printable(d.path.decode('utf-8', 'backslashreplace'))}: "
                            "cannot be mounted (the root itself, or a name the flags cannot carry)")
        elif d.kind in ("tmp", "runtime"):
            mounts.append(Mount(path, "tmpfs", why=f"{d.kind} directory written by the service"))
        else:
            mounts.append(Mount(path, "volume", volume_name(name, path), why="state written by the service"))
    devices = []
    for dev in needs.devices:
        path = flag_path(dev.path)
        if path is None:
            left_out.append(f"device {printable(dev.path.decode('utf-8', 'backslashreplace'))}: a name the "
                            "flags cannot carry")
            continue
        devices.append(f"{path}:{path}:{dev.access}")
    identity = needs.identity
    if identity.uid is None:
        user, user_why = None, "the profile does not say which user the run was taken as"
    elif identity.changes_identity:
        user, user_why = "0:0", (f"starts as root and switches user itself "
                                 f"({', '.join(dict.fromkeys(identity.switches))})")
    else:
        user = f"{identity.uid}:{identity.gid if identity.gid is not None else identity.uid}"
        user_why = f"the run was taken as {identity.user or identity.uid}"
    non_root = user is not None and not identity.runs_as_root and not identity.changes_identity
    setuid = needs.behaviour.setuid_exec
    return ContainerSettings(
        capabilities=needs.capability_names,
        capability_why=tuple(capability_why(c) for c in needs.capabilities),
        user=user, user_why=user_why,
        non_root=non_root,
        mounts=tuple(mounts),
        devices=tuple(devices),
        no_network=not needs.network,
        network_why=(f"uses {', '.join(needs.family_names)}" if needs.network else
                     f"no network socket ({', '.join(needs.family_names) or 'none'})"),
        no_new_privileges=not setuid,
        no_new_privileges_why=(f"runs setuid/setgid/file-capability programs: "
                               f"{', '.join(display_path(p) for p in setuid)}" if setuid
                               else "runs no setuid, setgid or file-capability program"),
        seccomp_file=seccomp_file,
        left_out=tuple(left_out),
        capability_caveat=NON_ROOT_CAPABILITIES if needs.capabilities and non_root else "",
    )


def capability_why(cap) -> str:
    """'CAP_NET_BIND_SERVICE: bind to a port below 1024 (bind) by nginx on 0.0.0.0:80'."""
    if not cap.evidence:
        return f"{cap.name}: required (no kernel check recorded beside it)"
    e = cap.evidence[0]
    exe = display_path(e.exe).rsplit("/", 1)[-1] if e.exe else "?"
    target = f" on {display_path(e.targets[0])}" if e.targets else ""
    more = f" (+{len(cap.evidence) - 1} more checks)" if len(cap.evidence) > 1 else ""
    return printable(f"{cap.name}: {e.reason or e.call_site or 'checked'}"
                     f"{' (' + e.syscall + ')' if e.syscall else ''} by {exe}{target}{more}")


def flag_path(raw: bytes) -> str | None:
    """RAW as text a flag can carry, or None (not UTF-8, or a character the syntax uses)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _FLAG_SYNTAX.search(text) or not text.isprintable() or not text.startswith("/"):
        return None
    return text


def volume_name(name: str, path: str) -> str:
    """'nginx-var-lib-nginx': a volume name docker, podman and Kubernetes all take."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{name}-{path}".lower()).strip("-")
    return slug[:63].rstrip("-") or "state"


def command_words(command: tuple[bytes, ...]) -> list[str] | None:
    """The traced command as text, or None when an argument is not UTF-8."""
    try:
        return [a.decode("utf-8") for a in command]
    except UnicodeDecodeError:
        return None
