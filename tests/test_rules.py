"""Each directive rule on hand-made profiles, both outcomes (pure: no process started)."""

from __future__ import annotations

import copy

import pytest

from capprobe.needs import bind_plan
from capprobe.rules import capabilities, devices, filesystem, identity, kernel, network, process
from capprobe.rules.base import RuleContext, UnitOptions

BASE = {
    "schema": "capprobe/profile/v1",
    "host": {"hostname": "h", "kernel": "6.18", "architecture": "x86_64"},
    "run": {"command": ["/usr/bin/svc", "--flag"], "executable": "/usr/bin/svc", "ended_by": "duration",
            "duration": 30.0, "exit_status": 0, "started": 0, "user": {"uid": 0, "name": "root"}},
    "processes": [{"pid": 1, "ppid": None, "exe": "/usr/bin/svc", "execs": [], "identity_changes": []}],
    "executables": [{"path": "/usr/bin/svc", "setuid": False, "setgid": False, "file_caps": False}],
    "syscalls": {"read": {"count": 1}},
    "files": [],
    "devices": [],
    "ioctls": [],
    "network": {"sockets": [], "binds": [], "listens": [], "connects": [], "sends": [], "accepts": [],
                "setsockopts": [], "netlink": []},
    "behaviour": [],
    "capabilities": {"method": "tracefs", "required": [], "uses": []},
}
BY = {"count": 1, "first_seen": 1.0, "by": ["/usr/bin/svc"]}


def profile(**changes) -> dict:
    p = copy.deepcopy(BASE)
    for key, value in changes.items():
        if key in p["network"]:
            p["network"][key] = value
        elif key in p["run"] and key != "user":
            p["run"][key] = value
        else:
            p[key] = value
    return p


def decide(fn, p, **opts) -> dict:
    """{key: values} from one rule."""
    out: dict = {}
    for d in fn(RuleContext(p, UnitOptions(name="svc", **opts))):
        out.setdefault(d.key, []).append(d.values)
        assert d.comment and "\n" not in d.comment
    return {k: v[0] if len(v) == 1 else v for k, v in out.items()}


def f(path, *ops, **extra):
    return {"path": path, "ops": {op: dict(BY) for op in ops}, **extra}


def b(kind, detail):
    return {"kind": kind, "detail": detail, **BY}


# -- identity ----------------------------------------------------------------

def test_identity_user_from_option_and_dynamic_when_no_state():
    assert decide(identity.identity, profile(), user="nobody") == {"User": (b"nobody",), "Group": (b"nogroup",)}
    assert decide(identity.identity, profile()) == {"DynamicUser": ("yes",)}
    state = profile(files=[f("/var/lib/svc/db", "create", "write")])
    assert decide(identity.identity, state) == {"DynamicUser": ("yes",)}


def test_identity_stays_root_when_writing_outside_managed_dirs_or_switching_user():
    assert decide(identity.identity, profile(files=[f("/opt/svc/db", "create")])) == {}
    switching = profile(processes=[{"pid": 1, "ppid": None, "exe": "/usr/bin/svc", "execs": [],
                                    "identity_changes": [{"call": "setuid", "args": "33", "result": 0}]}])
    assert decide(identity.identity, switching) == {}


# -- process -------------------------------------------------------------------

def test_type_notify_oneshot_exec():
    assert decide(process.service_type, profile(behaviour=[b("sd_notify", "READY=1")]))["Type"] == ("notify",)
    assert decide(process.service_type, profile(ended_by="exit", duration=2.0))["Type"] == ("oneshot",)
    assert decide(process.service_type, profile())["Type"] == ("exec",)


def test_exec_start_is_the_traced_command_or_the_option():
    assert decide(process.exec_start, profile())["ExecStart"] == (b"/usr/bin/svc", b"--flag")
    assert decide(process.exec_start, profile(), exec_start=["/x", "a b"])["ExecStart"] == (b"/x", b"a b")


def test_no_new_privileges_both_ways():
    assert decide(process.no_new_privileges, profile())["NoNewPrivileges"] == ("yes",)
    suid = profile(executables=[{"path": "/usr/bin/sudo", "setuid": True, "setgid": False, "file_caps": False}])
    assert decide(process.no_new_privileges, suid)["NoNewPrivileges"] == ("no",)


