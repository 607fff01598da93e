"""Fallback 1: record the kernel's capability checks of a process tree with bpftrace.

Same interface and the same CapCheck records as tracing.tracefs.CapabilityProbe, for kernels
where tracefs cannot do it but bpftrace can: probes/cap_capable_kprobe.bt (kernels without the
capability:cap_capable tracepoint, with kprobes) or probes/cap_capable_tracepoint.bt (the same
program on the tracepoint). bpftrace_available() says which one this kernel can run.

The program follows the tree itself (a map of traced tids seeded with the root, grown on
sched_process_fork, shrunk on sched_process_exit) and prints one record per check on stdout.

Handshake. The controller (this process) opens a raw IP socket, a CAP_NET_RAW check the
program answers with "CAPPROBE MARK <nsecs>" followed by "@sent: <n>" (checks emitted so far):
  * start() repeats it until a MARK arrives: the check probe attaches last, so every probe
    is armed by then (bpftrace's BEGIN runs before its probes attach, so BEGIN alone is not
    enough);
  * stop() repeats it until a MARK newer than the stop request arrives and n records have
    been read, then SIGINTs bpftrace (which drops what is still buffered on SIGINT).
The controller's own CAP_NET_RAW checks are therefore never recorded as checks.
bpftrace runs in a session of its own (a terminal's Ctrl-C must not cut it short) and exits
by itself when the controller's main thread exits, so a SIGKILLed capprobe leaves none behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Callable

from capprobe.events.bpftrace_records import BpftraceCapParser
from capprobe.tracing.probe import CapCheck, CheckDelivery, ProbeStats, ProbeUnavailable
from capprobe.tracing.tracefs import TRACEFS

__all__ = ["BpftraceCapabilityProbe", "bpftrace_available", "script_path", "VARIANTS"]

VARIANTS = ("tracepoint", "kprobe")
ATTACH_TIMEOUT_S = 60.0    # compiling with LLVM + loading; measured ~0.2-0.5 s
STOP_TIMEOUT_S = 10.0      # waiting for the records already emitted to come through
EXIT_TIMEOUT_S = 5.0       # bpftrace's own exit after SIGINT, then SIGKILL
HANDSHAKE_PERIOD_S = 0.1   # re-trigger the handshake check this often
# Traced tids + the kernel stack map; bpftrace's default (4096) is small for a big service.
MAP_KEYS_MAX = 16384
# Per-CPU perf ring pages (bpftrace default 64 = 256 KiB): 1 MiB holds ~10k checks per CPU
# while bpftrace (which resolves every stack) catches up; more is reported as lost.
PERF_RB_PAGES = 256
_KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")
_LOST_LINE = re.compile(r"^Lost (\d+) events\s*$", re.M)
# Printed on every run where the memlock rlimit cannot be raised; harmless with memcg accounting.
_STDERR_NOISE = re.compile(r"^ERROR: Unknown error -1: couldn't set RLIMIT_MEMLOCK.*$\n?", re.M)


def _tracefs_root() -> Path | None:
    """tracefs root with events/, mounting it when we may; None when there is none."""
    for root in (TRACEFS, Path("/sys/kernel/debug/tracing")):
        if (root / "events").is_dir():
            return root
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True)
        if (TRACEFS / "events").is_dir():
            return TRACEFS
    return None


def _kprobes_usable() -> bool:
    """Kernel has kprobes (the perf kprobe PMU bpftrace attaches through) and cap_capable."""
    if not _KPROBE_PMU.is_dir():
        return False
    try:
        with open("/proc/kallsyms") as f:
            return any(line.rstrip().endswith(" cap_capable") for line in f)
    except OSError:
        return False


def bpftrace_available(bpftrace: str = "bpftrace") -> str | None:
    """The program variant this kernel can run ("tracepoint" or "kprobe"), or None.

    None also when bpftrace is not installed. Root is not checked here (start() does).
    """
    if shutil.which(bpftrace) is None:
        return None
    root = _tracefs_root()
    if root is not None and (root / "events/capability/cap_capable").is_dir():
        return "tracepoint"
    if _kprobes_usable():
        return "kprobe"
    return None


def script_path(variant: str) -> Path:
    """probes/cap_capable_<variant>.bt as shipped in the package (a real file: editable or wheel)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown bpftrace program variant {variant!r}; one of {VARIANTS}")
    return Path(str(resources.files("capprobe.probes").joinpath(f"cap_capable_{variant}.bt")))


