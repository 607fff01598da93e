"""The trace channel and process control of `capprobe run`, attacked and exercised for real.

strace runs as root and attaches to the launcher from outside, writing into an anonymous
pipe; the target runs in a cgroup of its own; the notify socket is abstract and open to
every uid. These tests play the hostile or awkward target.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from capprobe import cgroup
from capprobe.session import SYSTEMD_DEFAULT_PATH

from conftest import SYSTEM_PYTHON, capprobe, load, needs_root, needs_strace

pytestmark = [needs_strace, needs_root]
WORKLOADS = Path(__file__).resolve().parent / "workloads"


@pytest.fixture
def shared_dir():
    """A directory nobody can reach and write (pytest's tmp_path sits under a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="capprobe-test-", dir="/var/tmp"))
    d.chmod(0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _no_capprobe_cgroups_of(pid: int) -> bool:
    mount = cgroup.cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    return mount is None or not list(Path(mount).rglob(f"{cgroup.PREFIX}{pid}-*"))


def test_a_hostile_target_finds_no_way_into_the_trace(shared_dir):
    # As nobody without capabilities (the identity issue 8 attacked with), it tries every fd,
    # /proc/PID/fd and pidfd_getfd() of capprobe and strace, the old FIFO place, the notify
    # socket, and writes forged strace lines wherever it gets in.
    result = shared_dir / "attacks.json"
    r = capprobe("run", "-q", "--user", "nobody", "--caps", "none", "-o", str(shared_dir / "p.json"),
                 "--unit", "hostile", "--", SYSTEM_PYTHON, str(WORKLOADS / "forge_trace.py"), str(result))
    assert r.returncode == 0, r.stderr
    attacks = json.loads(result.read_text())
    print(f"attack attempts: {attacks['attempts']}")
    assert attacks["attempts"] >= 100 and attacks["opened"] == []
    p = load(shared_dir / "p.json")
    assert not [f for f in p["files"] if f["path"].startswith("/etc/sudoers.d")]
    assert "TUNSETIFF" not in json.dumps(p["ioctls"]) and p["parser"]["unparsed"] == 0
    unit = (shared_dir / "hostile.service").read_text()
    assert not [line for line in unit.splitlines()
                if line.startswith("ReadWritePaths=") and "/etc/sudoers.d" in line]


def test_the_tracer_is_root_and_not_an_ancestor_of_the_target(shared_dir):
    script = ("import json, os, sys\n"
              "def status(pid):\n"
              "    return dict(l.split(':', 1) for l in open(f'/proc/{pid}/status'))\n"
              "tracer = int(status('self')['TracerPid'])\n"
              "parent = open(f'/proc/{os.getppid()}/cmdline', 'rb').read().split(b'\\0')\n"
              "json.dump({'tracer_uid': int(status(tracer)['Uid'].split()[0]),\n"
              "           'parent': [a.decode() for a in parent]}, open(sys.argv[1], 'w'))\n")
    out = shared_dir / "who.json"
    r = capprobe("run", "-q", "--no-unit", "--user", "nobody", "--caps", "none", "-o", str(shared_dir / "p.json"),
                 "--", SYSTEM_PYTHON, "-c", script, str(out))
    assert r.returncode == 0, r.stderr
    who = json.loads(out.read_text())
    assert who["tracer_uid"] == 0  # strace is root while the target is nobody
    assert "capprobe" in who["parent"] and not any("strace" in a for a in who["parent"])


def test_a_setuid_program_keeps_its_privilege_and_the_tracers_check_is_not_required(shared_dir):
    # The kernel asks whether the tracer may let a setuid exec keep its privilege
    # (ptracer_capable, CAP_SYS_PTRACE): that is capprobe's tracer, not the service.
    setuid_id = shared_dir / "id"
    shutil.copy("/usr/bin/id", setuid_id)
    setuid_id.chmod(0o4755)
    r = capprobe("run", "--no-unit", "--user", "nobody", "-o", str(shared_dir / "p.json"), "--", str(setuid_id), "-u")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"  # euid 0: the root tracer did not take the privilege away
    p = load(shared_dir / "p.json")
    assert "CAP_SYS_PTRACE" not in p["capabilities"]["required"]
    assert f"{setuid_id} has setuid (owner uid 0)" in r.stderr


DOUBLE_FORK = ("import os, sys, time\n"
               "if os.fork() == 0:\n"
               "    os.setsid()\n"
               "    if os.fork() == 0:\n"
               "        os.execv('/bin/sleep', ['sleep', sys.argv[1]])\n"
               "    os._exit(0)\n"
               "print('ready', flush=True)\n"
               "time.sleep(100)\n")


def _daemons(marker: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", marker]]


def test_a_double_forking_daemon_stops_at_duration_plus_grace(tmp_path):
    marker = "71.25"
    start = time.monotonic()
    r = capprobe("run", "-q", "--no-unit", "--duration", "2", "--grace", "1", "-o", str(tmp_path / "p.json"),
                 "--", SYSTEM_PYTHON, "-c", DOUBLE_FORK, marker)
    elapsed = time.monotonic() - start
    try:
        assert elapsed < 8, elapsed  # before: the daemon kept capprobe for its whole life
        assert not _daemons(marker)
        p = load(tmp_path / "p.json")
        assert p["run"]["ended_by"] == "duration" and r.returncode == 128 + signal.SIGTERM
        assert any(pr["exe"].endswith("/sleep") for pr in p["processes"])  # the grandchild was traced
    finally:
        for d in _daemons(marker):
            d.kill()


def test_sigterm_to_capprobe_stops_a_daemon_that_forked_away(tmp_path):
    marker = "72.25"
    proc = subprocess.Popen([sys.executable, "-m", "capprobe", "run", "-q", "--no-unit", "--grace", "1",
                             "-o", str(tmp_path / "p.json"), "--", SYSTEM_PYTHON, "-c", DOUBLE_FORK, marker],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        assert _daemons(marker)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 128 + signal.SIGTERM
        assert not _daemons(marker)
        assert load(tmp_path / "p.json")["run"]["ended_by"] == "SIGTERM"
        assert _no_capprobe_cgroups_of(proc.pid)
    finally:
        proc.kill()
        for d in _daemons(marker):
            d.kill()


UNTRACED_C = r"""
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
static char stack[1 << 16];
static int child(void *path) {
    FILE *f = fopen(path, "w");
    if (f) { fputs("escaped\n", f); fclose(f); }
    sleep(1);
    return 0;
}
int main(int argc, char **argv) {
    pid_t pid = clone(child, stack + sizeof stack, CLONE_UNTRACED | SIGCHLD, argv[1]);
    if (pid < 0) { perror("clone"); return 1; }
    waitpid(pid, NULL, 0);
    return 0;
}
"""


def test_a_child_started_with_clone_untraced_marks_the_profile_incomplete(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: the test compiles its CLONE_UNTRACED program")
    source = tmp_path / "untraced.c"
    source.write_text(UNTRACED_C)
    subprocess.run(["gcc", "-o", str(tmp_path / "untraced"), str(source)], check=True)
    escaped = tmp_path / "escaped.txt"
    r = capprobe("run", "-q", "--no-unit", "-o", str(tmp_path / "p.json"), "--",
                 str(tmp_path / "untraced"), str(escaped), timeout=60)
    assert r.returncode == 0, r.stderr
    assert escaped.read_text() == "escaped\n"  # the child really ran, unseen by strace
    p = load(tmp_path / "p.json")
    assert not any(f["path"] == str(escaped) for f in p["files"])
    assert p["complete"] is False
    assert any("never traced" in reason for reason in p["incomplete"])


def test_a_fully_traced_run_is_complete(tmp_path):
    r = capprobe("run", "-q", "--no-unit", "-o", str(tmp_path / "p.json"), "--", "sh", "-c", "true | cat")
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    assert p["complete"] is True and p["incomplete"] == []


def test_a_daemon_that_dropped_to_nobody_still_reaches_the_notify_socket(tmp_path):
    script = ("import os, socket\n"
              "os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)\n"
              "address = os.environ['NOTIFY_SOCKET']\n"
              "address = '\\0' + address[1:] if address.startswith('@') else address\n"
              "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1\\nSTATUS=up', address)\n")
    r = capprobe("run", "-q", "--no-unit", "-o", str(tmp_path / "p.json"), "--", SYSTEM_PYTHON, "-c", script)
    assert r.returncode == 0, r.stderr  # before: EACCES on the 0600 socket in a 0700 directory
    p = load(tmp_path / "p.json")
    assert p["run"]["notify_socket"].startswith("@capprobe-notify-") and len(p["run"]["notify_socket"]) == 49
    assert p["run"]["notifications"] == [{"pid": p["processes"][0]["pid"], "words": ["READY=1", "STATUS=up"]}]
    assert any(b["kind"] == "sd_notify" and "READY=1" in b["detail"] for b in p["behaviour"])


def test_notifications_from_outside_the_target_are_not_recorded(tmp_path):
    got = tmp_path / "address"
    script = (f"import os, time\nopen({str(got)!r}, 'w').write(os.environ['NOTIFY_SOCKET'])\n"
              "time.sleep(1.5)\n")
    proc = subprocess.Popen([sys.executable, "-m", "capprobe", "run", "-q", "--no-unit",
                             "-o", str(tmp_path / "p.json"), "--", SYSTEM_PYTHON, "-c", script])
    try:
        deadline = time.monotonic() + 10
        while not (got.exists() and got.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        address = got.read_text()
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", "\0" + address[1:])
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    run = load(tmp_path / "p.json")["run"]
    assert run["notifications"] == []
    assert run["notifications_not_recorded"]["from_outside_the_target"] == 1


def test_the_target_gets_a_services_environment_not_the_shells(tmp_path):
    dump = ("import json, os, sys\njson.dump(dict(os.environ), open(sys.argv[1], 'w'))\n")
    env = {**os.environ, "HOME": "/root", "CAPPROBE_TEST_LEAK": "1"}
    r = capprobe("run", "-q", "--no-unit", "--env", "GREETING=hello world", "-o", str(tmp_path / "p.json"),
                 "--", SYSTEM_PYTHON, "-c", dump, str(tmp_path / "root.json"), env=env)
    assert r.returncode == 0, r.stderr
    seen = json.loads((tmp_path / "root.json").read_text())
    # without User= systemd sets no HOME: a unit must not learn /root/.config from capprobe's shell
    assert "HOME" not in seen and "CAPPROBE_TEST_LEAK" not in seen
    assert seen["PATH"] == SYSTEMD_DEFAULT_PATH and seen["GREETING"] == "hello world"
    assert seen["NOTIFY_SOCKET"].startswith("@")
    p = load(tmp_path / "p.json")
    assert p["run"]["environment"] == {"GREETING": "hello world"}
    # the launcher's own syscalls between strace's attach and the exec are not the target's
    assert "restart_syscall" not in p["syscalls"] and p["processes"][0]["execs"][0]["path"] == SYSTEM_PYTHON

    r = capprobe("run", "-q", "--no-unit", "--user", "nobody", "-o", str(tmp_path / "p2.json"),
                 "--", SYSTEM_PYTHON, "-c", dump.replace("open(sys.argv[1], 'w')", "sys.stdout"), env=env)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert (seen["HOME"], seen["USER"], seen["LOGNAME"]) == ("/nonexistent", "nobody", "nobody")


def test_a_malformed_env_option_is_one_line(tmp_path):
    r = capprobe("run", "--env", "NO-EQUALS", "-o", str(tmp_path / "p.json"), "--", "true")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--env" in r.stderr
    assert not (tmp_path / "p.json").exists()


def test_a_stale_cgroup_is_removed_only_once_its_lock_is_free():
    mount = cgroup.cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    inside = cgroup.own_cgroup(Path("/proc/self/cgroup").read_text())
    if mount is None or inside is None:
        pytest.skip("no cgroup v2 hierarchy mounted here")
    base = os.path.join(mount, inside.lstrip("/"))
    stale = os.path.join(base, f"{cgroup.PREFIX}999999999-test")
    try:
        os.mkdir(stale)
    except OSError as e:
        pytest.skip(f"cgroup v2 not writable here: {e}")
    holder = os.open(stale, os.O_RDONLY | os.O_DIRECTORY)
    try:
        import fcntl
        fcntl.flock(holder, fcntl.LOCK_EX)
        # a live session (in another pid namespace, say) holds the lock: its pid proves nothing
        assert os.path.basename(stale) not in cgroup.reclaim_stale(base) and os.path.isdir(stale)
        fcntl.flock(holder, fcntl.LOCK_UN)
        assert os.path.basename(stale) in cgroup.reclaim_stale(base) and not os.path.exists(stale)
    finally:
        os.close(holder)
        if os.path.isdir(stale):
            os.rmdir(stale)


def test_cgroup_text_parsing():
    mountinfo = ("31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
                 "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    assert cgroup.cgroup2_mount(mountinfo) == "/sys/fs/cgroup/unified"
    assert cgroup.cgroup2_mount("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n") is None
    assert cgroup.own_cgroup("1:cpu:/\n0::/user.slice/session-1.scope\n") == "/user.slice/session-1.scope"


def test_the_launchers_syscalls_before_the_exec_are_not_the_targets():
    # strace attaches while the launcher waits at its gate: what it does until its first
    # successful execve (finishing the read, closing the gate, a failed PATH search) is capprobe's.
    from capprobe.facts.decode import collect_strace
    c = collect_strace([line + "\n" for line in [
        '700 1.000000 restart_syscall(<... resuming interrupted read ...>) = 1',
        '700 1.000100 close(4</dev/pts/0>) = 0',
        '700 1.000200 openat(AT_FDCWD</>, "/etc/launcher-only", O_RDONLY) = 3</etc/launcher-only>',
        '700 1.000300 execve("/nonexistent/true", ["true"], 0x7ffd /* 3 vars */) = -1 ENOENT (No such file or directory)',
        '700 1.000400 execve("/bin/true", ["true"], 0x7ffd /* 3 vars */) = 0',
        '700 1.000500 openat(AT_FDCWD</>, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3</etc/ld.so.cache>',
        '700 1.000600 +++ exited with 0 +++',
    ]], attached=True)
    p = c.sections()
    assert set(p["syscalls"]) == {"execve", "openat"} and p["syscalls"]["execve"]["count"] == 1
    assert [f["path"] for f in p["files"]] == ["/bin/true", "/etc/ld.so.cache"]
    assert c.is_reported(700) and c.procs[700].exit_status == 0
