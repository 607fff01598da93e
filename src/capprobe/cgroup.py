"""The target's own cgroup v2: every process it starts, however it daemonizes, stays findable.

A double fork leaves the process tree but never the cgroup, so --duration and a
forwarded SIGTERM can stop all of it, and a child that escaped ptrace shows up as a
member strace never reported. The directory is a child of capprobe's own cgroup; a
lock (flock on the directory) held for the session's life proves it is in use, so a
later session removes it only once the lock is free and no process is left.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import signal
import threading
import time

PREFIX = "capprobe-"
WATCH_INTERVAL = 0.05  # how often membership is sampled: a shorter-lived escapee can be missed


def cgroup2_mount(mountinfo: str) -> str | None:
    """Mount point of the cgroup v2 hierarchy from /proc/self/mountinfo text."""
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return left.split(" ")[4]
    return None


def own_cgroup(proc_cgroup: str) -> str | None:
    """Our path inside the v2 hierarchy, from /proc/self/cgroup text ("0::/path")."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _members(path: str) -> set[int]:
    try:
        return {int(p) for p in _read(os.path.join(path, "cgroup.procs")).split()}
    except OSError:
        return set()


def _locked(path: str) -> int | None:
    """An fd holding an exclusive lock on directory PATH, or None if someone holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def reclaim_stale(base: str) -> list[str]:
    """Remove empty capprobe cgroups under BASE whose session is provably gone (lock free)."""
    removed = []
    for name in os.listdir(base):
        path = os.path.join(base, name)
        if not name.startswith(PREFIX) or not os.path.isdir(path):
            continue
        try:
            fd = _locked(path)
        except OSError:
            continue
        if fd is None:
            continue  # a live session holds it
        try:
            if not _members(path):
                os.rmdir(path)
                removed.append(name)
        except OSError:
            pass  # a target a killed session left running is still in it: leave it be
        finally:
            os.close(fd)
    return removed


class TargetCgroup:
    """One cgroup for the session's target; None from create() when cgroup v2 is not writable."""

    def __init__(self, path: str, relative: str, lock_fd: int) -> None:
        self.path = path
        self.relative = relative  # as /proc/PID/cgroup names it
        self._lock_fd = lock_fd
        self.seen: set[int] = set()  # every pid ever observed in it
        self._stop_watch = threading.Event()
        self._watcher: threading.Thread | None = None

    @classmethod
    def create(cls, notes: list[str]) -> "TargetCgroup | None":
        try:
            mount = cgroup2_mount(_read("/proc/self/mountinfo"))
            inside = own_cgroup(_read("/proc/self/cgroup"))
            if mount is None or inside is None:
                raise OSError(errno.ENOENT, "no cgroup v2 hierarchy is mounted")
            base = os.path.join(mount, inside.lstrip("/"))
            reclaim_stale(base)
            path = os.path.join(base, f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
            os.mkdir(path, 0o755)
        except OSError as e:
            notes.append(f"no cgroup v2 for the target ({e.strerror or e}): a daemon that double-forks "
                         "may outlive --duration, and children that escape tracing go unnoticed")
            return None
        fd = _locked(path)
        if fd is None:  # only a racing reclaim could hold it; then it is not ours to use
            notes.append("no cgroup v2 for the target (its new cgroup was taken)")
            return None
        return cls(path, "/" + os.path.relpath(path, mount), fd)

    def add(self, pid: int) -> None:
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def is_member(self, pid: int) -> bool:
        try:
            return f"0::{self.relative}\n" in _read(f"/proc/{pid}/cgroup")
        except OSError:
            return False

    def poll(self) -> set[int]:
        """The members now; remembered in self.seen."""
        now = _members(self.path)
        self.seen |= now
        return now

    def watch(self) -> None:
        """Sample the members in a thread until remove(), so children that escape tracing are seen."""
        def loop() -> None:
            while not self._stop_watch.wait(WATCH_INTERVAL):
                self.poll()
        self._watcher = threading.Thread(target=loop, name="capprobe-cgroup", daemon=True)
        self._watcher.start()

    def kill(self) -> None:
        """SIGKILL every member (cgroup.kill, or one by one on kernels before 5.14)."""
        try:
            with open(os.path.join(self.path, "cgroup.kill"), "w") as f:
                f.write("1")
            return
        except OSError:
            pass
        for pid in self.poll():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left, wait for it to go, remove the directory, drop the lock."""
        self._stop_watch.set()
        if self._watcher is not None:
            self._watcher.join(timeout=2)
        try:
            deadline = time.monotonic() + timeout
            while self.poll():
                if time.monotonic() > deadline:
                    return  # left for reclaim_stale() once it is empty
                self.kill()
                time.sleep(0.02)
            os.rmdir(self.path)
        except OSError:
            pass
        finally:
            os.close(self._lock_fd)
