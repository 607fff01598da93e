"""What the files a run used look like on disk at its end: modes, owners, identities.

Side effects (stat, getxattr) at the edge; the rules read only what is recorded here.
"""

from __future__ import annotations

import os
import stat

from .paths import decode_path
from .model import ENTRY_OPS


MAX_STAT_PATHS = 20000


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


def stat_entry(raw: bytes) -> dict:
    """The recorded stat of one path.

    type, dev and ino are of the path itself (lstat): the setup script compares them
    before it touches the path, so a file swapped for a symlink or another inode is
    refused. mode, uid and gid are of what opening the path reaches (symlinks
    followed): who may open it decides the identity a unit can use.
    """
    try:
        own = os.lstat(raw)
    except OSError:
        return {"missing": True}
    entry = {"type": _kind(own.st_mode), "dev": own.st_dev, "ino": own.st_ino}
    try:
        reached = os.stat(raw) if stat.S_ISLNK(own.st_mode) else own
    except OSError:
        reached = own  # a dangling symlink: only the link itself is there
    entry.update(mode=f"{reached.st_mode & 0o7777:04o}", uid=reached.st_uid, gid=reached.st_gid)
    return entry


def record_file_modes(profile: dict) -> None:
    """Stat of every file and device used, as they are at the end of the run.

    A 0600 root file or a crw------- device cannot be opened by DynamicUser=,
    whatever the capabilities.
    """
    for entry in profile["files"][:MAX_STAT_PATHS] + profile.get("devices", []):
        raw = decode_path(entry["path"])
        entry["stat"] = stat_entry(raw)
        if set(entry.get("ops", ())) & ENTRY_OPS:
            # the directory may be what a setup script gives, or one it must not re-own
            # (Debian's /run/NAME): its identity and owner are recorded too
            entry["dir_stat"] = stat_entry(os.path.dirname(raw))


def describe_executables(processes: list[dict]) -> list[dict]:
    """Setuid/setgid bits and file capabilities of every executed file (NoNewPrivileges)."""
    seen: dict[str, dict] = {}
    for proc in processes:
        for ex in proc["execs"]:
            path = ex["path"]
            if path in seen:
                continue
            raw = decode_path(path)
            entry = {"path": path, "setuid": False, "setgid": False, "file_caps": False, "owner": None}
            try:
                st = os.stat(raw)
                entry.update(setuid=bool(st.st_mode & 0o4000), setgid=bool(st.st_mode & 0o2000),
                             owner=st.st_uid)
                try:
                    entry["file_caps"] = bool(os.getxattr(raw, "security.capability"))
                except OSError:
                    pass
            except OSError:
                entry["missing"] = True
            seen[path] = entry
    return list(seen.values())
