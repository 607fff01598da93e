"""--exercise, the service paths a bare run shows (reload, log rotation, shutdown), --env -> Environment=.

Real runs of capprobe on real programs; the Environment= line is read back by systemd's own parser.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from capprobe.profile import shape_problem
from capprobe.render.summary import one_paragraph, render_summary
from capprobe.rules.base import RuleContext, UnitOptions
from capprobe.rules.process import exec_reload
from capprobe.synthesis import synthesize

from conftest import RECORDED, SYSTEM_PYTHON, WORKLOADS, capprobe, file_entry, load, needs_root, needs_strace
from test_profile_load import WRONG_VALUES, _field_paths
from test_quoting import dumped_field, needs_systemd, systemd_dump_unit, systemd_verify, unit_file

pytestmark = [needs_strace, needs_root]
REOPEN = str(WORKLOADS / "reopen_on_hup.py")


def test_an_exercised_reload_is_recorded_and_gives_exec_reload(tmp_path):
    log = tmp_path / "daemon.log"
    r = capprobe("run", "--duration", "4", "--exercise", "kill -HUP $MAINPID", "-o", str(tmp_path / "p.json"),
                 "--", SYSTEM_PYTHON, REOPEN, str(log))
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    (exercise,) = p["run"]["exercises"]
    assert exercise["command"] == "kill -HUP $MAINPID" and exercise["exit"] == 0
    assert exercise["target_alive_after"] is True and exercise["at"] > 0.5
    assert exercise["signals_to_target"] == [{"signal": "SIGHUP", "pid": p["run"]["main_pid"]}]
    assert [s["signal"] for s in p["run"]["signals_received"]] == ["SIGHUP"]
    assert log.read_text() == "started\nreopened\n"
    assert file_entry(p, str(log))["ops"]["create"]["count"] == 2  # the reload's reopen is in the profile
    unit = (tmp_path / "python3.service").read_text()
    assert "\nExecReload=/bin/sh -c \"kill -HUP $$MAINPID\"\n" in unit
    assert "reload: seen" in r.stderr and "log rotation: seen" in r.stderr and "shutdown: seen" in r.stderr


NGINX = "/usr/sbin/nginx"


@pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx-light not installed (.ci/run installs it)")
def test_nginx_reload_and_log_reopen_exercised(tmp_path):
    """A real daemon: HUP reloads it, USR1 after a rename reopens its logs, a client request is answered."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "nginx.conf"
    # every temp path of its own: nginx re-owns the compiled-in /var/lib/nginx/* to its worker user
    temps = "".join(f" {kind}_temp_path {tmp_path}/{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                         "uwsgi", "scgi"))
    conf.write_text(f"user www-data; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log; worker_processes 1;\n"
                    f"events {{}}\nhttp {{ access_log {tmp_path}/access.log;{temps}\n"
                    f"  server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }} }}\n")
    rotate = f"mv {tmp_path}/access.log {tmp_path}/access.log.1 && kill -USR1 $MAINPID"
    r = capprobe("run", "--duration", "7", "--exercise", "kill -HUP $MAINPID", "--exercise", rotate,
                 "--exercise", f"curl -sf http://127.0.0.1:{port}/", "-o", str(tmp_path / "p.json"),
                 "--", NGINX, "-c", str(conf), "-g", "daemon off;")
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    reload, rotation, request = p["run"]["exercises"]
    assert reload["signals_to_target"] == [{"signal": "SIGHUP", "pid": p["run"]["main_pid"]}]
    assert rotation["signals_to_target"] == [{"signal": "SIGUSR1", "pid": p["run"]["main_pid"]}]
    assert (request["exit"], request["output_bytes"]) == (0, 3)
    assert all(e["target_alive_after"] for e in (reload, rotation, request))
    assert file_entry(p, f"{tmp_path}/access.log")["ops"]["create"]["count"] >= 2  # reopened
    assert file_entry(p, f"{tmp_path}/access.log.1") is None  # the exercise's rename is not the daemon's
    assert "\nExecReload=/bin/sh -c \"kill -HUP $$MAINPID\"\n" in (tmp_path / "nginx.service").read_text()
    assert "log rotation: seen (SIGHUP/SIGUSR1 received" in r.stderr


def test_a_reload_the_target_did_not_survive_gives_no_exec_reload(tmp_path):
    # sleep has no SIGHUP handler: the exercised reload kills it
    r = capprobe("run", "--duration", "5", "--exercise", "kill -HUP $MAINPID", "-o", str(tmp_path / "p.json"),
                 "--", "/bin/sleep", "30")
    assert r.returncode == 129, r.stderr
    p = load(tmp_path / "p.json")
    (exercise,) = p["run"]["exercises"]
    assert exercise["signals_to_target"] == [{"signal": "SIGHUP", "pid": p["run"]["main_pid"]}]
    assert not exercise.get("target_alive_after")
    assert "ExecReload=" not in (tmp_path / "sleep.service").read_text()
    assert "killed by SIGHUP" in r.stderr


@needs_systemd
def test_reload_of_a_main_process_that_left_root_runs_with_full_privileges(tmp_path):
    """dnsmasq's main process drops to its own user: a reload inside the unit's bounding set (no
    CAP_KILL) fails with "kill: Operation not permitted" (vm-tests), so the unit uses "+"."""
    drops = ("import os, signal, time; signal.signal(signal.SIGHUP, lambda *a: None); "
             "signal.signal(signal.SIGTERM, lambda *a: os._exit(0)); "
             "os.setgid(65534); os.setuid(65534)\nwhile True: time.sleep(0.1)")
    r = capprobe("run", "--duration", "4", "--exercise", "kill -HUP $MAINPID", "-o", str(tmp_path / "p.json"),
                 "--", SYSTEM_PYTHON, "-c", drops)
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    assert p["run"]["exercises"][0]["target_alive_after"] is True
    unit = (tmp_path / "python3.service").read_text()
    (reload,) = [line for line in unit.splitlines() if line.startswith("ExecReload=")]
    assert reload == 'ExecReload=+/bin/sh -c "kill -HUP $$MAINPID"'
    assert "switched to uid 65534" in unit
    with unit_file("ExecStart=/bin/true\n" + reload + "\n") as path:
        assert systemd_verify(path) == (0, "")
        dump = systemd_dump_unit(path)
    # systemd stored "/bin/sh" as the executable: the "+" was taken as a prefix, not part of the path
    assert b'\t\t\tCommand Line: /bin/sh -c "kill -HUP \\$\\$MAINPID"' in dump


def test_exec_reload_needs_survival():
    run = {"main_pid": 7, "exercises": [{"command": "kill -HUP $MAINPID", "at": 1.0, "exit": 0,
                                         "signals_to_target": [{"signal": "SIGHUP", "pid": 7}]}]}
    ctx = RuleContext({"run": run}, UnitOptions())
    assert list(exec_reload(ctx)) == []
    run["exercises"][0]["target_alive_after"] = True
    (d,) = exec_reload(ctx)
    assert d.values == ("/bin/sh", "-c", b"kill -HUP $MAINPID") and "kill -HUP" in d.comment
    run["exercises"][0]["signals_to_target"] = [{"signal": "SIGHUP", "pid": 8}]  # a worker, not the main process
    assert list(exec_reload(ctx)) == []


def test_the_exercises_own_syscalls_stay_out_of_the_profile(tmp_path):
    marker = f"/tmp/capprobe-exercise-{uuid.uuid4().hex}"
    # a bind below 1024 as root asks the kernel for CAP_NET_BIND_SERVICE (a check the probe would see)
    privileged = f"{SYSTEM_PYTHON} -c 'import socket; socket.socket().bind((\"127.0.0.1\", 999))'"
    try:
        r = capprobe("run", "--duration", "3", "--exercise", f"touch {marker}; {privileged}",
                     "-o", str(tmp_path / "p.json"), "--", "/bin/sleep", "30")
        assert r.returncode == 143, r.stderr  # sleep dies of the SIGTERM that ends --duration
        p = load(tmp_path / "p.json")
        (exercise,) = p["run"]["exercises"]
        assert exercise["exit"] == 0
        assert os.path.exists(marker)  # it ran ...
        assert file_entry(p, marker) is None  # ... but outside the traced tree
        assert exercise["pid"] not in {proc["pid"] for proc in p["processes"]}
        assert {proc["exe"] for proc in p["processes"]} == {"/bin/sleep"}  # sleep alone: no sh, no touch
        assert p["capabilities"]["method"] != "inferred"  # the kernel probe watched
        assert not [u for u in p["capabilities"]["uses"] if u["capability"] == "CAP_NET_BIND_SERVICE"]
    finally:
        if os.path.exists(marker):
            os.unlink(marker)


def test_a_failed_exercise_is_loud_and_the_session_goes_on(tmp_path):
    r = capprobe("run", "--duration", "4", "--exercise", "echo broken; exit 3", "--exercise", "true",
                 "-o", str(tmp_path / "p.json"), "--", "/bin/sleep", "30")
    assert r.returncode == 143, r.stderr
    assert "EXERCISE FAILED: 'echo broken; exit 3' exited 3" in r.stderr
    first, second = load(tmp_path / "p.json")["run"]["exercises"]
    assert (first["exit"], first["output_bytes"], second["exit"]) == (3, 7, 0)
    assert "--exercise 'echo broken; exit 3' failed (exit 3)" in r.stderr
    assert "shutdown: seen (it died of SIGTERM" in r.stderr


def test_a_timeout_inside_an_exercise_stops_its_child(tmp_path):
    # capprobe blocks SIGTERM in its own threads, and the exercise is spawned with an empty mask.
    # (Debian's dash also clears its mask when it starts, so this holds even without that.)
    r = capprobe("run", "--duration", "6", "--exercise", "timeout 1 sleep 10", "-o", str(tmp_path / "p.json"),
                 "--", "/bin/sleep", "30")
    (exercise,) = load(tmp_path / "p.json")["run"]["exercises"]
    assert exercise["exit"] == 124 and exercise["seconds"] < 3, (exercise, r.stderr)


def test_a_plain_run_lists_the_paths_it_did_not_exercise(tmp_path):
    r = capprobe("run", "-o", str(tmp_path / "p.json"), "--", "/bin/true")
    assert r.returncode == 0, r.stderr
    for path in ("reload: not exercised", "log rotation: not exercised", "shutdown: not exercised"):
        assert path in r.stderr
    assert load(tmp_path / "p.json")["run"]["exercises"] == []
    shown = capprobe("show", str(tmp_path / "p.json")).stdout
    assert "reload: not exercised" in shown


@needs_systemd
def test_env_becomes_environment_that_systemd_reads_back_exactly(tmp_path):
    hostile = '50%"q\\$HOME\\'  # a specifier, a quote, backslashes, a dollar
    blanks = " it's \u202e é "  # blanks at both ends, a single quote, a bidi override, UTF-8
    r = capprobe("run", "--env", "FOO=bar", "--env", "X=a b", "--env", f"H={hostile}", "--env", "N=a\nb",
                 "--env", f"U={blanks}",
                 "--env", "PATH=/usr/bin:/bin", "-o", str(tmp_path / "p.json"), "--", "/bin/true")
    assert r.returncode == 0, r.stderr
    unit = (tmp_path / "true.service").read_text()
    environment = [line for line in unit.splitlines() if line.startswith("Environment=")]
    assert len(environment) == 1 and "N=" not in environment[0] and "PATH" not in environment[0]
    assert "N was given with --env" in unit and "EnvironmentFile=" in unit  # left out, and said so
    body = "ExecStart=/bin/true\n" + environment[0] + "\n"
    with unit_file(body) as path:
        assert systemd_verify(path) == (0, "")
        stored = dumped_field(systemd_dump_unit(path), b"Environment")
    assert stored == [b"FOO=bar", f"H={hostile}".encode(), f"U={blanks}".encode(), b"X=a b"]


def test_wrong_values_in_the_new_run_fields_are_refused_or_rendered():
    """run.environment / main_pid / signals_received / exercises, each field mutated: one line or a unit."""
    base = json.loads((RECORDED / "profile_python_net.json").read_text())
    base["run"].update(
        environment={"FOO": "bar", "B": "b64:/w=="}, main_pid=7,
        signals_received=[{"pid": 7, "signal": "SIGHUP", "from_pid": 9, "at": 1.0}],
        exercises=[{"command": "kill -HUP $MAINPID", "at": 1.0, "exit": 0, "pid": 9, "seconds": 0.01,
                    "output_bytes": 0, "signals_to_target": [{"signal": "SIGHUP", "pid": 7}],
                    "target_alive_after": True}])
    assert shape_problem(base) is None
    assert "ExecReload=" in synthesize(base, UnitOptions(name="svc"), score=False).unit_text
    rendered = 0
    for key in ("environment", "main_pid", "signals_received", "exercises"):
        for where in _field_paths(base["run"][key], ("run", key)):
            for wrong in WRONG_VALUES:
                mutated = copy.deepcopy(base)
                parent = mutated
                for step in where[:-1]:
                    parent = parent[step]
                parent[where[-1]] = wrong
                if shape_problem(mutated) is not None:
                    continue
                synthesize(mutated, UnitOptions(name="svc"), score=False)
                render_summary(mutated)
                one_paragraph(mutated, "p.json")
                rendered += 1
    assert rendered > 20


def test_notify_socket_cannot_be_passed_with_env(tmp_path):
    r = capprobe("run", "--env", "NOTIFY_SOCKET=/run/x", "-o", str(tmp_path / "p.json"), "--", "/bin/true")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "NOTIFY_SOCKET" in r.stderr
    assert not (tmp_path / "p.json").exists()


def test_a_sighup_to_capprobe_is_a_reload_not_a_stop(tmp_path):
    """Forwarded to the target like systemctl reload would; the run still ends by --duration."""
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen([sys.executable, "-m", "capprobe", "run", "-q", "--no-unit", "--duration", "4",
                             "-o", str(tmp_path / "p.json"), "--", SYSTEM_PYTHON, REOPEN, str(log)],
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    run = load(tmp_path / "p.json")["run"]
    assert run["ended_by"] == "duration"
    assert [s["signal"] for s in run["signals_received"]] == ["SIGHUP"]
    assert log.read_text() == "started\nreopened\n"
