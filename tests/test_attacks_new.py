"""The new surfaces (attach, fast mode, status line) attacked as a hostile target would.

The principle under test: nothing reaches capprobe's record of the target except what the
kernel saw the target do. Hostile programs run as nobody with --caps none (they refuse
more); attach tests start their own victims and never touch another process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from capprobe import attach as attach_mod
from capprobe.attach import AttachOptions, attach_session, command_of
from capprobe.session import SessionError

from conftest import SYSTEM_PYTHON, capprobe, load, needs_root, needs_strace

WORKLOADS = Path(__file__).resolve().parent / "workloads"
needs_bpftrace = pytest.mark.skipif(shutil.which("bpftrace") is None or os.geteuid() != 0,
                                    reason="fast mode needs root and bpftrace (Debian package bpftrace)")


@pytest.fixture
def hostile_dir():
    """The workload copied out of the checkout (a checkout under /tmp looks like shared /tmp),
    and a directory of nobody's own for it to play in."""
    d = Path(tempfile.mkdtemp(prefix="capprobe-attack-", dir="/var/tmp"))
    d.chmod(0o755)
    own = d / "own"
    own.mkdir()
    shutil.chown(own, "nobody")
    shutil.copy(WORKLOADS / "forge_fast.py", d)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@needs_root
@needs_strace
@needs_bpftrace
def test_fast_mode_records_no_path_the_target_did_not_write(hostile_dir):
    # After the switch to the kernel side, the target writes only in its own directory, then
    # makes the path, dirfd or cwd it used lead to /etc/cron.d, and links to /etc/cron.d.
    r = capprobe("run", "-q", "--fast", "--user", "nobody", "--caps", "none", "-o", str(hostile_dir / "p.json"),
                 "--unit", "hostile", "--", SYSTEM_PYTHON, str(hostile_dir / "forge_fast.py"),
                 str(hostile_dir / "own"), "150", timeout=400)
    assert r.returncode == 0, r.stderr
    if (hostile_dir / "own" / "switch").read_text() != "switched":
        pytest.skip("capprobe never switched to the kernel side (bpftrace too slow to compile here?)")
    p = load(hostile_dir / "p.json")
    # it reads /etc/cron.d (listing it, opening a file of it read-only): only writes are forged
    forged = {f["path"]: sorted(f["ops"]) for f in p["files"]
              if f["path"].startswith("/etc/cron.d") and set(f["ops"]) - {"read"}}
    assert forged == {}
    unit = (hostile_dir / "hostile.service").read_text()
    assert not [line for line in unit.splitlines() if line.startswith("ReadWritePaths=") and
                any(word in ("/etc", "/etc/cron.d") or word.startswith("/etc/cron.d/")
                    for word in line.split("=", 1)[1].split())]


# -- attach -------------------------------------------------------------------------------------


@pytest.fixture
def victims():
    """Processes the test starts itself (never anyone else's); all killed at the end."""
    started: list[subprocess.Popen] = []

    def start(argv, **kw):
        proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()


def _wait_for(predicate, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.02)


def _take_pid(pid: int, start) -> subprocess.Popen | None:
    return _take_pid_for(pid, start, [SYSTEM_PYTHON, "-c", STRANGER])


def _take_pid_for(pid: int, start, argv) -> subprocess.Popen | None:
    """Start ARGV as a process that gets PID (now free) through ns_last_pid; None if another
    process took it first."""
    for _ in range(50):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        proc = start(argv)
        if proc.pid == pid:
            return proc
        proc.kill()
    return None


STRANGER = """
import os, time
for i in range(200):  # what a process outside the target's tree does: never the target's fact
    os.mkdir("/var/tmp/capprobe-stranger-%d-%d" % (os.getpid(), i))
    os.rmdir("/var/tmp/capprobe-stranger-%d-%d" % (os.getpid(), i))
    time.sleep(0.02)
"""

TREE = """
import signal, subprocess, time
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped at once: their pid is free when they die
subprocess.Popen(["sleep", "60"])
time.sleep(60)
"""


