"""`capprobe service`: what runs without systemd here (parsing the unit, the drop-ins, the
argument and error contract). The real round trip (nginx, caddy, a oneshot under systemd
252) is in vm-tests/ (service-nginx, service-caddy, service-oneshot)."""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from capprobe import service
from capprobe.notify import NotifyListener, forwarded_message
from capprobe.service import (ExecLine, ServiceError, exec_lines, hardening_lines, lifted_settings,
                              render_full_unit, render_profiling_dropin, refusal, sandboxed, unit_facts,
                              unit_name, wants_no_new_privileges, wrapper_command)

# `systemctl cat nginx.service` on Debian 12 (nginx-light 1.22), with an operator's drop-in
NGINX_CAT = """\
# /lib/systemd/system/nginx.service
[Unit]
Description=A high performance web server and a reverse proxy server

[Service]
Type=forking
PIDFile=/run/nginx.pid
ExecStartPre=/usr/sbin/nginx -t -q -g 'daemon on; master_process on;'
ExecStart=/usr/sbin/nginx -g 'daemon on; master_process on;'
ExecReload=/usr/sbin/nginx -g 'daemon on; master_process on;' -s reload
ExecStop=-/sbin/start-stop-daemon --quiet --stop --retry QUIT/5 --pidfile /run/nginx.pid
TimeoutStopSec=5
KillMode=mixed

[Install]
WantedBy=multi-user.target

# /etc/systemd/system/nginx.service.d/override.conf
[Service]
Environment=VT_A=1
LimitNOFILE=65536
ExecStartPre=
ExecStartPre=-/bin/echo \\
   checking
ExecStartPre=+/usr/sbin/nginx -t
"""

SHOW = {"Id": "nginx.service", "LoadState": "loaded", "ActiveState": "active", "Type": "forking",
        "User": "", "Group": "", "DynamicUser": "no", "PermissionsStartOnly": "no", "KillMode": "mixed",
        "TimeoutStopUSec": "5000000", "AmbientCapabilities": "", "CapabilityBoundingSet": "cap_chown cap_kill"}


def facts(**kw):
    return unit_facts({**SHOW, **kw})


def test_exec_lines_follow_resets_continuations_and_prefixes():
    lines = exec_lines(NGINX_CAT)
    assert [(x.kind, x.index, x.prefix) for x in lines] == [
        ("ExecStartPre", 0, "-"), ("ExecStartPre", 1, "+"), ("ExecStart", 0, ""), ("ExecReload", 0, "")]
    assert lines[0].command == "/bin/echo checking"  # joined as systemd joins a continuation
    assert lines[2].command == "/usr/sbin/nginx -g 'daemon on; master_process on;'"  # as written: systemd unquotes


def test_unit_names():
    assert unit_name("nginx") == "nginx.service"
    assert unit_name("getty@tty1.service") == "getty@tty1.service"
    for bad in ("../x", "-x", "a b", "x;y", ""):
        with pytest.raises(ServiceError):
            unit_name(bad)


def test_forking_dropin_makes_capprobe_the_notifying_main_process():
    text = render_profiling_dropin(facts(), exec_lines(NGINX_CAT), "/usr/bin/python3", Path("/var/lib/x"))
    keys = [line.split("=", 1)[0] for line in text.splitlines() if line and not line.startswith("#")]
    assert "Type=notify" in text and "PIDFile=\n" in text
    assert "KillMode=mixed" not in text  # already mixed: untouched
    assert f"TimeoutStopSec={service.MIN_STOP_SECONDS}s" in text  # 5 s would SIGKILL capprobe mid-write
    # each wrapped kind is reset first, then every command runs under capprobe, as root ('+')
    assert keys.count("ExecStart") == 2 and keys.count("ExecStartPre") == 3 and "ExecStop" not in keys
    assert ("ExecStartPre=-+/usr/bin/python3 -I -m capprobe service exec --keep-caps CAP_CHOWN,CAP_KILL "
            "nginx.service ExecStartPre 0 -- /bin/echo checking") in text
    # an original '+' command keeps all of root's capabilities
    assert "ExecStartPre=+/usr/bin/python3 -I -m capprobe service exec nginx.service ExecStartPre 1 -- " \
           "/usr/sbin/nginx -t" in text


