"""`capprobe attach PID`: real daemons already running, followed, then left running untouched.

Each test starts the target itself (its own session, outside capprobe), attaches, drives
requests, detaches, and checks that the target still serves, is traced by nobody, is not
stopped, kept its cgroup, and that the profile holds what happened after the attach and
says what the attach could not see.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import SYSTEM_PYTHON, capprobe, load, needs_root, needs_strace

pytestmark = [needs_strace, needs_root]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def wait_serving(url: str, proc: subprocess.Popen, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the target exited ({proc.returncode}) before serving {url}")
        try:
            http_get(url, timeout=0.5)
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"nothing answered on {url}")


def tasks_state(pid: int) -> dict[int, tuple[str, int]]:
    """tid -> (state letter, TracerPid) of every task of PID and its descendants."""
    out = {}
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for tid in os.listdir(f"/proc/{p.pid}/task"):
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{p.pid}/task/{tid}/status").read_text().splitlines())
            out[int(tid)] = (fields["State"].split()[0], int(fields["TracerPid"]))
    return out


class Attached:
    """`capprobe attach` in the background; returns once it says it has attached."""

    def __init__(self, pid: int, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "capprobe", "attach", str(pid), *args],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.stderr = []
        for line in self.proc.stderr:
            self.stderr.append(line)
            if "attached to pid" in line:
                return
        self.proc.wait()
        pytest.fail("capprobe attach ended before attaching:\n" + "".join(self.stderr))

    def wait(self, timeout: float = 60) -> int:
        rest = self.proc.communicate(timeout=timeout)[1]
        self.stderr.append(rest)
        return self.proc.returncode

    @property
    def text(self) -> str:
        return "".join(self.stderr)


def nginx_conf(d: Path, port: int) -> Path:
    temp = [d / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")]
    (d / "www").mkdir()
    (d / "www" / "index.html").write_text("hello\n")
    conf = d / "nginx.conf"
    conf.write_text(
        f"user www-data;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nworker_processes 2;\n"
        "events { worker_connections 64; }\nhttp {\n" f"  access_log {d}/access.log;\n"
        + "".join(f"  {t.name}_temp_path {t};\n".replace("body_temp", "client_body_temp") for t in temp)
        + f"  server {{ listen 127.0.0.1:{port}; root {d}/www; }}\n}}\n")
    for path in (d, d / "www", d / "www" / "index.html"):
        path.chmod(0o755)
    return conf


@pytest.fixture
def workdir():
    """Outside /tmp (a shared /tmp changes the unit) and readable by www-data."""
    d = Path(subprocess.check_output(["mktemp", "-d", "-p", "/var/tmp", "capprobe-attach-XXXXXX"], text=True).strip())
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def running():
    """Start a target in a session of its own; kill its whole tree at the end."""
    started = []

    def start(argv, **kw):
        proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.mark.skipif(not os.path.exists("/usr/sbin/nginx"), reason="nginx-light not installed (.ci/run installs it)")
def test_attach_to_running_nginx_records_what_follows_and_leaves_it_serving(workdir, running):
    port = free_port()
    conf = nginx_conf(workdir, port)
    nginx = running(["/usr/sbin/nginx", "-g", "daemon off; master_process on;", "-c", str(conf)])
    url = f"http://127.0.0.1:{port}/"
    wait_serving(url, nginx)
    workers = [c.pid for c in psutil.Process(nginx.pid).children()]
    assert len(workers) == 2
    cgroup_before = Path(f"/proc/{nginx.pid}/cgroup").read_text()

    out = workdir / "nginx.profile.json"
    attached = Attached(nginx.pid, "--duration", "3", "-o", str(out))
    for _ in range(5):
        assert http_get(url)[0] == 200
    assert http_get(url + "missing")[0] == 404
    assert attached.wait() == 0, attached.text

    # left as it was: serving, traced by nobody, no task stopped, same cgroup, same workers
    assert http_get(url) == (200, b"hello\n")
    states = tasks_state(nginx.pid)
    assert {tracer for _, tracer in states.values()} == {0}, states
    assert not [s for s, _ in states.values() if s in "tT"], states
    assert Path(f"/proc/{nginx.pid}/cgroup").read_text() == cgroup_before
    assert sorted(c.pid for c in psutil.Process(nginx.pid).children()) == sorted(workers)

    p = load(out)
    run = p["run"]
    assert run["mode"] == "attach" and run["startup_seen"] is False and run["still_running"] is True
    assert run["ended_by"] == "duration" and run["main_pid"] == nginx.pid
    assert sorted(run["tracer"]["attached_to"]) == sorted([nginx.pid, *workers])
    # after the attach: the workers accepted on the port, read the page, appended to the log
    assert any(a["local"] == f"127.0.0.1:{port}" for a in p["network"]["accepts"]), p["network"]
    files = {f["path"]: f for f in p["files"]}
    assert "read" in files[f"{workdir}/www/index.html"]["ops"], files.keys()
    assert p["syscalls"]["openat"]["errors"] == {"ENOENT": 1}  # the request for /missing
    assert p["parser"]["unparsed"] == 0, p["parser"]
    # before the attach: read from /proc, kept apart from the traced facts
    before = run["before_attach"]
    bound = [s for s in before["bound_sockets"] if s.get("port") == port]
    assert bound and bound[0]["address"] == "127.0.0.1" and set(workers) <= set(bound[0]["pids"])
    assert not [b for b in p["network"]["binds"] if b.get("port") == port]  # the bind itself was not seen
    log = next(f for f in before["open_files"] if f["path"] == f"{workdir}/access.log")
    assert log["written"] and set(workers) <= set(log["pids"])
    users = {pr["pid"]: pr["uids"][1] for pr in before["processes"]}
    assert users[nginx.pid] == 0 and {users[w] for w in workers} == {33}  # www-data
    # the profile, the summary and the unit say what the attach could not see
    assert p["complete"] is False
    assert p["incomplete"][0].startswith(f"start-up not seen: capprobe attached to pid {nginx.pid}")
    assert any(line.startswith("SocketBindAllow=") and f"127.0.0.1:{port}" in line for line in p["incomplete"])
    assert any(line.startswith("ReadWritePaths=") and "access.log" in line for line in p["incomplete"])
    assert any(line.startswith("CapabilityBoundingSet=") for line in p["incomplete"])
    assert "start-up not seen" in attached.text
    # nginx shows "nginx: master process ..." as its command line: the unit runs the executable
    assert run["command"] == ["/usr/sbin/nginx"] and " ".join(run["before_attach"]["processes"][0]["argv"]).startswith("nginx: master process")
    assert any(line.startswith("ExecStart=: ") and "--exec" in line for line in p["incomplete"])
    assert "target still running (capprobe detached on duration)" in attached.text
    assert "shutdown: not exercised (capprobe detached on duration" in attached.text
    unit = (workdir / "nginx.service").read_text()
    assert "# WARNING: the profile is incomplete" in unit and "start-up not seen" in unit


@pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy not installed (Debian package caddy)")
def test_attach_to_running_caddy_follows_every_thread_and_detaches_on_sigint(workdir, running):
    port = free_port()
    caddyfile = workdir / "Caddyfile"
    caddyfile.write_text("{\n\tadmin off\n}\n" f"http://127.0.0.1:{port} {{\n\trespond \"ok\"\n}}\n")
    caddy = running(["caddy", "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
                    env={**os.environ, "HOME": str(workdir), "XDG_DATA_HOME": str(workdir), "XDG_CONFIG_HOME": str(workdir)})
    url = f"http://127.0.0.1:{port}/"
    wait_serving(url, caddy)
    threads = psutil.Process(caddy.pid).num_threads()
    assert threads > 1  # a Go program: several threads, any of which may serve the request

    out = workdir / "caddy.profile.json"
    attached = Attached(caddy.pid, "--no-unit", "-o", str(out))
    states = tasks_state(caddy.pid)
    assert len(states) >= threads and all(tracer not in (0, None) for _, tracer in states.values()), states
    for _ in range(10):
        assert http_get(url) == (200, b"ok")
    attached.proc.send_signal(signal.SIGINT)  # the operator's Ctrl-C: detach, not stop the target
    assert attached.wait() == 0, attached.text

    assert caddy.poll() is None and http_get(url) == (200, b"ok")
    states = tasks_state(caddy.pid)
    assert {tracer for _, tracer in states.values()} == {0} and not [s for s, _ in states.values() if s in "tT"]
    p = load(out)
    assert p["run"]["ended_by"] == "SIGINT" and p["run"]["still_running"] is True
    # Go listens dual-stack: the accepted connections show 127.0.0.1 as [::ffff:127.0.0.1]
    accepted = [a for a in p["network"]["accepts"] if a["local"].endswith(f"127.0.0.1]:{port}")]
    assert accepted and accepted[0]["count"] >= 10, p["network"]
    assert any(s.get("port") == port for s in p["run"]["before_attach"]["bound_sockets"])
    assert p["parser"]["unparsed"] == 0, p["parser"]


WORKLOAD = """
import os, subprocess, sys, threading, time
trigger, out = sys.argv[1], sys.argv[2]
def worker():  # a thread already running at attach time: a capability check, then a new child
    while not os.path.exists(trigger):
        time.sleep(0.05)
    open(out + ".given", "w").close()
    os.chown(out + ".given", 65534, 65534)  # root giving a file away: CAP_CHOWN
    subprocess.run(["/bin/sh", "-c", f"echo child > {out}.child"], check=True)
