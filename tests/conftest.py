"""Shared fixtures: run the real capprobe command, load what it wrote."""

from __future__ import annotations

import contextlib as _contextlib
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


@_contextlib.contextmanager
def fresh_netns():
    """A network namespace of its own, loopback up, removed afterwards whatever happens."""
    name = f"capprobe-test-{os.getpid()}-{next(_netns_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def netns():
    """A network namespace of the test's own."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace")
    with fresh_netns() as name:
        yield name


def capprobe_in_netns(ns: str, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """capprobe itself inside NS, so the profile holds only the target's own work."""
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "capprobe", *args],
                          timeout=timeout, capture_output=True, text=True, **kw)


def uses(profile: dict, cap: str, status: str = "required") -> list[dict]:
    return [u for u in profile["capabilities"]["uses"] if u["capability"] == cap and u["status"] == status]


import itertools as _itertools  # noqa: E402

_netns_counter = _itertools.count()
WORKLOADS = Path(__file__).resolve().parent / "workloads"


class HeldChild:
    """A forked child that exec()s argv only once released, so the probe can be armed first.

    (subprocess.Popen cannot do this: it blocks until the child has exec'd.)
    """

    def __init__(self, argv, user=None):
        read_end, self._release = os.pipe()
        out_read, out_write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # child: only async-signal-safe-ish calls until exec
            try:
                os.close(self._release)
                os.dup2(out_write, 1)
                os.dup2(out_write, 2)
                if user is not None:
                    os.setgroups([])
                    os.setgid(user)
                    os.setuid(user)
                os.read(read_end, 1)
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        os.close(read_end)
        os.close(out_write)
        self._output = out_read
        self._released = False

    def release(self):
        if not self._released:
            self._released = True
            os.write(self._release, b"x")
            os.close(self._release)

    def wait(self):
        """Wait for exit; return (returncode, combined stdout/stderr)."""
        self.release()
        chunks = []
        while chunk := os.read(self._output, 65536):
            chunks.append(chunk)
        os.close(self._output)
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")
