"""Shared fixtures: run the real capprobe command, load what it wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECORDED = Path(__file__).resolve().parent / "recorded"
# Debian's interpreter: a pyenv shim would put a bash script in every trace.
SYSTEM_PYTHON = "/usr/bin/python3"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ptrace of other users, tracefs, netns)")
needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed (.ci/run installs it)")


def capprobe(*args: str, cwd=None, timeout: float = 120, env=None, **kw) -> subprocess.CompletedProcess:
    """Run `python -m capprobe ARGS` and return the finished process (text output)."""
    return subprocess.run([sys.executable, "-m", "capprobe", *args], cwd=cwd, timeout=timeout,
                          capture_output=True, text=True, env=env, **kw)


def load(path) -> dict:
    with open(path) as f:
        return json.load(f)


def file_entry(profile: dict, path: str) -> dict | None:
    return next((f for f in profile["files"] if f["path"] == path), None)