@pytest.mark.parametrize("fn,key,kind,detail", [
    (process.lock_personality, "LockPersonality", "personality", "0x8"),
    (process.memory_deny_write_execute, "MemoryDenyWriteExecute", "wx_memory", "mmap PROT_WRITE|PROT_EXEC"),
    (process.restrict_realtime, "RestrictRealtime", "realtime", "sched_setscheduler"),
    (process.remove_ipc, "RemoveIPC", "sysv_ipc", "shmget"),
    (kernel.protect_kernel_tunables, "ProtectKernelTunables", "write_kernel_tunable", "/proc/sys/net/x"),
    (kernel.protect_kernel_modules, "ProtectKernelModules", "kernel_module", "finit_module"),
    (kernel.protect_kernel_logs, "ProtectKernelLogs", "kernel_log", "syslog"),
    (kernel.protect_clock, "ProtectClock", "clock", "clock_settime"),
    (kernel.protect_hostname, "ProtectHostname", "hostname", "sethostname"),
    (kernel.private_mounts, "PrivateMounts", "mount", "mount"),
])
def test_toggle_rules_on_unless_the_behaviour_was_seen(fn, key, kind, detail):
    assert decide(fn, profile())[key] == ("yes",)
    assert decide(fn, profile(behaviour=[b(kind, detail)]))[key] == ("no",)


def test_personality_query_does_not_unlock():
    assert decide(process.lock_personality, profile(behaviour=[b("personality", "0xffffffff")]))["LockPersonality"] == ("yes",)


def test_keyring_and_suid_modes():
    assert decide(process.keyring_mode, profile())["KeyringMode"] == ("private",)
    assert decide(process.keyring_mode, profile(behaviour=[b("keyring", "add_key")]))["KeyringMode"] == ("shared",)
    assert decide(process.restrict_suid_sgid, profile())["RestrictSUIDSGID"] == ("yes",)
    setuid = profile(files=[f("/srv/x", "chmod", modes=["4755"])])
    assert decide(process.restrict_suid_sgid, setuid)["RestrictSUIDSGID"] == ("no",)


# -- capabilities ----------------------------------------------------------------

def test_bounding_set_empty_or_exactly_required_and_ambient_only_for_non_root():
    assert decide(capabilities.bounding_set, profile())["CapabilityBoundingSet"] == ()
    caps = {"method": "tracefs", "required": ["CAP_NET_ADMIN"], "uses": [
        {"capability": "CAP_NET_ADMIN", "status": "required", "reason": "create a TUN/TAP device", "count": 1, "exe": "/x"},
        {"capability": "CAP_SYS_ADMIN", "status": "advisory", "reason": "overcommit", "count": 9, "exe": "/x"}]}
    got = list(capabilities.bounding_set(RuleContext(profile(capabilities=caps), UnitOptions())))
    assert got[0].values == ("CAP_NET_ADMIN",) and "CAP_SYS_ADMIN" in got[0].comment
    assert decide(capabilities.ambient, profile(capabilities=caps), user="nobody") == {"AmbientCapabilities": ("CAP_NET_ADMIN",)}
    root = profile(capabilities=caps, files=[f("/opt/x", "create")])
    assert decide(capabilities.ambient, root) == {}


def test_dac_on_a_few_paths_becomes_ownership_not_privilege():
    caps = {"method": "tracefs", "required": ["CAP_DAC_OVERRIDE", "CAP_NET_ADMIN"], "uses": [
        {"capability": "CAP_DAC_OVERRIDE", "status": "required", "reason": "open a file that mode bits deny",
         "targets": ["/etc/svc/recovery.token"], "count": 1, "exe": "/x"},
        {"capability": "CAP_NET_ADMIN", "status": "required", "reason": "tun", "count": 1, "exe": "/x"}]}
    written = [f("/etc/svc/recovery.token", "write")]  # in the unit's own /etc/svc: it may be given
    got = decide(capabilities.bounding_set, profile(capabilities=caps, files=written), user="nobody")
    assert got["CapabilityBoundingSet"] == ("CAP_NET_ADMIN",)
    # a path the allow-list keeps as it is (a system file): the capability stays
    shadow = copy.deepcopy(caps)
    shadow["uses"][0]["targets"] = ["/etc/shadow"]
    assert decide(capabilities.bounding_set, profile(capabilities=shadow, files=[f("/etc/shadow", "write")]),
                  user="nobody")["CapabilityBoundingSet"] == ("CAP_DAC_OVERRIDE", "CAP_NET_ADMIN")
    many = copy.deepcopy(caps)
    many["uses"][0]["targets"] = [f"/srv/{i}" for i in range(10)]
    assert decide(capabilities.bounding_set, profile(capabilities=many), user="nobody")["CapabilityBoundingSet"] == (
        "CAP_DAC_OVERRIDE", "CAP_NET_ADMIN")


