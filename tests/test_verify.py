"""verify/tighten: attribution and relaxation (pure), and the honest refusal without systemd."""

from __future__ import annotations

import os

import pytest

from capprobe.rules.base import Directive
from capprobe.verify.attribute import Blame, allowed_by_filter, blame_from_status, blame_from_trace, relax_unit_text
from capprobe.verify.tighten import traced_rerun_text, unit_settings

from conftest import capprobe

GROUPS = {"@system-service": frozenset({"read", "write", "openat", "bind"}), "@default": frozenset({"exit"}),
          "@privileged": frozenset({"chown", "setuid"}), "@clock": frozenset({"settimeofday"})}
BY = {"count": 2, "first_seen": 1.0, "by": ["/usr/bin/svc"]}


def unit() -> list[Directive]:
    return [
        Directive("ExecStart", (b"/usr/bin/svc",), "traced", hardening=False),
        Directive("CapabilityBoundingSet", (), "none"),
        Directive("ReadWritePaths", (b"/srv/data",), "writes"),
        Directive("RestrictAddressFamilies", ("AF_INET",), "sockets"),
        Directive("SystemCallFilter", ("@system-service",), "allow"),
        Directive("SystemCallFilter", ("~@privileged",), "deny"),
        Directive("SystemCallFilter", ("~@clock",), "deny"),
        Directive("SocketBindAllow", ("tcp:8080",), "bind"),
        Directive("SocketBindDeny", ("any",), "bind"),
    ]


def test_status_codes_and_sigsys_name_the_directive():
    assert blame_from_status("exited", 218).directive == "CapabilityBoundingSet"
    assert blame_from_status("exited", 226).directive == "ReadWritePaths"
    assert blame_from_status("killed", 31).directive == "SystemCallFilter"
    assert blame_from_status("exited", 1) is None


def test_allowed_set_replays_filter_lines_in_order():
    allowed = allowed_by_filter(unit(), GROUPS)
    assert {"read", "bind", "exit"} <= allowed and not allowed & {"chown", "settimeofday"}


def test_trace_failures_point_at_one_directive_each():
    traced = {
        "files": [{"path": "/srv/other/new.db", "ops": {}, "failed": [
            {"op": "create", "errno": "EROFS", **BY}, {"op": "truncate", "errno": "EROFS", **BY}]}],
        "network": {"socket_failures": [{"family": "AF_NETLINK", "type": "SOCK_RAW", "protocol": "0",
                                         "errno": "EAFNOSUPPORT", **BY}],
                    "binds": [{"family": "AF_INET", "type": "SOCK_STREAM", "address": "0.0.0.0", "port": 9090,
                               "errno": "EPERM", **BY}]},
        "syscalls": {"read": {"count": 3}, "chown": {"count": 1, "errors": {"EPERM": 1}}},
        "capabilities": {"uses": [{"capability": "CAP_NET_BIND_SERVICE", "status": "denied",
                                   "reason": "bind to a port below 1024"}]},
    }
    blames = blame_from_trace(traced, allowed_by_filter(unit(), GROUPS), {"AF_INET"}, {"tcp:8080"})
    got = {(b.directive, b.item) for b in blames}
    assert got == {("ReadWritePaths", "/srv/other"), ("RestrictAddressFamilies", "AF_NETLINK"),
                   ("SocketBindAllow", "tcp:9090"), ("SystemCallFilter", "chown"),
                   ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE")}


UNIT_TEXT = """[Unit]
Description=svc
[Service]
User=svc
ExecStart=/usr/bin/svc
CapabilityBoundingSet=
ProtectSystem=strict
ReadWritePaths=/srv/data
RestrictAddressFamilies=AF_INET
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallFilter=~@clock
SocketBindAllow=tcp:8080
SocketBindDeny=any
"""


def settings_of(text):
    return [(k, v) for k, v in unit_settings(text)]


def test_relax_opens_exactly_the_one_item():
    base = settings_of(UNIT_TEXT)
    text, what = relax_unit_text(UNIT_TEXT, Blame("SystemCallFilter", "chown", "chown() refused"), GROUPS)
    got = settings_of(text)
    assert ("SystemCallFilter", "@system-service chown") in got
    assert ("SystemCallFilter", "~@privileged") not in got   # it would take chown away again
    assert ("SystemCallFilter", "~@clock") in got            # untouched
    assert "chown" in what and "# relaxed by capprobe tighten: chown() refused" in text
    text, _ = relax_unit_text(UNIT_TEXT, Blame("ReadWritePaths", "/srv/other dir", "EROFS"))
    assert [v for k, v in settings_of(text) if k == "ReadWritePaths"] == ["/srv/data", '"/srv/other dir"']
    text, _ = relax_unit_text(UNIT_TEXT, Blame("CapabilityBoundingSet", "CAP_CHOWN", "EPERM"))
    got = settings_of(text)
    assert ("CapabilityBoundingSet", "CAP_CHOWN") in got and ("AmbientCapabilities", "CAP_CHOWN") in got
    # everything else is the same, in the same order
    assert [kv for kv in got if kv[0] not in ("CapabilityBoundingSet", "AmbientCapabilities")] == \
        [kv for kv in base if kv[0] != "CapabilityBoundingSet"]
    text, _ = relax_unit_text(UNIT_TEXT, Blame("SocketBindAllow", "tcp:9090", "EPERM"))
    assert [v for k, v in settings_of(text) if k == "SocketBindAllow"] == ["tcp:8080", "tcp:9090"]
    with pytest.raises(ValueError):
        relax_unit_text(UNIT_TEXT, Blame("RestrictAddressFamilies", "AF_INET", "already there"))
    with pytest.raises(ValueError):
        relax_unit_text(UNIT_TEXT, Blame("ProtectSystem", None, "vague"))
    hostile, _ = relax_unit_text(UNIT_TEXT, Blame("SocketBindAllow", "tcp:1", "x\nExecStartPre=/bin/sh -c evil"))
    assert "ExecStartPre" not in [k for k, _ in settings_of(hostile)]


def test_traced_rerun_keeps_the_sandbox_but_drops_the_filter():
    text = ("[Unit]\nDescription=x\n[Service]\nExecStart=/usr/bin/svc --a\nSystemCallFilter=@system-service\n"
            "SystemCallErrorNumber=EPERM\nProtectSystem=strict\n")
    rerun = unit_settings(traced_rerun_text(text, "/run/capprobe-trace-x"))
    keys = [k for k, _ in rerun]
    assert "SystemCallFilter" not in keys and ("ProtectSystem", "strict") in rerun
    (exec_start,) = [v for k, v in rerun if k == "ExecStart"]
    assert exec_start.startswith("/usr/bin/strace ") and exec_start.endswith("-- /usr/bin/svc --a")
    assert ("RuntimeDirectory", "capprobe-trace-x") in rerun


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="this host runs systemd: the refusal does not apply")
@pytest.mark.parametrize("args", [["verify", "/nonexistent.service"], ["tighten", "--", "/bin/true"]])
def test_without_systemd_verify_and_tighten_say_so_in_one_line(args):
    r = capprobe(*args)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "systemd as PID 1" in r.stderr
