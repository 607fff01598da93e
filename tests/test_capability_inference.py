"""Capability inference from strace facts (probes/capability_inference.toml).

First pure tests on small hand-made profiles: every rule both fires and stays
quiet.  Then real programs traced by `capprobe run --no-cap-probe`, whose
profiles must yield the capability; everything that changes the network runs in
a network namespace made (and removed) here, traffic only on loopback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from capprobe.facts.inference import infer_capabilities, inferred_required_set
from capprobe.probes import load_table

from conftest import SYSTEM_PYTHON, capprobe, load

EXE = "/usr/bin/prog"


def use(**fields) -> dict:
    return {"count": 1, "first_seen": 1.0, "by": [EXE], **fields}


def profile(*, uid: int = 0, gid: int = 0, kernel: str = "6.18.44", network: dict | None = None,
            processes: list | None = None, **sections) -> dict:
    """A minimal capprobe/profile/v1 dict holding only the given facts."""
    return {
        "schema": "capprobe/profile/v1",
        "host": {"kernel": kernel},
        "run": {"user": {"uid": uid, "gid": gid, "name": "u"}},
        "processes": processes or [],
        "syscalls": sections.pop("syscalls", {}),
        "files": sections.pop("files", []),
        "ioctls": sections.pop("ioctls", []),
        "behaviour": sections.pop("behaviour", []),
        "network": {"sockets": [], "binds": [], "setsockopts": [], "netlink": [], **(network or {})},
    }


def caps(records: list[dict], status: str | None = "inferred") -> set[str]:
    return {r["capability"] for r in records if status is None or r["status"] == status}


def only(records: list[dict]) -> dict:
    assert len(records) == 1, records
    return records[0]


def test_table_rules_have_ids_facts_and_capabilities():
    table = load_table("capability_inference")
    ids = [rule["id"] for rule in table["rule"]]
    assert len(ids) == len(set(ids))
    for rule in table["rule"]:
        assert rule["fact"] in table["evidence"], rule["id"]
        assert rule.get("capability", "").startswith("CAP_") or rule.get("capabilities_from") == "netlink_ops"
        assert rule["reason"]


# --- bind ------------------------------------------------------------------------

def bind(port, family="AF_INET", type_="SOCK_STREAM", address="0.0.0.0", errno=None):
    return profile(network={"binds": [use(family=family, type=type_, address=address, port=port, errno=errno)]})


def test_bind_port_80_needs_net_bind_service():
    record = only(infer_capabilities(bind(80)))
    assert record["capability"] == "CAP_NET_BIND_SERVICE" and record["status"] == "inferred"
    assert record["reason"] == "bind to a port below 1024: AF_INET 0.0.0.0:80"
    assert record["method"] == "inferred" and record["rule"] == "bind-privileged-port"
    assert record["exe"] == EXE and record["count"] == 1 and "80" in record["evidence"]


@pytest.mark.parametrize("family,type_", [("AF_INET6", "SOCK_DGRAM"), ("AF_INET", "SOCK_DGRAM"), ("AF_INET6", "SOCK_STREAM")])
def test_bind_low_port_any_inet_family_and_type(family, type_):
    assert caps(infer_capabilities(bind(53, family, type_, "::"))) == {"CAP_NET_BIND_SERVICE"}


@pytest.mark.parametrize("port", [8080, 1024, 0, None])
def test_bind_unprivileged_or_ephemeral_port_needs_nothing(port):
    assert infer_capabilities(bind(port)) == []


def test_bind_refused_with_eacces_is_denied_evidence():
    record = only(infer_capabilities(bind(443, errno="EACCES")))
    assert record["status"] == "denied" and record["capability"] == "CAP_NET_BIND_SERVICE"
    assert inferred_required_set([record]) == []


def test_bind_failing_for_another_reason_says_nothing():
    assert infer_capabilities(bind(80, errno="EADDRNOTAVAIL")) == []


def test_bind_of_unix_socket_needs_nothing():
    assert infer_capabilities(bind(None, family="AF_UNIX", address="/run/x.sock")) == []


# --- sockets ---------------------------------------------------------------------

def sockets(*rows, syscalls=None):
    return profile(network={"sockets": [use(family=f, type=t, protocol=p) for f, t, p in rows]},
                   syscalls=syscalls or {})


def test_packet_socket_needs_net_raw():
    record = only(infer_capabilities(sockets(("AF_PACKET", "SOCK_RAW", "ETH_P_ALL"))))
    assert (record["capability"], record["status"], record["rule"]) == ("CAP_NET_RAW", "inferred", "packet-socket")


@pytest.mark.parametrize("family", ["AF_INET", "AF_INET6"])
def test_raw_ip_socket_needs_net_raw(family):
    assert caps(infer_capabilities(sockets((family, "SOCK_RAW", "IPPROTO_ICMP")))) == {"CAP_NET_RAW"}


@pytest.mark.parametrize("row", [("AF_INET", "SOCK_STREAM", "IPPROTO_IP"), ("AF_INET", "SOCK_DGRAM", "IPPROTO_ICMP"),
                                 ("AF_UNIX", "SOCK_STREAM", "0"), ("AF_NETLINK", "SOCK_RAW", "NETLINK_ROUTE")])
def test_ordinary_sockets_need_nothing(row):
    assert infer_capabilities(sockets(row)) == []


def test_refused_sockets_are_read_from_the_syscall_counters():
    every_call_refused = sockets(("AF_PACKET", "SOCK_RAW", "ETH_P_ALL"),
                                 syscalls={"socket": {"count": 1, "errors": {"EPERM": 1}}})
    assert only(infer_capabilities(every_call_refused))["status"] == "denied"
    some_refused = sockets(("AF_PACKET", "SOCK_RAW", "ETH_P_ALL"), ("AF_INET", "SOCK_STREAM", "IPPROTO_IP"),
                           syscalls={"socket": {"count": 2, "errors": {"EPERM": 1}}})
    record = only(infer_capabilities(some_refused))
    assert record["status"] == "possible" and "does not say which" in record["reason"]


# --- setsockopt ------------------------------------------------------------------

def sockopt(option, level="SOL_SOCKET", errno=None, kernel="6.18.44"):
    return profile(kernel=kernel, network={"setsockopts": [use(level=level, option=option, errno=errno)]})


@pytest.mark.parametrize("level,option", [("SOL_IP", "IP_TRANSPARENT"), ("SOL_IPV6", "IPV6_TRANSPARENT"),
                                          ("SOL_SOCKET", "SO_MARK"), ("SOL_SOCKET", "SO_RCVBUFFORCE"),
                                          ("SOL_SOCKET", "SO_SNDBUFFORCE")])
def test_admin_socket_options_need_net_admin(level, option):
    record = only(infer_capabilities(sockopt(option, level)))
    assert (record["capability"], record["status"]) == ("CAP_NET_ADMIN", "inferred")
    assert option in record["reason"] or option == "SO_MARK"


@pytest.mark.parametrize("option", ["SO_REUSEADDR", "SO_RCVBUF", "SO_KEEPALIVE", "IP_FREEBIND"])
def test_ordinary_socket_options_need_nothing(option):
    assert infer_capabilities(sockopt(option)) == []


def test_so_mark_refused_is_denied():
    assert only(infer_capabilities(sockopt("SO_MARK", errno="EPERM")))["status"] == "denied"


def test_so_priority_value_is_invisible_so_only_possible_unless_refused():
    granted = only(infer_capabilities(sockopt("SO_PRIORITY")))
    assert granted["status"] == "possible" and "not in the profile" in granted["reason"]
    assert inferred_required_set([granted]) == []
    # EPERM only happens for priorities above 6: the capability was missing.
    assert only(infer_capabilities(sockopt("SO_PRIORITY", errno="EPERM")))["status"] == "denied"


def test_so_bindtodevice_needs_nothing_on_modern_kernels():
    assert infer_capabilities(sockopt("SO_BINDTODEVICE")) == []


def test_so_bindtodevice_refused_on_modern_kernel_means_rebinding():
    record = only(infer_capabilities(sockopt("SO_BINDTODEVICE", errno="EPERM")))
    assert (record["capability"], record["status"], record["rule"]) == ("CAP_NET_RAW", "denied", "bind-to-device-rebind")


def test_so_bindtodevice_before_5_7_needs_net_raw():
    record = only(infer_capabilities(sockopt("SO_BINDTODEVICE", kernel="5.4.0-150-generic")))
    assert (record["capability"], record["status"]) == ("CAP_NET_RAW", "inferred")


def test_so_bindtodevice_on_unknown_kernel_is_possible():
    record = only(infer_capabilities(sockopt("SO_BINDTODEVICE", kernel="")))
    assert record["status"] == "possible"


# --- ioctl -----------------------------------------------------------------------

def ioctl(request, path="/dev/net/tun", errno=None):
    return profile(ioctls=[use(path=path, request=request, errno=errno)])


def test_tunsetiff_needs_net_admin():
    record = only(infer_capabilities(ioctl("TUNSETIFF")))
    assert record["capability"] == "CAP_NET_ADMIN" and "create a TUN/TAP device" in record["reason"]


@pytest.mark.parametrize("path,request_", [("/dev/net/tun", "TUNGETFEATURES"), ("/dev/tty", "TCGETS")])
def test_other_ioctls_need_nothing(path, request_):
    assert infer_capabilities(ioctl(request_, path)) == []


def test_tunsetiff_refused_is_denied():
    assert only(infer_capabilities(ioctl("TUNSETIFF", errno="EPERM")))["status"] == "denied"


# --- netlink ---------------------------------------------------------------------

def netlink(protocol, op, changes_state, detail=None, errno=None):
    return profile(network={"netlink": [use(protocol=protocol, op=op, detail=detail, changes_state=changes_state,
                                            errno=errno)]})


@pytest.mark.parametrize("op", ["RTM_NEWLINK", "RTM_NEWROUTE", "RTM_NEWRULE", "RTM_NEWQDISC", "RTM_NEWADDR",
                                "RTM_DELLINK", "RTM_DELROUTE", "RTM_DELADDR"])
def test_rtnetlink_changes_need_net_admin(op):
    record = only(infer_capabilities(netlink("NETLINK_ROUTE", op, True, "veth" if op == "RTM_NEWLINK" else None)))
    assert (record["capability"], record["status"], record["rule"]) == ("CAP_NET_ADMIN", "inferred", "netlink-config")
    assert op in record["reason"]


@pytest.mark.parametrize("op,detail", [("RTM_GETLINK", None), ("RTM_GETROUTE", None), ("RTM_NEWLINK", "probe")])
def test_rtnetlink_reads_and_feature_probe_need_nothing(op, detail):
    assert infer_capabilities(netlink("NETLINK_ROUTE", op, False, detail)) == []


@pytest.mark.parametrize("op,changes_state", [("NFT_MSG_NEWTABLE", True), ("NFT_MSG_GETTABLE", False),
                                              ("NFT_MSG_GETGEN", False)])
def test_every_nftables_message_needs_net_admin(op, changes_state):
    assert caps(infer_capabilities(netlink("NETLINK_NETFILTER", op, changes_state, "t"))) == {"CAP_NET_ADMIN"}


def test_netlink_refused_is_denied():
    assert only(infer_capabilities(netlink("NETLINK_ROUTE", "RTM_NEWROUTE", True, errno="EPERM")))["status"] == "denied"


# --- files -----------------------------------------------------------------------

def chowned(path, *owners, uid=0, gid=0, failed_errno=None, succeeded=True):
    entry = {"path": path, "ops": {"chown": use()} if succeeded else {}, "owners": list(owners)}
    if failed_errno:
        entry["failed"] = [use(op="chown", errno=failed_errno)]
    return profile(uid=uid, gid=gid, files=[entry])


def test_chown_to_another_user_needs_cap_chown_with_the_path():
    record = only(infer_capabilities(chowned("/srv/data", "1000:-1")))
    assert (record["capability"], record["status"]) == ("CAP_CHOWN", "inferred")
    assert "/srv/data" in record["reason"] and "1000" in record["reason"]


@pytest.mark.parametrize("owner", ["0:-1", "-1:-1", "0:0", "-1:0"])
def test_chown_to_the_running_user_needs_nothing(owner):
    assert infer_capabilities(chowned("/srv/data", owner)) == []


def test_chgrp_to_a_foreign_group_needs_cap_chown_but_own_group_does_not():
    assert caps(infer_capabilities(chowned("/srv/f", "-1:50", uid=1000, gid=1000))) == {"CAP_CHOWN"}
    assert infer_capabilities(chowned("/srv/f", "1000:1000", uid=1000, gid=1000)) == []


def test_chown_refused_is_denied():
    records = infer_capabilities(chowned("/srv/f", "33:33", uid=1000, gid=1000, failed_errno="EPERM",
                                         succeeded=False))
    assert {(r["rule"], r["status"]) for r in records} == {("chown-other-user", "denied"),
                                                           ("chgrp-other-group", "denied")}


def test_chmod_and_utime_give_no_fowner_because_ownership_is_unknown():
    files = [{"path": "/srv/f", "ops": {"chmod": use(), "utime": use(), "xattr": use()}}]
    assert infer_capabilities(profile(files=files)) == []


def test_writing_net_sysctls_needs_net_admin_other_sysctls_nothing():
    files = [{"path": "/proc/sys/net/ipv4/ip_forward", "ops": {"write": use(), "truncate": use()}},
             {"path": "/proc/sys/net/core/somaxconn", "ops": {"read": use()}},
             {"path": "/proc/sys/vm/overcommit_memory", "ops": {"write": use()}}]
    record = only(infer_capabilities(profile(files=files)))
    assert record["capability"] == "CAP_NET_ADMIN" and "/proc/sys/net/ipv4/ip_forward" in record["reason"]
    assert record["count"] == 2  # write + truncate of one path collapse into one record


def test_refused_net_sysctl_write_is_denied():
    files = [{"path": "/proc/sys/net/ipv4/ip_forward", "ops": {},
              "failed": [use(op="write", errno="EACCES")]}]
    assert only(infer_capabilities(profile(files=files)))["status"] == "denied"


# --- behaviour -------------------------------------------------------------------

def behaving(*rows, syscalls=None):
    return profile(behaviour=[use(kind=k, detail=d) for k, d in rows], syscalls=syscalls or {})


@pytest.mark.parametrize("kind,detail,capability", [
    ("namespace", "unshare:net", "CAP_SYS_ADMIN"),
    ("namespace", "setns:mnt", "CAP_SYS_ADMIN"),
    ("mount", "mount", "CAP_SYS_ADMIN"),
    ("hostname", "sethostname", "CAP_SYS_ADMIN"),
    ("kernel_module", "finit_module", "CAP_SYS_MODULE"),
    ("kernel_module", "kexec_file_load", "CAP_SYS_BOOT"),
    ("clock", "clock_settime", "CAP_SYS_TIME"),
    ("clock", "adjtimex", "CAP_SYS_TIME"),
    ("realtime", "sched_setscheduler", "CAP_SYS_NICE"),
    ("bpf", "bpf", "CAP_BPF"),
    ("perf", "perf_event_open", "CAP_PERFMON"),
    ("kernel_log", "syslog", "CAP_SYSLOG"),
    ("chroot", "chroot", "CAP_SYS_CHROOT"),
    ("raw_io", "iopl", "CAP_SYS_RAWIO"),
    ("reboot", "reboot", "CAP_SYS_BOOT"),
])
def test_behaviour_kinds_imply_their_capability(kind, detail, capability):
    record = only(infer_capabilities(behaving((kind, detail))))
    assert (record["capability"], record["status"]) == (capability, "inferred")
    assert detail in record["reason"]


@pytest.mark.parametrize("kind,detail", [("namespace", "unshare:user"), ("wx_memory", "mmap PROT_WRITE|PROT_EXEC"),
                                         ("sd_notify", "READY"), ("sysv_ipc", "shmget"), ("keyring", "keyctl")])
def test_harmless_behaviour_needs_nothing(kind, detail):
    assert infer_capabilities(behaving((kind, detail))) == []


def test_behaviour_refused_with_eperm_is_denied():
    assert only(infer_capabilities(behaving(("hostname", "sethostname EPERM"))))["status"] == "denied"
    assert only(infer_capabilities(behaving(("kernel_module", "init_module EPERM"))))["status"] == "denied"


def test_behaviour_failing_otherwise_is_possible():
    record = only(infer_capabilities(behaving(("bpf", "bpf EINVAL"))))
    assert record["status"] == "possible" and "EINVAL" in record["reason"]


def test_namespace_refusal_comes_from_the_unshare_counters():
    refused = behaving(("namespace", "unshare:net"), syscalls={"unshare": {"count": 1, "errors": {"EPERM": 1}}})
    assert only(infer_capabilities(refused))["status"] == "denied"


def test_namespaces_beside_a_user_namespace_are_only_possible():
    records = infer_capabilities(behaving(("namespace", "unshare:user"), ("namespace", "unshare:net"),
                                          ("mount", "mount")))
    assert {(r["capability"], r["status"]) for r in records} == {("CAP_SYS_ADMIN", "possible")}
    assert inferred_required_set(records) == []


def test_ptrace_and_signals_to_others_are_only_possible():
    records = infer_capabilities(behaving(("ptrace", "ptrace"), ("signal_other_process", "pid 42")))
    assert {(r["capability"], r["status"]) for r in records} == {("CAP_SYS_PTRACE", "possible"),
                                                                 ("CAP_KILL", "possible")}
    refused = only(infer_capabilities(behaving(("signal_other_process", "pid 42 EPERM"))))
    assert (refused["capability"], refused["status"]) == ("CAP_KILL", "denied")


# --- identity changes ------------------------------------------------------------

def changes(*calls, uid=0, gid=0):
    identity = [{"call": c, "args": a, "result": 0 if e is None else -1, "errno": e, "time": float(i)}
                for i, (c, a, e) in enumerate(calls)]
    return profile(uid=uid, gid=gid, processes=[{"pid": 1, "ppid": None, "exe": EXE, "first_seen": 0.0,
                                                 "execs": [], "identity_changes": identity}])


def test_dropping_root_to_another_user_needs_setuid_setgid():
    records = infer_capabilities(changes(("setgroups", "0, []", None), ("setgid", "33", None),
                                         ("setuid", "33", None)))
    assert inferred_required_set(records) == ["CAP_SETGID", "CAP_SETUID"]
    assert {r["rule"] for r in records} == {"set-groups", "switch-gid", "switch-uid"}


def test_setuid_to_the_current_ids_needs_nothing():
    assert infer_capabilities(changes(("setuid", "1000", None), ("setresgid", "-1, 1000, -1", None),
                                      uid=1000, gid=1000)) == []


def test_setuid_after_dropping_is_judged_against_the_new_ids():
    records = infer_capabilities(changes(("setresuid", "33, 33, 33", None), ("setuid", "33", None),
                                         ("setuid", "0", "EPERM")))
    assert [(r["status"], r["evidence"]) for r in records] == [("inferred", "setresuid(33, 33, 33) -> ok"),
                                                               ("denied", "setuid(0) -> EPERM")]


# --- records ---------------------------------------------------------------------

def test_records_are_deduplicated_and_counts_added():
    rows = [use(family="AF_INET", type="SOCK_STREAM", address="0.0.0.0", port=80, errno=None),
            use(family="AF_INET", type="SOCK_STREAM", address="0.0.0.0", port=80, errno="EACCES")]
    record = only(infer_capabilities(profile(network={"binds": rows})))
    assert record["count"] == 2 and record["status"] == "inferred"


def test_one_record_per_executable():
    row = use(family="AF_PACKET", type="SOCK_RAW", protocol="ETH_P_ALL", by=["/usr/bin/a", "/usr/bin/b"])
    records = infer_capabilities(profile(network={"sockets": [row]}))
    assert sorted(r["exe"] for r in records) == ["/usr/bin/a", "/usr/bin/b"]


def test_custom_table_replaces_the_default():
    table = {"evidence": {"bind": "bind {port}"},
             "rule": [{"id": "any-bind", "fact": "bind", "capability": "CAP_NET_ADMIN", "reason": "bind {port}"}]}
    record = only(infer_capabilities(bind(8080), table))
    assert (record["capability"], record["reason"], record["evidence"]) == ("CAP_NET_ADMIN", "bind 8080", "bind 8080")


def test_inferred_required_set_counts_only_inferred():
    records = [{"capability": "CAP_B", "status": "inferred"}, {"capability": "CAP_A", "status": "inferred"},
               {"capability": "CAP_C", "status": "possible"}, {"capability": "CAP_D", "status": "denied"},
               {"capability": "CAP_A", "status": "inferred"}]
    assert inferred_required_set(records) == ["CAP_A", "CAP_B"]


def test_empty_or_odd_profiles_give_nothing():
    assert infer_capabilities({}) == []
    assert infer_capabilities({"network": None, "files": [{"path": "/x"}], "behaviour": [{}]}) == []


# --- real programs ---------------------------------------------------------------

def real_program(test):
    """Mark a test that traces a real program: root (netns, TUN/TAP, chown) and strace."""
    test = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: binds below 1024, netns, TUN/TAP, chown")(test)
    return pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")(test)


def program(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {name if name != 'nft' else 'nftables'})")
    return path


def traced_inference(tmp_path, *command: str, duration: float | None = None) -> tuple[list[dict], dict]:
    out = tmp_path / "profile.json"
    args = ["run", "-q", "--no-cap-probe", "--force", "-o", str(out)]
    if duration:
        args += ["--duration", str(duration)]
    done = capprobe(*args, "--", *command)
    assert out.exists(), done.stderr
    prof = load(out)
    return infer_capabilities(prof), prof


def with_capability(records: list[dict], capability: str, status: str = "inferred") -> list[dict]:
    return [r for r in records if r["capability"] == capability and r["status"] == status]


@pytest.fixture
def netns():
    """A throwaway network namespace with loopback up; always removed."""
    ip = program("ip")
    name = "cpinf" + uuid.uuid4().hex[:8]
    subprocess.run([ip, "netns", "add", name], check=True)
    try:
        subprocess.run([ip, "netns", "exec", name, ip, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run([ip, "netns", "del", name], check=False)
        listed = subprocess.run([ip, "netns", "list"], capture_output=True, text=True).stdout
        assert name not in listed, f"namespace {name} left behind"


@real_program
def test_real_http_server_on_port_80_needs_net_bind_service(tmp_path, netns):
    # In the namespace too: port 80 on the host may be taken, and nothing leaks out.
    records, _ = traced_inference(tmp_path, program("ip"), "netns", "exec", netns,
                                  SYSTEM_PYTHON, "-m", "http.server", "80", "--bind", "127.0.0.1",
                                  duration=2)
    found = with_capability(records, "CAP_NET_BIND_SERVICE")
    assert found and found[0]["exe"] == SYSTEM_PYTHON and ":80" in found[0]["reason"], records


@real_program
def test_real_tuntap_add_needs_net_admin(tmp_path, netns):
    ip = program("ip")
    try:
        records, _ = traced_inference(tmp_path, ip, "netns", "exec", netns, ip, "tuntap", "add", "dev", "cpt0",
                                      "mode", "tun")
    finally:
        subprocess.run([ip, "netns", "exec", netns, ip, "tuntap", "del", "dev", "cpt0", "mode", "tun"],
                       capture_output=True)
    tun = [r for r in with_capability(records, "CAP_NET_ADMIN") if r["rule"] == "tun-create"]
    assert tun and "create a TUN/TAP device" in tun[0]["reason"], records


@real_program
def test_real_nft_add_table_needs_net_admin(tmp_path, netns):
    records, _ = traced_inference(tmp_path, program("ip"), "netns", "exec", netns, program("nft"),
                                  "add", "table", "inet", "capprobe_t")
    nft = [r for r in with_capability(records, "CAP_NET_ADMIN") if r["rule"] == "netlink-config"]
    assert any("NFT_MSG_NEWTABLE" in r["reason"] for r in nft), records


@real_program
def test_real_tcpdump_capture_needs_net_raw(tmp_path, netns):
    tcpdump = program("tcpdump")
    # Send UDP to loopback until tcpdump has its one packet (it starts slowly under strace).
    sender = ("import socket, time\n"
              "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "for _ in range(100):\n"
              "    s.sendto(b'x', ('127.0.0.1', 9))\n"
              "    time.sleep(0.1)\n")
    script = (f"{tcpdump} -i lo -c 1 -w /dev/null & pid=$!; "
              f"{SYSTEM_PYTHON} -c \"$SENDER\" & sender=$!; wait $pid; kill $sender 2>/dev/null; wait")
    records, _ = traced_inference(tmp_path, "/usr/bin/env", f"SENDER={sender}", program("ip"), "netns", "exec",
                                  netns, "/bin/sh", "-c", script, duration=30)
    raw = [r for r in with_capability(records, "CAP_NET_RAW") if r["rule"] == "packet-socket"]
    assert raw and raw[0]["exe"] == os.path.realpath(tcpdump), records


@real_program
def test_real_chown_to_another_user_needs_cap_chown(tmp_path):
    target = tmp_path / "owned"
    target.write_text("x")
    records, _ = traced_inference(tmp_path, program("chown"), "1000", str(target))
    chown = with_capability(records, "CAP_CHOWN")
    assert chown and str(target) in chown[0]["reason"], records


@real_program
def test_real_true_needs_nothing(tmp_path):
    records, _ = traced_inference(tmp_path, "/bin/true")
    assert records == []


def test_chmod_of_a_file_the_user_does_not_own_needs_fowner_and_own_files_do_not():
    by = {"count": 1, "by": ["/usr/bin/restic"]}
    profile = {"run": {"user": {"uid": 65534, "gid": 65534}}, "host": {"kernel": "6.18"}, "processes": [],
               "syscalls": {}, "network": {},
               "files": [{"path": "/srv/r/key", "ops": {"chmod": by}, "stat": {"mode": "0600", "uid": 4242, "gid": 0}},
                         {"path": "/srv/r/mine", "ops": {"chmod": by}, "stat": {"mode": "0600", "uid": 65534, "gid": 0}},
                         {"path": "/srv/r/gone", "ops": {"chmod": by}, "stat": {"missing": True}}]}
    records = infer_capabilities(profile)
    fowner = [r for r in records if r["capability"] == "CAP_FOWNER"]
    assert [(r["status"], r["rule"]) for r in fowner] == [("inferred", "fowner-chmod-foreign-file")]
    assert "/srv/r/key" in fowner[0]["reason"] and "4242" in fowner[0]["reason"]
    assert inferred_required_set(records) == ["CAP_FOWNER"]


# --- DAC: root on another user's files (modes at the end of the run) ------------

def dnsmasq_pid_file(dir_mode="0755", dir_uid=112, dir_gid=112, write_uids=(None,), **extra) -> dict:
    """dnsmasq as root creates its pid file in /run/dnsmasq, a directory of user dnsmasq."""
    return {"path": "/run/dnsmasq/dnsmasq.pid", "ops": {"create": use(), "write": use()},
            "write_uids": list(write_uids), "stat": {"type": "file", "mode": "0644", "uid": 0, "gid": 0},
            "dir_stat": {"type": "dir", "mode": dir_mode, "uid": dir_uid, "gid": dir_gid}, **extra}


def dropping_to(uid: int) -> list[dict]:
    return [{"pid": 10, "ppid": None, "exe": EXE, "first_seen": 0.0,
             "identity_changes": [{"call": "setresuid", "args": f"{uid}, {uid}, {uid}", "result": 0,
                                   "time": 2.0}]}]


def test_root_creating_in_another_users_0755_directory_needs_dac_override():
    record = only(infer_capabilities(profile(files=[dnsmasq_pid_file()])))
    assert (record["capability"], record["status"], record["rule"]) == \
        ("CAP_DAC_OVERRIDE", "inferred", "dac-override-write")
    assert "/run/dnsmasq/dnsmasq.pid" in record["reason"] and "uid 112" in record["reason"]
    assert "0755" in record["reason"] and "end of the run" in record["reason"]


def test_root_testing_w_ok_on_another_users_0750_directory_before_dropping_needs_dac_override():
    # The collector hands a test done as root to the uid the process switches to: write_uids [null, 998].
    state = {"path": "/var/lib/vt-wt", "ops": {"write_test": use()}, "write_uids": [None, 998],
             "stat": {"type": "dir", "mode": "0750", "uid": 998, "gid": 998}}
    records = infer_capabilities(profile(files=[state], processes=dropping_to(998)))
    dac = [r for r in records if r["capability"] == "CAP_DAC_OVERRIDE"]
    assert [(r["status"], r["rule"]) for r in dac] == [("inferred", "dac-override-write")]
    assert "/var/lib/vt-wt" in dac[0]["reason"]


@pytest.mark.parametrize("entry", [
    dnsmasq_pid_file(dir_uid=0, dir_gid=0),                         # root's own 0755 directory
    dnsmasq_pid_file(dir_mode="0777"),                              # writable by everyone
    dnsmasq_pid_file(dir_mode="0770", dir_gid=0),                   # root's group may write
    dnsmasq_pid_file(write_uids=(112,)),                            # the dropped user created it
    {**dnsmasq_pid_file(), "dir_stat": {"missing": True}},           # no stat recorded
    {"path": "/srv/own", "ops": {"write": use()}, "write_uids": [None],
     "stat": {"type": "file", "mode": "0644", "uid": 0, "gid": 0}},  # root writes root's file
    {"path": "/proc/sys/vm/overcommit_memory", "ops": {"write": use()}, "write_uids": [None],
     "stat": {"type": "file", "mode": "0444", "uid": 0, "gid": 0}},  # /proc is not mode-checked
])
def test_root_on_files_its_modes_allow_needs_no_dac_override(entry):
    assert [r for r in infer_capabilities(profile(files=[entry])) if r["rule"].startswith("dac-")] == []


def test_a_non_root_user_writing_a_file_it_cannot_is_not_judged():
    entry = dnsmasq_pid_file(write_uids=(None,))
    assert infer_capabilities(profile(uid=1000, gid=1000, files=[entry])) == []


def test_root_reading_another_users_0600_file_needs_dac_read_search_unless_it_dropped():
    key = {"path": "/srv/key", "ops": {"read": use()}, "stat": {"type": "file", "mode": "0600", "uid": 4242, "gid": 4242}}
    record = only(infer_capabilities(profile(files=[key])))
    assert (record["capability"], record["rule"]) == ("CAP_DAC_READ_SEARCH", "dac-read-search")
    assert "/srv/key" in record["reason"] and "0600" in record["reason"]
    # After a drop to uid 4242 the read may have been the owner's: reads keep no uid.
    assert [r for r in infer_capabilities(profile(files=[key], processes=dropping_to(4242)))
            if r["capability"] == "CAP_DAC_READ_SEARCH"] == []


def test_directory_chowned_after_the_create_makes_it_only_possible():
    run_dir = {"path": "/run/dnsmasq", "ops": {"chown": use(first_seen=5.0)}, "owners": ["112:112"],
               "stat": {"type": "dir", "mode": "0755", "uid": 112, "gid": 112}}
    records = [r for r in infer_capabilities(profile(files=[dnsmasq_pid_file(), run_dir]))
               if r["capability"] == "CAP_DAC_OVERRIDE"]
    assert [r["status"] for r in records] == ["possible"]
    assert "chown after it" in records[0]["reason"]


def test_root_refused_creating_in_another_users_directory_is_denied():
    entry = dnsmasq_pid_file()
    entry["ops"], entry["failed"] = {}, [use(op="create", errno="EACCES")]
    assert [(r["capability"], r["status"]) for r in infer_capabilities(profile(files=[entry]))] == \
        [("CAP_DAC_OVERRIDE", "denied")]


ROOT_ON_NOBODYS_DIRECTORIES = """
import os, sys
run = os.path.join(sys.argv[1], "run")
os.mkdir(run); os.chown(run, 65534, 65534); os.chmod(run, 0o755)
with open(os.path.join(run, "app.pid"), "w") as pid_file:
    pid_file.write("1\\n")
