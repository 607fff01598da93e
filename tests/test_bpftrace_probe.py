"""Fallback 1: BpftraceCapabilityProbe and its output parser.

The parser tests run anywhere. The probe tests need root, bpftrace and a kernel bpftrace can
attach to; they run the tracepoint variant (the kprobe one is only compiled with `bpftrace -d`
when the kernel has no kprobes) and repeat what tests/test_tracefs_probe.py checks for tracefs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import HeldChild

from capprobe.events import bpftrace_records
from capprobe.events.bpftrace_records import Mark, parse_lines
from capprobe.events.tracefs_records import parse_lines as parse_tracefs_lines
from capprobe.facts.capabilities import ADVISORY, classify, partition_uses
from capprobe.tracing import bpftrace as bt
from capprobe.tracing.bpftrace import BpftraceCapabilityProbe, bpftrace_available, script_path
from capprobe.tracing.probe import CapCheck, ProbeUnavailable

PYTHON = "/usr/bin/python3"  # not the pyenv shim: it spawns bash scripts

# ---------------------------------------------------------------------------------------
# Recorded output (bpftrace 0.17, kernel 6.18, cap_capable_tracepoint.bt), trimmed.

RECORDED_BIND = """\
Attaching 5 probes...
CAPPROBE BEGIN 2906634479139
CAPPROBE MARK 3529143118505 14093
@sent: 1
CAPCHECK 3529143218265 1 14093 14093 10 0 python3

        cap_capable+131
        security_capable+59
        ns_capable+42
        __inet_bind+490
        inet_bind_sk+127
        __sys_bind+206
        __x64_sys_bind+20
        do_syscall_64+113
        entry_SYSCALL_64_after_hwframe+118
CAPEND
CAPPROBE MARK 3529143273756 14093
@sent: 1


@sent: 0

"""

# `sh -c "chown 1000 F; true"`: the exec of sh's child, then chown's own check.
RECORDED_CHOWN = """\
CAPCHECK 3660230063407 1 11296 11296 21 0 sh

        cap_capable+131
        security_vm_enough_memory_mm+54
        insert_vm_struct+123
        create_init_stack_vma+279
        alloc_bprm+313
        do_execveat_common.isra.0+141
        __x64_sys_execve+52
        do_syscall_64+113
        entry_SYSCALL_64_after_hwframe+118
CAPEND
CAPCHECK 3660233576486 3 11296 11296 0 0 chown

        cap_capable+131
        security_capable+59
        capable_wrt_inode_uidgid+57
        setattr_prepare+277
        ext4_setattr+113
        notify_change+906
        chown_common+520
        do_fchownat+197
        __x64_sys_fchownat+27
        do_syscall_64+113
        entry_SYSCALL_64_after_hwframe+118
CAPEND
"""

# The same bind check as tracefs prints it (options/stacktrace), for classify() parity.
TRACEFS_BIND = """\
         python3-14093   [001] .....  3529.143218: cap_capable: cred 00000000c858b33b, target_ns 000000002ffd1c38, capable_ns 000000002ffd1c38, cap 10, ret 0
         python3-14093   [001] .....  3529.143220: <stack trace>
 => trace_event_raw_event_cap_capable
 => cap_capable
 => security_capable
 => ns_capable
 => __inet_bind
 => inet_bind_sk
 => __sys_bind
 => __x64_sys_bind
 => do_syscall_64
 => entry_SYSCALL_64_after_hwframe