# -- filesystem --------------------------------------------------------------------

def test_read_write_paths_collapse_files_and_directories():
    p = profile(files=[
        f("/opt/tillered/arctic.db", "create", "write"),
        f("/opt/tillered/peer.key.tmp", "create", "rename_from"),
        f("/opt/tillered/peer.key", "rename_to"),
        f("/etc/arctic/recovery.token", "write", "truncate"),
        f("/etc/arctic.conf", "read"),
        f("/var/lib/svc/state", "create", "write"),
        f("/var/log/svc/svc.log", "write"),
        f("/proc/self/oom_score_adj", "write"),
    ])
    got = decide(filesystem.read_write_paths, p)
    assert got["ReadWritePaths"] == (b"/etc/arctic/recovery.token", b"/opt/tillered")
    assert got["StateDirectory"] == (b"svc",) and got["LogsDirectory"] == (b"svc",)


def _dir(uid, gid, mode):
    return {"type": "dir", "dev": 1, "ino": 2, "mode": mode, "uid": uid, "gid": gid}


def test_existing_directory_a_managed_directive_would_change_is_only_opened():
    """vm-tests, issue 9: LogsDirectory= re-owned Debian's /var/log/nginx (root:adm) to root:root."""
    conf = f("/etc/svc.conf", "write")  # written outside managed directories: a root unit
    log = f("/var/log/nginx/error.log", "create", "write", dir_stat=_dir(0, 4, "0755"))
    got = decide(filesystem.read_write_paths, profile(files=[conf, log]))
    assert "LogsDirectory" not in got
    assert got["ReadWritePaths"] == (b"/etc/svc.conf", b"/var/log/nginx")  # it exists: no "-"
    (comment,) = [d.comment for d in filesystem.read_write_paths(RuleContext(profile(files=[conf, log]),
                                                                             UnitOptions())) if d.key == "ReadWritePaths"]
    assert "existing /var/log/nginx is root:adm; LogsDirectory= would re-own it to root:root" in comment
    # the same directory as systemd would leave it: the *Directory= stays
    log["dir_stat"] = _dir(0, 0, "0755")
    assert decide(filesystem.read_write_paths, profile(files=[conf, log]))["LogsDirectory"] == (b"nginx",)


def test_managed_directory_mode_is_the_existing_one_or_the_directory_is_only_opened():
    """vm-tests: StateDirectory= widened knot-resolver's 0750 /var/lib/knot-resolver to 0755."""
    kept = f("/var/lib/svc", "write_test", stat=_dir(65534, 65534, "0750"))
    got = decide(filesystem.read_write_paths, profile(files=[kept]), user="nobody")
    assert got["StateDirectory"] == (b"svc",) and got["StateDirectoryMode"] == ("0750",)
    assert "ReadWritePaths" not in got
    # two existing state directories disagree on the mode: the default, and the other is only opened
    other = f("/var/lib/svc2", "write_test", stat=_dir(65534, 65534, "0700"))
    got = decide(filesystem.read_write_paths, profile(files=[kept, other]), user="nobody")
    assert "StateDirectoryMode" not in got and "StateDirectory" not in got
    assert got["ReadWritePaths"] == (b"/var/lib/svc", b"/var/lib/svc2")
    # another user's directory, for a unit running as nobody: opened, never re-owned
    root_owned = f("/var/lib/svc", "write_test", stat=_dir(0, 0, "0755"))
    got = decide(filesystem.read_write_paths, profile(files=[root_owned]), user="nobody")
    assert "StateDirectory" not in got and got["ReadWritePaths"] == (b"/var/lib/svc",)
    # DynamicUser=: systemd manages its private directories itself, as before
    got = decide(filesystem.read_write_paths, profile(files=[root_owned]), dynamic_user=True)
    assert got["StateDirectory"] == (b"svc",) and "StateDirectoryMode" not in got