t = threading.Thread(target=worker)
t.start()
t.join()
with open(out + ".main", "w") as f:
    f.write("main")
"""


def test_attach_follows_threads_and_new_children_and_ends_with_the_target(workdir, running):
    trigger, out = workdir / "go", workdir / "out"
    target = running([SYSTEM_PYTHON, "-c", WORKLOAD, str(trigger), str(out)], cwd=str(workdir))
    time.sleep(0.5)
    profile = workdir / "p.json"
    attached = Attached(target.pid, "--no-unit", "-o", str(profile), "--duration", "30")
    trigger.write_text("")
    assert attached.wait() == 0, attached.text
    assert target.wait(timeout=10) == 0
    p = load(profile)
    assert p["run"]["ended_by"] == "exit" and p["run"]["still_running"] is False
    assert p["run"]["exit_status"] == 0
    files = {f["path"]: f["ops"] for f in p["files"]}
    assert "write" in files[f"{out}.child"] or "create" in files[f"{out}.child"], files
    assert "create" in files[f"{out}.main"] or "write" in files[f"{out}.main"], files
    execs = [e["path"] for pr in p["processes"] for e in pr["execs"]]
    assert "/bin/sh" in execs or "/usr/bin/sh" in execs, execs
    # the kernel probe followed the thread that was already running (not only the main one)
    assert "CAP_CHOWN" in p["capabilities"]["required"], p["capabilities"]
    # the attach-time process and the thread are known from /proc: their syscalls carry the executable
    assert p["processes"][0]["pid"] == target.pid and p["processes"][0]["exe"].endswith("python3.11")


def test_attach_refuses_bad_targets_in_one_line(running):
    r = capprobe("attach", "999999999")
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    r = capprobe("attach", str(os.getpid()))
    assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
    r = capprobe("attach", "1")
    assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
    sleeper = running(["sleep", "30"])
    strace = subprocess.Popen(["strace", "-o", "/dev/null", "-p", str(sleeper.pid)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "TracerPid:\t0" in Path(f"/proc/{sleeper.pid}/status").read_text():
            time.sleep(0.02)
        r = capprobe("attach", str(sleeper.pid))
        assert r.returncode == 1 and "already traced" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    finally:
        strace.terminate()
        strace.wait()


@pytest.mark.parametrize("command", [["run", "--no-unit", "--", "/bin/true"], ["attach", "{pid}"]])
def test_a_host_without_strace_is_told_what_to_install(tmp_path, running, command):
    sleeper = running(["sleep", "30"])
    argv = [a.format(pid=sleeper.pid) for a in command]
    r = capprobe(*argv, cwd=str(tmp_path), env={**os.environ, "PATH": str(tmp_path)})  # no strace on PATH
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "strace is not installed" in r.stderr and "apt-get install strace" in r.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_killed_capprobe_leaves_the_target_running_and_untraced(workdir, running):
    # strace dies with capprobe (PR_SET_PDEATHSIG); the kernel then detaches every task
    target = running([SYSTEM_PYTHON, "-c", "import time\nwhile True: time.sleep(0.01)"])
    attached = Attached(target.pid, "--no-unit", "-o", str(workdir / "p.json"))
    assert {tracer for _, tracer in tasks_state(target.pid).values()} != {0}
    attached.proc.kill()
    attached.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and {t for _, t in tasks_state(target.pid).values()} != {0}:
        time.sleep(0.05)
    states = tasks_state(target.pid)
    assert {tracer for _, tracer in states.values()} == {0} and not [s for s, _ in states.values() if s in "tT"]
    assert target.poll() is None
    assert not [p for p in psutil.process_iter(["name", "cmdline"])
                if p.info["name"] == "strace" and str(target.pid) in (p.info["cmdline"] or [])]


def test_a_tracer_stuck_detaching_is_killed_after_the_grace_and_says_so():
    """strace 6.1 can hang detaching from a vfork()ed task; attach and fast mode's switch both
    rely on detach() killing it (the kernel then lets go of the tasks) and reporting it."""
    from capprobe.tracing.strace import StraceProcess
    ignores_sigint = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print(flush=True); time.sleep(60)"
    stuck = StraceProcess([sys.executable, "-c", ignores_sigint], "/dev/fd/9", stdout=subprocess.PIPE)
    stuck.stdout.readline()  # SIGINT is ignored from here on
    stuck.detach(grace=0.3)
    assert stuck.wait(timeout=10) == -signal.SIGKILL
    assert "did not detach within" in stuck.stuck_detaching()
    stuck.stdout.close()
    polite = StraceProcess([sys.executable, "-c", "import time; time.sleep(60)"], "/dev/fd/9")
    time.sleep(0.5)
    polite.detach(grace=0.3)
    polite.wait(timeout=10)
    assert polite.stuck_detaching() is None
