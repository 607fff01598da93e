"""One contract for every backend: a real workload whose facts are known, watched by each.

tests/workloads/contract.py creates, renames, chmods and chowns files, binds a privileged
loopback port, connects, accepts, sends, asks netlink for the links, sends READY=1, execs
/bin/true, drops to nobody in a child, enters a UTS namespace, maps W+X memory, signals pid 1
and ioctls /dev/null. It runs under `capprobe run` in a network namespace of the test's own.
- Every tracer backend (TRACER_BACKENDS) must report every fact in TRACER_CONTRACT.
- Every capability-probe backend (capability_recorder.PROBE_BACKENDS: tracefs, bpftrace) must
  find each capability in PROBE_CONTRACT required, attributed to its syscall.
A backend that drops a fact fails the check that reads it (the last test shows that each
check does fail when its facts are missing).
"""

from __future__ import annotations

import copy
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from capprobe.capability_recorder import PROBE_BACKENDS
from conftest import REPO, SYSTEM_PYTHON, load, needs_root, needs_strace

WORKLOAD = REPO / "tests" / "workloads" / "contract.py"
PORT = 80  # privileged, on the loopback of the test's own network namespace
NOBODY = 65534

# Tracer backends: the `capprobe run` options that choose each.
# >>> helper K: add the in-kernel backend here, e.g. pytest.param(("--fast",), id="kernel"),
# and give strace its explicit option once the kernel one is the default. <<<
TRACER_BACKENDS = [
    pytest.param((), id="strace"),
    # --fast with --settle 0: the kernel side (bpftrace) from the target's start (tracing/kernel.py)
    pytest.param(("--fast", "--settle", "0"), id="kernel",
                 marks=pytest.mark.skipif(shutil.which("bpftrace") is None, reason="bpftrace not installed")),
]