def test_exec_reload_runs_with_full_privileges_when_the_main_process_left_the_units_uid():
    run = {"main_pid": 1, "exercises": [{"command": "kill -HUP $MAINPID", "at": 1.0, "exit": 0,
                                         "signals_to_target": [{"signal": "SIGHUP", "pid": 1}],
                                         "target_alive_after": True}]}
    p = profile()
    p["run"].update(run)
    assert decide(process.exec_reload, p)["ExecReload"][0] == "/bin/sh"
    p["processes"][0]["identity_changes"] = [{"call": "setresuid", "args": "-1, 997, -1", "result": 0}]
    assert decide(process.exec_reload, p)["ExecReload"] == ("+/bin/sh", "-c", b"kill -HUP $MAINPID")


def test_nested_entries_keep_the_outermost_and_hostile_paths_widen():
    p = profile(files=[f("/srv/a/b/c", "create"), f("/srv/a/x", "mkdir"),
                       f("/srv/ev\nil/f", "write")])
    got = decide(filesystem.read_write_paths, p)
    assert got["ReadWritePaths"] == (b"/srv",)  # the newline path widened to /srv, which holds the rest


def test_run_is_listed_read_only_unless_written_directly():
    """systemd 252 leaves /run writable under ProtectSystem=strict (issue 14): the unit lists it."""
    assert decide(filesystem.read_only_paths, profile())["ReadOnlyPaths"] == (b"/run",)
    # a runtime directory below /run is reopened by RuntimeDirectory=, /run itself stays closed
    below = profile(files=[f("/run/svc/svc.sock", "create")])
    assert decide(filesystem.read_write_paths, below)["RuntimeDirectory"] == (b"svc",)
    assert decide(filesystem.read_only_paths, below)["ReadOnlyPaths"] == (b"/run",)
    # a pid file directly in /run opens /run: then /run/systemd is what stays read-only
    direct = profile(files=[f("/run/svc.pid", "create", "write")])
    assert decide(filesystem.read_write_paths, direct)["ReadWritePaths"] == (b"/run",)
    assert decide(filesystem.read_only_paths, direct)["ReadOnlyPaths"] == (b"/run/systemd",)
    # ... unless the service writes there too, through that same entry
    both = profile(files=[f("/run/svc.pid", "create"), f("/run/systemd/svc-extra", "create")])
    assert decide(filesystem.read_only_paths, both) == {}


def test_protect_home_and_private_tmp():
    assert decide(filesystem.protect_home, profile())["ProtectHome"] == ("yes",)
    assert decide(filesystem.protect_home, profile(files=[f("/home/u/.cfg", "read")]))["ProtectHome"] == ("read-only",)
    assert decide(filesystem.private_tmp, profile(files=[f("/tmp/mine", "create", "delete")]))["PrivateTmp"] == ("yes",)
    assert decide(filesystem.private_tmp, profile(files=[f("/tmp/.X11-unix/X0", "read")]))["PrivateTmp"] == ("no",)


# -- devices ------------------------------------------------------------------------

def test_private_devices_or_exact_device_allow():
    null = [{"path": "/dev/null", "kind": "char", "major": 1, "minor": 3, "access": "rw", **BY}]
    assert decide(devices.devices, profile(devices=null)) == {"PrivateDevices": ("yes",)}
    tun = [{"path": "/dev/net/tun", "kind": "char", "major": 10, "minor": 200, "access": "rw", **BY}]
    got = decide(devices.devices, profile(devices=tun))
    assert got == {"DevicePolicy": ("closed",), "DeviceAllow": (b"/dev/net/tun", "rw")}


# -- network -------------------------------------------------------------------------

def sock(family, stype="SOCK_STREAM"):
    return {"family": family, "type": stype, "protocol": "0", **BY}


