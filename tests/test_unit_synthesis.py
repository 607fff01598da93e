"""Unit synthesis end to end: real traces -> unit -> systemd-analyze (verify, security)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from capprobe.paths import decode_path
from conftest import (SYSTEM_PYTHON, WORKLOADS, capprobe, capprobe_in_netns, load, needs_root,
                      needs_strace)
from test_quoting import parse_unit_like_systemd

pytestmark = [needs_root, needs_strace,
              pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                 reason="systemd-analyze missing (Debian package systemd)")]

_EXPOSURE = re.compile(r"Overall exposure level for \S+: ([0-9.]+)")


def directives(unit_text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for _section, key, value in parse_unit_like_systemd(unit_text.encode()):
        out.setdefault(key.decode(), []).append(value.decode())
    return out


def exposure(unit_path: Path) -> float:
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit_path)],
                       capture_output=True, text=True, timeout=60)
    m = _EXPOSURE.search(r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    return float(m.group(1))


def verify_messages(unit_path: Path) -> list[str]:
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit_path)],
                       capture_output=True, text=True, timeout=60)
    # Only what concerns the unit's own lines (the ExecStart binary may be a test file).
    return [line for line in (r.stdout + r.stderr).splitlines() if unit_path.name in line
            and "is not executable" not in line]


@pytest.fixture
def srv_root():
    """A temporary root under /srv (not /tmp: shared /tmp use rightly turns PrivateTmp off)."""
    root = Path(tempfile.mkdtemp(prefix="capprobe-test-", dir="/srv"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def pyroute2_in_system_python() -> bool:
    return subprocess.run([SYSTEM_PYTHON, "-c", "import pyroute2"], capture_output=True).returncode == 0


@pytest.mark.skipif(not pyroute2_in_system_python(), reason="Debian package python3-pyroute2 missing")
def test_arctic_like_workload_gives_the_seed_unit_and_better(netns, srv_root):
    data, token = srv_root / "tillered", srv_root / "arctic"
    data.mkdir(), token.mkdir()
    profile = srv_root / "arctic.profile.json"
    r = capprobe_in_netns(netns, "run", "-q", "--duration", "3", "--no-unit", "-o", str(profile), "--",
                          SYSTEM_PYTHON, str(WORKLOADS / "arctic_like.py"), "--data", str(data),
                          "--token-dir", str(token), "--hold", "30")
    assert r.returncode == 128 + 15, r.stderr
    unit = srv_root / "arctic.service"
    r = capprobe("unit", str(profile), "--user", "arctic", "-o", str(unit))
    assert r.returncode == 0, r.stderr
    assert "exposure (systemd-analyze security): " in r.stderr
    d = directives(unit.read_text())
    assert d["User"] == ["arctic"] and d["Group"] == ["arctic"]
    assert d["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert d["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    assert d["ReadWritePaths"] == [f"{data} {token}"] or sorted(d["ReadWritePaths"][0].split()) == sorted(
        [str(data), str(token)])
    assert d["DeviceAllow"] == ["/dev/net/tun rw"] and d["DevicePolicy"] == ["closed"]
    families = set(d["RestrictAddressFamilies"][0].split())
    assert {"AF_NETLINK", "AF_INET"} <= families <= {"AF_NETLINK", "AF_INET", "AF_INET6", "AF_UNIX"}
    assert d["NoNewPrivileges"] == ["yes"] and d["ProtectSystem"] == ["strict"]
    assert sorted(d["SocketBindAllow"]) == ["tcp:61000", "tcp:8080", "udp:51840"]
    assert "CAP_NET_BIND_SERVICE" not in unit.read_text().split("CapabilityBoundingSet=")[1].split("\n")[0]
    assert "CAP_SYS_ADMIN" not in d["CapabilityBoundingSet"][0]
    assert not verify_messages(unit)
    score = exposure(unit)
    assert score <= 2.0, score  # the seed's hand-made unit scores 6.4 here


def test_unit_to_stdout_and_refusals(srv_root):
    profile = srv_root / "true.json"
    assert capprobe("run", "-q", "--no-unit", "-o", str(profile), "--", "/bin/true").returncode == 0
    r = capprobe("unit", str(profile), "-o", "-", "--dynamic-user", "-q")
    assert r.returncode == 0 and "DynamicUser=yes" in r.stdout and "CapabilityBoundingSet=\n" in r.stdout
    out = srv_root / "t.service"
    out.write_text("mine")
    r = capprobe("unit", str(profile), "-o", str(out))
    assert r.returncode != 0 and "--force" in r.stderr and out.read_text() == "mine"
    r = capprobe("unit", str(profile), "--user", "x", "--dynamic-user")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    bad = srv_root / "bad.json"
    bad.write_text("{not json")
    r = capprobe("unit", str(bad), "-o", "-")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_run_writes_a_unit_beside_the_profile(srv_root):
    r = capprobe("run", "-o", str(srv_root / "p.json"), "--unit", "probe-true", "--", "/bin/true")
    assert r.returncode == 0, r.stderr
    unit = srv_root / "probe-true.service"
    assert unit.exists() and "ExecStart=/bin/true" in unit.read_text()
    assert "exposure (systemd-analyze security):" in r.stderr.splitlines()[-1]


HOSTILE_PARTS = st.sampled_from(["\n", "%", "%n", '"', "'", " ", "\\", "$HOME", ";", "\xff", "é",
                                 "\nExecStartPre=/bin/sh -c evil", "\t", "x"])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(HOSTILE_PARTS, min_size=1, max_size=4))
def test_hostile_names_written_by_the_target_never_become_directives(srv_root, parts):
    name = "".join(parts).encode("utf-8", "surrogateescape").replace("\xff".encode(), b"\xff")
    name = name.replace(b"/", b"_") or b"x"
    work = Path(tempfile.mkdtemp(dir=srv_root))
    script = ("import os, sys\n"
              "d = os.path.join(sys.argv[1].encode(), bytes.fromhex(sys.argv[2]))\n"
              "os.mkdir(d)\n"
              "open(os.path.join(d, b'state'), 'w').write('x')\n"
              "os.rename(os.path.join(d, b'state'), os.path.join(d, b'state.1'))\n")
    profile = work / "p.json"
    r = capprobe("run", "-q", "--no-unit", "-o", str(profile), "--", SYSTEM_PYTHON, "-c", script,
                 str(work), name.hex())
    assert r.returncode == 0, r.stderr
    written = {decode_path(f["path"]) for f in load(profile)["files"]}
    assert os.fsencode(str(work)) + b"/" + name + b"/state.1" in written
    unit = work / "h.service"
    r = capprobe("unit", str(profile), "--dynamic-user", "--name", "h", "-o", str(unit), "-q")
    assert r.returncode == 0, r.stderr
    triples = parse_unit_like_systemd(unit.read_bytes())
    keys = [k.decode() for _s, k, _v in triples]
    assert "ExecStartPre" not in keys
    assert keys.count("ReadWritePaths") == 1 and keys.count("ExecStart") == 1
    (rw,) = [v for _s, k, v in triples if k == b"ReadWritePaths"]
    # the directory itself when unit syntax can carry its name, else the nearest parent that can
    assert rw in (os.fsencode(str(work)), os.fsencode(str(work)) + b"/" + name) or rw.startswith(b'"')
    assert not verify_messages(unit), verify_messages(unit)


def test_ownership_instead_of_privilege_with_a_setup_script(srv_root):
    owned = srv_root / "etc-arctic"
    owned.mkdir()
    os.chmod(owned, 0o755)  # root's directory: the service user may not create files in it
    profile = srv_root / "p.json"
    r = capprobe("run", "-q", "--no-unit", "--user", "nobody", "-o", str(profile), "--",
                 "sh", "-c", f"echo token > {owned}/recovery.token")
    assert r.returncode == 0, r.stderr
    p = load(profile)
    assert "CAP_DAC_OVERRIDE" in p["capabilities"]["required"]
    unit, setup = srv_root / "a.service", srv_root / "setup.sh"
    r = capprobe("unit", str(profile), "--user", "nobody", "--group", "nogroup", "-o", str(unit),
                 "--setup", str(setup))
    assert r.returncode == 0, r.stderr
    d = directives(unit.read_text())
    assert d["CapabilityBoundingSet"] == [""], "the capability is replaced by ownership"
    assert "setup script" in unit.read_text()
    script = setup.read_text()
    # the file it wrote, not the directory: a tmpfiles.d line (no chown that could follow a link)
    assert re.search(rf"^f {owned}/recovery.token (-|0[0-7]{{3}}) nobody nogroup -$", script, re.M), script
    assert "chown" not in script and (srv_root / "a.conf").read_text() in script
    os.unlink(owned / "recovery.token")
    # the script makes the capability unnecessary: the same write now works without any
    subprocess.run(["sh", str(setup)], check=True, env={**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                   capture_output=True)
    done = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all",
                           "--bounding-set=-all", "sh", "-c", f"echo token > {owned}/recovery.token"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert os.stat(owned).st_uid == 0, "the directory stays root's: the file suffices"
    os.unlink("/etc/tmpfiles.d/a.conf")
