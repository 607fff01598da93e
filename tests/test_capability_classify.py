"""Call-site tables, classification and minimal capability sets (pure)."""

import pytest

from capprobe.capabilities import CAP_NAMES, cap_name, cap_number
from capprobe.facts.capabilities import (
    ADVISORY, REQUIRED, CapabilityUse, classify, load_callsite_tables, minimal_capability_set,
    normalize_frame, partition_uses, syscall_from_stack,
)
from capprobe.tracing.probe import CapCheck

TRACE_HEAD = ("trace_event_raw_event_cap_capable", "cap_capable", "security_capable")


def check(cap: str, *frames: str, granted=True, pid=1, ts=1.0) -> CapCheck:
    return CapCheck(pid=pid, comm="t", cpu=0, mono_ts=ts, cap=cap_number(cap), granted=granted,
                    stack=TRACE_HEAD + frames)


BIND_80 = check("CAP_NET_BIND_SERVICE", "ns_capable", "__inet_bind", "inet_bind_sk",
                "__sys_bind", "__x64_sys_bind", "do_syscall_64")
TUN = check("CAP_NET_ADMIN", "ns_capable", "__tun_chr_ioctl", "__x64_sys_ioctl", "do_syscall_64")
IP_TRANSPARENT = check("CAP_NET_RAW", "ns_capable", "do_ip_setsockopt", "ip_setsockopt",
                       "do_sock_setsockopt", "__sys_setsockopt", "__x64_sys_setsockopt")
MMAP = CapCheck(1, "t", 0, 1.0, cap_number("CAP_SYS_ADMIN"), True, (
    "trace_event_raw_event_cap_capable", "cap_capable", "security_vm_enough_memory_mm",
    "__mmap_region", "do_mmap", "vm_mmap_pgoff", "do_syscall_64"))


def test_capability_names_match_kernel_numbers():
    assert len(CAP_NAMES) == 41
    assert cap_name(0) == "CAP_CHOWN" and cap_name(21) == "CAP_SYS_ADMIN"
    assert cap_name(40) == "CAP_CHECKPOINT_RESTORE" and cap_name(41) == "CAP_41"
    assert cap_number("CAP_NET_BIND_SERVICE") == 10 and cap_number("net_raw") == 13
    with pytest.raises(ValueError):
        cap_number("CAP_NOPE")


def test_bind_below_1024_is_required_with_reason_and_syscall():
    use = classify(BIND_80)
    assert (use.cap, use.call_site, use.syscall, use.kind) == (
        "CAP_NET_BIND_SERVICE", "__inet_bind", "bind", REQUIRED)
    assert use.reason == "bind to a port below 1024"
    assert use.alternatives == {"CAP_NET_BIND_SERVICE"}


def test_wrapper_frames_and_compiler_suffixes_are_skipped():
    use = classify(check("CAP_NET_ADMIN", "file_ns_capable", "netlink_ns_capable",
                         "rtnl_link_get_net_capable.constprop.0", "rtnl_newlink",
                         "netlink_rcv_skb", "__x64_sys_sendto"))
    assert use.call_site == "rtnl_newlink"
    assert use.syscall == "sendto"
    assert normalize_frame("foo.isra.0+0x1/0x2") == "foo"


def test_advisory_is_never_required():
    use = classify(MMAP)
    assert use.kind == ADVISORY and use.advisory_why
    assert use.syscall == "mmap"
    part = partition_uses([use, classify(BIND_80)])
    assert part.advisory == (use,)
    assert [u.cap for u in part.required] == ["CAP_NET_BIND_SERVICE"]
    assert minimal_capability_set(part.required) == {"CAP_NET_BIND_SERVICE"}
    with pytest.raises(ValueError):
        minimal_capability_set([use])


def test_every_measured_advisory_site_in_table_is_advisory():
    tables = load_callsite_tables()
    for (call_site, cap) in tables.advisory:
        frames = (call_site,)
        use = classify(check(cap or "CAP_SYS_ADMIN", *frames))
        assert use.kind == ADVISORY, call_site


