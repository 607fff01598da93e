"""Issue 13: what a daemon tests but does not do. A passed writability test (access(W_OK) and
kin) is a write need; a shared /tmp is never left read-only for a service that wrote or tested
it; DynamicUser= only when systemd creates every directory the service needs, else User= the
owner the profile saw.

Recorded strace lines and hand-made profiles check the decisions; real runs (a Python workload
that tests and never writes, knot-resolver's kresd, openvpn) check them end to end.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from capprobe.facts.decode import collect_strace
from capprobe.rules import filesystem, identity
from capprobe.rules.base import RuleContext, UnitOptions
from capprobe.verify.attribute import blame_from_trace

from conftest import SYSTEM_PYTHON, WORKLOADS, capprobe, file_entry, load, needs_root, needs_strace
from test_rules import decide, f, profile
from test_setup_script import tmpfiles_lines
from test_unit_real import values, words

WORKLOAD = str(WORKLOADS / "write_tests.py")


def collect(lines) -> dict:
    return collect_strace(['10 1.0 [ 59] execve("/usr/sbin/d", ["d"], 0x1 /* 1 vars */) = 0', *lines]).sections()


# -- the collector: which calls are tests ---------------------------------------------------

def test_a_passed_w_ok_test_is_a_write_test_and_r_ok_or_a_failed_test_is_not():
    s = collect([
        '10 1.1 [  21] access("/tmp", 0x7 /* R_OK|W_OK|X_OK */) = 0',  # openvpn's --tmp-dir check
        '10 1.2 [  80] chdir("/var/lib/kr") = 0',
        '10 1.3 [ 439] faccessat2(-100 /* AT_FDCWD */</var/lib/kr>, ".", 0x2 /* W_OK */, 0x200 /* AT_EACCESS */) = 0',
        '10 1.4 [ 439] faccessat2(3</srv/data>, "", 0x2 /* W_OK */, 0x1000 /* AT_EMPTY_PATH */) = 0',
        '10 1.5 [ 269] faccessat(-100 /* AT_FDCWD */, "/etc", 0x2 /* W_OK */) = -1 EROFS (Read-only file system)',
        '10 1.6 [  21] access("/etc/passwd", 0x4 /* R_OK */) = 0',
        '10 1.7 [  21] access("/nope", 0x2 /* W_OK */) = -1 ENOENT (No such file or directory)',
    ])
    ops = {e["path"]: set(e["ops"]) for e in s["files"]}
    assert ops["/tmp"] == ops["/var/lib/kr"] == ops["/srv/data"] == {"write_test"}
    assert ops["/etc"] == set() and file_entry(s, "/etc")["failed"][0]["op"] == "write_test"
    assert "/etc/passwd" not in ops and "/nope" not in ops


def test_a_test_made_as_root_belongs_to_the_uid_the_daemon_drops_to():
    s = collect([
        '10 1.1 [  21] access("/var/lib/kr", 0x2 /* W_OK */) = 0',
        '10 1.2 [ 117] setresuid(104, 104, 104) = 0',
        '10 1.3 [  21] access("/srv/late", 0x2 /* W_OK */) = 0',
    ])
    assert file_entry(s, "/var/lib/kr")["write_uids"] == [None, 104]
    assert file_entry(s, "/srv/late")["write_uids"] == [104]


# -- the rules -----------------------------------------------------------------------------

def owned(uid: int, kind: str = "dir") -> dict:
    return {"stat": {"type": kind, "mode": "0750", "uid": uid, "gid": uid, "dev": 1, "ino": 2}}


def unit_of(p: dict, *rules) -> dict:
    out: dict = {}
    for rule in rules:
        out.update(decide(rule, p))
    return out


def test_a_tested_run_directory_is_opened_with_evidence_and_a_failed_test_is_not():
    nobody = pwd.getpwnam("nobody").pw_uid
    tested = profile(files=[f("/var/lib/svc", "write_test", **owned(nobody))])
    unit = unit_of(tested, filesystem.read_write_paths, identity.identity)
    assert unit["StateDirectory"] == (b"svc",)
    assert unit["User"] == (b"nobody",)  # Debian's /var/lib/NAME is its user's: not a dynamic user's
    comments = [d.comment for d in filesystem.read_write_paths(RuleContext(tested, UnitOptions(name="svc")))]
    assert "tested /var/lib/svc writable by svc, not written in this run" in comments[0]
    failed = profile(files=[{"path": "/srv/x", "ops": {},
                             "failed": [{"op": "write_test", "errno": "EACCES", "count": 1}]}])
    assert "ReadWritePaths" not in unit_of(failed, filesystem.read_write_paths)
    outside = profile(files=[f("/srv/x", "write_test", **owned(0))])
    assert unit_of(outside, filesystem.read_write_paths)["ReadWritePaths"] == (b"/srv/x",)


def test_dynamic_user_only_when_systemd_creates_every_needed_directory():
    fresh = profile(files=[f("/var/lib/svc", "write_test", stat={"missing": True})])
    assert unit_of(fresh, identity.identity) == {"DynamicUser": ("yes",)}
    mixed = profile(files=[f("/var/lib/svc", "write_test", **owned(pwd.getpwnam("nobody").pw_uid)),
                           f("/srv/other", "write_test", **owned(0))])
    assert unit_of(mixed, identity.identity) == {}  # root's and nobody's: root, with the reason


def test_a_shared_tmp_lists_what_was_tested_or_bound_there_never_read_only():
    peer = {"family": "AF_UNIX", "address": "/tmp/peer.sock", "port": None, "errno": None, "count": 1,
            "first_seen": 1.0, "by": ["/usr/bin/svc"]}
    shared = profile(files=[f("/tmp", "write_test")], connects=[peer])
    unit = unit_of(shared, filesystem.private_tmp, filesystem.read_write_paths)
    assert unit["PrivateTmp"] == ("no",) and unit["ReadWritePaths"] == (b"/tmp",)
    alone = profile(files=[f("/tmp", "write_test")])
    unit = unit_of(alone, filesystem.private_tmp, filesystem.read_write_paths)
    assert unit["PrivateTmp"] == ("yes",) and "ReadWritePaths" not in unit
    bound = profile(binds=[{**peer, "address": "/tmp/svc.sock", "type": "SOCK_STREAM"}])
    unit = unit_of(bound, filesystem.private_tmp, filesystem.read_write_paths)
    assert unit["PrivateTmp"] == ("no",) and unit["ReadWritePaths"] == (b"/tmp",)


def test_a_test_refused_with_erofs_under_the_unit_blames_read_write_paths():
    """tighten's traced re-run: the daemon's test of its directory fails on a read-only mount."""
    traced = {"files": [{"path": "/var/lib/svc", "ops": {},
                         "failed": [{"op": "write_test", "errno": "EROFS", "count": 1, "first_seen": 1.0,
                                     "by": ["/usr/sbin/svc"]}]}],
              "network": {}, "syscalls": {}, "capabilities": {"uses": []}}
    blames = blame_from_trace(traced, frozenset({"read"}), set(), None)
    assert [(b.directive, b.item) for b in blames] == [("ReadWritePaths", "/var/lib/svc")]


# -- real runs -------------------------------------------------------------------------------

@pytest.fixture
def daemon_user():
    """A real system user and its Debian-style /var/lib/NAME (NAME's, 0750), removed afterwards."""
    name = f"cpw{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    state = Path("/var/lib") / name
    try:
        state.mkdir(mode=0o750)
        shutil.chown(state, name, name)
        yield name, state
    finally:
        shutil.rmtree(state, ignore_errors=True)
        subprocess.run(["userdel", name], check=False, capture_output=True)
        subprocess.run(["groupdel", name], check=False, capture_output=True)


@pytest.fixture
def work():
    d = Path(tempfile.mkdtemp(prefix="capprobe-wt-", dir="/srv"))
    os.chmod(d, 0o755)  # kresd reads its configuration here as knot-resolver
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_workload(work: Path, *args: str, run_opts=()) -> tuple[dict, str]:
    out = work / "p.json"
    # the program runs from WORK: a checkout under /tmp would otherwise be a /tmp file the
    # service reads but did not create, which is sharing /tmp (PrivateTmp=no) for real
    program = work / "write_tests.py"
    shutil.copyfile(WORKLOAD, program)
    r = capprobe("run", "--duration", "2", *run_opts, "-o", str(out), "--unit", "wt", "--",
                 SYSTEM_PYTHON, str(program), *args)
    assert r.returncode == 0, r.stderr
    return load(out), (work / "wt.service").read_text()


@needs_root
@needs_strace
def test_root_testing_its_users_directory_then_dropping_opens_it_and_gives_it_to_the_user(daemon_user, work):
    name, state = daemon_user
    p, unit = run_workload(work, "rundir", str(state), "--drop", name)
    entry = file_entry(p, str(state))
    assert set(entry["ops"]) == {"write_test"} and pwd.getpwnam(name).pw_uid in entry["write_uids"]
    assert not os.listdir(state)  # the test wrote nothing
    assert str(state) in values(unit, "ReadWritePaths") or f"-{state}" in values(unit, "ReadWritePaths")
    assert not values(unit, "StateDirectory")  # it would make Debian's directory root's
    setup = work / "wt-setup.sh"
    r = capprobe("unit", str(work / "p.json"), "--setup", str(setup), "-o", str(work / "u.service"))
    assert r.returncode == 0, r.stderr
    lines = tmpfiles_lines(setup.read_text())
    assert any(line[1] == str(state) and line[3] == name for line in lines), lines


@needs_root
@needs_strace
def test_as_its_user_or_as_root_a_tested_state_directory_is_the_users_state_directory(daemon_user, work):
    name, state = daemon_user
    for run_opts in (("--user", name), ()):
        p, unit = run_workload(work, "rundir", str(state), run_opts=run_opts)
        assert set(file_entry(p, str(state))["ops"]) == {"write_test"}
        assert values(unit, "StateDirectory") == [name], unit
        assert values(unit, "User") == [name] and not values(unit, "DynamicUser"), unit
        # root's test of NAME's 0750 directory asked for CAP_DAC_OVERRIDE; as NAME it is not needed
        assert "CAP_DAC_OVERRIDE" not in words(unit, "CapabilityBoundingSet"), unit
        for leftover in (work / "p.json", work / "wt.service"):
            leftover.unlink()


@needs_root
@needs_strace
def test_a_tmp_check_under_a_shared_tmp_lists_tmp_writable(work):
    sock_path = f"/tmp/capprobe-wt-{os.getpid()}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(sock_path)
        listener.listen(4)
        _, unit = run_workload(work, "tmp", "--connect", sock_path)
        assert values(unit, "PrivateTmp") == ["no"] and "/tmp" in values(unit, "ReadWritePaths"), unit
        for leftover in (work / "p.json", work / "wt.service"):
            leftover.unlink()
        _, alone = run_workload(work, "tmp")
        assert values(alone, "PrivateTmp") == ["yes"], alone
    finally:
        listener.close()
        os.unlink(sock_path)


@needs_root
@needs_strace
@pytest.mark.skipif(shutil.which("kresd") is None, reason="kresd missing (Debian package knot-resolver)")
def test_kresd_tests_its_rundir_and_gets_its_state_directory(work):
    """knot-resolver's kresd, given a rundir, checks access(rundir, W_OK) and writes nothing there."""
    rundir = Path("/var/lib/knot-resolver")
    cache = work / "cache"
    cache.mkdir()
    shutil.chown(cache, "knot-resolver", "knot-resolver")
    conf = work / "kresd.conf"
    # its cache and control socket go to the test's directory: the rundir is then only tested
    conf.write_text(f"net.listen('127.0.0.1', 5399, {{ kind = 'dns' }})\nworker.control_path = '{cache}/control/'\n"
                    f"cache.open(10 * MB, 'lmdb://{cache}')\n")
    before = sorted(os.listdir(rundir))
    out = work / "kr.json"
    r = capprobe("run", "--user", "knot-resolver", "--duration", "3", "-o", str(out), "--unit", "kr", "--",
                 "/usr/sbin/kresd", "-n", "-c", str(conf), str(rundir))
    assert r.returncode == 0, r.stderr
    p, unit = load(out), (work / "kr.service").read_text()
    assert sorted(os.listdir(rundir)) == before
    assert set(file_entry(p, str(rundir))["ops"]) == {"write_test"}, file_entry(p, str(rundir))
    assert values(unit, "StateDirectory") == ["knot-resolver"], unit
    assert values(unit, "User") == ["knot-resolver"], unit


@needs_root
@needs_strace
@pytest.mark.skipif(shutil.which("openvpn") is None, reason="openvpn missing (Debian package openvpn)")
def test_openvpn_tests_its_tmp_dir_and_never_gets_a_read_only_tmp(work):
    """openvpn checks access(tmp_dir, R_OK|W_OK|X_OK) at start; its config read from /tmp (made by
    another process) shares /tmp, which must then be listed writable."""
    conf = Path(tempfile.mkstemp(prefix="capprobe-wt-", suffix=".conf", dir="/tmp")[1])
    try:
        conf.write_text("dev null\nverb 1\nifconfig-noexec\nroute-noexec\nuser nobody\ngroup nogroup\n")
        out = work / "ovpn.json"
        r = capprobe("run", "--duration", "3", "-o", str(out), "--unit", "ovpn", "--",
                     "/usr/sbin/openvpn", "--config", str(conf))
        assert r.returncode == 0, r.stderr
        p, unit = load(out), (work / "ovpn.service").read_text()
        entry = file_entry(p, "/tmp")
        assert set(entry["ops"]) == {"write_test"} and pwd.getpwnam("nobody").pw_uid in entry["write_uids"]
        assert values(unit, "PrivateTmp") == ["no"] and "/tmp" in values(unit, "ReadWritePaths"), unit
    finally:
        conf.unlink()
