"""Fast mode: strace while the service starts, then the kernel's own first-seen maps.

The hybrid (issue 10 §3):
  1. the target starts under strace, at full fidelity, as in full mode; meanwhile bpftrace
     compiles the fact program (tracing/kernel_program.py) for the target's cgroup v2 and
     attaches;
  2. once the service has settled (READY=1 reached the notify socket, or no new fact for
     --settle seconds; at most START_UP_CAP seconds after the start) and the program is
     attached, capprobe marks the switch in the kernel (counting starts there) and strace
     detaches (SIGINT; the target goes on running);
  3. from then on the kernel prints only what it had not seen (a new syscall/errno, a new
     path+operation per executable, a new address, exec, fork, exit...) and counts the rest in
     maps dumped at the end; capprobe decodes those records into the same facts
     (events/kernel_records.py) the strace decoder makes, so one aggregator serves both.
Paths are the text the target passed, against cwds followed from strace's (at the switch)
through fork and chdir (an open's path follows the symlinks root alone can change, as strace's
-yy shows it); nothing the target can change is named from live state after the call. What that leaves unnamed (a dirfd, an fd argument, a cwd set by fchdir or
of a process first seen after the switch, a path past the string limit, a syscall only strace
decodes) is counted and listed in the profile (run.tracer.unresolved), never guessed; it and
lost records make the profile incomplete. bpftrace dies with capprobe: the program exits when capprobe's pid does.
"""

from __future__ import annotations

import heapq
import ipaddress
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from ..events.facts import DeviceNumber
from ..events.kernel_records import (
    FD_CALLS,
    KERNEL_RESTART_ERRNOS,
    Control,
    FirstSeen,
    KernelCall,
    KernelDecoder,
    RecordAssembler,
    _ipv6_text,
    _signed32,
    errno_name,
    syscall_names,
    syscall_numbers,
)
from ..facts.decode import decoded_syscalls
from ..probes import load_table
from .kernel_program import build_program, entry_printing
from .probe import ProbeUnavailable

TRACEFS = Path("/sys/kernel/tracing")
UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
SETTLE_DEFAULT = 2.0  # seconds without a new fact (measured: nginx's start-up facts end within 0.3 s)
SETTLE_MAX = 60.0
START_UP_CAP = 30.0  # the switch happens by then even if facts keep coming (a file-heavy batch job)
ATTACH_TIMEOUT = 180.0  # LLVM compiles ~130 probes: 10-50 s on a loaded 2-core machine
HOLD = 0.3  # records wait this long for their other lines (another CPU's buffer) and are sorted
MAP_KEYS_MAX = 65536  # per first-seen map; a full map only stops de-duplicating (more output, not less)
PERF_RB_PAGES = 1024
_LOST = re.compile(rb"Lost (\d+) events")
_STDERR_NOISE = re.compile(rb"^(ERROR: Unknown error -1: couldn't set RLIMIT_MEMLOCK.*|.*WARNING: .*|\s*~*|.*\^.*)$")


# -- /proc at first sight ----------------------------------------------------------------


def _readlink(path: str) -> bytes | None:
    try:
        return os.readlink(os.fsencode(path))
    except OSError:
        return None


def _ipv4(hex_addr: str) -> str:
    return str(ipaddress.IPv4Address(int(hex_addr, 16).to_bytes(4, "little")))


def _ipv6(hex_addr: str) -> str:
    raw = b"".join(int(hex_addr[i:i + 8], 16).to_bytes(4, "little") for i in range(0, 32, 8))
    return _ipv6_text(raw)


def _endpoint(hex_text: str, v6: bool) -> str:
    addr, port = hex_text.split(":")
    return f"[{_ipv6(addr)}]:{int(port, 16)}" if v6 else f"{_ipv4(addr)}:{int(port, 16)}"


_UNIX_TYPES = {"0001": ("SOCK_STREAM", "UNIX-STREAM"), "0002": ("SOCK_DGRAM", "UNIX-DGRAM"),
               "0005": ("SOCK_SEQPACKET", "UNIX-SEQPACKET")}