def test_user_and_capabilities_follow_systemd_rules():
    caddy = facts(Id="caddy.service", Type="notify", User="caddy", Group="caddy",
                  AmbientCapabilities="cap_net_bind_service", KillMode="control-group")
    start = ExecLine("ExecStart", 0, "", "/usr/bin/caddy run")
    assert wrapper_command(start, caddy, "/py") == (
        "ExecStart=+/py -I -m capprobe service exec --user caddy --group caddy --keep-caps CAP_NET_BIND_SERVICE "
        "caddy.service ExecStart 0 -- /usr/bin/caddy run")
    text = render_profiling_dropin(caddy, [start], "/py", Path("/s"))
    assert "KillMode=mixed" in text and "Type=" not in text.replace("# ", "")
    # PermissionsStartOnly=: only ExecStart= gets User=; the others are outside the sandbox
    pso = facts(User="www-data", PermissionsStartOnly="yes")
    pre = ExecLine("ExecStartPre", 0, "", "/bin/true")
    assert "--user" not in wrapper_command(pre, pso, "/py") and not sandboxed(pre, pso)
    assert "--user www-data" in wrapper_command(start, pso, "/py") and sandboxed(start, pso)
    # a specifier in the interpreter's path must not be expanded by systemd
    assert "/opt/100%%/py" in wrapper_command(start, caddy, "/opt/100%/py")


# `systemctl cat caddy.service` on Debian 12 (caddy 2.6), with an operator's drop-in
CADDY_CAT = """\
# /lib/systemd/system/caddy.service
[Service]
Type=notify
User=caddy
ExecStart=/usr/bin/caddy run --environ --config /etc/caddy/Caddyfile
PrivateTmp=true
ProtectSystem=full
AmbientCapabilities=CAP_NET_BIND_SERVICE

# /etc/systemd/system/caddy.service.d/override.conf
[Service]
ProtectHome=no
NoNewPrivileges=yes
SystemCallFilter=@system-service
SystemCallFilter=
ReadOnlyPaths=/srv
"""


def test_the_confinement_a_plus_command_escapes_is_named():
    # '+' makes systemd skip these for capprobe and so for the target: start names them
    assert lifted_settings(CADDY_CAT) == ["PrivateTmp=true", "ProtectSystem=full", "ReadOnlyPaths=/srv"]
    assert lifted_settings(NGINX_CAT) == []
    assert wants_no_new_privileges(CADDY_CAT) and not wants_no_new_privileges(NGINX_CAT)


def test_no_new_privileges_is_passed_to_the_commands_the_unit_confines():
    caddy = facts(Id="caddy.service", Type="notify", User="caddy", Group="caddy")
    start = ExecLine("ExecStart", 0, "", "/usr/bin/caddy run")
    text = render_profiling_dropin(caddy, [start, ExecLine("ExecStartPre", 0, "+", "/bin/true")], "/py",
                                   Path("/s"), no_new_privileges=True)
    assert "service exec --user caddy --group caddy --no-new-privileges " in text
    assert "ExecStartPre 0 -- /bin/true" in text and "--no-new-privileges caddy.service ExecStartPre" not in text


def test_refusals_are_one_line_reasons():
    assert "unknown unit" in refusal(facts(LoadState="not-found"), [])
    assert "DynamicUser" in refusal(facts(DynamicUser="yes"), exec_lines(NGINX_CAT))
    assert "no ExecStart" in refusal(facts(), [])
    assert "'@'" in refusal(facts(), [ExecLine("ExecStart", 0, "@", "/bin/x y")])
    assert refusal(facts(), exec_lines(NGINX_CAT)) is None


SYNTHESIZED = """\
[Unit]
Description=nginx (hardened by capprobe)

[Service]
LimitNOFILE=100
# a long-running process
Type=exec
# the traced command line
ExecStart=/usr/sbin/nginx -g "daemon on;"
User=root
# nothing under /home
ProtectHome=yes
# sockets created: AF_INET
RestrictAddressFamilies=AF_INET AF_UNIX

[Install]
WantedBy=multi-user.target
"""