def test_address_families_exact_or_none_and_private_network():
    assert decide(network.restrict_address_families, profile())["RestrictAddressFamilies"] == ("none",)
    assert decide(network.private_network, profile()) == {"PrivateNetwork": ("yes",)}
    p = profile(sockets=[sock("AF_INET"), sock("AF_NETLINK"), sock("AF_INET6")])
    assert decide(network.restrict_address_families, p)["RestrictAddressFamilies"] == ("AF_INET", "AF_INET6", "AF_NETLINK")
    assert decide(network.private_network, p) == {}
    assert decide(network.private_network, profile(sockets=[sock("AF_UNIX")])) == {"PrivateNetwork": ("yes",)}


def bind(port, kind="SOCK_DGRAM", family="AF_INET", by="/usr/bin/svc", address="0.0.0.0"):
    return {"family": family, "type": kind, "address": address, "port": port, "errno": None,
            **BY, "by": [by]}


def test_socket_bind_allow_exact_ports():
    binds = [bind(8080, "SOCK_STREAM"), bind(5353)]
    got = decide(network.socket_bind, profile(sockets=[sock("AF_INET")], binds=binds))
    assert got == {"SocketBindAllow": [("tcp:8080",), ("udp:5353",)], "SocketBindDeny": ("any",)}
    assert decide(network.socket_bind, profile(sockets=[sock("AF_INET")])) == {"SocketBindDeny": ("any",)}


def test_socket_bind_comment_says_debian_12_systemd_ignores_it():
    p = profile(sockets=[sock("AF_INET")], binds=[bind(53)])
    (allow,) = [d for d in network.socket_bind(RuleContext(p, UnitOptions())) if d.key == "SocketBindAllow"]
    assert "systemd 252" in allow.comment and "BPF_FRAMEWORK" in allow.comment


def test_resolver_source_ports_are_not_a_listening_set():
    """udp:53 and tcp:53 (listened) stay; 36 random source ports (issue 9 #4) do not."""
    sources = [bind(port) for port in range(1100, 65000, 1800)]  # 36 ports, most outside the range
    binds = [bind(53), bind(53, "SOCK_STREAM"), *sources]
    listens = [{"socket": "TCP:[0.0.0.0:53]", "errno": None, **BY}]
    p = profile(sockets=[sock("AF_INET")], binds=binds, listens=listens)
    got = decide(network.socket_bind, p)
    # udp makes source binds: only tcp can be closed
    assert got == {"SocketBindAllow": ("tcp:53",), "SocketBindDeny": ("tcp:any",)}
    plan = bind_plan(binds, listens, (32768, 60999))
    assert len(plan.ephemeral) == 36 and [b["port"] for b in plan.listening] == [53, 53]
    assert "36 udp source binds" in plan.unrestricted_why


def test_only_source_binds_give_no_filter_and_say_why():
    p = profile(sockets=[sock("AF_INET")], binds=[bind(0), bind(40000), bind(40004)])
    assert decide(network.socket_bind, p) == {}
    comment = next(network.restrict_address_families(RuleContext(p, UnitOptions()))).comment
    assert "no SocketBindAllow=/SocketBindDeny=: no stable listening set" in comment
    assert "port 0" in comment


@pytest.mark.parametrize("port_range, expected", [
    ((32768, 60999), {}),                                       # two source ports in the range
    ((50000, 60000), {"SocketBindAllow": [("udp:40000",), ("udp:40004",)], "SocketBindDeny": ("any",)}),
])
def test_ephemeral_range_comes_from_the_host_stamp(port_range, expected):
    p = profile(sockets=[sock("AF_INET")], binds=[bind(40000), bind(40004)])
    p["host"]["ip_local_port_range"] = list(port_range)
    assert decide(network.socket_bind, p) == expected


def test_one_stable_port_inside_the_range_is_a_listening_port():
    """WireGuard listens on udp:51820, inside Linux's default 32768-60999, and binds nothing else."""
    p = profile(sockets=[sock("AF_INET")], binds=[bind(51820)])
    assert decide(network.socket_bind, p) == {"SocketBindAllow": ("udp:51820",), "SocketBindDeny": ("any",)}