_NETLINK_WORDS = {0: "ROUTE", 4: "SOCK_DIAG", 6: "XFRM", 9: "AUDIT", 12: "NETFILTER", 15: "KOBJECT_UEVENT",
                  16: "GENERIC"}


class LiveProc:
    """The Resolver of events/kernel_records.py: /proc as it is when a record is read (never for
    a file's path: only a socket's, and a name for a device the kernel already identified)."""

    def fd_path(self, tgid: int, fd: int) -> bytes | None:
        target = _readlink(f"/proc/{tgid}/fd/{fd}")
        return target if target is not None and target.startswith(b"/") else None

    def through_root_symlinks(self, path: bytes) -> bytes:
        """PATH (absolute, normalised) with the symlinks only root can change followed, as strace's
        -yy shows an open (merged /usr's /lib -> usr/lib, /etc/localtime): from the first component
        a non-root user could change (its directory writable by group/other or not root's, the
        link not root's) the rest stays as written, so a target that is not root cannot steer it."""
        parts = [p for p in path.split(b"/") if p]
        done = b""
        for _ in range(40):  # the kernel's limit on nested symlinks
            if not parts:
                return done or b"/"
            part = parts.pop(0)
            if part == b".":
                continue
            if part == b"..":
                done = done.rsplit(b"/", 1)[0]  # done is a real directory: its parent is physical
                continue
            candidate = done + b"/" + part
            if candidate == b"/proc":  # per-process links (self, fd/N, cwd): capprobe's, or live state
                return b"/".join([candidate, *parts])
            try:
                parent, st = os.lstat(done or b"/"), os.lstat(candidate)
            except OSError:
                parent = st = None
            if parent is None or parent.st_uid != 0 or parent.st_mode & 0o022 or \
                    (stat.S_ISLNK(st.st_mode) and st.st_uid != 0):
                return b"/".join([candidate, *parts])
            if not stat.S_ISLNK(st.st_mode):
                done = candidate
                continue
            target = os.readlink(candidate)
            parts = [p for p in target.split(b"/") if p] + parts
            if target.startswith(b"/"):
                done = b""
        return path  # a symlink loop: as written

    def device(self, path: bytes) -> DeviceNumber | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            return DeviceNumber("char" if stat.S_ISCHR(st.st_mode) else "block",
                                os.major(st.st_rdev), os.minor(st.st_rdev))
        return None

    def _socket(self, tgid: int, fd: int) -> tuple[str, str, str] | None:
        """(family word, SOCK_ type, strace's -yy text) of a socket fd, from /proc/TGID/net."""
        target = _readlink(f"/proc/{tgid}/fd/{fd}") or b""
        m = re.fullmatch(rb"socket:\[(\d+)\]", target)
        if m is None:
            return None
        inode = m.group(1).decode()
        for table, word, stype, v6 in (("tcp", "TCP", "SOCK_STREAM", False), ("tcp6", "TCPv6", "SOCK_STREAM", True),
                                       ("udp", "UDP", "SOCK_DGRAM", False), ("udp6", "UDPv6", "SOCK_DGRAM", True)):
            for fields in self._rows(tgid, table):
                if len(fields) > 9 and fields[9] == inode:
                    local, remote = _endpoint(fields[1], v6), fields[2]
                    connected = not re.fullmatch(r"0+:0+", remote)
                    text = f"{local}->{_endpoint(remote, v6)}" if connected else local
                    return word, stype, f"{word}:[{text}]"
        for fields in self._rows(tgid, "unix"):
            if len(fields) > 6 and fields[6] == inode:
                stype, word = _UNIX_TYPES.get(fields[4], ("SOCK_STREAM", "UNIX-STREAM"))
                path = f',"{fields[7]}"' if len(fields) > 7 else ""
                return "UNIX", stype, f"{word}:[{inode}{path}]"
        for fields in self._rows(tgid, "netlink"):
            if len(fields) > 9 and fields[9] == inode:
                proto = _NETLINK_WORDS.get(int(fields[1]), fields[1])
                return "NETLINK", "SOCK_RAW", f"NETLINK:[{proto}:{fields[2]}]"
        return None

    @staticmethod
    def _rows(tgid: int, table: str) -> list[list[str]]:
        try:
            with open(f"/proc/{tgid}/net/{table}") as f:
                return [line.split() for line in f.readlines()[1:]]
        except OSError:
            return []

    def socket_name(self, tgid: int, fd: int) -> str | None:
        found = self._socket(tgid, fd)
        if found is None:
            return None
        if found[0] == "NETLINK":  # kernel_records wants the protocol's name here
            return "NETLINK_" + found[2][len("NETLINK:["):].split(":")[0]
        return found[2]

    def socket_type(self, tgid: int, fd: int) -> str | None:
        found = self._socket(tgid, fd)
        return found[1] if found else None


