"""Record the kernel's capability checks for a process tree through a private tracefs instance.

Each probe owns an instance /sys/kernel/tracing/instances/capprobe-<ownerpid>-<random> with
set_event_pid (plus event-fork) so concurrent probes never see each other's tasks. The
instance is removed on every exit path; instances left by dead owners are reclaimed at start.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import select
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from capprobe.events.tracefs_records import CapCheck, CapCheckParser

TRACEFS = Path("/sys/kernel/tracing")
INSTANCE_PREFIX = "capprobe-"
EVENT = Path("events/capability/cap_capable")
BUFFER_SIZE_KB = 4096
POLL_INTERVAL_S = 0.1
_INSTANCE_NAME = re.compile(r"^capprobe-(?P<owner>\d+)-[0-9a-f]+$")


class ProbeUnavailable(RuntimeError):
    """The capability probe cannot run here; .reason says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class ProbeStats:
    """What a finished probe saw besides the checks themselves."""

    checks: int = 0
    lost_events: int = 0            # ring-buffer overruns + dropped events (+ inline LOST lines)
    unparsed_count: int = 0
    unparsed_examples: list[str] = field(default_factory=list)
    orphan_stacks: int = 0
    callback_errors: list[BaseException] = field(default_factory=list)
    instance_left_behind: str | None = None  # rmdir kept failing (reclaimed by a later probe)


PROC_PID_INIT_INO = 0xEFFFFFFC  # the initial pid namespace's inode number (include/linux/proc_ns.h)


def in_initial_pid_namespace() -> bool:
    """tracefs filters and reports host pids; inside a container capprobe only knows its own."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino == PROC_PID_INIT_INO
    except OSError:
        return True


def ensure_tracefs(root: Path = TRACEFS) -> Path:
    """Return the tracefs root, mounting it if needed; ProbeUnavailable when impossible."""
    if os.geteuid() != 0:
        raise ProbeUnavailable("capability probe needs root (tracefs instances are root-only)")
    if not in_initial_pid_namespace():
        # set_event_pid takes host pids and events carry host pids: from a pid namespace
        # the filter would match nothing (measured: 0 checks under systemd-nspawn), and
        # stale-instance clean-up could not tell live owners from dead ones.
        raise ProbeUnavailable("running in a pid namespace (container): tracefs sees host pids only")
    if not (root / "instances").is_dir():
        result = subprocess.run(["mount", "-t", "tracefs", "nodev", str(root)],
                                capture_output=True, text=True)
        if result.returncode != 0 or not (root / "instances").is_dir():
            raise ProbeUnavailable(f"tracefs not available at {root}: {result.stderr.strip()}")
    if not (root / EVENT).is_dir():
        raise ProbeUnavailable("kernel has no capability:cap_capable tracepoint")
    return root


def _pid_alive(pid: int) -> bool:
    """True while PID runs; a zombie (killed, not yet reaped) owns nothing any more."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    # state is the first field after the ")" that closes the command name
    state = stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def _remove_instance(path: Path, timeout_s: float = 2.0) -> bool:
    """rmdir an instance, retrying while the kernel still holds it busy."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def reclaim_stale_instances(root: Path = TRACEFS) -> list[str]:
    """Remove capprobe-<pid>-* instances whose owner process is gone; return their names."""
    reclaimed = []
    instances = root / "instances"
    if not instances.is_dir():
        return reclaimed
    for entry in instances.iterdir():
        match = _INSTANCE_NAME.match(entry.name)
        if not match or _pid_alive(int(match["owner"])):
            continue
        _write_quietly(entry / EVENT / "enable", "0")
        if _remove_instance(entry):
            reclaimed.append(entry.name)
    return reclaimed


def _write(path: Path, value: str, append: bool = False) -> None:
    # os.open, not open(..., "a"): Python's append mode seeks, which tracefs files refuse.
    flags = os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _write_quietly(path: Path, value: str) -> None:
    try:
        _write(path, value)
    except OSError:
        pass


def read_lost_events(instance: Path) -> int:
    """Sum 'overrun' and 'dropped events' over the instance's per_cpu/cpuN/stats."""
    lost = 0
    for stats in sorted((instance / "per_cpu").glob("cpu*/stats")):
        try:
            text = stats.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("overrun", "dropped events") and value.strip().isdigit():
                lost += int(value.strip())
    return lost


class CheckDelivery:
    """What every capability probe backend shares: hand each check on, count, never lose one."""

    stats: "ProbeStats"
    on_check: Callable[[CapCheck], None] | None
    checks: list[CapCheck]

    def _deliver(self, checks: list[CapCheck]) -> None:
        for check in checks:
            self.stats.checks += 1
            if self.on_check is None:
                self.checks.append(check)
                continue
            try:
                self.on_check(check)
            except Exception as error:  # keep recording; report at the end
                self.stats.callback_errors.append(error)