def test_hardening_keeps_only_sandboxing_with_its_evidence():
    assert hardening_lines(SYNTHESIZED, facts()) == [
        "# nothing under /home", "ProtectHome=yes", "# sockets created: AF_INET", "RestrictAddressFamilies=AF_INET AF_UNIX"]
    # a User= unit gets its capabilities through the ambient set; a root unit needs no such line
    with_ambient = SYNTHESIZED.replace("ProtectHome=yes\n", "ProtectHome=yes\nAmbientCapabilities=CAP_KILL\n")
    assert "AmbientCapabilities=CAP_KILL" not in hardening_lines(with_ambient, facts())
    assert "AmbientCapabilities=CAP_KILL" in hardening_lines(with_ambient, facts(User="www-data"))
    full = render_full_unit(SYNTHESIZED, NGINX_CAT, facts())
    assert "Type=forking" in full and "PIDFile=/run/nginx.pid" in full and "Environment=VT_A=1" in full
    # resource limits are how it runs, not confinement: the unit's, never the synthesized one's
    assert "LimitNOFILE=65536" in full and "LimitNOFILE=100" not in full
    assert "Type=exec" not in full and "User=root" not in full and "ProtectHome=yes" in full
    assert full.index("[Service]") < full.index("ProtectHome=yes") < full.index("[Install]")
    # the unit's own ordering and install lines, not the synthesized ones' guesses
    assert "[Unit]\nDescription=nginx (hardened by capprobe)\n" in full and "Description=A high" not in full
    assert full.endswith("[Install]\nWantedBy=multi-user.target\n")


def test_root_with_every_capability_needs_no_keep_caps():
    from capprobe.capabilities import CAP_NAMES
    everything = facts(CapabilityBoundingSet=" ".join(c.lower() for c in CAP_NAMES))
    assert "--keep-caps" not in wrapper_command(ExecLine("ExecStart", 0, "", "/bin/x"), everything, "/py")


def test_forwarded_notify_keeps_capprobe_the_main_pid():
    assert forwarded_message(b"READY=1\nMAINPID=42\nSTATUS=up\n") == b"READY=1\nSTATUS=up"


def test_forwarded_notify_passes_only_state_and_liveness():
    # systemd >= 254 takes NOTIFYACCESS= from the main process: forwarded as capprobe's, it would
    # let the service widen who may notify, then send MAINPID= itself
    sent = b"NOTIFYACCESS=all\nFDSTORE=1\nX_NEW_ASSIGNMENT=1\nWATCHDOG=1\nEXTEND_TIMEOUT_USEC=5000000\n"
    assert forwarded_message(sent) == b"WATCHDOG=1\nEXTEND_TIMEOUT_USEC=5000000"


def test_listener_forwards_the_targets_messages_to_systemds_socket():
    """A real datagram path: target -> capprobe's socket -> 'systemd' (an abstract socket here)."""
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"capprobe-test-systemd-{os.getpid()}"
    systemd.bind("\0" + name)
    systemd.settimeout(5)
    listener = NotifyListener(lambda pid: True, forward_to="@" + name)
    try:
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.sendto(b"READY=1\nMAINPID=1", "\0" + listener.address[1:])
        assert systemd.recv(4096) == b"READY=1"
    finally:
        listener.close()
        systemd.close()
    assert listener.received[0]["words"] == ["READY=1", "MAINPID=1"]  # the profile records all of it


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "capprobe", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="checks the answer on a host without systemd")
def test_without_systemd_each_subcommand_says_so_in_one_line():
    for args in (["start", "nginx"], ["finish", "nginx"], ["finish", "nginx", "--apply"]):
        r = _cli("service", *args)
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr.count("\n") == 1 and "service needs systemd as PID 1" in r.stderr


def test_exec_outside_a_started_service_is_one_line(tmp_path, monkeypatch):
    r = _cli("service", "exec", "vt-never-started-unit.service", "ExecStart", "0", "--", "/bin/true")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is not being profiled" in r.stderr


def test_output_files_are_never_overwritten_without_force(tmp_path):
    (tmp_path / "nginx.service").write_text("mine\n")
    with pytest.raises(ServiceError, match="exists; use --force"):
        service.output_paths(tmp_path, "nginx", force=False)
    assert service.output_paths(tmp_path, "nginx", force=True).unit == tmp_path / "nginx.service"
    with pytest.raises(ServiceError, match="not a directory"):
        service.output_paths(tmp_path / "missing", "nginx", force=True)


def test_collect_profiles_labels_runs_and_leaves_out_unconfined_commands(tmp_path):
    def result(stamp, kind, index, **kw):
        (tmp_path / f"{kind}-{index}-{stamp}.result.json").write_text(json.dumps(
            {"kind": kind, "index": index, **kw}))
    result(3, "ExecReload", 0, error="capprobe: strace is not installed", exit_code=2)
    result(1, "ExecStartPre", 0, profile="x.profile.json", exit_code=0)
    result(2, "ExecStartPre", 1, profile="y.profile.json", exit_code=0)
    profiles, labels, problems = service.collect_profiles(tmp_path, lambda kind, index: index == 0)
    assert profiles == [] and labels == []  # x.profile.json does not exist: a problem line, not a crash
    assert problems[0].startswith("ExecStartPre[0]: ") and "outside the sandbox" in problems[1]
    assert problems[2] == "ExecReload[0]: strace is not installed"


