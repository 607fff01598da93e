"""Record the kernel's capability checks for a process tree through a private tracefs instance.

Each probe owns an instance /sys/kernel/tracing/instances/capprobe-<ownerpid>-<random> with
set_event_pid (plus event-fork) so concurrent probes never see each other's tasks. The
instance is removed on every exit path: by stop(), or, when capprobe dies without cleaning up
(SIGKILL), by a watchdog process that waits for the end of a pipe only capprobe holds.
Instances left by dead owners (e.g. the watchdog was killed too) are reclaimed at start.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from capprobe.events.tracefs_records import CapCheckParser
from capprobe.tracing.probe import CapCheck, CheckDelivery, ProbeStats, ProbeUnavailable

TRACEFS = Path("/sys/kernel/tracing")
INSTANCE_PREFIX = "capprobe-"
EVENT = Path("events/capability/cap_capable")
BUFFER_SIZE_KB = 4096
POLL_INTERVAL_S = 0.1
_INSTANCE_NAME = re.compile(r"^capprobe-(?P<owner>\d+)-[0-9a-f]+$")


PROC_PID_INIT_INO = 0xEFFFFFFC  # the initial pid namespace's inode number (include/linux/proc_ns.h)


def in_initial_pid_namespace() -> bool:
    """tracefs filters and reports host pids; inside a container capprobe only knows its own."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino == PROC_PID_INIT_INO
    except OSError:
        return True


def ensure_tracefs(root: Path = TRACEFS) -> bool:
    """Make sure tracefs is usable at root, mounting it if needed; True when this call mounted
    it. ProbeUnavailable when impossible."""
    if os.geteuid() != 0:
        raise ProbeUnavailable("capability probe needs root (tracefs instances are root-only)")
    if not in_initial_pid_namespace():
        # set_event_pid takes host pids and events carry host pids: from a pid namespace
        # the filter would match nothing (measured: 0 checks under systemd-nspawn), and
        # stale-instance clean-up could not tell live owners from dead ones.
        raise ProbeUnavailable("running in a pid namespace (container): tracefs sees host pids only")
    mounted = mount_tracefs(root)
    if not (root / EVENT).is_dir():
        if mounted:
            unmount_if_unused(root)
        raise ProbeUnavailable("kernel has no capability:cap_capable tracepoint")
    return mounted


def mount_tracefs(root: Path = TRACEFS) -> bool:
    """Mount tracefs at root unless it is there; True when this call mounted it."""
    if (root / "instances").is_dir():
        return False
    result = subprocess.run(["mount", "-t", "tracefs", "nodev", str(root)],
                            capture_output=True, text=True)
    if result.returncode != 0 or not (root / "instances").is_dir():
        why = " ".join(result.stderr.split()) or f"mount exited with {result.returncode}"
        raise ProbeUnavailable(f"tracefs not available at {root}: {why}")
    return True


def unmount_if_unused(root: Path) -> bool:
    """Unmount a tracefs capprobe mounted itself, unless another capprobe probe still uses it."""
    instances = root / "instances"
    try:
        if any(entry.name.startswith(INSTANCE_PREFIX) for entry in instances.iterdir()):
            return False
    except OSError:
        return False
    return subprocess.run(["umount", str(root)], capture_output=True).returncode == 0


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
    reclaimed: list[str] = []
    instances = root / "instances"
    if not in_initial_pid_namespace() or not instances.is_dir():
        # Owners are host pids: inside a pid namespace every host session's owner looks dead.
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


def read_lost_entries(instance: Path) -> int:
    """Sum 'overrun' and 'dropped events' over the instance's per_cpu/cpuN/stats.

    These count ring-buffer entries, not checks: with options/stacktrace every check is two
    entries (the event and its <stack trace>); see lost_checks().
    """
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


