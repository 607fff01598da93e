"""Capabilities as the kernel checked them, on real programs (issue: capability probes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import (SYSTEM_PYTHON, WORKLOADS, capprobe, capprobe_in_netns, load, needs_root,
                      needs_strace, uses)

pytestmark = [needs_root, needs_strace]


def required(profile):
    assert profile["capabilities"]["method"] == "tracefs", profile["capabilities"]
    return profile["capabilities"]["required"]


def by_exe(use):
    return use["exe"].rsplit("/", 1)[-1]


@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 not installed")
def test_ip_tuntap_needs_net_admin_from_tun_ioctl(netns, tmp_path):
    r = capprobe_in_netns(netns, "run", "-q", "-o", str(tmp_path / "p.json"), "--",
                          "ip", "tuntap", "add", "dev", "cpt0", "mode", "tun")
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    assert required(p) == ["CAP_NET_ADMIN"]
    tun = [u for u in uses(p, "CAP_NET_ADMIN") if u["call_site"] == "__tun_chr_ioctl"]
    assert tun and tun[0]["reason"] == "create a TUN/TAP device" and by_exe(tun[0]) == "ip"
    assert "TUNSETIFF /dev/net/tun" in tun[0]["targets"]
    subprocess.run(["ip", "-n", netns, "tuntap", "del", "dev", "cpt0", "mode", "tun"], check=True)


def test_http_server_on_port_80_needs_net_bind_service(tmp_path):
    r = capprobe("run", "-q", "--duration", "2", "-o", str(tmp_path / "p.json"), "--",
                 SYSTEM_PYTHON, "-m", "http.server", "80", "--bind", "127.0.0.1")
    p = load(tmp_path / "p.json")
    assert r.returncode == 128 + 15 or r.returncode == 0, r.stderr
    assert required(p) == ["CAP_NET_BIND_SERVICE"]
    (bind,) = uses(p, "CAP_NET_BIND_SERVICE")
    assert bind["call_site"] == "__inet_bind" and bind["syscall"] == "bind"
    assert bind["targets"] == ["127.0.0.1:80"]


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump not installed (.ci/run installs it)")
def test_tcpdump_needs_net_raw(netns, tmp_path):
    out = tmp_path / "p.json"
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "capprobe", "run", "-q",
                             "-o", str(out), "--", "tcpdump", "-i", "lo", "-c", "1", "-w", str(tmp_path / "c.pcap")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # one packet on the namespace's loopback, repeated until tcpdump has seen it
        for _ in range(100):
            subprocess.run(["ip", "netns", "exec", netns, SYSTEM_PYTHON, "-c",
                            "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 9))"],
                           check=True)
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    p = load(out)
    assert "CAP_NET_RAW" in required(p)
    raw = uses(p, "CAP_NET_RAW")
    assert raw and by_exe(raw[0]) == "tcpdump"


@pytest.mark.skipif(shutil.which("nft") is None, reason="nftables not installed (.ci/run installs it)")
def test_nft_add_table_needs_net_admin_and_is_decoded(netns, tmp_path):
    r = capprobe_in_netns(netns, "run", "-q", "-o", str(tmp_path / "p.json"), "--",
                          "nft", "add", "table", "inet", "capprobe_t")
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    assert required(p) == ["CAP_NET_ADMIN"]
    ops = {(n["op"], n["detail"]) for n in p["network"]["netlink"]}
    assert ("NFT_MSG_NEWTABLE", "capprobe_t") in ops
    nf = [u for u in uses(p, "CAP_NET_ADMIN") if u["call_site"] == "nfnetlink_rcv"]
    assert nf and nf[0]["reason"] == "change nftables rules" and by_exe(nf[0]) == "nft"
    assert any("NFT_MSG_NEWTABLE" in t for u in nf for t in u.get("targets", []))


def test_chown_needs_chown_with_the_path(tmp_path):
    f = tmp_path / "owned"
    f.write_text("x")
    r = capprobe("run", "-q", "-o", str(tmp_path / "p.json"), "--", "chown", "1000", str(f))
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    assert required(p) == ["CAP_CHOWN"]
    (use,) = uses(p, "CAP_CHOWN")
    assert str(f) in use["targets"] and by_exe(use) == "chown"
    assert "owner" in use["reason"]


def test_as_service_user_reading_root_only_file_needs_dac(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s")
    os.chmod(secret, 0o600)
    os.chmod(tmp_path, 0o755)
    r = capprobe("run", "-q", "--user", "nobody", "-o", str(tmp_path / "p.json"), "--", "cat", str(secret))
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    assert p["run"]["user"]["name"] == "nobody"
    req = required(p)
    assert req in (["CAP_DAC_READ_SEARCH"], ["CAP_DAC_OVERRIDE"]), req
    dac = uses(p, req[0])
    assert any(str(secret) in u.get("targets", []) for u in dac), dac
    assert all(by_exe(u) == "cat" for u in dac)


def test_caps_none_makes_the_privileged_step_fail(tmp_path):
    f = tmp_path / "owned"
    f.write_text("x")
    r = capprobe("run", "-q", "--caps", "none", "-o", str(tmp_path / "p.json"), "--", "chown", "1000", str(f))
    assert r.returncode != 0
    p = load(tmp_path / "p.json")
    assert p["run"]["caps_at_start"]["set"] == "none"
    assert required(p) == []
    assert uses(p, "CAP_CHOWN", "optional")
    failed = next(x for x in p["files"] if x["path"] == str(f))["failed"]
    assert failed[0]["errno"] == "EPERM"


@pytest.mark.parametrize("command", [["/bin/true"], [SYSTEM_PYTHON, "-c", "pass"]])
def test_plain_programs_need_nothing_and_advisory_checks_are_listed(tmp_path, command):
    r = capprobe("run", "-q", "-o", str(tmp_path / "p.json"), "--", *command)
    assert r.returncode == 0
    p = load(tmp_path / "p.json")
    assert required(p) == []
    advisory = uses(p, "CAP_SYS_ADMIN", "advisory")
    assert advisory and all(a["call_site"] == "security_vm_enough_memory_mm" for a in advisory)
    assert all(a["why_not_required"] for a in advisory)


def test_two_sessions_at_once_do_not_see_each_other(tmp_path):
    f = tmp_path / "owned"
    f.write_text("x")
    results = {}

    def run(name, *cmd):
        results[name] = capprobe("run", "-q", "-o", str(tmp_path / f"{name}.json"), "--", *cmd)

    a = threading.Thread(target=run, args=("bind", SYSTEM_PYTHON, "-c",
                         "import socket, time\nfor i in range(20):\n s=socket.socket(); s.bind(('127.0.0.1', 81)); s.close(); time.sleep(0.05)"))
    b = threading.Thread(target=run, args=("chown", "sh", "-c",
                         f"for i in 1 2 3 4 5 6 7 8 9 10; do chown 1000 {f}; sleep 0.1; done"))
    a.start(), b.start()
    a.join(), b.join()
    assert results["bind"].returncode == 0 and results["chown"].returncode == 0
    pa, pb = load(tmp_path / "bind.json"), load(tmp_path / "chown.json")
    assert required(pa) == ["CAP_NET_BIND_SERVICE"] and uses(pa, "CAP_NET_BIND_SERVICE")[0]["count"] == 20
    assert required(pb) == ["CAP_CHOWN"] and sum(u["count"] for u in uses(pb, "CAP_CHOWN")) == 10
    # both sessions removed their instances (others may exist only for sessions still running)
    from capprobe.tracing.tracefs import _pid_alive
    left = [d for d in os.listdir("/sys/kernel/tracing/instances") if d.startswith("capprobe-")]
    assert not [d for d in left if not _pid_alive(int(d.split("-")[1]))]


@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 not installed")
def test_arctic_like_workload_needs_net_admin_alone(netns, tmp_path):
    data, token = tmp_path / "opt-tillered", tmp_path / "etc-arctic"
    data.mkdir(), token.mkdir()
    r = capprobe_in_netns(netns, "run", "-q", "-o", str(tmp_path / "p.json"), "--", sys.executable,
                          str(WORKLOADS / "arctic_like.py"), "--data", str(data), "--token-dir", str(token))
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    assert required(p) == ["CAP_NET_ADMIN"]
    # As root the kernel checks CAP_NET_RAW first for IP_TRANSPARENT; CAP_NET_ADMIN also
    # satisfies it and is needed anyway, so the smallest set drops NET_RAW.
    transparent = uses(p, "CAP_NET_RAW")
    assert transparent and transparent[0]["call_site"] == "do_ip_setsockopt"
    assert set(transparent[0]["alternatives"]) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    ops = {n["op"] for n in p["network"]["netlink"]}
    assert {"RTM_NEWRULE", "RTM_NEWROUTE", "NFT_MSG_NEWTABLE"} <= ops
    assert not uses(p, "CAP_NET_BIND_SERVICE") and not uses(p, "CAP_SYS_ADMIN")


@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 not installed")
def test_either_or_confirmed_by_a_run_without_the_first_alternative(netns, tmp_path):
    data, token = tmp_path / "d", tmp_path / "t"
    data.mkdir(), token.mkdir()
    r = capprobe_in_netns(netns, "run", "-q", "--no-unit", "--drop-cap", "CAP_NET_RAW", "-o", str(tmp_path / "p.json"),
                          "--", sys.executable, str(WORKLOADS / "arctic_like.py"), "--data", str(data),
                          "--token-dir", str(token))
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    assert p["run"]["caps_at_start"]["dropped"] == ["CAP_NET_RAW"]
    assert required(p) == ["CAP_NET_ADMIN"]
    # the kernel denied NET_RAW for IP_TRANSPARENT and granted NET_ADMIN within the same syscall
    denied = [u for u in p["capabilities"]["uses"] if u["capability"] == "CAP_NET_RAW"]
    assert denied and all(u["status"] == "superseded" for u in denied)
    granted = [u for u in uses(p, "CAP_NET_ADMIN") if u["call_site"] == "do_ip_setsockopt"]
    assert granted and granted[0]["syscall"] == "setsockopt" and "IP_TRANSPARENT" in granted[0]["targets"]


AGREEMENT_CASES = {
    "http-server-80": ["ip", "netns", "exec", "{ns}", SYSTEM_PYTHON, "-m", "http.server", "80", "--bind", "127.0.0.1"],
    "tuntap": ["ip", "netns", "exec", "{ns}", "ip", "tuntap", "add", "dev", "cpt9", "mode", "tun"],
    "nft": ["ip", "netns", "exec", "{ns}", "nft", "add", "table", "inet", "capprobe_agree"],
    "chown": ["chown", "1000", "{file}"],
    "true": ["/bin/true"],
}


@pytest.mark.parametrize("case", sorted(AGREEMENT_CASES))
def test_inference_table_agrees_with_the_tracepoint(case, netns, tmp_path):
    from capprobe.facts.inference import inferred_required_set, infer_capabilities
    f = tmp_path / "file"
    f.write_text("x")
    command = [a.format(ns=netns, file=f) for a in AGREEMENT_CASES[case]]
    if shutil.which(command[0]) is None and not os.path.exists(command[0]):
        pytest.skip(f"{command[0]} not installed")
    if case == "nft" and shutil.which("nft") is None:
        pytest.skip("nftables not installed")
    # capprobe inside the namespace, the command without `ip netns exec` (its setns is not the target's)
    if command[:3] == ["ip", "netns", "exec"]:
        r = capprobe_in_netns(netns, "run", "-q", "--no-unit", "--duration", "2", "-o", str(tmp_path / "p.json"),
                              "--", *command[4:])
    else:
        r = capprobe("run", "-q", "--no-unit", "-o", str(tmp_path / "p.json"), "--", *command)
    assert r.returncode in (0, 128 + 15), r.stderr
    p = load(tmp_path / "p.json")
    kernel = required(p)
    inferred = inferred_required_set(infer_capabilities(p))
    assert inferred == kernel, (case, kernel, inferred)


@pytest.mark.skipif(shutil.which("bpftrace") is None, reason="bpftrace not installed (Debian package bpftrace)")
def test_bpftrace_backend_gives_the_same_capabilities_as_tracefs(tmp_path):
    f = tmp_path / "owned"
    f.write_text("x")
    profiles = {}
    for backend in ("tracefs", "bpftrace"):
        out = tmp_path / f"{backend}.json"
        r = capprobe("run", "-q", "--no-unit", "--cap-probe", backend, "-o", str(out), "--",
                     "sh", "-c", f"chown 1000 {f} && chown 0 {f}")
        assert r.returncode == 0, r.stderr
        profiles[backend] = load(out)
    for backend, p in profiles.items():
        assert p["capabilities"]["method"] == backend
        assert p["capabilities"]["required"] == ["CAP_CHOWN"]
        (use,) = uses(p, "CAP_CHOWN")
        assert use["count"] == 2 and str(f) in use["targets"] and by_exe(use) == "chown"


SNDBUFFORCE = ("import socket\n"
               "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
               "s.setsockopt(socket.SOL_SOCKET, 32, 8 << 20)  # SO_SNDBUFFORCE, as sd_notify does\n"
               "s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE\n")


def test_forced_socket_buffer_is_listed_but_not_required(tmp_path):
    r = capprobe("run", "-q", "--no-unit", "-o", str(tmp_path / "p.json"), "--",
                 SYSTEM_PYTHON, "-c", SNDBUFFORCE)
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    assert "CAP_NET_ADMIN" not in required(p)
    (forced,) = uses(p, "CAP_NET_ADMIN", "advisory")
    assert forced["call_site"] == "sk_setsockopt" and forced["count"] == 2
    assert "fd_inc_sndbuf" in forced["why_not_required"]


def test_other_privileged_socket_options_stay_required(tmp_path):
    code = "import socket\nsocket.socket().setsockopt(socket.SOL_SOCKET, socket.SO_DEBUG, 1)\n"
    r = capprobe("run", "-q", "--no-unit", "-o", str(tmp_path / "p.json"), "--", SYSTEM_PYTHON, "-c", code)
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    assert required(p) == ["CAP_NET_ADMIN"]
    (debug,) = uses(p, "CAP_NET_ADMIN")
    assert debug["targets"] == ["SO_DEBUG"]


CAPSET = """
import ctypes, sys
class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]
keep = 1 << 10  # CAP_NET_BIND_SERVICE
sets = (Data * 2)(Data(keep, keep, int(sys.argv[1])))
libc = ctypes.CDLL(None, use_errno=True)
sys.exit(libc.syscall(126, ctypes.byref(Header(0x20080522, 0)), sets))  # capset, version 3
"""


@pytest.mark.parametrize("inheritable, status", [(0, "advisory"), (1 << 10, "required")])
def test_capset_that_drops_capabilities_does_not_need_setpcap(tmp_path, inheritable, status):
    """Keeping CAP_NET_BIND_SERVICE alone: the kernel asks CAP_SETPCAP on every capset, and it
    matters only for a non-empty inheritable set (cap_inh_is_capped)."""
    r = capprobe("run", "-q", "--no-unit", "-o", str(tmp_path / "p.json"), "--",
                 SYSTEM_PYTHON, "-c", CAPSET, str(inheritable))
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    (setpcap,) = uses(p, "CAP_SETPCAP", status)
    assert setpcap["call_site"] == "cap_capset" and setpcap["syscall"] == "capset"
    assert ("CAP_SETPCAP" in required(p)) == (status == "required")


@pytest.mark.parametrize("setuid_root", [True, False])
def test_what_a_setuid_program_gets_from_its_own_bit_is_not_the_services_need(tmp_path, setuid_root):
    """A service running as nobody runs a setuid-root chown: the kernel grants CAP_CHOWN to the
    program's own euid 0, not to the service, so the unit must not grant it (issue 8, item 4).
    The same program without the bit needs the service's (ambient) CAP_CHOWN: required."""
    place = tempfile.mkdtemp(prefix="capprobe-test-suid-", dir="/srv")
    try:
        os.chmod(place, 0o755)  # nobody must reach the program; /tmp's pytest dirs are 0700
        program, victim = os.path.join(place, "chown-copy"), os.path.join(place, "f")
        shutil.copy("/usr/bin/chown", program)
        os.chmod(program, 0o4755 if setuid_root else 0o755)
        open(victim, "w").close()
        r = capprobe("run", "-q", "--no-unit", "--user", "nobody", "-o", str(tmp_path / "p.json"), "--",
                     program, "65534", victim)
        assert r.returncode == 0, r.stderr
        assert os.stat(victim).st_uid == 65534
        p = load(tmp_path / "p.json")
        chown = [u for u in p["capabilities"]["uses"] if u["capability"] == "CAP_CHOWN" and u["exe"] == program]
        assert chown, p["capabilities"]["uses"]
        if setuid_root:
            assert "CAP_CHOWN" not in required(p)
            assert all(u["status"] == "advisory" and "setuid-root" in u["why_not_required"] for u in chown)
        else:
            assert "CAP_CHOWN" in required(p)
    finally:
        shutil.rmtree(place, ignore_errors=True)
