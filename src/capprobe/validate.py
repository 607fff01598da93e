"""Every profile field a setup script or unit acts on, checked before it is used.

A profile is a file: an operator may edit it and an attacker may craft it. Names
reach useradd and tmpfiles.d, paths reach ownership lines, so each kind of field
has one rule here and a refusal is one line (InvalidField). Which paths may
change owner at all is an allow-list (``ownership_refusal``), judged on the
resolved path.
"""

from __future__ import annotations

import functools
import glob
import os
import re

from .paths import decode_path, display_path, encode_path

# Debian's adduser NAME_REGEX (useradd accepts a superset); 32 is useradd's limit.
NAME_REGEX = re.compile(r"[a-z_][-a-z0-9_]*\$?\Z")
MAX_NAME_LENGTH = 32

# The service's own directories: /var/lib/NAME and so on, NAME being the unit's or its user's.
SERVICE_DIRECTORY_ROOTS = (b"/var/lib", b"/var/log", b"/run", b"/var/cache", b"/etc")
# What root runs, trusts or keeps secret: never handed to a service, whatever the profile says.
NEVER_GIVEN = (
    b"/bin", b"/sbin", b"/lib", b"/lib32", b"/lib64", b"/libx32", b"/usr", b"/boot", b"/root", b"/home",
    b"/proc", b"/sys", b"/dev", b"/tmp", b"/var/tmp", b"/run/user", b"/run/systemd", b"/var/lib/dpkg",
    b"/var/lib/apt", b"/var/lib/systemd", b"/var/spool/cron", b"/etc/shadow", b"/etc/gshadow",
    b"/etc/passwd", b"/etc/group", b"/etc/sudoers", b"/etc/sudoers.d", b"/etc/crontab", b"/etc/cron.d",
    b"/etc/cron.hourly", b"/etc/cron.daily", b"/etc/cron.weekly", b"/etc/cron.monthly", b"/etc/systemd",
    b"/etc/tmpfiles.d", b"/etc/init.d", b"/etc/pam.d", b"/etc/security", b"/etc/ssh", b"/etc/ssl",
    b"/etc/ld.so.preload", b"/etc/ld.so.conf", b"/etc/ld.so.conf.d", b"/etc/profile", b"/etc/profile.d",
    b"/etc/environment", b"/etc/sysctl.conf", b"/etc/sysctl.d", b"/etc/modprobe.d", b"/etc/udev",
    b"/etc/apt", b"/etc/polkit-1", b"/etc/default", b"/etc/logrotate.d",
)
DPKG_LISTS = "/var/lib/dpkg/info/*.list"
# A tmpfiles.d path field as it is: no quoting, no C escape, no %-specifier to go wrong.
PLAIN_PATH = re.compile(rb"/[A-Za-z0-9._+@:/-]*\Z")


class InvalidField(ValueError):
    """A profile or option field that must not reach a script or unit (one-line message)."""


def check_name(name: object, what: str) -> str:
    """NAME when it is a user or group name useradd would create, else InvalidField."""
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not NAME_REGEX.match(name):
        raise InvalidField(f"{what} {name!r} is not a valid user or group name "
                           f"(letters a-z, digits, '_', '-', at most {MAX_NAME_LENGTH}, not starting with '-')")
    return name


def check_path(stored: object, what: str) -> bytes:
    """The bytes of a stored path when it is absolute and normalised, else InvalidField."""
    if not isinstance(stored, str):
        raise InvalidField(f"{what}: a path must be a string, not {type(stored).__name__}")
    if stored.startswith("@"):
        return stored.encode()  # an abstract socket name, never a file
    try:
        raw = decode_path(stored)
    except ValueError:
        raise InvalidField(f"{what}: {stored[:80]!r} is neither a path nor b64: bytes") from None
    shown = display_path(encode_path(raw))
    if not raw.startswith(b"/"):
        raise InvalidField(f"{what}: {shown!r} is not an absolute path")
    if b"\0" in raw:
        raise InvalidField(f"{what}: {shown!r} holds a NUL byte")
    # normpath keeps a leading "//" (POSIX leaves its meaning open), hence the explicit test
    if os.path.normpath(raw) != raw or raw.startswith(b"//") or b".." in raw.split(b"/"):
        raise InvalidField(f"{what}: {shown!r} is not a normalised path ('.', '..', '//' or a trailing '/')")
    return raw