state = os.path.join(sys.argv[1], "state")
os.mkdir(state); os.chown(state, 65534, 65534); os.chmod(state, 0o750)
sys.exit(0 if os.access(state, os.W_OK) else 3)
"""


@real_program
def test_real_inference_agrees_with_the_tracepoint_on_dac_override(tmp_path):
    """Root creates a file in nobody's 0755 directory and tests W_OK on nobody's 0750 one."""
    profiles = {}
    for probe in ("off", "tracefs"):
        workdir = tmp_path / probe
        workdir.mkdir()
        out = tmp_path / f"{probe}.json"
        done = capprobe("run", "-q", "--force", "--cap-probe", probe, "-o", str(out), "--",
                        SYSTEM_PYTHON, "-c", ROOT_ON_NOBODYS_DIRECTORIES, str(workdir))
        assert out.exists(), done.stderr
        profiles[probe] = load(out)
    if profiles["tracefs"]["capabilities"].get("method") != "tracefs":
        pytest.skip(f"the tracefs capability probe did not run: {profiles['tracefs']['capabilities']}")
    kernel = {t for u in profiles["tracefs"]["capabilities"]["uses"]
              if u["capability"] == "CAP_DAC_OVERRIDE" and u["status"] == "required"
              for t in u.get("targets") or []}
    assert kernel == {str(tmp_path / "tracefs" / "run" / "app.pid"), str(tmp_path / "tracefs" / "state")}
    inferred = profiles["off"]["capabilities"]
    assert inferred["method"] == "inferred"
    dac = [u for u in inferred["uses"] if u["capability"] == "CAP_DAC_OVERRIDE" and u["status"] == "inferred"]
    assert {u["evidence"] for u in dac} == {f"create {tmp_path / 'off' / 'run' / 'app.pid'} -> ok",
                                           f"write_test {tmp_path / 'off' / 'state'} -> ok"}
    assert "CAP_DAC_OVERRIDE" in profiles["tracefs"]["capabilities"]["required"]
    assert inferred["required"] == profiles["tracefs"]["capabilities"]["required"]