@needs_root
@needs_strace
def test_attach_never_follows_a_pid_reused_while_it_attached(victims, monkeypatch):
    # A child of the tree dies between capprobe's snapshot and strace's attach, and a process
    # outside the tree gets its pid (forced with ns_last_pid): strace would attach to it, and
    # its facts would become the target's.
    root = victims([SYSTEM_PYTHON, "-c", TREE])
    _wait_for(lambda: psutil.Process(root.pid).children())
    child = psutil.Process(root.pid).children()[0].pid
    strangers = []
    real_attach = attach_mod.attach

    def attach_after_the_pid_is_reused(strace, pids, write_fd, **kw):
        assert child in pids
        os.kill(child, 9)
        _wait_for(lambda: not os.path.exists(f"/proc/{child}"))
        stranger = _take_pid(child, victims)
        if stranger is None:
            pytest.skip(f"another process took pid {child} first (a busy machine)")
        strangers.append(stranger)
        return real_attach(strace, pids, write_fd, **kw)

    monkeypatch.setattr(attach_mod, "attach", attach_after_the_pid_is_reused)
    with pytest.raises(SessionError, match="reused"):
        result = attach_session(AttachOptions(pid=root.pid, duration=1.5, cap_probe="off"))
        print([f["path"] for f in result.profile["files"] if "stranger" in f["path"]][:3])
    assert strangers and strangers[0].poll() is None  # left running
    _wait_for(lambda: attach_mod.tracer_of(strangers[0].pid) == 0)  # and untraced
    _wait_for(lambda: _untraced_and_running(root.pid))  # the tree too


def test_an_argv0_of_another_program_is_not_the_command_line(monkeypatch):
    # argv[0] is whatever the target's exec gave (exec -a), not what the kernel ran: a
    # command line naming another program is not the unit's ExecStart=.
    python = os.fsencode(os.path.realpath(SYSTEM_PYTHON))
    base = dict(pid=4242, ppid=1, tids=(4242,), exe=python, cwd=b"/", uids=(0, 0, 0), gids=(0, 0, 0),
                started=0.0, running_for=1.0, caps={})
    forged = attach_mod.RunningProcess(cmdline=("/usr/bin/env", "/srv/app.py"), **base)
    command, why = command_of(forged)
    assert command == [os.fsdecode(python)] and why and "/usr/bin/env" in why
    monkeypatch.setenv("PATH", "/usr/bin")  # not a pyenv shim's
    real = attach_mod.RunningProcess(cmdline=("python3", "/srv/app.py"), **base)  # found on $PATH: the same file
    assert command_of(real) == (["python3", "/srv/app.py"], None)
    relative = attach_mod.RunningProcess(cmdline=("./python3", "app.py"), **{**base, "cwd": b"/usr/bin"})
    assert command_of(relative) == (["./python3", "app.py"], None)


@needs_root
@needs_strace
def test_attach_takes_the_command_line_from_what_was_executed(victims, tmp_path):
    # Real: python started with argv[0] "/usr/bin/env" (exec -a); the unit must run python.
    script = Path(tempfile.mkdtemp(prefix="capprobe-argv0-", dir="/var/tmp")) / "app.py"
    try:
        script.write_text("import time\nwhile True: time.sleep(0.05)\n")
        target = victims(["/usr/bin/env", str(script)], executable=SYSTEM_PYTHON)
        _wait_for(lambda: psutil.Process(target.pid).cmdline()[:1] == ["/usr/bin/env"])
        out = tmp_path / "p.json"
        r = capprobe("attach", str(target.pid), "--duration", "1", "--no-unit", "-q", "-o", str(out))
        assert r.returncode == 0, r.stderr
        run = load(out)["run"]
        assert run["command"] == [os.path.realpath(SYSTEM_PYTHON)], run["command"]
        assert any("/usr/bin/env" in line for line in load(out)["incomplete"])
    finally:
        shutil.rmtree(script.parent, ignore_errors=True)