NOTIFY_TARGET = ("import os, socket; a = os.environ['NOTIFY_SOCKET']; "
                 "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1\\nMAINPID=1', "
                 "'\\0' + a[1:] if a[0] == '@' else a)")


@pytest.fixture
def fake_unit():
    """A state directory as `service start` leaves it, and a socket standing in for systemd's."""
    name = f"capprobe-test-{os.getpid()}.service"
    state = service.state_dir(name)
    made = [d for d in (state.parent.parent, state.parent) if not d.exists()]  # left as found
    (state / "profiles").mkdir(parents=True)
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = f"capprobe-test-systemd-{os.getpid()}"
    systemd.bind("\0" + address)
    systemd.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    systemd.settimeout(20)

    def with_type(unit_type):
        (state / "state.json").write_text(json.dumps({"facts": {"type": unit_type}}))
        return name
    try:
        yield with_type, state, systemd, "@" + address
    finally:
        systemd.close()
        shutil.rmtree(state, ignore_errors=True)
        for d in reversed(made):
            d.rmdir()


def _exec(name, address, *command, options=()):
    env = dict(os.environ, NOTIFY_SOCKET=address, VT_SECRET="hunter2", WATCHDOG_PID="1")
    return subprocess.Popen([sys.executable, "-m", "capprobe", "service", "exec", "--keep-caps", "none",
                             *options, name, "ExecStart", "0", "--", *command], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _sender(systemd):
    data, anc, _, _ = systemd.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = next(struct.unpack("iII", d[:12])[0] for level, kind, d in anc if kind == socket.SCM_CREDENTIALS)
    return data, pid


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("strace"), reason="needs root and strace (ptrace)")
def test_exec_forwards_ready_from_its_own_pid_and_keeps_secrets_out(fake_unit):
    with_type, state, systemd, address = fake_unit
    p = _exec(with_type("notify"), address, sys.executable, "-c", NOTIFY_TARGET)
    data, pid = _sender(systemd)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert data == b"READY=1" and pid == p.pid  # from capprobe, the unit's main process; no MAINPID=
    (profile_file,) = (state / "profiles").glob("*.profile.json")
    text = profile_file.read_text()
    profile = json.loads(text)
    assert "hunter2" not in text and profile["run"]["environment"] == {}
    assert "VT_SECRET" in profile["run"]["service"]["environment_names"]
    assert "WATCHDOG_PID" not in profile["run"]["service"]["environment_names"]  # would name capprobe's pid
    assert [n["words"] for n in profile["run"]["notifications"]] == [["READY=1", "MAINPID=1"]]
    result = json.loads(next((state / "profiles").glob("*.result.json")).read_text())
    assert result["exit_code"] == 0 and result["kind"] == "ExecStart"


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("strace"), reason="needs root and strace (ptrace)")
def test_exec_of_a_forking_command_says_ready_when_it_forked(fake_unit):
    """Type=forking: READY=1 once the command's own process exited 0, while its daemon still runs
    (and capprobe with it, until the daemon ends)."""
    with_type, state, systemd, address = fake_unit
    p = _exec(with_type("forking"), address, "/bin/sh", "-c", "sleep 3 & exit 0")
    data, pid = _sender(systemd)
    assert data.startswith(b"READY=1\n") and pid == p.pid
    assert p.poll() is None  # the daemon (sleep) still runs: capprobe stays in the foreground
    p.communicate(timeout=60)
    assert p.returncode == 0


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("strace"), reason="needs root and strace (ptrace)")
def test_exec_keeps_the_units_no_new_privileges(fake_unit):
    """The drop-in's '+' lifts NoNewPrivileges= for capprobe: it sets it again for the target."""
    with_type, state, systemd, address = fake_unit
    probe = "grep NoNewPrivs /proc/self/status"
    for options, expected in (((), "0"), (("--no-new-privileges",), "1")):
        p = _exec(with_type("simple"), address, "/bin/sh", "-c", probe, options=options)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert out.split() == ["NoNewPrivs:", expected]
    profiles = sorted((state / "profiles").glob("*.profile.json"))
    labels = [json.loads(f.read_text())["run"]["caps_at_start"].get("no_new_privileges") for f in profiles]
    assert sorted(labels, key=str) == [None, True]