def test_listened_port_inside_the_ephemeral_range_is_listening():
    binds = [bind(45000, "SOCK_STREAM"), bind(0)]
    listens = [{"socket": "TCPv6:[[::]:45000]", "errno": None, **BY}]
    p = profile(sockets=[sock("AF_INET")], binds=binds, listens=listens)
    assert decide(network.socket_bind, p) == {"SocketBindAllow": ("tcp:45000",), "SocketBindDeny": ("tcp:any",)}


def test_ip_address_filter_loopback_only_or_open():
    loop = profile(sockets=[sock("AF_INET")],
                   connects=[{"family": "AF_INET", "address": "127.0.0.1", "port": 80, **BY}])
    assert decide(network.ip_address_filter, loop) == {"IPAddressDeny": ("any",), "IPAddressAllow": ("localhost",)}
    out = profile(sockets=[sock("AF_INET")],
                  binds=[{"family": "AF_INET", "type": "SOCK_STREAM", "address": "0.0.0.0", "port": 80, **BY}])
    assert decide(network.ip_address_filter, out) == {}
    assert decide(network.ip_address_filter, profile()) == {"IPAddressDeny": ("any",)}


# -- kernel ---------------------------------------------------------------------------

def test_proc_and_namespaces_and_private_users():
    assert decide(kernel.protect_proc, profile()) == {"ProtectProc": ("invisible",), "ProcSubset": ("pid",)}
    got = decide(kernel.protect_proc, profile(files=[f("/proc/meminfo", "read")],
                                              behaviour=[b("read_other_process", "/proc/1")]))
    assert got == {"ProtectProc": ("default",), "ProcSubset": ("all",)}
    assert decide(kernel.restrict_namespaces, profile())["RestrictNamespaces"] == ("yes",)
    assert decide(kernel.restrict_namespaces, profile(behaviour=[b("namespace", "unshare:net")]))[
        "RestrictNamespaces"] == ("net",)
    assert decide(kernel.private_users, profile()) == {"PrivateUsers": ("yes",)}
    caps = {"method": "tracefs", "required": ["CAP_NET_BIND_SERVICE"], "uses": []}
    assert decide(kernel.private_users, profile(capabilities=caps)) == {}


def test_control_groups():
    assert decide(kernel.protect_control_groups, profile())["ProtectControlGroups"] == ("yes",)
    w = profile(files=[f("/sys/fs/cgroup/x/cgroup.procs", "write")])
    assert decide(kernel.protect_control_groups, w)["ProtectControlGroups"] == ("no",)


def test_hash_fan_out_directories_grant_their_parent():
    p = profile(files=[f("/srv/repo/data/3f/aa11", "create", "write"), f("/srv/repo/data/6e/bb22", "create"),
                       f("/srv/repo/index/cc33", "create")])
    assert decide(filesystem.read_write_paths, p)["ReadWritePaths"] == (b"/srv/repo/data", b"/srv/repo/index")
    single = profile(files=[f("/srv/repo/data/3f/aa11", "create")])
    assert decide(filesystem.read_write_paths, single)["ReadWritePaths"] == (b"/srv/repo/data/3f",)


def test_capprobes_own_notify_socket_does_not_count_as_shared_tmp():
    p = profile(connects=[{"family": "AF_UNIX", "address": "/tmp/capprobe-run-1-x/notify", "port": None, **BY}])
    assert decide(filesystem.private_tmp, p)["PrivateTmp"] == ("no",)
    p["run"]["notify_socket"] = "/tmp/capprobe-run-1-x/notify"
    assert decide(filesystem.private_tmp, p)["PrivateTmp"] == ("yes",)


def test_dynamic_user_only_when_an_unprivileged_user_could_open_everything():
    readable = profile(files=[f("/etc/svc.conf", "read", stat={"mode": "0644", "uid": 0, "gid": 0})])
    assert decide(identity.identity, readable) == {"DynamicUser": ("yes",)}
    secret = profile(files=[f("/etc/svc.conf", "read", stat={"mode": "0600", "uid": 0, "gid": 0})])
    assert decide(identity.identity, secret) == {}
    tun = {"path": "/dev/net/tun", "kind": "char", "major": 10, "minor": 200, "access": "rw",
           "stat": {"mode": "0600", "uid": 0, "gid": 0}, **BY}
    assert decide(identity.identity, profile(devices=[tun])) == {}
    tun["stat"]["mode"] = "0666"
    assert decide(identity.identity, profile(devices=[tun])) == {"DynamicUser": ("yes",)}