def lost_checks(lost_entries: int, stackless_checks: int, orphan_stacks: int) -> int:
    """Checks lost, from ring-buffer entries lost when each check is an event + a stack entry.

    A lost entry is an event (a lost check) or a stack. Stacks lost with their event come in
    pairs; a check read without its stack lost only the stack (stackless_checks); a stack read
    without its event lost only the event (orphan_stacks). So
    lost_entries = 2 * pairs + stackless + orphans, and lost checks = pairs + orphans
    (an odd entry left over is counted as a check: never under-report a loss).
    """
    pairs, odd = divmod(max(0, lost_entries - stackless_checks - orphan_stacks), 2)
    return pairs + odd + orphan_stacks


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
        self._stackless_checks = 0
        self._mounted_tracefs = False
        self._watchdog: subprocess.Popen | None = None
        self._watchdog_pipe: int | None = None

    def mono_to_wall(self, mono_ts: float) -> float:
        """Convert a CapCheck.mono_ts to time.time() seconds."""
        return mono_ts + self.wall_offset

    def start(self) -> "CapabilityProbe":
        """Create and arm the instance, start the reader; cleans up itself if anything fails."""
        root = self._tracefs
        self._mounted_tracefs = ensure_tracefs(root)
        reclaim_stale_instances(root)
        name = f"{INSTANCE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.instance = root / "instances" / name
        try:
            self.instance.mkdir()
            self._start_watchdog(self.instance)
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

    def exclude_pid(self, pid: int) -> None:
        """Never record pid's checks (capprobe's own tracer), in the kernel and on delivery.

        With event-fork the kernel also excludes pid's future children: exclude only a task
        that does not fork the target.
        """
        if self.instance is None:
            raise RuntimeError("probe not started")
        super().exclude_pid(pid)
        notrace = self.instance / "set_event_notrace_pid"
        if notrace.exists():  # Linux >= 5.8; before, the delivery filter alone drops them
            _write(notrace, f"{pid}\n", append=True)

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
                # The stats and trace_pipe's inline "[LOST n EVENTS]" count the same overruns.
                lost_entries = max(read_lost_entries(self.instance), self._parser.lost_events)
                self.stats.lost_events = lost_checks(lost_entries, self._stackless_checks,
                                                     self._parser.orphan_stacks)
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

    def _deliver(self, checks: list[CapCheck]) -> None:
        self._stackless_checks += sum(1 for check in checks if not check.stack)
        super()._deliver(checks)

    def _start_watchdog(self, instance: Path) -> None:
        """A process that removes the instance once capprobe is gone, however it died.

        It waits for EOF on a pipe whose write end only this process holds (close-on-exec,
        so neither strace nor the target inherit it). It runs in a session of its own, so a
        terminal's Ctrl-C does not end it first, and it is not a descendant of the traced
        root, so it is never in the instance's pid set.
        """
        read_end, self._watchdog_pipe = os.pipe()
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", "import sys; from capprobe.tracing.tracefs import "
                 "remove_instance_at_eof; remove_instance_at_eof(sys.argv[1])", str(instance)],
                stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                cwd="/", start_new_session=True,
                # it imports this module wherever it came from (editable tree, vm-tests payload)
                env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
            )
        finally:
            os.close(read_end)

    def _stop_watchdog(self) -> None:
        if self._watchdog_pipe is not None:
            os.close(self._watchdog_pipe)  # EOF: the watchdog finds no instance and exits
            self._watchdog_pipe = None
        if self._watchdog is not None:
            try:
                self._watchdog.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait()
            self._watchdog = None

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
        self._stop_watchdog()
        if self._mounted_tracefs:
            self._mounted_tracefs = not unmount_if_unused(self._tracefs)


def remove_instance_at_eof(instance: str) -> None:
    """The watchdog's body: block until stdin ends (capprobe exited), then remove instance."""
    while os.read(0, 4096):
        pass
    path = Path(instance)
    if path.is_dir():
        _write_quietly(path / EVENT / "enable", "0")
        _remove_instance(path, timeout_s=10.0)
