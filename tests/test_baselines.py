"""Baselines: the typed read model, needs, `capprobe merge` and `capprobe diff`, on real runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from capprobe.diff import diff_needs
from capprobe.facts.decode import collect_strace
from capprobe.merge import MergeError, merge_profiles
from capprobe.model import BehaviourRow, BindRow, Profile
from capprobe.needs import needs_of
from capprobe.profile import load_profile, shape_problem

from conftest import RECORDED, SYSTEM_PYTHON, WORKLOADS, capprobe, fresh_netns, needs_root, needs_strace


@pytest.fixture
def srv_root():
    """A temporary root under /srv (not /tmp: shared /tmp use turns PrivateTmp off)."""
    root = Path(tempfile.mkdtemp(prefix="capprobe-test-baselines-", dir="/srv"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def profile_arctic(root: Path, out: Path, *extra: str) -> None:
    data, token = root / "tillered", root / "arctic"
    data.mkdir(exist_ok=True), token.mkdir(exist_ok=True)
    with fresh_netns() as ns:
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "capprobe", "run", "-q", "--no-unit",
                            "-o", str(out), "--", SYSTEM_PYTHON, str(WORKLOADS / "arctic_like.py"),
                            "--data", str(data), "--token-dir", str(token), *extra],
                           capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr


def pyroute2_in_system_python() -> bool:
    return subprocess.run([SYSTEM_PYTHON, "-c", "import pyroute2"], capture_output=True).returncode == 0


# -- on real programs ----------------------------------------------------------------------

@needs_root
@needs_strace
@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 missing (network namespaces)")
@pytest.mark.skipif(not pyroute2_in_system_python(), reason="Debian package python3-pyroute2 missing")
def test_diff_gates_the_next_arctic_version_and_passes_the_same_one(srv_root):
    v1, v1_again, v2 = srv_root / "v1.json", srv_root / "v1-again.json", srv_root / "v2.json"
    profile_arctic(srv_root, v1)
    profile_arctic(srv_root, v1_again)
    cache = srv_root / "cache"
    cache.mkdir()
    profile_arctic(srv_root, v2, "--v2", str(cache))

    same = capprobe("diff", str(v1), str(v1_again))
    assert same.returncode == 0, same.stdout + same.stderr
    assert "needs nothing" in same.stdout

    r = capprobe("diff", str(v1), str(v2), "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert d["needs_more"] is True
    caps = {c["name"]: c for c in d["added"]["capabilities"]}
    assert list(caps) == ["CAP_NET_RAW"], d["added"]
    assert "packet_create" in caps["CAP_NET_RAW"]["evidence"] and "python3" in caps["CAP_NET_RAW"]["evidence"]
    assert [f["name"] for f in d["added"]["families"]] == ["AF_PACKET"]
    assert [w["name"] for w in d["added"]["written"]] == [str(cache)]
    assert str(cache / "peers.cache") in d["added"]["written"][0]["evidence"]
    assert not d["removed"]["capabilities"] and not d["removed"]["families"]

    text = capprobe("diff", str(v1), str(v2))
    assert text.returncode == 1 and "+ capabilities CAP_NET_RAW" in text.stdout
    # the other way round: v1 needs nothing more than v2, and says what it no longer needs
    back = capprobe("diff", str(v2), str(v1))
    assert back.returncode == 0 and "- capabilities CAP_NET_RAW" in back.stdout


def read_write_paths(unit_text: str) -> set[str]:
    return {p.lstrip("-") for line in unit_text.splitlines() if line.startswith("ReadWritePaths=")
            for p in line.split("=", 1)[1].split()}


def restic(repo: Path, password: Path, *args: str) -> list[str]:
    return ["/usr/bin/restic", "-r", str(repo), "--password-file", str(password), "--no-cache", *args]


@needs_root
@needs_strace
@pytest.mark.skipif(shutil.which("restic") is None, reason="restic not installed (Debian package restic)")
def test_merge_of_restic_init_and_backup_keeps_which_session_saw_what(srv_root):
    repo, password, data = srv_root / "repo", srv_root / "pass", srv_root / "data"
    password.write_text("secret\n")
    data.mkdir()
    (data / "a.txt").write_text("a\n")
    init, backup, merged = srv_root / "init.json", srv_root / "backup.json", srv_root / "merged.json"
    for out, step in ((init, ("init",)), (backup, ("backup", str(data)))):
        r = capprobe("run", "-q", "--no-unit", "-o", str(out), "--", *restic(repo, password, *step), timeout=180)
        assert r.returncode == 0, r.stderr
    before = {p: digest(p) for p in (init, backup)}

    r = capprobe("merge", str(init), str(backup), "-o", str(merged))
    assert r.returncode == 0, r.stderr
    assert {p: digest(p) for p in (init, backup)} == before  # inputs never modified
    m = load_profile(merged)
    assert [s["label"] for s in m["merged"]["sessions"]] == ["init", "backup"]
    seen = {f["path"]: f["seen_in"] for f in m["files"]}
    sessions = {"init": load_profile(init), "backup": load_profile(backup)}
    for path, labels in seen.items():  # each file names exactly the sessions whose profile has it
        assert labels == sorted(n for n, p in sessions.items() if any(f["path"] == path for f in p["files"]))
    assert seen[str(data / "a.txt")] == ["backup"] and seen[str(password)] == ["backup", "init"]
    config = next(f for f in m["files"] if f["path"] == str(repo / "config"))
    assert "rename_to" in config["ops"] and "read" in config["ops"]  # init put it in place, the backup read it
    a, b, u = needs_of(load_profile(init)), needs_of(load_profile(backup)), needs_of(m)
    assert set(a.syscall_names) | set(b.syscall_names) == set(u.syscall_names)
    assert {w.path for w in a.written} | {w.path for w in b.written} == {w.path for w in u.written}
    # the merged baseline covers both sessions: neither needs more than it
    assert capprobe("diff", str(merged), str(backup)).returncode == 0
    assert capprobe("diff", str(merged), str(init)).returncode == 0
    assert capprobe("diff", str(init), str(merged)).returncode == 1  # the backup's snapshot files
    # the merged unit opens for writing all that each session's unit opens
    opened = {p: read_write_paths(capprobe("unit", str(p), "-o", "-", "-q").stdout) for p in (init, backup, merged)}
    assert opened[backup] and all(any(x == m or x.startswith(m + "/") for m in opened[merged])
                                  for x in opened[init] | opened[backup])

    again = capprobe("merge", str(init), str(backup), "-o", str(merged))
    assert again.returncode == 2 and "--force" in again.stderr and len(again.stderr.splitlines()) == 1
    onto_input = capprobe("merge", str(init), str(backup), "-o", str(init), "--force")
    assert onto_input.returncode == 2 and "never modifies its inputs" in onto_input.stderr
    assert digest(init) == before[init]


# -- the read model and its refusals -----------------------------------------------------

def test_the_old_recorded_profile_loads_into_typed_rows():
    raw = load_profile(RECORDED / "profile_python_net.json")
    p = Profile.from_json(raw)
    binds = p.section("network", "binds")
    assert binds and all(isinstance(b, BindRow) for b in binds)
    assert binds[0].key() == (binds[0].family, binds[0].type, binds[0].address, binds[0].port, binds[0].errno)
    assert needs_of(p) == needs_of(raw)


def test_behaviour_rows_carry_errno_and_namespace_as_fields():
    lines = ["4081  1795445216.280562 [ 272] unshare(0x40000000 /* CLONE_NEWNET */) = 0",
             "4081  1795445216.290562 [ 321] bpf(0 /* BPF_MAP_CREATE */, 0x7ffc, 72) = -1 EPERM (Operation not permitted)"]
    rows = {r["detail"]: r for r in collect_strace(lines).sections()["behaviour"]}
    assert rows["unshare:net"]["namespace"] == "net"
    assert rows["bpf EPERM"]["errno"] == "EPERM" and rows["bpf EPERM"]["call"] == "bpf"
    # an older profile has only the text: the typed row reads the same fields from it
    old = BehaviourRow.from_json({"kind": "namespace", "detail": "setns:any", "count": 1})
    assert old.namespace == "any" and old.errno is None


@pytest.mark.parametrize("content, words", [
    (b'{"schema": "capprobe/profile/v0", "host": {}}', "has schema capprobe/profile/v0"),
    (None, "is truncated"),
    (b'{"schema": "capprobe/profile/v1", "host": {}, "run": [], "processes": [], "syscalls": {}, '
     b'"files": [], "network": {}}', "field run must be an object"),
])
def test_diff_refuses_bad_baselines_with_one_line_and_exit_2(tmp_path, content, words):
    good = RECORDED / "profile_python_net.json"
    bad = tmp_path / "baseline.json"
    bad.write_bytes(content if content is not None else good.read_bytes()[:5000])
    r = capprobe("diff", str(bad), str(good))
    assert r.returncode == 2 and words in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_merge_policy_refuses_other_users_and_downgrades_inferred_capabilities():
    raw = load_profile(RECORDED / "profile_python_net.json")
    other_user = json.loads(json.dumps(raw))
    other_user["run"]["user"] = {"uid": 33, "name": "www-data"}
    with pytest.raises(MergeError, match="different users"):
        merge_profiles([raw, other_user], ["a", "b"])
    inferred = json.loads(json.dumps(raw))
    inferred["capabilities"] = {"method": "inferred", "required": ["CAP_NET_RAW"],
                                "uses": [{"capability": "CAP_NET_RAW", "status": "inferred", "count": 1}]}
    m = merge_profiles([raw, inferred], ["kernel", "guess"])
    assert shape_problem(m) is None
    assert m["capabilities"]["method"] == "inferred+tracefs"
    assert "CAP_NET_RAW" in m["capabilities"]["required"]
    assert needs_of(m).capability_method == "inferred+tracefs"
    assert raw["capabilities"]["method"] == "tracefs"  # inputs untouched
    assert diff_needs(needs_of(raw), needs_of(m)).needs_more
    assert not diff_needs(needs_of(m), needs_of(raw)).needs_more
    other_host = json.loads(json.dumps(raw))
    other_host["host"].update(hostname="arm-box", architecture="aarch64")
    both = merge_profiles([raw, other_host], ["x86", "arm"])
    assert needs_of(both).architectures == ("aarch64", "x86_64")  # a seccomp export must allow both
    assert [s["hostname"] for s in both["merged"]["sessions"]] == ["vm", "arm-box"]
