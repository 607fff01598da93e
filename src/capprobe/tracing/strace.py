"""strace as capprobe's trace channel: root, attached from outside, writing into a private spool.

strace is never an ancestor of the target and never shares its identity: it runs as
root, attaches (-p) to the launcher once that has taken the service's identity, and
writes into an unnamed file (O_TMPFILE) that only capprobe and strace hold. Nothing on
the file system, and nothing the target inherits, leads to the trace.

The spool is a file, not a pipe, so strace's output never waits on capprobe: a pipe
blocks strace, and with it the stopped target, whenever the parser falls behind
(measured on nginx: the parser took half the target's speed). capprobe follows the file
behind strace and punches holes behind itself, so the spool holds only what the parser
has not read yet.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterator

STRACE_FLAGS = ["-f", "-q", "-ttt", "-n", "-yy", "-X", "verbose", "-s", "4096",
                "-e", "signal=SIGHUP,SIGUSR1,SIGUSR2"]  # the reload and log-reopen signals, for run.signals_received
PR_SET_PDEATHSIG = 1
# Disk-backed before RAM: a parser far behind a busy target costs disk pages (freed as it
# reads), not memory. CAPPROBE_SPOOL_DIR names another directory (a test fills a tiny one).
SPOOL_DIRS = ("/var/tmp", "/tmp", "/dev/shm")
READ_CHUNK = 256 << 10  # a batch of lines; its text and list are capprobe's RSS going up and down
PUNCH_EVERY = 16 << 20  # free what was read in steps of this many bytes
IDLE_WAIT = 0.02  # seconds: how long a caught-up reader sleeps before looking again
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)


class AttachError(Exception):
    """strace could not attach to the launcher; the message is one line."""


class SpoolError(Exception):
    """No directory takes an unnamed file; the message is one line."""


def open_trace_spool() -> tuple[int, int]:
    """(read fd, write fd) of a new unnamed file, both close-on-exec: strace writes through its
    own open of /dev/fd/WRITE_FD, capprobe reads (and frees) through READ_FD."""
    wanted = os.environ.get("CAPPROBE_SPOOL_DIR")
    reasons = []
    for directory in (wanted,) if wanted else SPOOL_DIRS:
        try:
            read_fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as e:
            reasons.append(f"{directory}: {e.strerror}")
            continue
        try:
            # a second open file description: strace's offset and ours are their own
            return read_fd, os.open(f"/proc/self/fd/{read_fd}", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            os.close(read_fd)
            raise
    raise SpoolError("capprobe: no directory takes an unnamed file for the trace spool "
                     f"(O_TMPFILE): {'; '.join(reasons)}")


@dataclass(frozen=True)
class SpoolStats:
    """How far the parser was behind strace: the channel's cost moved off the target."""

    bytes: int  # strace's output, in all
    peak_unread_bytes: int  # the spool at its largest: what strace had written and capprobe not yet read
    catch_up_seconds: float  # from strace's exit to the parser's last line

    def as_dict(self) -> dict:
        return {"bytes": self.bytes, "peak_unread_bytes": self.peak_unread_bytes,
                "catch_up_seconds": round(self.catch_up_seconds, 3)}


class SpoolFollower:
    """Reads strace's lines from the spool as strace writes them, until strace has exited.

    Lines come in batches (a chunk of up to READ_CHUNK bytes each); an empty batch means the
    reader caught up and waited IDLE_WAIT, so the caller can do timed work (checkpoints).
    """

    def __init__(self, read_fd: int, tracer_pid: int) -> None:
        self._fd = read_fd
        self._tracer = os.pidfd_open(tracer_pid)
        self._offset = self._punched = 0
        self._peak_unread = 0
        self._tracer_ended: float | None = None
        self.stats: SpoolStats | None = None

    def batches(self) -> Iterator[list[str]]:
        partial = b""
        while True:
            ended = self._tracer_ended is not None or self._tracer_exited(0)
            chunk = os.pread(self._fd, READ_CHUNK, self._offset)
            if chunk:
                self._offset += len(chunk)
                self._peak_unread = max(self._peak_unread, os.fstat(self._fd).st_size - self._offset + len(chunk))
                cut = chunk.rfind(b"\n") + 1
                if cut:
                    lines = (partial + chunk[:cut]).decode("latin-1").split("\n")
                    lines.pop()  # after the last newline: empty
                    partial = chunk[cut:]
                    yield lines
                else:
                    partial += chunk  # one line longer than a chunk
                self._free_read_part()
            elif ended:
                break  # strace had exited before this read found nothing: all of it was read
            elif not self._tracer_exited(IDLE_WAIT):
                yield []  # caught up, strace still running
        if partial:
            yield [partial.decode("latin-1")]  # strace killed mid-line: the parser counts it unparsed
        self.stats = SpoolStats(self._offset, self._peak_unread, time.monotonic() - self._tracer_ended)

    def _tracer_exited(self, wait: float) -> bool:
        """Has strace exited (waiting up to WAIT seconds)? Notes when it was first seen so."""
        if select.select([self._tracer], [], [], wait)[0]:
            self._tracer_ended = self._tracer_ended or time.monotonic()
            return True
        return False

    def _free_read_part(self) -> None:
        upto = self._offset - self._offset % PUNCH_EVERY
        if upto > self._punched:
            # The file keeps its size (strace's offset), the blocks read are given back.
            if _libc.fallocate(self._fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, self._punched,
                               upto - self._punched) == 0:
                self._punched = upto

    def close(self) -> None:
        for fd in (self._fd, self._tracer):
            os.close(fd)