BUSY_TREE = """
import os, subprocess, threading, time
def spin():
    while True:
        os.getppid()
        time.sleep(0.001)
for _ in range(8):
    threading.Thread(target=spin, daemon=True).start()
children = [subprocess.Popen(["sleep", "60"]) for _ in range(4)]
spin()
"""


def _untraced_and_running(pid: int) -> bool:
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for tid in os.listdir(f"/proc/{p.pid}/task"):
            status = dict(line.split(":", 1) for line in
                          Path(f"/proc/{p.pid}/task/{tid}/status").read_text().splitlines())
            if int(status["TracerPid"]) != 0 or status["State"].split()[0] in "tT":
                return False
    return True


@needs_root
@needs_strace
@pytest.mark.parametrize("signum", [2, 15, 9])
def test_a_signal_to_capprobe_while_it_attaches_leaves_the_tree_running_untraced(victims, tmp_path, signum):
    # Ctrl-C (or a SIGTERM, or a SIGKILL) at any moment of the attach, here at several points
    # while strace is still attaching to 13 threads and 4 children.
    target = victims([SYSTEM_PYTHON, "-c", BUSY_TREE])
    _wait_for(lambda: len(psutil.Process(target.pid).children()) == 4 and psutil.Process(target.pid).num_threads() == 9)
    for delay in (0.4, 0.8, 1.2, 1.6):
        proc = subprocess.Popen([sys.executable, "-m", "capprobe", "attach", str(target.pid), "--no-unit", "-q",
                                 "--cap-probe", "off", "-o", str(tmp_path / f"p-{signum}-{delay}.json")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
        # a Ctrl-C while Python still imports capprobe (nothing started yet) is Python's own traceback
        # (R-findings, Low); once capprobe runs, one line at most
        if "from .cli import main" not in err:
            assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, err
        _wait_for(lambda: _untraced_and_running(target.pid), seconds=10)
        assert target.poll() is None
        assert not [p for p in psutil.process_iter(["name", "cmdline"])
                    if p.info["name"] == "strace" and str(target.pid) in (p.info["cmdline"] or [])]


THREAD_LATER = """
import os, sys, threading, time
spawn, act, victim = sys.argv[1:4]
def late():  # born before the probe is armed, checks a capability long after
    while not os.path.exists(act):
        time.sleep(0.02)
    os.chown(victim, 65534, 65534)  # root giving a file away: CAP_CHOWN
    time.sleep(60)
while not os.path.exists(spawn):
    time.sleep(0.02)
threading.Thread(target=late, daemon=True).start()
time.sleep(60)
"""


@needs_root
@needs_strace
def test_a_thread_born_while_capprobe_attaches_has_its_capability_checks_recorded(victims, monkeypatch, tmp_path):
    # The tree's tasks are listed (snapshot), then the capability probe is armed on them: a
    # thread born in between would never be followed by the probe, and its checks would be
    # missing from the profile for good (the thread lives on).
    spawn, act, victim = tmp_path / "spawn", tmp_path / "act", tmp_path / "victim"
    victim.touch()
    target = victims([SYSTEM_PYTHON, "-c", THREAD_LATER, str(spawn), str(act), str(victim)])
    _wait_for(lambda: psutil.Process(target.pid).num_threads() == 1)
    real_start = attach_mod.CapabilityRecorder.start

    def start_after_a_thread_is_born(mode, pid, collector, notes):
        spawn.touch()
        _wait_for(lambda: psutil.Process(target.pid).num_threads() == 2)
        return real_start(mode, pid, collector, notes)

    monkeypatch.setattr(attach_mod.CapabilityRecorder, "start", start_after_a_thread_is_born)
    timer = threading.Timer(1.0, act.touch)
    timer.start()
    try:
        result = attach_session(AttachOptions(pid=target.pid, duration=2.5, cap_probe="tracefs"))
    finally:
        timer.cancel()
    assert victim.stat().st_uid == 65534
    uses = [u for u in result.profile["capabilities"]["uses"] if u["capability"] == "CAP_CHOWN"]
    assert uses and uses[0]["status"] == "required", result.profile["capabilities"]["uses"]


ROOT_STRANGER = """
import os, sys, time
for _ in range(50):  # a root process outside the target's tree giving a file away: CAP_CHOWN
    os.chown(sys.argv[1], 65534, 65534)
    os.chown(sys.argv[1], 0, 0)
    time.sleep(0.02)
"""


@needs_root
@needs_strace
def test_a_process_gone_before_the_probe_is_armed_leaves_no_pid_for_a_stranger(victims, monkeypatch, tmp_path):
    # A child of the tree exits between the snapshot and the probe's arming: its pid would stay
    # in the probe's pid filter (the kernel removes a pid when its task exits, and this one had
    # exited already), and whichever process gets that pid next, anywhere on the host, would
    # have its capability checks recorded as the target's. (The kernel does not always keep a
    # pid appended after its task exited: without the fix this failed in 9 of 14 runs here; the
    # test below checks the rule itself every time.)
    victim = tmp_path / "victim"
    victim.touch()
    root = victims([SYSTEM_PYTHON, "-c", TREE])
    _wait_for(lambda: psutil.Process(root.pid).children())
    child = psutil.Process(root.pid).children()[0].pid
    real_arm, real_attach = attach_mod.arm_probe, attach_mod.attach
    strangers = []

    def arm_after_the_child_exits(recorder, tree, pins):
        os.kill(child, 9)
        _wait_for(lambda: not os.path.exists(f"/proc/{child}"))
        return real_arm(recorder, tree, pins)

    def reuse_the_pid_once_attached(strace, pids, write_fd, **kw):
        def reuse() -> None:
            stranger = _take_pid_for(child, victims, [SYSTEM_PYTHON, "-c", ROOT_STRANGER, str(victim)])
            strangers.append(stranger)
            if stranger is not None:
                stranger.wait(timeout=60)
            os.killpg(root.pid, 9)  # the session ends with the tree: after every check of the stranger
        threading.Timer(0.8, reuse).start()  # once capprobe has waited for strace to attach
        return real_attach(strace, pids, write_fd, **kw)

    monkeypatch.setattr(attach_mod, "arm_probe", arm_after_the_child_exits)
    monkeypatch.setattr(attach_mod, "attach", reuse_the_pid_once_attached)
    result = attach_session(AttachOptions(pid=root.pid, cap_probe="tracefs"))
    if strangers[0] is None:
        pytest.skip(f"another process took pid {child} first (a busy machine)")
    assert strangers[0].returncode == 0 and result.profile["run"]["still_running"] is False
    assert attach_mod.tracer_of(strangers[0].pid) is None  # strace never had it
    chown = [u for u in result.profile["capabilities"]["uses"] if u["capability"] == "CAP_CHOWN"]
    assert chown == [], chown


class _Recorder:
    """The two things arming asks of a capability recorder, written down."""

    def __init__(self):
        self.added, self.excluded = [], []
        self.probe = self

    def add_pid(self, pid):
        self.added.append(pid)

    def exclude_pid(self, pid):
        self.excluded.append(pid)


def test_arming_never_leaves_the_pid_of_a_task_gone_before_in_the_filter(victims):
    # A pid in the filter that no task of the tree holds is followed, later, in whichever process gets it.
    proc = victims(["sleep", "60"])
    _wait_for(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_SLEEPING)
    [p] = attach_mod.snapshot(psutil.Process(proc.pid))
    pins = attach_mod.pin([p])
    try:
        alive = _Recorder()
        attach_mod._arm_task(alive, p.pid, p, pins)
        assert alive.added == [p.pid] and alive.excluded == []
        proc.kill()
        proc.wait()
        gone = _Recorder()
        attach_mod._arm_task(gone, p.pid, p, pins)
        assert set(gone.added) <= set(gone.excluded)
    finally:
        for fd in pins.values():
            os.close(fd)


# -- checkpoints ---------------------------------------------------------------------------------


@needs_root
@needs_strace
def test_checkpoints_in_a_directory_the_target_writes_change_no_other_file():
    base = Path(tempfile.mkdtemp(prefix="capprobe-ckpt-", dir="/var/tmp"))
    try:
        base.chmod(0o755)
        own = base / "own"
        own.mkdir()
        shutil.chown(own, "nobody")
        secret = base / "secret"
        secret.write_text("root only\n")
        secret.chmod(0o600)
        shutil.copy(WORKLOADS / "swap_tmp.py", base)
        r = capprobe("run", "-q", "--no-unit", "--checkpoint", "1", "--user", "nobody", "--caps", "none",
                     "-o", str(own / "p.json"), "--", SYSTEM_PYTHON, str(base / "swap_tmp.py"), str(own),
                     str(secret), "8", timeout=120)
        assert r.returncode == 0, r.stderr
        assert oct(secret.stat().st_mode & 0o777) == oct(0o600)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- fast mode's records (recorded bpftrace lines: the rules K's fix must keep) ---------------------


def _printf(data: str) -> bytes:
    return json.dumps({"type": "printf", "data": data}).encode() + b"\n"


class _Proc:
    """The live-/proc resolver of fast mode, answering a fixed cwd and nothing else."""

    def cwd(self, tgid):
        return b"/srv"

    def fd_path(self, tgid, fd):
        return None

    def opened_path(self, tgid, tid, requested):
        return requested

    def device(self, path):
        return None

    def socket_name(self, tgid, fd):
        return None

    def socket_type(self, tgid, fd):
        return None


@pytest.fixture(scope="module")
def kernel_tables():
    from capprobe.events.kernel_records import syscall_numbers
    from capprobe.probes import load_table
    unistd = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    if not unistd.exists():
        pytest.skip(f"{unistd} missing (Debian package linux-libc-dev)")
    return syscall_numbers(unistd.read_text()), {n: s["args"] for n, s in load_table("kernel_syscalls").items()}


def test_fast_mode_symlink_records_the_link_it_created_not_what_it_points_at(kernel_tables):
    from capprobe.events.kernel_records import KernelDecoder, RecordAssembler, syscall_names
    numbers, args = kernel_tables
    nr = numbers["symlink"]
    assembler = RecordAssembler(frozenset({nr}))
    assembler.feed(_printf("2\t11\t5000\t/srv/own/points-at-cron\n"))  # entry: the second path, the link
    assembler.feed(_printf(f"R\t5000\t10\t11\t99\t{nr}\t0\n"))
    assembler.feed(_printf("1\t11\t/etc/cron.d\n"))  # exit: the first path, only the link's text
    facts = [f for r in assembler.take() for f in KernelDecoder(syscall_names(numbers), args, _Proc(), 0.0).facts(r)]
    paths = {getattr(f, "path", None) for f in facts}
    assert b"/etc/cron.d" not in paths and b"/srv/own/points-at-cron" in paths, facts


def test_fast_mode_keeps_a_path_ending_in_a_newline(kernel_tables):
    from capprobe.events.kernel_records import RecordAssembler
    numbers, _ = kernel_tables
    nr = numbers["openat"]
    assembler = RecordAssembler()
    assembler.feed(_printf(f"R\t6000\t10\t11\t99\t{nr}\t3\t4294967196\t{0o101}\t420\n"))
    assembler.feed(_printf("1\t11\t/srv/own/config\n\n"))  # the file "config\n"; printf's own "\n" after it
    [call] = assembler.take()
    assert call.path == b"/srv/own/config\n"


UNTRACED_LATER_C = r"""
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
static char stack[1 << 16];
static int child(void *path) {  /* strace -f does not follow it: its syscalls are in no trace */
    FILE *f = fopen(path, "w");
    if (f) { fputs("escaped\n", f); fclose(f); }
    sleep(30);
    return 0;
}
int main(int argc, char **argv) {
    while (access(argv[1], F_OK) != 0) usleep(20000);  /* until capprobe has attached */
    pid_t pid = clone(child, stack + sizeof stack, CLONE_UNTRACED | SIGCHLD, argv[2]);
    if (pid < 0) { perror("clone"); return 1; }
    waitpid(pid, NULL, 0);
    return 0;
}
"""


@needs_root
@needs_strace
@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed: the test compiles its CLONE_UNTRACED program")
def test_attach_says_when_the_tree_starts_a_process_strace_cannot_follow(victims, tmp_path):
    # A process of the tree started with CLONE_UNTRACED after the attach: what it does is in no
    # trace, and the profile must not pass for the tree's whole behaviour.
    source = tmp_path / "untraced.c"
    source.write_text(UNTRACED_LATER_C)
    subprocess.run(["gcc", "-o", str(tmp_path / "untraced"), str(source)], check=True)
    go, escaped = tmp_path / "go", tmp_path / "escaped.txt"
    target = victims([str(tmp_path / "untraced"), str(go), str(escaped)])
    out = tmp_path / "p.json"
    proc = subprocess.Popen([sys.executable, "-m", "capprobe", "attach", str(target.pid), "--no-unit", "-q",
                             "--cap-probe", "off", "--duration", "3", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: attach_mod.tracer_of(target.pid) not in (0, None), seconds=20)
    go.touch()
    _wait_for(lambda: escaped.exists())
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    p = load(out)
    assert not any(f["path"] == str(escaped) for f in p["files"])  # the child really was unseen
    assert any("not traced" in reason and "CLONE_UNTRACED" in reason for reason in p["incomplete"]), p["incomplete"]


@needs_root
@needs_strace
def test_a_strace_that_does_not_detach_is_killed_and_the_tree_runs_on(victims, monkeypatch):
    # strace 6.1 now and then never finishes detaching from a process stopped in vfork(), its
    # child held in a ptrace stop (measured here: 1 in 10 plain `strace -f -p` + SIGINT, and
    # 1 in 6 `capprobe attach` to a program that runs subprocesses): capprobe then waited for
    # it forever and the tree stayed stopped. Played here by a strace that ignores the SIGINT.
    target = victims([SYSTEM_PYTHON, "-c", "import time\nwhile True: time.sleep(0.01)"])
    real_attach = attach_mod.attach

    def deaf_strace(strace, pids, write_fd, **kw):
        tracer = real_attach(strace, pids, write_fd, **kw)
        send = tracer.send_signal
        tracer.send_signal = lambda signum: None if signum == 2 else send(signum)
        return tracer

    monkeypatch.setattr(attach_mod, "attach", deaf_strace)
    results = []
    worker = threading.Thread(target=lambda: results.append(
        attach_session(AttachOptions(pid=target.pid, duration=1.0, cap_probe="off"))), daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():  # leave nothing stopped behind a failing test
        for p in psutil.process_iter(["name", "cmdline"]):
            if p.info["name"] == "strace" and str(target.pid) in (p.info["cmdline"] or []):
                p.kill()
        pytest.fail("capprobe still waits for a strace that does not detach")
    _wait_for(lambda: _untraced_and_running(target.pid))
    assert any("did not detach" in line for line in results[0].profile["incomplete"]), results[0].profile["incomplete"]


@needs_root
@needs_strace
def test_a_thread_id_is_refused_with_the_process_to_attach_to(victims, tmp_path):
    target = victims([SYSTEM_PYTHON, "-c", "import threading, time\n"
                      "threading.Thread(target=lambda: time.sleep(60)).start()\ntime.sleep(60)"])
    _wait_for(lambda: psutil.Process(target.pid).num_threads() == 2)
    tid = max(t.id for t in psutil.Process(target.pid).threads())
    r = capprobe("attach", str(tid), "--no-unit", "-q", "-o", str(tmp_path / "p.json"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"{tid} is a thread of process {target.pid}" in r.stderr
    assert _untraced_and_running(target.pid)
