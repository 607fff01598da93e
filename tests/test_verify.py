"""verify/tighten: attribution and relaxation (pure), and the honest refusal without systemd."""

from __future__ import annotations

import os

import pytest

from capprobe.rules.base import Directive
from capprobe.verify.attribute import Blame, allowed_by_filter, blame_from_status, blame_from_trace, relax
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
            {"op": "create", "errno": "EROFS", **BY}]}],
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


def test_relax_opens_exactly_the_one_item():
    base = unit()
    out, what = relax(base, Blame("SystemCallFilter", "chown", "chown() refused"), GROUPS)
    keys = [(d.key, d.values) for d in out]
    assert ("SystemCallFilter", ("@system-service", "chown")) in keys
    assert ("SystemCallFilter", ("~@privileged",)) not in keys  # it would take chown away again
    assert ("SystemCallFilter", ("~@clock",)) in keys           # untouched
    assert "chown" in what
    out, _ = relax(base, Blame("ReadWritePaths", "/srv/other", "EROFS"))
    assert [d.values for d in out if d.key == "ReadWritePaths"] == [(b"/srv/data", b"/srv/other")]
    out, _ = relax(base, Blame("CapabilityBoundingSet", "CAP_CHOWN", "EPERM"))
    assert [d.values for d in out if d.key == "CapabilityBoundingSet"] == [("CAP_CHOWN",)]
    out, _ = relax(base, Blame("SocketBindAllow", "tcp:9090", "EPERM"))
    assert [d.values for d in out if d.key == "SocketBindAllow"] == [("tcp:8080",), ("tcp:9090",)]
    # everything else is the same list, in the same order
    assert [d.key for d in out if d.key != "SocketBindAllow"] == [d.key for d in base if d.key != "SocketBindAllow"]
    with pytest.raises(ValueError):
        relax(base, Blame("RestrictAddressFamilies", "AF_INET", "already there"))
    with pytest.raises(ValueError):
        relax(base, Blame("ProtectSystem", None, "vague"))


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
