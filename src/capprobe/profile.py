"""The profile: versioned JSON, written atomically, loaded with validation.

Schema: docs/profile-schema.md. Paths are encoded by capprobe.paths.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

SCHEMA = "capprobe/profile/v1"
REQUIRED_SECTIONS = ("host", "run", "processes", "syscalls", "files", "network")


class ProfileError(Exception):
    """A profile cannot be read or written; the message is one line for the user."""


def save_profile(profile: dict, dest: Path, force: bool = False) -> None:
    """Write PROFILE to DEST atomically; refuse to replace an existing file without force."""
    dest = Path(dest)
    data = json.dumps(profile, indent=1, sort_keys=False, ensure_ascii=True) + "\n"
    write_atomically(dest, data.encode("ascii"), force)


def write_atomically(dest: Path, data: bytes, force: bool = False, mode: int = 0o644) -> None:
    """Write DATA to DEST via a temporary file in the same directory and a rename/link."""
    dest = Path(dest)
    directory = dest.parent if str(dest.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + dest.name + ".", suffix=".tmp", dir=directory)
    except OSError as e:
        raise ProfileError(f"cannot write {dest}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if force:
            os.replace(tmp, dest)
        else:
            # link() fails if DEST exists: no window where another writer's file is replaced
            try:
                os.link(tmp, dest)
            except FileExistsError:
                raise ProfileError(f"{dest} exists; use --force to replace it") from None
            os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_profile(path: Path) -> dict:
    """Read and check a profile; any problem becomes a one-line ProfileError."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ProfileError(f"cannot read {path}: {e.strerror}") from None
    try:
        profile = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path} is not a capprobe profile (invalid JSON: {e})") from None
    if not isinstance(profile, dict) or "schema" not in profile:
        raise ProfileError(f"{path} is not a capprobe profile (no schema field)")
    if profile["schema"] != SCHEMA:
        raise ProfileError(f"{path} has schema {profile['schema']!r}; this capprobe reads {SCHEMA}")
    missing = [s for s in REQUIRED_SECTIONS if s not in profile]
    if missing:
        raise ProfileError(f"{path} is a damaged profile (missing: {', '.join(missing)})")
    return profile