class CapabilityProbe(CheckDelivery):
    """Context manager recording every cap_capable check of root_pid and its descendants.

    Arm it before the target does anything interesting (e.g. the child waits on a pipe until
    the probe is started). on_check(CapCheck) runs on the reader thread; without a callback
    the checks are collected in .checks.
    """

    def __init__(self, root_pid: int, on_check: Callable[[CapCheck], None] | None = None,
                 buffer_size_kb: int = BUFFER_SIZE_KB, tracefs: Path = TRACEFS):
        self.root_pid = root_pid
        self.on_check = on_check
        self.checks: list[CapCheck] = []
        self.stats = ProbeStats()
        self.instance: Path | None = None
        # CLOCK_MONOTONIC -> wall clock, taken at start (trace_clock "mono").
        self.wall_offset = time.time() - time.monotonic()
        self._buffer_size_kb = buffer_size_kb
        self._tracefs = tracefs
        self._parser = CapCheckParser()
        self._pipe_fd: int | None = None
        self._reader: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stopped = False

    def mono_to_wall(self, mono_ts: float) -> float:
        """Convert a CapCheck.mono_ts to time.time() seconds."""
        return mono_ts + self.wall_offset

    def start(self) -> "CapabilityProbe":
        """Create and arm the instance, start the reader; cleans up itself if anything fails."""
        root = ensure_tracefs(self._tracefs)
        reclaim_stale_instances(root)
        name = f"{INSTANCE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.instance = root / "instances" / name
        try:
            self.instance.mkdir()
            inst = self.instance
            _write(inst / "trace_clock", "mono")
            _write(inst / "buffer_size_kb", str(self._buffer_size_kb))
            if (inst / "buffer_percent").exists():
                _write(inst / "buffer_percent", "0")  # wake readers on any data
            _write(inst / "options/event-fork", "1")
            _write(inst / "options/stacktrace", "1")
            # The pid filter must be in place before the event is enabled, or other tasks leak in.
            _write(inst / "set_event_pid", str(self.root_pid))
            if not (inst / EVENT / "enable").exists():
                raise ProbeUnavailable("kernel has no capability:cap_capable tracepoint")
            self._pipe_fd = os.open(inst / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
            _write(inst / EVENT / "enable", "1")
            self.wall_offset = time.time() - time.monotonic()
            self._reader = threading.Thread(target=self._read_loop, name=f"capprobe-{name}",
                                            daemon=True)
            self._reader.start()
        except BaseException:
            self._teardown()
            raise
        return self

    def add_pid(self, pid: int) -> None:
        """Also trace pid (and, with event-fork, its future children)."""
        if self.instance is None:
            raise RuntimeError("probe not started")
        _write(self.instance / "set_event_pid", f"{pid}\n", append=True)

    def stop(self) -> ProbeStats:
        """Disable the event, drain what is buffered, record losses, remove the instance."""
        if self._stopped:
            return self.stats
        self._stopped = True
        try:
            if self.instance is not None:
                _write_quietly(self.instance / EVENT / "enable", "0")
            self._stopping.set()
            if self._reader is not None:
                # The reader drains trace_pipe itself once it sees _stopping. A reader stuck in
                # on_check for 10 s is abandoned (it is a daemon thread).
                self._reader.join(timeout=10)
            if self._pending_text:  # output ended without a newline
                self._deliver(self._parser.feed(self._pending_text))
                self._pending_text = ""
            self._deliver(self._parser.flush())
            if self.instance is not None:
                self.stats.lost_events = max(read_lost_events(self.instance),
                                             self._parser.lost_events)
        finally:
            self._teardown()
        self.stats.unparsed_count = self._parser.unparsed_count
        self.stats.unparsed_examples = list(self._parser.unparsed_examples)
        self.stats.orphan_stacks = self._parser.orphan_stacks
        return self.stats

    def __enter__(self) -> "CapabilityProbe":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            while not self._stopping.is_set():
                select.select([self._pipe_fd], [], [], POLL_INTERVAL_S)
                # Read even when select timed out: poll wakeups on trace_pipe are not guaranteed.
                self._read_available()
            self._drain()
        except OSError as error:
            self.stats.callback_errors.append(error)

    def _drain(self) -> None:
        """Read until trace_pipe is empty twice in a row (the event is disabled by now)."""
        empty_reads = 0
        while empty_reads < 2:
            if self._read_available():
                empty_reads = 0
            else:
                empty_reads += 1
                time.sleep(0.02)

    _pending_text = ""

    def _read_available(self) -> bool:
        """Read whatever trace_pipe holds now; return whether anything came."""
        got_data = False
        while True:
            try:
                chunk = os.read(self._pipe_fd, 65536)
            except BlockingIOError:
                return got_data
            if not chunk:
                return got_data
            got_data = True
            text = self._pending_text + chunk.decode("utf-8", "replace")
            lines = text.split("\n")
            self._pending_text = lines.pop()  # a line may continue in the next read
            for line in lines:
                self._deliver(self._parser.feed(line))

    def _teardown(self) -> None:
        if self._pipe_fd is not None:
            os.close(self._pipe_fd)
            self._pipe_fd = None
        if self.instance is not None:
            _write_quietly(self.instance / EVENT / "enable", "0")
            if not _remove_instance(self.instance):
                # Leave it for reclaim_stale_instances() rather than raise over the real error.
                self.stats.instance_left_behind = str(self.instance)
            self.instance = None