def _die_with_parent() -> None:
    # If capprobe dies, strace dies with it; the kernel then detaches the target,
    # which goes on running instead of staying stopped under ptrace.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _detachable() -> None:
    _die_with_parent()
    signal.pthread_sigmask(signal.SIG_SETMASK, ())  # not capprobe's blocked signals: SIGINT must reach it


# strace 6.1 now and then never finishes detaching from a process stopped in vfork() whose
# child it holds in a ptrace stop (1 in 10 plain `strace -f -p` + SIGINT here): the target
# would stay stopped, and capprobe wait, for ever. Past this grace strace is killed: the
# kernel lets go of every task of a tracer that dies.
DETACH_GRACE = 5.0


class StraceProcess(subprocess.Popen):
    """strace, its diagnostics read by a thread of capprobe's: a failed write of the trace (a
    full disk under the spool) is counted as lost output, not scrolled past on the terminal
    once per line; any other message goes on to capprobe's stderr."""

    def __init__(self, argv: list[str], output: str, **popen_args) -> None:
        super().__init__(argv, stderr=subprocess.PIPE, **popen_args)
        self._output_marker = f": {output}: ".encode()  # after strace's argv[0]: "/usr/bin/strace: /dev/fd/5: ..."
        self.failed_writes = 0
        self.write_error: str | None = None
        self.killed_detaching = False
        self._grace: threading.Timer | None = None
        self._reader = threading.Thread(target=self._read_diagnostics, name="capprobe-strace-stderr", daemon=True)
        self._reader.start()

    def detach(self, grace: float = DETACH_GRACE) -> None:
        """Ask strace to let go of every task and exit (SIGINT); kill it if it has not after GRACE s."""
        if self.poll() is not None:
            return
        self.send_signal(signal.SIGINT)
        if self._grace is None:
            self._grace = threading.Timer(grace, self._kill_if_stuck)
            self._grace.daemon = True
            self._grace.start()

    def _kill_if_stuck(self) -> None:
        if self.poll() is None:
            self.killed_detaching = True
            self.kill()

    def stuck_detaching(self) -> str | None:
        """Once strace has exited: why its last lines may be missing, or None."""
        if self._grace is not None:
            self._grace.cancel()
        if not self.killed_detaching:
            return None
        return (f"strace did not detach within {DETACH_GRACE:g} s and was killed (the processes run on); "
                "its last lines may be missing")

    def _read_diagnostics(self) -> None:
        with self.stderr:
            for line in self.stderr:
                _, marker, error = line.partition(self._output_marker)
                if marker:
                    self.failed_writes += 1
                    self.write_error = error.decode(errors="replace").strip()
                else:
                    sys.stderr.buffer.write(line)
                    sys.stderr.flush()

    def lost_output(self) -> str | None:
        """Once strace has exited: why part of its trace never reached the spool, or None."""
        self._reader.join(timeout=5)
        if not self.failed_writes:
            return None
        return (f"strace failed {self.failed_writes} time(s) to write the trace ({self.write_error}): "
                "the syscalls, files and processes in those lines are missing")


def attach(strace: str, pid: int | list[int], write_fd: int, detachable: bool = False) -> StraceProcess:
    """Start strace (as we are: root) following PID (every thread of each, with -f) and their
    future children into WRITE_FD.

    detachable (`capprobe attach`): strace gets a session of its own and no blocked signal, so
    a SIGINT from capprobe, and only from capprobe (a terminal's Ctrl-C does not reach it),
    makes it detach from every process, which goes on running, and exit. Otherwise it inherits
    capprobe's blocked signals and ends when the traced processes do.
    """
    pids = pid if isinstance(pid, list) else [pid]
    output = f"/dev/fd/{write_fd}"
    return StraceProcess([strace, *STRACE_FLAGS, "-o", output, *(arg for each in pids for arg in ("-p", str(each)))],
                         output, pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
                         preexec_fn=_detachable if detachable else _die_with_parent,
                         start_new_session=detachable)


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