def test_no_ownership_trade_when_the_service_chowned_the_files_itself():
    caps = {"method": "tracefs", "required": ["CAP_CHOWN", "CAP_FOWNER"], "uses": [
        {"capability": "CAP_FOWNER", "status": "required", "reason": "change mode or times of a file it does not own",
         "targets": ["/srv/restore/key"], "count": 1, "exe": "/usr/bin/restic"},
        {"capability": "CAP_CHOWN", "status": "required", "reason": "change a file's owner",
         "targets": ["/srv/restore/key"], "count": 1, "exe": "/usr/bin/restic"}]}
    p = profile(capabilities=caps, files=[f("/srv/restore/key", "create", "write", "chown", "chmod")])
    got = decide(capabilities.bounding_set, p, user="nobody")
    assert got["CapabilityBoundingSet"] == ("CAP_CHOWN", "CAP_FOWNER")


@pytest.mark.parametrize("odd", ["/srv/two/a\tb", "/srv/two/x\u202ey", "b64:L3Nydi90d28v/3o="])
def test_one_odd_name_widens_that_path_and_keeps_the_read_write_line(odd):
    # A tab, a bidi control or a non-UTF-8 byte cannot be written in ReadWritePaths=: the
    # renderer refused the whole line while ProtectSystem=strict stayed (service broken).
    from capprobe.synthesis import synthesize
    p = profile(files=[f("/srv/one/ok", "write"), f(odd, "write")])
    unit = synthesize(p, UnitOptions(name="svc"), score=False).unit_text
    assert "\nProtectSystem=strict\n" in unit
    assert "\nReadWritePaths=/srv/one/ok /srv/two\n" in unit
    assert "widened to /srv/two" in unit


def test_crowded_directory_is_granted_whole_and_says_so():
    p = profile(files=[f(f"/srv/cache/obj{i}", "write") for i in range(65)] + [f("/srv/other/db", "write")])
    got = decide(filesystem.read_write_paths, p)
    assert got["ReadWritePaths"] == (b"/srv/cache", b"/srv/other/db")
    plan = filesystem.read_write_plan(RuleContext(p, UnitOptions(name="svc")))
    assert any("granted whole" in note for note in plan[2])


def test_at_the_bound_entries_stay_exact_and_top_level_directories_are_never_opened():
    p = profile(files=[f(f"/srv/cache/obj{i}", "write") for i in range(64)])
    got = decide(filesystem.read_write_paths, p)
    assert b"/srv/cache/obj63" in got["ReadWritePaths"] and len(got["ReadWritePaths"]) == 64
    p = profile(files=[f(f"/etc/svc{i}.conf", "write") for i in range(300)])
    got = decide(filesystem.read_write_paths, p)
    assert b"/etc" not in got["ReadWritePaths"] and len(got["ReadWritePaths"]) == 300
    plan = filesystem.read_write_plan(RuleContext(p, UnitOptions(name="svc")))
    assert any("too spread out" in note for note in plan[2])


def test_past_the_total_bound_the_deepest_entries_move_up():
    # 400 directories with one file each: no directory is crowded, but the list is too long
    p = profile(files=[f(f"/srv/app/d{i}/sub/f", "write") for i in range(400)])
    assert decide(filesystem.read_write_paths, p)["ReadWritePaths"] == (b"/srv/app",)


def test_nesting_keeps_sibling_prefixes_apart():
    p = profile(files=[f("/srv/a/b", "write"), f("/srv/a/b-c", "write"), f("/srv/a/b/c", "write")])
    assert decide(filesystem.read_write_paths, p)["ReadWritePaths"] == (b"/srv/a/b", b"/srv/a/b-c")


def test_synthesis_is_near_linear_in_written_paths():
    # was quadratic: 8,000 paths took 7.5 s, so 20,000 took about 47 s (now about 1 s)
    import time
    from capprobe.synthesis import synthesize
    p = profile(files=[f(f"/srv/d{i % 997}/s{i % 13}/f{i}", "write") for i in range(20000)])
    start = time.monotonic()
    synthesize(p, UnitOptions(name="svc"), score=False)
    assert time.monotonic() - start < 20