"""


def test_parser_reads_a_recorded_bind():
    checks, parser = parse_lines(RECORDED_BIND.splitlines())
    assert checks == [CapCheck(
        pid=14093, comm="python3", cpu=1, mono_ts=3529.143218265, cap=10, granted=True,
        stack=("cap_capable", "security_capable", "ns_capable", "__inet_bind", "inet_bind_sk",
               "__sys_bind", "__x64_sys_bind", "do_syscall_64",
               "entry_SYSCALL_64_after_hwframe"),
    )]
    assert parser.begin_ns == 2906634479139
    assert parser.marks == [Mark(3529143118505, 14093, 1), Mark(3529143273756, 14093, 1)]
    assert parser.last_sent == 1 and parser.records == 1
    # the exit-time map dump ("@sent: 0" after no MARK) changes no mark and is no noise
    assert parser.unparsed_count == 0 and parser.truncated_records == 0 and parser.lost_events == 0


def test_parser_keeps_tid_comm_cpu_and_denials():
    text = RECORDED_CHOWN + textwrap.dedent("""\
        CAPCHECK 5000000000 2 700 701 10 -1 my worker
                __inet_bind+0x1ab/0x230
                ns_capable+20 [some_module]
        CAPEND
        """)
    checks, parser = parse_lines(text.splitlines())
    assert [(c.pid, c.comm, c.cpu, c.cap, c.granted) for c in checks] == [
        (11296, "sh", 1, 21, True), (11296, "chown", 3, 0, True), (701, "my worker", 2, 10, False),
    ]
    assert checks[0].stack[5] == "do_execveat_common.isra.0"  # classify() strips the clone suffix
    assert checks[2].stack == ("__inet_bind", "ns_capable")
    assert checks[2].mono_ts == 5.0


def test_parser_counts_lost_events_and_unknown_lines():
    lines = ["Lost 17 events", "something else", "Lost 3 events", "@traced[1234]: 1"]
    checks, parser = parse_lines(lines)
    assert checks == [] and parser.lost_events == 20
    assert parser.unparsed_count == 1 and parser.unparsed_examples == ["something else"]


def test_parser_keeps_a_record_cut_short():
    lines = RECORDED_CHOWN.splitlines()[:5] + ["CAPPROBE MARK 9 1", "@sent: 2"]
    checks, parser = parse_lines(lines)
    assert len(checks) == 1 and checks[0].stack == ("cap_capable", "security_vm_enough_memory_mm",
                                                    "insert_vm_struct")
    assert parser.truncated_records == 1 and parser.marks == [Mark(9, 1, 2)]
    checks, parser = parse_lines(RECORDED_CHOWN.splitlines()[:4])  # input ends mid-record
    assert len(checks) == 1 and parser.truncated_records == 1


def test_parser_limits_unparsed_examples():
    checks, parser = parse_lines([f"junk {i}" for i in range(100)])
    assert parser.unparsed_count == 100
    assert len(parser.unparsed_examples) == bpftrace_records.MAX_UNPARSED_EXAMPLES


def test_classify_gives_the_same_call_site_as_for_tracefs():
    (from_bpftrace,), _ = parse_lines(RECORDED_BIND.splitlines())
    (from_tracefs,), _ = parse_tracefs_lines(TRACEFS_BIND.splitlines())
    a, b = classify(from_bpftrace), classify(from_tracefs)
    assert (a.cap, a.call_site, a.syscall, a.reason, a.kind, a.alternatives) == \
           (b.cap, b.call_site, b.syscall, b.reason, b.kind, b.alternatives)
    assert a.call_site == "__inet_bind" and a.syscall == "bind"
    sh_exec, chown = parse_lines(RECORDED_CHOWN.splitlines())[0]
    assert classify(sh_exec).call_site == "security_vm_enough_memory_mm"
    assert classify(sh_exec).kind == ADVISORY
    assert (classify(chown).call_site, classify(chown).syscall) == ("setattr_prepare", "fchownat")


def test_both_programs_print_the_same_lines():
    """The kprobe variant must stay a drop-in: same printf formats, same control lines."""
    import re
    formats = {}
    for variant in bt.VARIANTS:
        text = script_path(variant).read_text()
        formats[variant] = sorted(re.findall(r'printf\("([^"]*)"', text))
        assert "print(@sent)" in text and "exit();" in text
    assert formats["tracepoint"] == formats["kprobe"]


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError):
        script_path("uprobe")


# ---------------------------------------------------------------------------------------
# Against the kernel.

def _unavailable_reason() -> str | None:
    if shutil.which("bpftrace") is None:
        return "bpftrace not installed"
    if os.geteuid() != 0:
        return "needs root to run bpftrace"
    if bpftrace_available() != "tracepoint":
        return "no capability:cap_capable tracepoint (the tested variant)"
    return None


_REASON = _unavailable_reason()
needs_bpftrace = pytest.mark.skipif(_REASON is not None, reason=f"bpftrace probe: {_REASON}")
pytestmark = pytest.mark.root


def our_bpftraces(controller: int | None = None) -> list[int]:
    """Live (non-zombie) bpftrace processes running our program for CONTROLLER (default: us)."""
    controller = controller or os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in argv if a]
        if (len(argv) >= 2 and argv[-1] == str(controller) and "bpftrace" in argv[0]
                and any("cap_capable_" in a for a in argv)):
            state = stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3]
            if state not in (b"Z", b"X"):
                found.append(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def no_bpftrace_left_behind():
    yield
    if _REASON is None:
        assert our_bpftraces() == []


def run_under_probe(argv, user=None):
    child = HeldChild(argv, user=user)
    with BpftraceCapabilityProbe(child.pid, variant="tracepoint") as probe:
        child.release()
        returncode, output = child.wait()
    return child, probe, returncode, output


def free_privileged_port() -> int:
    """80 if nobody listens there (other tests may bind it concurrently), else another < 1024."""
    unprivileged_start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    for port in [80, *range(1001, 1024), *range(900, 1000)]:
        if port >= unprivileged_start:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    pytest.skip(f"no free port below ip_unprivileged_port_start={unprivileged_start}")


@needs_bpftrace
def test_bind_low_port_needs_net_bind_service_from_inet_bind():
    port = free_privileged_port()
    before = time.monotonic()
    code = f"import socket; s = socket.socket(); s.bind(('127.0.0.1', {port}))"
    child, probe, returncode, err = run_under_probe([PYTHON, "-c", code])
    after = time.monotonic()
    assert returncode == 0, err
    uses = [classify(c) for c in probe.checks]
    binds = [u for u in uses if u.cap == "CAP_NET_BIND_SERVICE"]
    assert len(binds) == 1
    (bind,) = binds
    assert bind.granted and bind.call_site == "__inet_bind" and bind.syscall == "bind"
    assert bind.check.pid == child.pid and bind.check.comm == "python3"
    assert bind.reason == "bind to a port below 1024"
    # bpftrace's nsecs is CLOCK_MONOTONIC, and wall conversion lands in this test run
    assert before <= bind.check.mono_ts <= after
    assert abs(probe.mono_to_wall(bind.check.mono_ts) - time.time()) < 30
    assert probe.stats.unparsed_count == 0 and probe.stats.lost_events == 0
    assert not probe.stats.callback_errors and probe.stop_complete
    assert probe.process.returncode is not None and our_bpftraces() == []


@needs_bpftrace
def test_bind_denied_for_unprivileged_user_is_recorded_as_denied():
    port = free_privileged_port()
    code = (f"import socket\ntry:\n socket.socket().bind(('127.0.0.1', {port}))\n"
            "except PermissionError:\n print('denied')")
    child, probe, returncode, err = run_under_probe([PYTHON, "-c", code], user=65534)
    assert returncode == 0 and "denied" in err, err
    binds = [classify(c) for c in probe.checks if c.cap == 10]
    assert binds and all(not b.granted and b.call_site == "__inet_bind" for b in binds)
    part = partition_uses(classify(c) for c in probe.checks)
    assert "CAP_NET_BIND_SERVICE" in {u.cap for u in part.optional}
    assert "CAP_NET_BIND_SERVICE" not in {u.cap for u in part.required}


@needs_bpftrace
def test_true_makes_only_advisory_checks():
    child, probe, returncode, _ = run_under_probe(["/bin/true"])
    assert returncode == 0
    uses = [classify(c) for c in probe.checks]
    assert uses, "the probe saw nothing at all (exec alone makes overcommit checks)"
    assert {u.kind for u in uses} == {ADVISORY}
    assert {u.call_site for u in uses} == {"security_vm_enough_memory_mm"}
    assert {u.check.pid for u in uses} == {child.pid}


@needs_bpftrace
def test_chown_needs_cap_chown_and_children_are_followed(tmp_path):
    target = tmp_path / "owned"
    target.write_text("x")
    # "; true" keeps sh from exec'ing chown directly: chown runs in a forked child.
    child, probe, returncode, err = run_under_probe(["/bin/sh", "-c", f"chown 1000 {target}; true"])
    assert returncode == 0, err
    assert target.stat().st_uid == 1000
    chowns = [classify(c) for c in probe.checks if c.cap == 0]
    assert len(chowns) == 1
    (chown,) = chowns
    assert chown.granted and chown.reason == "change a file's owner"
    assert chown.call_site == "setattr_prepare" and "chown_common" in chown.check.stack
    assert chown.syscall == "fchownat"
    assert chown.check.pid != child.pid  # followed through sched_process_fork
    assert chown.check.comm == "chown"   # bpftrace reads comm at check time (tracefs: "sh")


@needs_bpftrace
def test_grandchildren_and_threads_are_followed():
    code = textwrap.dedent("""
        import os, threading
        def grandchild():
            if os.fork() == 0:
                os.execv('/bin/true', ['/bin/true'])
            os.wait()
        t = threading.Thread(target=grandchild); t.start(); t.join()
        print(threading.get_native_id())
    """)
    sh = HeldChild(["/bin/sh", "-c", f"{PYTHON} -c \"{code}\"; true"])
    with BpftraceCapabilityProbe(sh.pid, variant="tracepoint") as probe:
        sh.release()
        returncode, out = sh.wait()
    assert returncode == 0, out
    comms = {c.comm for c in probe.checks}
    assert {"sh", "python3", "true"} <= comms
    # every check belongs to the tree: none from this test process or bpftrace
    assert os.getpid() not in {c.pid for c in probe.checks}
    assert probe.process.pid not in {c.pid for c in probe.checks}


@needs_bpftrace
def test_two_probes_at_once_never_see_each_others_events(tmp_path):
    port = free_privileged_port()
    target = tmp_path / "owned"
    target.write_text("x")
    code = ("import socket, time\n"
            "for _ in range(20):\n"
            f"    socket.socket().bind(('127.0.0.1', {port})); time.sleep(0.01)")
    binder = HeldChild([PYTHON, "-c", code])
    chowner = HeldChild(["/bin/sh", "-c",
                         f"for i in 1 2 3 4 5 6 7 8 9 10; do chown 1000 {target}; done"])
    with BpftraceCapabilityProbe(binder.pid, variant="tracepoint") as bind_probe, \
            BpftraceCapabilityProbe(chowner.pid, variant="tracepoint") as chown_probe:
        assert len(our_bpftraces()) == 2
        binder.release()
        chowner.release()
        assert binder.wait()[0] == 0
        assert chowner.wait()[0] == 0
    bind_caps = {c.cap for c in bind_probe.checks}
    chown_caps = {c.cap for c in chown_probe.checks}
    assert 10 in bind_caps and 0 not in bind_caps
    assert 0 in chown_caps and 10 not in chown_caps
    assert sum(c.cap == 10 for c in bind_probe.checks) == 20
    assert sum(c.cap == 0 for c in chown_probe.checks) == 10
    assert {c.pid for c in bind_probe.checks} == {binder.pid}
    assert binder.pid not in {c.pid for c in chown_probe.checks}
    # the handshakes (this process's CAP_NET_RAW checks) are in neither
    assert 13 not in bind_caps | chown_caps


@needs_bpftrace
def test_nothing_is_lost_at_stop_after_a_burst():
    """bpftrace drops what it has not printed at SIGINT: stop() must wait for all of it."""
    code = ("import socket\n"
            "for _ in range(300):\n"
            "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"    s.bind(('127.0.0.1', {free_privileged_port()})); s.close()")
    child, probe, returncode, err = run_under_probe([PYTHON, "-c", code])
    assert returncode == 0, err
    assert sum(c.cap == 10 for c in probe.checks) == 300
    assert probe.stop_complete and probe.stats.lost_events == 0
    assert probe.stats.checks == len(probe.checks) == probe._parser.last_sent


@needs_bpftrace
def test_stop_is_prompt_every_time():
    """bpftrace 0.17 misses a SIGINT that falls between two epoll_waits (~1 in 20): stop()
    must still end it quickly, not after the SIGKILL timeout."""
    for _ in range(8):
        probe = BpftraceCapabilityProbe(1, variant="tracepoint").start()
        assert probe.attach_seconds < 30
        began = time.monotonic()
        probe.stop()
        assert time.monotonic() - began < 2.5
        assert probe.process.returncode == 0  # exited by itself, not SIGKILLed
        assert probe.stop_complete


@needs_bpftrace
def test_callback_receives_checks_and_its_errors_are_reported():
    seen = []

    def on_check(check):
        seen.append(check)
        raise RuntimeError("callback bug")

    child = HeldChild(["/bin/true"])
    with BpftraceCapabilityProbe(child.pid, on_check=on_check, variant="tracepoint") as probe:
        child.release()
        child.wait()
    assert seen and probe.checks == []
    assert len(probe.stats.callback_errors) == len(seen)
    assert probe.stats.checks == len(seen)


@needs_bpftrace
def test_bpftrace_stopped_when_body_raises():
    child = HeldChild(["/bin/true"])
    with pytest.raises(KeyError):
        with BpftraceCapabilityProbe(child.pid, variant="tracepoint") as probe:
            assert our_bpftraces() == [probe.process.pid]
            raise KeyError("boom")
    child.release()
    child.wait()
    assert our_bpftraces() == []
    assert probe.stop() is probe.stats  # stopping twice is harmless


@needs_bpftrace
def test_bpftrace_exits_when_its_controller_is_sigkilled():
    holder_code = textwrap.dedent("""
        import os, time
        from capprobe.tracing.bpftrace import BpftraceCapabilityProbe
        probe = BpftraceCapabilityProbe(os.getpid()).start()
        print(probe.process.pid, flush=True)
        time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", holder_code], stdout=subprocess.PIPE, text=True)
    try:
        bpftrace_pid = int(holder.stdout.readline())
        assert our_bpftraces(holder.pid) == [bpftrace_pid]
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        deadline = time.monotonic() + 10
        while our_bpftraces(holder.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert our_bpftraces(holder.pid) == []
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()
        for pid in our_bpftraces(holder.pid):  # do not leave it behind even when failing
            os.kill(pid, signal.SIGKILL)


@needs_bpftrace
def test_program_that_cannot_attach_raises_probe_unavailable():
    if bt._kprobes_usable():
        pytest.skip("this kernel has kprobes: the kprobe variant would attach")
    child = HeldChild(["/bin/true"])
    try:
        with pytest.raises(ProbeUnavailable, match="bpftrace exited") as info:
            BpftraceCapabilityProbe(child.pid, variant="kprobe").start()
        assert "cap_capable" in info.value.reason or "kprobe" in info.value.reason.lower()
    finally:
        child.release()
        child.wait()
    assert our_bpftraces() == []


@pytest.mark.skipif(shutil.which("bpftrace") is None, reason="bpftrace not installed")
@pytest.mark.parametrize("variant", bt.VARIANTS)
def test_programs_compile(variant):
    """`bpftrace -d` parses, type-checks and generates code without attaching (works without
    kprobes); the kernel verifier does not see the program."""
    result = subprocess.run(["bpftrace", "-d", str(script_path(variant)), "1", "2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines()
              if "ERROR" in line and "RLIMIT_MEMLOCK" not in line]
    assert errors == []
    assert "define" in result.stdout  # LLVM IR was generated


@needs_bpftrace
def test_available_variant_here_is_the_tracepoint():
    assert bpftrace_available() == "tracepoint"
    assert bpftrace_available("no-such-bpftrace-binary") is None


def test_not_root_raises_probe_unavailable(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/bpftrace")
    with pytest.raises(ProbeUnavailable, match="root"):
        BpftraceCapabilityProbe(os.getpid()).start()


def test_missing_bpftrace_raises_probe_unavailable():
    with pytest.raises(ProbeUnavailable, match="not installed"):
        BpftraceCapabilityProbe(os.getpid(), bpftrace="no-such-bpftrace-binary").start()


def test_kernel_without_any_variant_raises_probe_unavailable(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/bpftrace")
    monkeypatch.setattr(bt, "bpftrace_available", lambda binary="bpftrace": None)
    with pytest.raises(ProbeUnavailable, match="neither"):
        BpftraceCapabilityProbe(os.getpid()).start()


@needs_bpftrace
def test_excluded_pid_is_dropped_on_delivery():
    """The program is fixed once loaded: exclusion happens when records are delivered."""
    target = HeldChild(["/bin/sleep", "5"], user=65534)
    target.release()
    reader_code = ("import sys\nfor _ in range(200):\n"
                   "    open(f'/proc/{sys.argv[1]}/environ', 'rb').read()\n")
    reader = HeldChild([PYTHON, "-c", reader_code, str(target.pid)])
    try:
        with BpftraceCapabilityProbe(reader.pid, variant="tracepoint") as probe:
            probe.exclude_pid(reader.pid)
            reader.release()
            assert reader.wait()[0] == 0
    finally:
        os.kill(target.pid, signal.SIGKILL)
        target.wait()
    assert not [c for c in probe.checks if c.pid == reader.pid]
    assert probe.stats.excluded_checks >= 200  # each read asked CAP_SYS_PTRACE