pytestmark = [needs_root, needs_strace,
              pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2 for a network namespace")]

_runs: dict[tuple, dict] = {}
_names = itertools.count()


@pytest.fixture(scope="module")
def base():
    """Where the runs write: traversable by nobody (pytest's own tmp is root-only), gone afterwards."""
    path = Path(tempfile.mkdtemp(prefix="capprobe-contract-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
    _runs.clear()


def contract_profile(tracer: tuple[str, ...], probe: str, base: Path) -> dict:
    """The profile of one run of the workload under TRACER with capability probe PROBE (made once)."""
    key = (tracer, probe)
    if key not in _runs:
        work = base / f"run{next(_names)}"
        data = work / "data"
        data.mkdir(parents=True)
        netns = f"capprobe-contract-{os.getpid()}-{len(_runs)}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        try:
            subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
            # the kernel backend follows the target's cgroup v2, which `ip netns exec` hides (it mounts
            # a sysfs of its own): nsenter enters the network namespace alone
            enter = ["nsenter", f"--net=/run/netns/{netns}"] if "--fast" in tracer else ["ip", "netns", "exec", netns]
            run = subprocess.run([*enter, sys.executable, "-m", "capprobe", "run", "-q",
                                  "--no-unit", "--cap-probe", probe, *tracer, "-o", str(work / "p.json"), "--",
                                  SYSTEM_PYTHON, str(WORKLOAD), "--dir", str(data), "--port", str(PORT)],
                                 capture_output=True, text=True, timeout=180)
        finally:
            subprocess.run(["ip", "netns", "del", netns], check=False)
        assert run.returncode == 0, run.stderr
        _runs[key] = {"profile": load(work / "p.json"), "dir": str(data)}
    return _runs[key]


# -- what every tracer backend must report -------------------------------------------------

def _ops(profile: dict, path: str) -> dict:
    return next((f for f in profile["files"] if f["path"] == path), {"ops": {}})


def check_files(p: dict, d: str) -> list[str]:
    missing = []
    expected = {"data.txt": {"create", "write", "rename_from"}, "data.db": {"rename_to", "chmod", "chown"},
                "sub": {"mkdir", "chmod"}, "link": {"symlink", "delete"}, "sub/by-nobody": {"create", "write"},
                "": {"write_test"}}
    for name, ops in expected.items():
        path = os.path.join(d, name) if name else d
        missing += [f"{op} {path}" for op in sorted(ops - set(_ops(p, path)["ops"]))]
    db = _ops(p, os.path.join(d, "data.db"))
    if db.get("modes") != ["0640"]:
        missing.append(f"mode 0640 of data.db (got {db.get('modes')})")
    if db.get("owners") != [f"{NOBODY}:{NOBODY}"]:
        missing.append(f"owner of data.db (got {db.get('owners')})")
    if db.get("renamed_from") != [os.path.join(d, "data.txt")]:
        missing.append("data.db renamed from data.txt")
    if _ops(p, os.path.join(d, "sub", "by-nobody")).get("write_uids") != [NOBODY]:
        missing.append("sub/by-nobody written as nobody")
    return missing


def _has(rows: list[dict], **want) -> bool:
    return any(all(row.get(k) == v for k, v in want.items()) for row in rows)


def check_network(p: dict, d: str) -> list[str]:
    net = p["network"]
    expected = [
        ("sockets", {"family": "AF_INET", "type": "SOCK_STREAM"}),
        ("sockets", {"family": "AF_INET", "type": "SOCK_DGRAM"}),
        ("sockets", {"family": "AF_NETLINK", "protocol": "NETLINK_ROUTE"}),
        ("binds", {"family": "AF_INET", "type": "SOCK_STREAM", "address": "127.0.0.1", "port": PORT, "errno": None}),
        ("listens", {"socket": f"TCP:[127.0.0.1:{PORT}]", "errno": None}),
        ("connects", {"family": "AF_INET", "address": "127.0.0.1", "port": PORT, "errno": None}),
        ("accepts", {"local": f"127.0.0.1:{PORT}", "peer": "127.0.0.1"}),
        ("sends", {"family": "AF_INET", "address": "127.0.0.1", "port": PORT}),
        ("setsockopts", {"level": "SOL_SOCKET", "option": "SO_REUSEADDR"}),
        ("netlink", {"protocol": "NETLINK_ROUTE", "op": "RTM_GETLINK", "changes_state": False}),
    ]
    return [f"{table} {want}" for table, want in expected if not _has(net[table], **want)]


def check_processes(p: dict, d: str) -> list[str]:
    missing = []
    execs = [e for proc in p["processes"] for e in proc["execs"]]
    if not _has(execs, path="/bin/true", argv=["/bin/true"]):
        missing.append("exec of /bin/true")
    if not _has(execs, path=SYSTEM_PYTHON, argv=[SYSTEM_PYTHON, str(WORKLOAD), "--dir", d, "--port", str(PORT)]):
        missing.append("exec of the workload")
    changes = [[(c["call"], c["args"], c["result"]) for c in proc["identity_changes"]] for proc in p["processes"]]
    wanted = [("setgroups", "0, []", 0), ("setgid", str(NOBODY), 0), ("setuid", str(NOBODY), 0)]
    if wanted not in changes:
        missing.append(f"identity changes {wanted} in one process (got {[c for c in changes if c]})")
    return missing


def check_behaviour(p: dict, d: str) -> list[str]:
    expected = [("wx_memory", "mmap PROT_WRITE|PROT_EXEC"), ("namespace", "unshare:uts"),
                ("hostname", "sethostname"), ("signal_other_process", "pid 1"), ("sd_notify", "READY=1")]
    return [f"{kind} {detail}" for kind, detail in expected if not _has(p["behaviour"], kind=kind, detail=detail)]


def check_devices(p: dict, d: str) -> list[str]:
    missing = []
    if not _has(p["ioctls"], path="/dev/null", request="TCGETS", errno="ENOTTY"):
        missing.append("ioctl TCGETS on /dev/null")
    if not _has(p["devices"], path="/dev/null", kind="char", major=1, minor=3):
        missing.append("device /dev/null (char 1:3)")
    return missing


def check_syscalls(p: dict, d: str) -> list[str]:
    return [name for name in ("bind", "listen", "connect", "accept4", "sendto", "setuid", "unshare", "sethostname",
                              "chown", "rename", "ioctl", "kill", "execve") if name not in p["syscalls"]]


# check -> the profile sections it reads (emptied by the last test to show the check notices)
TRACER_CONTRACT = {
    check_files: ("files",), check_network: ("network",), check_processes: ("processes",),
    check_behaviour: ("behaviour",), check_devices: ("ioctls", "devices"), check_syscalls: ("syscalls",),
}


@pytest.mark.parametrize("check", list(TRACER_CONTRACT), ids=lambda c: c.__name__)
@pytest.mark.parametrize("tracer", TRACER_BACKENDS)
def test_every_tracer_backend_reports_every_fact(tracer, check, base):
    run = contract_profile(tracer, "off", base)
    assert check(run["profile"], run["dir"]) == []


# -- what every capability-probe backend must find -------------------------------------------

PROBE_CONTRACT = {  # capability -> the syscalls it was checked for
    "CAP_CHOWN": {"chown"}, "CAP_NET_BIND_SERVICE": {"bind"}, "CAP_SETGID": {"setgid", "setgroups"},
    "CAP_SETUID": {"setuid"}, "CAP_SYS_ADMIN": {"unshare", "sethostname"},
}


def check_capabilities(p: dict, method: str) -> list[str]:
    caps = p["capabilities"]
    missing = [] if caps["method"] == method else [f"method {method} (got {caps['method']})"]
    for cap, syscalls in PROBE_CONTRACT.items():
        if cap not in caps["required"]:
            missing.append(f"{cap} required")
        found = {u["syscall"] for u in caps["uses"] if u["capability"] == cap and u["status"] == "required"
                 and u["exe"] == SYSTEM_PYTHON}
        missing += [f"{cap} for {call}" for call in sorted(syscalls - found)]
    return missing


@pytest.mark.parametrize("probe", list(PROBE_BACKENDS))
def test_every_capability_probe_backend_finds_every_capability(probe, base):
    tracer = TRACER_BACKENDS[0].values[0]
    try:
        run = contract_profile(tracer, probe, base)
    except AssertionError as error:
        if "--cap-probe" in str(error):  # the backend cannot run on this machine: it says why
            pytest.skip(f"{probe} cannot run here: {str(error).strip().splitlines()[-1]}")
        raise
    assert check_capabilities(run["profile"], probe) == []


# -- the contract notices a dropped fact ---------------------------------------------------------

def test_each_check_fails_when_the_facts_it_reads_are_dropped(tmp_path_factory):
    run = contract_profile(TRACER_BACKENDS[0].values[0], "off", base)
    for check, sections in TRACER_CONTRACT.items():
        dropped = copy.deepcopy(run["profile"])
        for section in sections:
            value = dropped[section]
            # a table of tables (network) keeps its keys, with no rows in them
            dropped[section] = {k: [] for k, v in value.items() if isinstance(v, list)} \
                if isinstance(value, dict) else []
        assert check(dropped, run["dir"]), f"{check.__name__} did not notice its facts were gone"
    no_caps = copy.deepcopy(run["profile"])
    no_caps["capabilities"] = {"method": "tracefs", "required": [], "uses": []}
    assert len(check_capabilities(no_caps, "tracefs")) >= len(PROBE_CONTRACT)
