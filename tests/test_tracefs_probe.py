"""CapabilityProbe against real programs (needs root and the capability:cap_capable tracepoint)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import HeldChild

from capprobe.facts.capabilities import ADVISORY, classify, partition_uses
from capprobe.tracing import tracefs
from capprobe.tracing.tracefs import (
    INSTANCE_PREFIX, CapabilityProbe, ProbeUnavailable, ensure_tracefs,
)

PYTHON = "/usr/bin/python3"  # not the pyenv shim: it spawns bash scripts


def _probe_unavailable_reason():
    if os.geteuid() != 0:
        return "needs root for tracefs instances"
    try:
        ensure_tracefs()
    except ProbeUnavailable as error:
        return error.reason
    return None


_REASON = _probe_unavailable_reason()
needs_probe = pytest.mark.skipif(_REASON is not None, reason=f"capability probe unavailable: {_REASON}")
pytestmark = pytest.mark.root


def our_instances(owner: int | None = None):
    """Instances owned by this test process (or OWNER): other sessions may run on the machine."""
    prefix = f"{INSTANCE_PREFIX}{owner or os.getpid()}-"
    instances = tracefs.TRACEFS / "instances"
    return sorted(p.name for p in instances.iterdir() if p.name.startswith(prefix))


def run_under_probe(argv, user=None):
    child = HeldChild(argv, user=user)
    with CapabilityProbe(child.pid) as probe:
        child.release()
        returncode, output = child.wait()
    return child, probe, returncode, output


@pytest.fixture(autouse=True)
def no_instance_left_behind():
    yield
    if _REASON is None:
        assert our_instances() == []


@needs_probe
def test_bind_port_80_needs_net_bind_service_from_inet_bind():
    if int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 80:
        pytest.skip("ip_unprivileged_port_start <= 80: the kernel makes no check")
    code = "import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', 80))"
    child, probe, returncode, err = run_under_probe([PYTHON, "-c", code])
    assert returncode == 0, err
    uses = [classify(c) for c in probe.checks]
    binds = [u for u in uses if u.cap == "CAP_NET_BIND_SERVICE"]
    assert len(binds) == 1
    (bind,) = binds
    assert bind.granted and bind.call_site == "__inet_bind" and bind.syscall == "bind"
    assert bind.check.pid == child.pid
    assert bind.reason == "bind to a port below 1024"
    # wall time conversion lands within this test run
    assert abs(probe.mono_to_wall(bind.check.mono_ts) - time.time()) < 30
    assert probe.stats.unparsed_count == 0 and probe.stats.lost_events == 0
    assert not probe.stats.callback_errors


@needs_probe
def test_bind_denied_for_unprivileged_user_is_recorded_as_denied():
    code = ("import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "try:\n s.bind(('127.0.0.1', 80))\nexcept PermissionError:\n print('denied')")
    child, probe, returncode, err = run_under_probe([PYTHON, "-c", code], user=65534)
    assert returncode == 0, err
    binds = [classify(c) for c in probe.checks if c.cap == 10]
    assert binds and all(not b.granted and b.call_site == "__inet_bind" for b in binds)
    part = partition_uses(classify(c) for c in probe.checks)
    assert "CAP_NET_BIND_SERVICE" in {u.cap for u in part.optional}
    assert "CAP_NET_BIND_SERVICE" not in {u.cap for u in part.required}


@needs_probe
def test_true_makes_only_advisory_checks():
    child, probe, returncode, _ = run_under_probe(["/bin/true"])
    assert returncode == 0
    uses = [classify(c) for c in probe.checks]
    assert uses, "the probe saw nothing at all (exec alone makes overcommit checks)"
    assert {u.kind for u in uses} == {ADVISORY}
    assert {u.call_site for u in uses} == {"security_vm_enough_memory_mm"}
    assert {u.check.pid for u in uses} == {child.pid}


@needs_probe
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
    assert chown.check.pid != child.pid  # seen through event-fork
    # No assertion on comm: tracefs prints the cached name from fork time ("sh"), as measured.


@needs_probe
def test_two_probes_at_once_never_see_each_others_events(tmp_path):
    target = tmp_path / "owned"
    target.write_text("x")
    code = ("import socket, time\n"
            "for _ in range(20):\n"
            "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "    s.bind(('127.0.0.1', 80)); s.close(); time.sleep(0.01)")
    binder = HeldChild([PYTHON, "-c", code])
    chowner = HeldChild(["/bin/sh", "-c",
                         f"for i in 1 2 3 4 5 6 7 8 9 10; do chown 1000 {target}; done"])
    with CapabilityProbe(binder.pid) as bind_probe, CapabilityProbe(chowner.pid) as chown_probe:
        assert len(our_instances()) == 2
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


@needs_probe
def test_callback_receives_checks_and_its_errors_are_reported():
    seen = []

    def on_check(check):
        seen.append(check)
        raise RuntimeError("callback bug")

    child = HeldChild(["/bin/true"])
    with CapabilityProbe(child.pid, on_check=on_check) as probe:
        child.release()
        child.wait()
    assert seen and probe.checks == []  # delivered to the callback, not collected
    assert len(probe.stats.callback_errors) == len(seen)
    assert probe.stats.checks == len(seen)


@needs_probe
def test_instance_removed_when_body_raises():
    child = HeldChild(["/bin/true"])
    with pytest.raises(KeyError):
        with CapabilityProbe(child.pid):
            assert len(our_instances()) == 1
            raise KeyError("boom")
    child.release()
    child.wait()
    assert our_instances() == []


@needs_probe
def test_instance_of_sigkilled_owner_is_reclaimed_by_next_probe():
    holder_code = textwrap.dedent("""
        import sys, time
        from capprobe.tracing.tracefs import CapabilityProbe
        probe = CapabilityProbe(1).start()
        print(probe.instance.name, flush=True)
        time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", holder_code], stdout=subprocess.PIPE, text=True)
    try:
        name = holder.stdout.readline().strip()
        assert name.startswith(f"{INSTANCE_PREFIX}{holder.pid}-")
        assert name in our_instances(holder.pid)
        # a live owner's instance must not be reclaimed
        assert name not in tracefs.reclaim_stale_instances()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        assert name in our_instances(holder.pid)  # SIGKILL skipped the cleanup
        child = HeldChild(["/bin/true"])
        with CapabilityProbe(child.pid):
            assert name not in our_instances(holder.pid)
            child.release()
            child.wait()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()
    assert our_instances() == []


def test_not_root_raises_probe_unavailable(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ProbeUnavailable, match="root"):
        CapabilityProbe(os.getpid()).start()


def test_missing_tracepoint_raises_probe_unavailable(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    (tmp_path / "instances").mkdir()  # a tracefs-looking dir without the event
    with pytest.raises(ProbeUnavailable, match="cap_capable"):
        CapabilityProbe(os.getpid(), tracefs=tmp_path).start()