# -- the bpftrace process ------------------------------------------------------------------


class KernelWatch:
    """bpftrace running the fact program on one cgroup; records parsed by a reader thread."""

    def __init__(self, cgroup_path: str, numbers: dict[str, int]) -> None:
        self.cgroup_path = cgroup_path
        self.numbers = numbers
        self.process: subprocess.Popen | None = None
        self.missing_syscalls: list[str] = []
        self.failure: str | None = None
        self.attached = threading.Event()
        self.compile_seconds: float | None = None
        self._assembler = RecordAssembler(frozenset(
            numbers[name] for name in entry_printing(load_table("kernel_syscalls")) if name in numbers))
        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)
        self._fd_calls = frozenset(numbers[name] for name in FD_CALLS if name in numbers)
        self._proc = LiveProc()
        self._pings = 0
        self._scanned = 0  # records of the assembler's ready list already looked at for controls
        self._switch_ns: int | None = None
        self._reader: threading.Thread | None = None
        self._program: str | None = None
        self._stderr = None

    def start(self) -> None:
        """Compile and attach in the background; .attached is set once the probes are live."""
        binary = shutil.which("bpftrace")
        if binary is None:
            raise ProbeUnavailable("bpftrace is not installed (apt-get install bpftrace)")
        if os.geteuid() != 0:
            raise ProbeUnavailable("the in-kernel fast mode needs root")
        text, self.missing_syscalls = build_program(TRACEFS, self.numbers)
        fd, self._program = tempfile.mkstemp(prefix="capprobe-fast-", suffix=".bt")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        env = dict(os.environ, BPFTRACE_STRLEN="200", BPFTRACE_MAP_KEYS_MAX=str(MAP_KEYS_MAX),
                   BPFTRACE_PERF_RB_PAGES=str(PERF_RB_PAGES))
        self._stderr = tempfile.TemporaryFile()
        cgroup_id = os.stat(self.cgroup_path).st_ino  # cgroup v2: the directory's inode is its id
        self._began = time.monotonic()
        self.process = subprocess.Popen([binary, "-f", "json", self._program, str(cgroup_id), str(os.getpid())],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
                                        start_new_session=True, env=env)
        self._reader = threading.Thread(target=self._read, name="capprobe-kernel-facts", daemon=True)
        self._reader.start()
        threading.Thread(target=self._handshake, name="capprobe-kernel-attach", daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._lock:
                try:
                    self._assembler.feed(line)
                except Exception as e:  # noqa: BLE001 - one bad record must not end the reader
                    self._assembler.unreadable.append(f"{type(e).__name__}: {e}: {line[:200]!r}")
                ready = self._assembler.ready
                for record in ready[self._scanned:]:
                    if isinstance(record, KernelCall) and record.nr in self._fd_calls and record.numbers:
                        # now, not after HOLD: the program may close the fd at once (sqlite's journal)
                        record.fd_target = self._proc.fd_path(record.tgid, _signed32(record.numbers[0]))
                    if isinstance(record, Control) and record.kind == "H":
                        self._pings = max(self._pings, int(record.value))
                    elif isinstance(record, Control) and record.kind == "M":
                        self._switch_ns = int(record.value)
                if self._switch_ns is None and len(ready) > 4096:
                    # before the switch strace sees everything: keep only what a switch soon may still need
                    horizon = time.monotonic_ns() - 2_000_000_000
                    ready[:] = [r for r in ready if isinstance(r, Control) or r.ts_ns >= horizon]
                self._scanned = len(ready)
                self._progress.notify_all()
        with self._lock:
            self._assembler.flush()
            self._progress.notify_all()

    def _ping(self, timeout: float) -> bool:
        """Ask the program for an answer (kill(self, 0)) and wait for it: every record printed
        before it (on this CPU and, after HOLD, the others) has been read."""
        with self._lock:
            wanted = self._pings + 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            os.kill(os.getpid(), 0)
            with self._lock:
                if self._progress.wait_for(lambda: self._pings >= wanted, 0.1):
                    return True
        return False

    def _handshake(self) -> None:
        if self._ping(ATTACH_TIMEOUT):
            self.compile_seconds = round(time.monotonic() - self._began, 1)
            self._remove_program()  # read by now: nothing is left behind even if capprobe is killed
            self.attached.set()
        else:
            self.failure = self._stderr_text() or "bpftrace did not attach"

    def switch(self, timeout: float = 5.0) -> int | None:
        """Mark the switch in the kernel (tgkill(self, self, 0)): counting starts; its ns time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            signal.pthread_kill(threading.get_ident(), 0)
            with self._lock:
                if self._progress.wait_for(lambda: self._switch_ns is not None, 0.1):
                    return self._switch_ns
        return None

    def take(self) -> list:
        with self._lock:
            self._scanned = 0
            return self._assembler.take()

    @property
    def switch_ns(self) -> int | None:
        return self._switch_ns

    def unreadable(self) -> list[str]:
        with self._lock:
            out, self._assembler.unreadable = self._assembler.unreadable, []
            return out

    def stop(self) -> tuple[list, int]:
        """Read every record already printed, end bpftrace (its END dumps the counts); the rest
        of the records, and the events bpftrace reported lost."""
        if self.process is not None and self.process.poll() is None:
            if self.attached.is_set():
                self._ping(5.0)
                time.sleep(HOLD)
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._reader is not None:
            self._reader.join(10)
        lost = sum(int(n) for n in _LOST.findall(self._stderr_bytes()))
        return self.take(), lost

    def close(self) -> None:
        """Whatever happened: no bpftrace left, no temporary file."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._remove_program()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _remove_program(self) -> None:
        if self._program is not None:
            try:
                os.unlink(self._program)
            except OSError:
                pass
            self._program = None

    def _stderr_bytes(self) -> bytes:
        if self._stderr is None:
            return b""
        self._stderr.seek(0)
        return self._stderr.read()

    def _stderr_text(self) -> str:
        lines = [line for line in self._stderr_bytes().splitlines() if line.strip() and not _STDERR_NOISE.match(line)]
        return b" ".join(lines[-3:]).decode(errors="replace")[:400]


# -- the hybrid ------------------------------------------------------------------------------


class FastMode:
    """One run's fast mode: start(), tick() from strace's read loop (it decides the switch),
    follow() once strace has detached, finish(), describe() for run.tracer."""

    def __init__(self, cgroup, collector, notify, settle: float, status, numbers: dict[str, int]) -> None:
        self.collector = collector
        self.notify = notify
        self.cgroup = cgroup
        self.settle = min(max(settle, 0.0), SETTLE_MAX)
        self.status = status
        self.watch = KernelWatch(cgroup.path, numbers)
        self.started = time.monotonic()
        self.switched_at: float | None = None  # wall time
        self.switch_reason: str | None = None
        self.not_switched: str | None = None
        self.lost = 0
        self.unpaired = 0
        self.records = 0
        self._tracer = None
        self._fingerprint = None
        self._last_new = time.monotonic()
        self._last_check = 0.0
        self._heap: list = []
        self._order = 0
        self._decoder: KernelDecoder | None = None
        self._calls: dict = {}
        self._detached_ns = 0

    @classmethod
    def start(cls, cgroup, collector, notify, settle: float, status, notes: list[str]) -> FastMode | None:
        """The fast mode for this run, or None (and a note) when it cannot run here."""
        if cgroup is None:
            notes.append("fast mode needs the target's own cgroup v2; traced by strace throughout")
            return None
        try:
            numbers = syscall_numbers(UNISTD.read_text())
        except OSError as e:
            notes.append(f"fast mode unavailable (the syscall table {UNISTD}: {e.strerror}; apt-get install "
                         "linux-libc-dev); traced by strace throughout")
            return None
        fast = cls(cgroup, collector, notify, settle, status, numbers)
        try:
            fast.watch.start()
        except (ProbeUnavailable, OSError) as e:
            fast.watch.close()
            notes.append(f"fast mode unavailable ({e}); traced by strace throughout")
            return None
        args = {name: spec["args"] for name, spec in load_table("kernel_syscalls").items()}
        fast._decoder = KernelDecoder(syscall_names(numbers), args, LiveProc(), time.time() - time.monotonic(),
                                      decoded_syscalls() - set(args))
        return fast

    # -- phase 1: under strace ---------------------------------------------------------------

    def before_start(self) -> None:
        """--settle 0: the kernel side from the start, so the target waits for the program."""
        if self.settle > 0:
            return
        deadline = time.monotonic() + ATTACH_TIMEOUT
        while not self.watch.attached.wait(0.2) and self.watch.failure is None and time.monotonic() < deadline:
            pass

    def tick(self, tracer) -> None:
        """Called from strace's read loop: switch once the service has settled."""
        if self.switched_at is not None or self.not_switched is not None:
            return
        now = time.monotonic()
        if now - self._last_check < 0.25 and self.settle > 0:
            return
        self._last_check = now
        fingerprint = _fact_fingerprint(self.collector)
        if fingerprint != self._fingerprint:
            self._fingerprint, self._last_new = fingerprint, now
        if self.watch.failure is not None:
            self.not_switched = f"the kernel program did not start ({self.watch.failure})"
            self.status(f"fast mode: {self.not_switched}; strace goes on")
            return
        if not self.watch.attached.is_set():
            return
        root = self.collector.root_pid
        if root is None or not self.collector.first_exec_time(root):
            # not before strace has shown the target's exec: detaching while the launcher's execve is
            # under way loses it (strace never prints it, the kernel side had not started), and the
            # aggregator keeps nothing of a process whose exec it never saw
            return
        ready = any("READY=1" in m.get("words", []) for m in self.notify.received)
        if ready:
            reason = "READY=1"
        elif now - self._last_new >= self.settle:
            reason = f"no new fact for {self.settle:g} s"
        elif now - self.started >= START_UP_CAP:
            reason = f"start-up cap of {START_UP_CAP:g} s"
        else:
            return
        switch_ns = self.watch.switch()
        if switch_ns is None:
            self.not_switched = "the kernel program did not answer the switch"
            return
        self.switched_at = self._decoder.wall(switch_ns)
        self.switch_reason = reason
        self._tracer = tracer
        tracer.detach()  # strace lets go of every process and exits (killed if it gets stuck)
        self.status(f"fast mode: switched to the kernel side after {time.monotonic() - self.started:.1f} s ({reason})")

    # -- phase 2: the kernel side ------------------------------------------------------------

    def follow(self, target_alive, drain, tick=None, cwds: dict[int, bytes] | None = None) -> None:
        """Fold the kernel's records into the facts until the target's cgroup is empty; CWDS: each
        process's cwd as strace's decoder left it (relative paths start from these)."""
        if self.switched_at is None:
            return
        self._detached_ns = time.monotonic_ns() + 50_000_000  # strace has exited: it detached by now
        self._decoder.adopt_cwds(cwds or {}, self._detached_ns)
        while target_alive() or self.cgroup.poll():
            self._fold(self.watch.take(), final=False)
            drain()
            if tick is not None:
                tick()
            time.sleep(0.05)

    def finish(self) -> None:
        """Stop bpftrace; apply what is left and the counts of the steady state."""
        try:
            if self.switched_at is None:
                return
            rest, self.lost = self.watch.stop()
            self._fold(rest, final=True)
            for text in self.watch.unreadable():
                self.collector.apply(_unreadable(f"[fast mode] unreadable bpftrace output: {text}"))
            self._add_counts()
        finally:
            self.watch.close()

    def _fold(self, records: list, final: bool) -> None:
        now = time.monotonic()
        for record in records:
            if isinstance(record, Control):
                if record.kind == "calls":
                    self._calls = record.value
                elif record.kind == "U":
                    self.unpaired = int(record.value)
                elif record.kind == "lost":
                    self.lost += int(record.value)
                continue
            if record.ts_ns < self.watch.switch_ns:
                continue  # strace saw it
            if isinstance(record, FirstSeen) and record.err in KERNEL_RESTART_ERRNOS \
                    and record.ts_ns <= self._detached_ns:
                continue  # a sleep strace's own detaching interrupted: not the target's doing
            self._order += 1
            heapq.heappush(self._heap, (record.ts_ns, self._order, now, record))
        # a record waits HOLD for its other lines and its predecessors from other CPUs
        while self._heap and (final or now - self._heap[0][2] >= HOLD):
            _, _, _, record = heapq.heappop(self._heap)
            self.records += 1
            for fact in self._decoder.facts(record):
                self.collector.apply(fact)

    def _add_counts(self) -> None:
        """The steady state's calls, counted in the kernel from the switch on."""
        for (nr, err), count in self._calls.items():
            if nr < 0:
                continue  # a call the kernel never ran
            entry = self.collector.syscalls.setdefault(self._decoder.name(nr), [0, {}])
            entry[0] += count
            if err:
                errors = entry[1]
                errors[errno_name(err)] = errors.get(errno_name(err), 0) + count

    # -- the profile ---------------------------------------------------------------------------

    def annotate(self, profile: dict) -> None:
        """Say in PROFILE which method saw what (run.tracer) and what the kernel side missed."""
        profile["run"]["tracer"] = {**profile["run"]["tracer"], **self.describe()}
        reasons = self.incomplete_reasons()
        if reasons:
            profile["incomplete"] = [*profile["incomplete"], *reasons]
            profile["complete"] = False

    def describe(self) -> dict:
        """run.tracer of a fast-mode run: which method saw what, and when it switched."""
        out: dict = {"backend": "strace+bpftrace" if self.switched_at else "strace", "mode": "fast",
                     "settle": self.settle}
        if self.switched_at is not None:
            out["phases"] = [
                {"method": "strace", "until": round(self.switched_at, 6),
                 "saw": "every fact of the start-up, counts included"},
                {"method": "bpftrace", "from": round(self.switched_at, 6), "switched_because": self.switch_reason,
                 "saw": "facts new after the switch (first seen in the kernel), counts from the switch on"},
            ]
            out["kernel"] = {"records": self.records, "lost_events": self.lost,
                             "calls_begun_before_attach": self.unpaired,
                             "compile_seconds": self.watch.compile_seconds,
                             "syscalls_not_on_this_kernel": self.watch.missing_syscalls}
            if self._decoder.unresolved:
                out["unresolved"] = dict(sorted(self._decoder.unresolved.items()))
        else:
            out["not_switched"] = self.not_switched or "the target ended before the service settled " \
                                                         "and the kernel program was attached"
        return out

    def incomplete_reasons(self) -> list[str]:
        reasons = []
        if self.lost:
            reasons.append(f"the kernel side lost {self.lost} event(s) (perf buffer full): facts first seen "
                           "in them are missing")
        if self._decoder is not None and self._decoder.unresolved:
            total = sum(self._decoder.unresolved.values())
            reasons.append(f"the kernel side could not name {total} fact(s) it saw after the switch (see "
                           "run.tracer.unresolved); --full names them")
        if self._tracer is not None and (stuck := self._tracer.stuck_detaching()):
            reasons.append(stuck)
        return reasons


def _unreadable(text: str):
    from ..events.facts import Unreadable
    return Unreadable(text)


def _fact_fingerprint(c) -> tuple:
    """Changes whenever the collector learns a new fact (not when a count grows)."""
    return (len(c.syscalls), sum(len(v[1]) for v in c.syscalls.values()), len(c.files),
            sum(len(r["ops"]) + len(r["failed"]) for r in c.files.values()), len(c.procs), len(c.sockets),
            len(c.binds), len(c.connects), len(c.accepts), len(c.sends), len(c.sockopts), len(c.netlink),
            len(c.special), len(c.ioctls), len(c.devices), len(c.listens), len(c.socket_failures))