def trigger_handshake() -> None:
    """Make one CAP_NET_RAW check in this thread (the program answers with MARK)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).close()
    except OSError:
        pass  # denied or refused: the check was made all the same


class BpftraceCapabilityProbe(CheckDelivery):
    """Context manager recording every capability check of root_pid and its descendants.

    Same contract as tracefs.CapabilityProbe: arm it before the target does anything
    interesting; on_check(CapCheck) runs on the reader thread; without a callback the checks
    are collected in .checks. variant forces a program ("tracepoint"/"kprobe"); by default
    bpftrace_available() picks one.
    """

    def __init__(self, root_pid: int, on_check: Callable[[CapCheck], None] | None = None,
                 variant: str | None = None, bpftrace: str = "bpftrace",
                 attach_timeout_s: float = ATTACH_TIMEOUT_S,
                 stop_timeout_s: float = STOP_TIMEOUT_S):
        self.root_pid = root_pid
        self.on_check = on_check
        self.checks: list[CapCheck] = []
        self.stats = ProbeStats()
        self.variant = variant
        self.wall_offset = time.time() - time.monotonic()
        self.attach_seconds: float | None = None   # start() until the handshake came back
        self.stop_complete: bool | None = None     # stop() got every emitted record
        self.stderr_text = ""
        self.process: subprocess.Popen | None = None
        self._bpftrace = bpftrace
        self._attach_timeout_s = attach_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._parser = BpftraceCapParser()
        self._progress = threading.Condition()
        self._reader: threading.Thread | None = None
        self._reader_done = False
        self._stderr_file = None
        self._stopped = False

    def mono_to_wall(self, mono_ts: float) -> float:
        """Convert a CapCheck.mono_ts (bpftrace nsecs: CLOCK_MONOTONIC) to time.time() seconds."""
        return mono_ts + self.wall_offset

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> "BpftraceCapabilityProbe":
        """Run bpftrace and return once its probes are attached; cleans up if anything fails."""
        binary = shutil.which(self._bpftrace)
        if binary is None:
            raise ProbeUnavailable(f"{self._bpftrace} is not installed")
        if os.geteuid() != 0:
            raise ProbeUnavailable("bpftrace capability probe needs root")
        from .tracefs import in_initial_pid_namespace
        if not in_initial_pid_namespace():
            # bpftrace sees host pids: the tree filter would match nothing
            raise ProbeUnavailable("running in a pid namespace (container): bpftrace sees host pids only")
        variant = self.variant or bpftrace_available(binary)
        if variant is None:
            raise ProbeUnavailable("kernel has neither the capability:cap_capable tracepoint "
                                   "nor kprobes for bpftrace")
        self.variant = variant
        script = script_path(variant)
        env = dict(os.environ)
        env.setdefault("BPFTRACE_MAP_KEYS_MAX", str(MAP_KEYS_MAX))
        env.setdefault("BPFTRACE_PERF_RB_PAGES", str(PERF_RB_PAGES))
        began = time.monotonic()
        try:
            self._stderr_file = tempfile.TemporaryFile()
            self.process = subprocess.Popen(
                [binary, "-B", "none", str(script), str(self.root_pid), str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr_file,
                start_new_session=True, env=env,
            )
            self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                            name=f"capprobe-bpftrace-{self.process.pid}")
            self._reader.start()
            if not self._handshake(self._attach_timeout_s, after_ns=None):
                raise ProbeUnavailable(self._attach_failure())
            self.wall_offset = time.time() - time.monotonic()
            self.attach_seconds = time.monotonic() - began
        except BaseException:
            self._teardown()
            raise
        return self

    def stop(self) -> ProbeStats:
        """Collect every record already emitted, stop bpftrace, fill .stats."""
        if self._stopped:
            return self.stats
        self._stopped = True
        try:
            if self.process is not None and self.process.poll() is None:
                self.stop_complete = self._handshake(self._stop_timeout_s,
                                                     after_ns=time.monotonic_ns(),
                                                     want_all_sent=True)
            self._end_process()
            if self._reader is not None:
                self._reader.join(timeout=10)
            with self._progress:
                flushed = self._parser.flush()
            self._deliver(flushed)
        finally:
            self._teardown()
        parser = self._parser
        lost = parser.lost_events + sum(int(n) for n in _LOST_LINE.findall(self.stderr_text))
        sent = parser.last_sent
        if sent is not None and not self.stop_complete:
            lost = max(lost, sent - parser.records)  # emitted but never read
        self.stats.lost_events = lost
        self.stats.unparsed_count = parser.unparsed_count + parser.truncated_records
        self.stats.unparsed_examples = list(parser.unparsed_examples)
        return self.stats

    # exclude_pid() (CheckDelivery) filters on delivery only: the program is fixed once
    # loaded. It follows the fork tree from root_pid, so a tracer outside that tree (strace
    # attached with -p) never enters the perf buffer in the first place.

    def __enter__(self) -> "BpftraceCapabilityProbe":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------

    def _handshake(self, timeout_s: float, after_ns: int | None, want_all_sent: bool = False) -> bool:
        """Trigger MARKs until one newer than after_ns (and, if asked, all it counted) is read.

        Returns False on timeout or when bpftrace is gone.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None and self._reader_done:
                return self._done(after_ns, want_all_sent)
            request_ns = time.monotonic_ns()
            if after_ns is None:
                after_ns = request_ns
            if self._begun():
                trigger_handshake()
            with self._progress:
                if self._progress.wait_for(lambda: self._done(after_ns, want_all_sent)
                                           or self._reader_done, timeout=HANDSHAKE_PERIOD_S):
                    if self._done(after_ns, want_all_sent):
                        return True
        return False

    def _begun(self) -> bool:
        """bpftrace has loaded the program (no point in triggering while LLVM compiles)."""
        with self._progress:
            return self._parser.begin_ns is not None

    def _done(self, after_ns: int, want_all_sent: bool) -> bool:
        """A MARK at or after after_ns has come (and every record it counted, if asked)."""
        parser = self._parser
        for mark in reversed(parser.marks):
            if mark.mono_ns < after_ns:
                break
            if not want_all_sent:
                return True
            if mark.sent is not None:
                return parser.records + parser.lost_events >= mark.sent
        return False

    def _attach_failure(self) -> str:
        """Why start() failed: bpftrace's own words when it said any."""
        exited = self.process.poll() if self.process is not None else None
        if exited is None:
            self._end_process()
        self.stderr_text = self._read_stderr()
        message = " ".join(self.stderr_text.split())[-500:]
        if exited is not None:
            return f"bpftrace exited with {exited} before attaching: {message or 'no message'}"
        return (f"bpftrace did not confirm its probes within {self._attach_timeout_s:.0f} s "
                f"(different pid namespace?){': ' + message if message else ''}")

    def _read_loop(self) -> None:
        stream = self.process.stdout
        try:
            for raw in iter(stream.readline, b""):
                with self._progress:
                    checks = self._parser.feed(raw.decode("utf-8", "replace"))
                    self._progress.notify_all()
                self._deliver(checks)
        except (OSError, ValueError) as error:  # ValueError: pipe closed under us
            self.stats.callback_errors.append(error)
        finally:
            with self._progress:
                self._reader_done = True
                self._progress.notify_all()

    def _end_process(self) -> None:
        """SIGINT (bpftrace runs END and exits), SIGKILL after EXIT_TIMEOUT_S; always reaped.

        bpftrace 0.17 only notices a SIGINT that interrupts its epoll_wait, or at its next
        event: one arriving between two waits is otherwise ignored (measured: 1 stop in 20).
        So while it lives, make an event (a handshake check) and signal again.
        """
        proc = self.process
        if proc is None:
            return
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        while proc.poll() is None:
            try:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    proc.kill()
                    break
                trigger_handshake()
            except ProcessLookupError:
                break
        try:
            proc.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # unkillable (D state): do not hang the session
            pass

    def _read_stderr(self) -> str:
        if self._stderr_file is None:
            return self.stderr_text
        try:
            self._stderr_file.seek(0)
            text = self._stderr_file.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return self.stderr_text
        return _STDERR_NOISE.sub("", text)

    def _teardown(self) -> None:
        """Whatever happened: no bpftrace left running, pipes and files closed."""
        self._end_process()
        if self._reader is not None and self._reader.is_alive():
            self._reader.join(timeout=5)
        if self.process is not None and self.process.stdout is not None:
            try:
                self.process.stdout.close()
            except OSError:
                pass
        if self._stderr_file is not None:
            self.stderr_text = self._read_stderr()
            self._stderr_file.close()
            self._stderr_file = None
