"""strace as capprobe's trace channel: root, attached from outside, writing into a private pipe.

strace is never an ancestor of the target and never shares its identity: it runs as
root, attaches (-p) to the launcher once that has taken the service's identity, and
writes into an anonymous pipe that only capprobe and strace hold. Nothing on the file
system, and nothing the target inherits, leads to the trace.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import time

STRACE_FLAGS = ["-f", "-q", "-ttt", "-n", "-yy", "-X", "verbose", "-s", "4096",
                "-e", "signal=SIGHUP,SIGUSR1,SIGUSR2"]  # the reload and log-reopen signals, for run.signals_received
PR_SET_PDEATHSIG = 1
F_SETPIPE_SZ = 1031
WANTED_PIPE_SIZE = 1 << 20  # a burst of syscalls must not stall the target on a full pipe


class AttachError(Exception):
    """strace could not attach to the launcher; the message is one line."""


def open_trace_pipe() -> tuple[int, int]:
    """(read end, write end) of an enlarged anonymous pipe; both close on exec."""
    read_fd, write_fd = os.pipe()
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            size = min(WANTED_PIPE_SIZE, int(f.read()))
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, size)
    except (OSError, ValueError):
        pass  # the default 64 KiB still works, only with more back-pressure
    return read_fd, write_fd


def _die_with_parent() -> None:
    # If capprobe dies, strace dies with it; the kernel then detaches the target,
    # which goes on running instead of staying stopped under ptrace.
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def attach(strace: str, pid: int, write_fd: int) -> subprocess.Popen:
    """Start strace (as we are: root) following PID and its future children into WRITE_FD."""
    return subprocess.Popen([strace, *STRACE_FLAGS, "-o", f"/dev/fd/{write_fd}", "-p", str(pid)],
                            pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent)


def tracer_of(pid: int) -> int | None:
    """TracerPid of PID (0: none), or None when PID is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def wait_attached(pid: int, tracer: subprocess.Popen, timeout: float = 10.0) -> None:
    """Return once TRACER ptrace-attached PID, or raise AttachError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = tracer_of(pid)
        if current == tracer.pid:
            return
        if current is None:
            raise AttachError("the target's launcher exited before strace attached")
        if tracer.poll() is not None:
            raise AttachError(f"strace exited with {tracer.returncode} before attaching "
                              "(ptrace not permitted here?)")
        if current not in (0, tracer.pid):
            raise AttachError(f"the launcher is already traced by pid {current}")
        time.sleep(0.005)
    raise AttachError(f"strace did not attach within {timeout:g} s")