def test_unknown_call_site_keeps_raw_function_name():
    use = classify(check("CAP_SYS_RAWIO", "ns_capable", "some_driver_ioctl.isra.0", "__x64_sys_ioctl"))
    assert use.call_site == "some_driver_ioctl"
    assert use.reason == "some_driver_ioctl"
    assert use.kind == REQUIRED


def test_check_without_stack_is_kept_and_required():
    use = classify(CapCheck(1, "t", 0, 1.0, 12, True, ()))
    assert use.call_site == "" and use.kind == REQUIRED and use.syscall is None


def test_ip_transparent_and_tun_need_only_net_admin():
    transparent, tun = classify(IP_TRANSPARENT), classify(TUN)
    assert transparent.alternatives == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert transparent.is_either_or and not tun.is_either_or
    assert minimal_capability_set([transparent, tun]) == {"CAP_NET_ADMIN"}


def test_either_or_alone_prefers_the_narrower_capability():
    assert minimal_capability_set([classify(IP_TRANSPARENT)]) == {"CAP_NET_RAW"}
    bpf = classify(check("CAP_BPF", "bpf_token_capable", "bpf_prog_load", "__sys_bpf"))
    assert bpf.alternatives == {"CAP_BPF", "CAP_SYS_ADMIN"}
    assert minimal_capability_set([bpf]) == {"CAP_BPF"}


def test_set_cover_picks_one_broad_cap_over_two_narrow_ones():
    # CAP_SYS_ADMIN alone covers both; any narrow answer needs two capabilities.
    needs = [{"CAP_BPF", "CAP_SYS_ADMIN"}, {"CAP_PERFMON", "CAP_SYS_ADMIN"}, {"CAP_SYSLOG", "CAP_SYS_ADMIN"}]
    assert minimal_capability_set(needs) == {"CAP_SYS_ADMIN"}
    assert minimal_capability_set([{"CAP_BPF", "CAP_SYS_ADMIN"}, {"CAP_SYS_ADMIN"}]) == {"CAP_SYS_ADMIN"}
    assert minimal_capability_set([]) == set()


def test_either_or_table_entries_from_kernel_source():
    cases = {
        ("CAP_PERFMON", "perf_event_open"): {"CAP_PERFMON", "CAP_SYS_ADMIN"},
        ("CAP_CHECKPOINT_RESTORE", "proc_tid_set_ns_last_pid"): {"CAP_CHECKPOINT_RESTORE", "CAP_SYS_ADMIN"},
        ("CAP_SYSLOG", "check_syslog_permissions"): {"CAP_SYSLOG", "CAP_SYS_ADMIN"},
        ("CAP_DAC_READ_SEARCH", "generic_permission"): {"CAP_DAC_READ_SEARCH", "CAP_DAC_OVERRIDE"},
        # write access: only CAP_DAC_OVERRIDE helps
        ("CAP_DAC_OVERRIDE", "generic_permission"): {"CAP_DAC_OVERRIDE"},
        # bpf_token_capable(CAP_NET_ADMIN) also accepts CAP_SYS_ADMIN
        ("CAP_NET_ADMIN", "bpf_token_capable"): {"CAP_NET_ADMIN", "CAP_SYS_ADMIN"},
    }
    for (cap, frame), expected in cases.items():
        assert classify(check(cap, "ns_capable", frame, "x_caller")).alternatives == expected, cap


def test_denied_first_choice_then_granted_alternative_is_superseded():
    # Without CAP_NET_RAW, IP_TRANSPARENT checks NET_RAW (denied) then NET_ADMIN (granted).
    denied = classify(check("CAP_NET_RAW", "ns_capable", "do_ip_setsockopt", granted=False, ts=1.0))
    granted = classify(check("CAP_NET_ADMIN", "ns_capable", "do_ip_setsockopt", ts=1.1))
    part = partition_uses([granted, denied])
    assert part.superseded == (denied,)
    assert part.optional == ()
    assert [u.cap for u in part.required] == ["CAP_NET_ADMIN"]
    assert minimal_capability_set(part.required) == {"CAP_NET_RAW"}
    # DAC read: READ_SEARCH denied then DAC_OVERRIDE granted -> READ_SEARCH would have done.
    dac_denied = classify(check("CAP_DAC_READ_SEARCH", "capable_wrt_inode_uidgid",
                                "generic_permission", granted=False, ts=2.0))
    dac_granted = classify(check("CAP_DAC_OVERRIDE", "capable_wrt_inode_uidgid",
                                 "generic_permission", ts=2.1))
    part = partition_uses([dac_denied, dac_granted])
    assert minimal_capability_set(part.required) == {"CAP_DAC_READ_SEARCH"}


