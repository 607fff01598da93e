"""`capprobe run` on real programs, real strace, real kernel."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from capprobe.paths import decode_path

from conftest import SYSTEM_PYTHON, capprobe, file_entry, load, needs_root, needs_strace

pytestmark = needs_strace


def test_exit_status_is_the_targets(tmp_path):
    r = capprobe("run", "-q", "-o", str(tmp_path / "p.json"), "--", "sh", "-c", "exit 7")
    assert r.returncode == 7, r.stderr
    assert load(tmp_path / "p.json")["run"]["exit_status"] == 7


def test_missing_command_is_one_line_and_127(tmp_path):
    r = capprobe("run", "-o", str(tmp_path / "p.json"), "--", "no-such-cmd")
    assert r.returncode == 127
    assert r.stderr.strip().count("\n") == 0 and "no-such-cmd" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "p.json").exists()


def test_death_by_signal_is_128_plus_n(tmp_path):
    r = capprobe("run", "-q", "-o", str(tmp_path / "p.json"), "--", "sh", "-c", "kill -KILL $$")
    assert r.returncode == 128 + 9
    assert load(tmp_path / "p.json")["run"]["exit_signal"] == "SIGKILL"


def test_duration_ends_a_long_running_target(tmp_path):
    start = time.monotonic()
    r = capprobe("run", "-q", "--duration", "2", "-o", str(tmp_path / "p.json"), "--", "sleep", "100")
    elapsed = time.monotonic() - start
    assert 1.5 < elapsed < 10, elapsed
    assert r.returncode == 128 + signal.SIGTERM
    p = load(tmp_path / "p.json")
    assert p["run"]["ended_by"] == "duration" and p["processes"][0]["exe"].endswith("/sleep")


def test_duration_kills_a_target_that_ignores_sigterm(tmp_path):
    start = time.monotonic()
    r = capprobe("run", "-q", "--duration", "1", "--grace", "1", "-o", str(tmp_path / "p.json"),
                 "--", "sh", "-c", "trap '' TERM; sleep 60 & wait; sleep 60")
    assert time.monotonic() - start < 15
    assert r.returncode == 128 + signal.SIGKILL
    assert not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "60"]]


def test_sigterm_to_capprobe_is_forwarded_and_profile_still_written(tmp_path):
    marker = tmp_path / "got-term"
    script = (f"import signal, sys, time\n"
              f"def bye(*_):\n open({str(marker)!r}, 'w').write('x'); sys.exit(0)\n"
              f"signal.signal(signal.SIGTERM, bye)\n"
              f"print('ready', flush=True)\n"
              f"time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-m", "capprobe", "run", "-q", "-o", str(tmp_path / "p.json"),
                             "--", SYSTEM_PYTHON, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert marker.exists()
    p = load(tmp_path / "p.json")
    assert p["run"]["ended_by"] == "SIGTERM"
    assert "create" in file_entry(p, str(marker))["ops"]


def test_capprobe_killed_leaves_target_running_not_stopped(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "capprobe", "run", "-q", "-o", str(tmp_path / "p.json"),
                             "--", "sleep", "37.5"])
    try:
        target = _wait_for(lambda: next((p for p in psutil.process_iter(["cmdline"])
                                         if p.info["cmdline"] == ["sleep", "37.5"]), None))
        proc.kill()
        proc.wait()
        time.sleep(1)
        status = Path(f"/proc/{target.pid}/status").read_text()
        assert "TracerPid:\t0" in status
        assert target.status() != psutil.STATUS_TRACING_STOP
    finally:
        for p in psutil.process_iter(["cmdline"]):
            if p.info["cmdline"] == ["sleep", "37.5"]:
                p.kill()
        # the dead session's tracefs instance is reclaimed by the next start
        from capprobe.tracing.tracefs import reclaim_stale_instances
        reclaim_stale_instances()
        assert not [d for d in os.listdir("/sys/kernel/tracing/instances") if d.startswith(f"capprobe-{proc.pid}-")]


def test_relative_file_operations_are_recorded_absolute():
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        out = os.path.join(work, "p.json")
        r = capprobe("run", "-q", "-o", out, "--", "sh", "-c",
                     "mkdir d && echo x > d/f && mv d/f d/g && rm d/g", cwd=work)
        assert r.returncode == 0, r.stderr
        p = load(out)
        d = f"{work}/d"
        assert "mkdir" in file_entry(p, d)["ops"]
        assert {"create", "rename_from"} <= set(file_entry(p, f"{d}/f")["ops"])
        assert {"rename_to", "delete"} <= set(file_entry(p, f"{d}/g")["ops"])
        assert file_entry(p, f"{d}/g")["renamed_from"] == [f"{d}/f"]
        assert file_entry(p, f"{d}/g")["ops"]["delete"]["by"] == ["/usr/bin/rm"]


NET_SCRIPT = """
import socket, sys
role = sys.argv[1]
if role == "tcp":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 8080)); s.listen()
    n = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
else:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("", 51840))
    x = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); x.bind(sys.argv[2])
"""


def test_network_facts_with_the_executable_that_did_each(tmp_path):
    script = tmp_path / "net.py"
    script.write_text(NET_SCRIPT)
    sock = tmp_path / "s.sock"
    r = capprobe("run", "-q", "-o", str(tmp_path / "p.json"), "--", "sh", "-c",
                 f"{SYSTEM_PYTHON} {script} tcp & {SYSTEM_PYTHON} {script} udp {sock}; wait")
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    net = p["network"]
    fams = {(s["family"], s["type"], s["protocol"]) for s in net["sockets"]}
    assert ("AF_NETLINK", "SOCK_RAW", "NETLINK_ROUTE") in fams
    assert ("AF_UNIX", "SOCK_DGRAM", "0") in fams
    binds = {(b["family"], b["type"], b["address"], b["port"]) for b in net["binds"]}
    assert ("AF_INET", "SOCK_STREAM", "127.0.0.1", 8080) in binds
    assert ("AF_INET", "SOCK_DGRAM", "0.0.0.0", 51840) in binds
    assert ("AF_UNIX", None, str(sock), None) in {(b["family"], None, b["address"], b.get("port")) for b in net["binds"]}
    assert all(b["by"] == [SYSTEM_PYTHON] for b in net["binds"])
    pythons = [x for x in p["processes"] if x["exe"] == SYSTEM_PYTHON]
    assert len(pythons) == 2 and all(x["ppid"] == p["processes"][0]["pid"] for x in pythons)


HOSTILE = b"evil\nExecStartPre=sh -c x %h \"q\" \\ \xff.txt"


def test_hostile_file_name_round_trips_byte_exact(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    r = capprobe("run", "-q", "-o", str(tmp_path / "p.json"), "--", SYSTEM_PYTHON, "-c",
                 f"import os; os.close(os.open({HOSTILE!r}, os.O_WRONLY|os.O_CREAT, 0o600))",
                 cwd=work)
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    wanted = os.fsencode(str(work)) + b"/" + HOSTILE
    paths = [decode_path(f["path"]) for f in p["files"]]
    assert wanted in paths
    assert os.path.exists(wanted)


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx-light not installed (.ci/run installs it)")
@needs_root
def test_nginx_foreground_with_one_request(tmp_path):
    _require_free_port(80)
    proc = subprocess.Popen([sys.executable, "-m", "capprobe", "run", "-q", "--duration", "4",
                             "-o", str(tmp_path / "p.json"), "--", "nginx", "-g", "daemon off;"])
    body = _wait_for(lambda: _http_get("http://127.0.0.1/"), timeout=15)
    assert body is not None
    assert proc.wait(timeout=60) == 0  # nginx exits 0 on SIGTERM
    p = load(tmp_path / "p.json")
    binds = {(b["family"], b["port"]) for b in p["network"]["binds"]}
    assert ("AF_INET", 80) in binds
    calls = [c["call"] for x in p["processes"] for c in x["identity_changes"]]
    assert "setuid" in calls and "setgid" in calls
    changes = [c for x in p["processes"] for c in x["identity_changes"] if c["call"] == "setuid"]
    www = str(__import__("pwd").getpwnam("www-data").pw_uid)
    assert changes[0]["args"] == www and changes[0]["result"] == 0
    written = {f["path"] for f in p["files"] if {"write", "create"} & set(f["ops"])}
    assert "/run/nginx.pid" in written
    assert any(w.startswith("/var/log/nginx/") for w in written)
    assert p["network"]["accepts"], "the request's accept() should be recorded"


def test_existing_profile_is_not_overwritten_without_force(tmp_path):
    out = tmp_path / "p.json"
    out.write_text("precious")
    r = capprobe("run", "-o", str(out), "--", "true")
    assert r.returncode != 0 and "--force" in r.stderr and "Traceback" not in r.stderr
    assert out.read_text() == "precious"
    r = capprobe("run", "-q", "--force", "-o", str(out), "--", "true")
    assert r.returncode == 0 and load(out)["schema"] == "capprobe/profile/v1"


def test_output_path_with_newline_is_refused(tmp_path):
    r = capprobe("run", "-o", str(tmp_path / "a\nb.json"), "--", "true")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1


def test_show_summarises_and_rejects_corrupt_profiles(tmp_path):
    out = tmp_path / "p.json"
    assert capprobe("run", "-q", "-o", str(out), "--", "sh", "-c", "echo hi > /dev/null").returncode == 0
    shown = capprobe("show", str(out))
    assert shown.returncode == 0 and "Processes" in shown.stdout and "/usr/bin/sh" in shown.stdout
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "capprobe/profile/v1", "host": ')
    r = capprobe("show", str(bad))
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = capprobe("show", str(tmp_path / "missing.json"))
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1


def _wait_for(fn, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    return None


def _http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.read() or b"empty"
    except OSError:
        return None


def _require_free_port(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            pytest.fail(f"port {port} is busy on this machine; the nginx test needs it")


def test_sigint_to_capprobe_reaches_the_target(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "capprobe", "run", "-q", "--no-unit", "-o", str(tmp_path / "p.json"),
                             "--", SYSTEM_PYTHON, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    # python dies of the forwarded SIGINT (KeyboardInterrupt, then re-raised): 128+2
    assert proc.wait(timeout=30) == 128 + signal.SIGINT
    p = load(tmp_path / "p.json")
    assert p["run"]["ended_by"] == "SIGINT" and p["run"]["exit_signal"] == "SIGINT"


def test_without_strace_one_line_and_nonzero(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink("/bin/true", bin_dir / "true")
    env = {**os.environ, "PATH": str(bin_dir)}
    r = capprobe("run", "-o", str(tmp_path / "p.json"), "--", "true", env=env)
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "strace" in r.stderr
    assert not (tmp_path / "p.json").exists()


@needs_root
def test_where_the_kernel_probe_cannot_run_capabilities_are_inferred_and_the_profile_says_so(tmp_path):
    # A pid namespace is such a place (tracefs filters by host pids): capprobe must say so and infer.
    out = tmp_path / "p.json"
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "capprobe", "run",
                        "--no-unit", "-o", str(out), "--", SYSTEM_PYTHON, "-c",
                        "import socket; socket.socket().bind(('127.0.0.1', 82))"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    p = load(out)
    assert p["capabilities"]["method"] == "inferred"
    assert "pid namespace" in p["capabilities"]["why_no_kernel_probe"]
    assert "inferred from syscalls" in r.stderr
    assert p["capabilities"]["required"] == ["CAP_NET_BIND_SERVICE"]