def validate_profile(profile: dict, user: str | None, group: str | None) -> None:
    """Check every field the unit and setup script use; InvalidField on the first bad one."""
    for name, what in ((user, "--user"), (group, "--group")):
        if name is not None:
            check_name(name, what)
    run_user = (profile.get("run") or {}).get("user") or {}
    if run_user.get("name") is not None:
        check_name(run_user["name"], "run.user.name")
    for section in ("files", "devices"):
        for i, entry in enumerate(profile.get(section, [])):
            check_path(entry.get("path"), f"{section}[{i}].path")
            for which in ("stat", "dir_stat"):
                _check_stat(entry.get(which) or {}, f"{section}[{i}].{which}")
    # capabilities.uses[].targets need no check here: a target only trades a capability for
    # ownership when the plan grants that very path, and the plan grants only checked files


def _check_stat(st: dict, what: str) -> None:
    """The numbers a setup script compares a path with: they reach its command lines."""
    for key in ("uid", "gid", "dev", "ino"):
        if key in st and (not isinstance(st[key], int) or isinstance(st[key], bool) or st[key] < 0):
            raise InvalidField(f"{what}.{key}: {st[key]!r} is not a number")
    if "mode" in st and not (isinstance(st["mode"], str) and re.fullmatch(r"[0-7]{1,4}", st["mode"])):
        raise InvalidField(f"{what}.mode: {st['mode']!r} is not an octal mode")
    if "type" in st and st["type"] not in ("file", "dir", "symlink", "other"):
        raise InvalidField(f"{what}.type: {st['type']!r} is not file, dir, symlink or other")


@functools.cache
def package_paths() -> frozenset[bytes]:
    """Every path a Debian package ships (read once from dpkg's lists, not one dpkg -S per path)."""
    paths: set[bytes] = set()
    for listing in glob.glob(DPKG_LISTS):
        try:
            with open(listing, "rb") as f:
                paths.update(line for line in f.read().splitlines() if line.startswith(b"/"))
        except OSError:
            continue
    return frozenset(paths)


def _under(path: bytes, roots) -> bool:
    return any(path == r or path.startswith(r + b"/") for r in roots)


def own_directory(path: bytes, names) -> bool:
    """Whether PATH lies in /var/lib/NAME, /var/log/NAME, /run/NAME, /var/cache/NAME or /etc/NAME."""
    return any(_under(path, [root + b"/" + n.encode() for n in names if n]) for root in SERVICE_DIRECTORY_ROOTS)


def resolved(path: bytes) -> bytes | None:
    """PATH with its symlinks resolved, or None when a symlink on the way is not root's
    (the service or another user could point it anywhere)."""
    walked = b"/"
    for part in path.strip(b"/").split(b"/"):
        walked = os.path.join(walked, part)
        try:
            st = os.lstat(walked)
        except OSError:
            break  # the rest does not exist yet
        if os.path.islink(walked) and st.st_uid != 0:
            return None
    return os.path.realpath(path)


def ownership_refusal(path: bytes, names, created: bool, already_owned: bool) -> str | None:
    """None when PATH may be handed to the service; else why not, for the operator.

    Allowed: paths in the service's own directories, and paths the service created
    itself in a directory that is not a system one. Never: system and secret places,
    anything a Debian package ships (unless it already belongs to the service, so
    nothing changes), and "/" or a bare root such as /etc.
    """
    if not PLAIN_PATH.match(path):
        return "its name cannot be a tmpfiles.d field as it is"
    real = resolved(path)
    if real is None:
        return "reached through a symlink that root does not own"
    for p in {path, real}:
        if p == b"/" or p in SERVICE_DIRECTORY_ROOTS or p in (b"/var", b"/opt", b"/srv"):
            return "a top-level system directory"
        if _under(p, NEVER_GIVEN):
            return "a system or secret location"
    if already_owned:
        return None  # the line changes nothing here; the setup script refuses a host where it would
    packaged = package_paths()
    if real in packaged:
        return "shipped by a Debian package"
    if own_directory(real, names):
        return None
    parent = os.path.dirname(real)
    # /etc itself is not a place for a service's own files, only for its own directory
    if created and (parent in SERVICE_DIRECTORY_ROOTS[:-1] or parent not in packaged):
        return None
    if created:
        return "created in a directory a Debian package ships"
    return "neither created by the service nor in its own directories"