def test_denied_check_program_survived_is_optional():
    denied_bind = classify(check("CAP_NET_BIND_SERVICE", "ns_capable", "__inet_bind",
                                 granted=False, pid=5, ts=1.0))
    later_other_pid = classify(check("CAP_NET_RAW", "ns_capable", "do_ip_setsockopt", pid=6, ts=1.1))
    part = partition_uses([denied_bind, later_other_pid])
    assert part.optional == (denied_bind,)
    assert part.superseded == ()
    assert [u.pid for u in (x.check for x in part.required)] == [6]


def test_breadth_ranks_sys_admin_broadest():
    breadth = load_callsite_tables().breadth
    assert breadth["CAP_SYS_ADMIN"] == max(breadth.values())
    assert breadth["CAP_NET_RAW"] < breadth["CAP_NET_ADMIN"]


def test_syscall_from_stack():
    assert syscall_from_stack(("cap_capable", "copy_process", "kernel_clone", "__do_sys_clone")) == "clone"
    assert syscall_from_stack(("cap_capable", "__sys_bind", "__x64_sys_bind")) == "bind"
    assert syscall_from_stack(("cap_capable", "kthread")) is None
    assert isinstance(classify(BIND_80), CapabilityUse)


SNDBUFFORCE = check("CAP_NET_ADMIN", "sk_setsockopt", "do_sock_setsockopt", "__sys_setsockopt",
                    "__x64_sys_setsockopt", "do_syscall_64")
CAPSET = check("CAP_SETPCAP", "cap_capset", "security_capset", "__do_sys_capset",
               "__x64_sys_capset", "do_syscall_64")
DROP = "{effective=0x400 /* 1<<CAP_NET_BIND_SERVICE */, permitted=0x400 /* 1<<CAP_NET_BIND_SERVICE */, inheritable=0}"
RAISE_INHERITABLE = DROP.replace("inheritable=0}", "inheritable=0x400 /* 1<<CAP_NET_BIND_SERVICE */}")


@pytest.mark.parametrize("use_check, operand, kind", [
    (SNDBUFFORCE, "SO_SNDBUFFORCE", ADVISORY),    # sd_notify's fd_inc_sndbuf ignores EPERM
    (SNDBUFFORCE, "SO_RCVBUFFORCE", ADVISORY),
    (SNDBUFFORCE, "SO_DEBUG", REQUIRED),          # same call site, another option
    (SNDBUFFORCE, None, REQUIRED),                # no strace fact: the conservative answer
    (CAPSET, DROP, ADVISORY),                     # cap_inh_is_capped cannot matter
    (CAPSET, RAISE_INHERITABLE, REQUIRED),        # it may: keep it
])
def test_operand_decides_advisory_where_the_call_site_alone_cannot(use_check, operand, kind):
    asked = []

    def operand_of(syscall):
        asked.append(syscall)
        return operand

    use = classify(use_check, operand_of=operand_of)
    assert use.kind == kind
    assert asked == [use.syscall] and use.syscall in ("setsockopt", "capset")
    if kind == ADVISORY:
        assert use.advisory_why


def test_operand_is_not_asked_for_call_sites_that_do_not_need_it():
    def operand_of(syscall):
        raise AssertionError("asked")
    assert classify(BIND_80, operand_of=operand_of).kind == REQUIRED
    assert classify(MMAP, operand_of=operand_of).kind == ADVISORY
