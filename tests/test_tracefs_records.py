"""CapCheckParser on recorded tracefs output (pure, no kernel needed)."""

from capprobe.events.tracefs_records import (
    MAX_UNPARSED_EXAMPLES, CapCheck, CapCheckParser, frame_function, parse_lines,
)

# Recorded from `ip link show` on kernel 6.18 (trace_clock mono), trimmed.
RECORDED_IP_LINK_SHOW = """\
# tracer: nop
#
#                                _-----=> irqs-off/BH-disabled
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
              ip-4623    [000] .....   214.957345: cap_capable: cred 00000000c858b33b, target_ns 000000002ffd1c38, capable_ns 000000002ffd1c38, cap 12, ret 0
              ip-4623    [000] .....   214.957351: <stack trace>
 => trace_event_raw_event_cap_capable
 => cap_capable
 => security_capable
 => file_ns_capable
 => netlink_net_capable
 => rtnetlink_rcv_msg
 => netlink_rcv_skb
 => netlink_unicast
 => netlink_sendmsg
 => __sys_sendto
 => __x64_sys_sendto
 => do_syscall_64
 => entry_SYSCALL_64_after_hwframe
              ip-4623    [000] .....   214.957355: cap_capable: cred 00000000c858b33b, target_ns 000000002ffd1c38, capable_ns 000000002ffd1c38, cap 12, ret 0
              ip-4623    [000] .....   214.957357: <stack trace>
 => trace_event_raw_event_cap_capable
 => cap_capable
 => security_capable
 => file_ns_capable
 => netlink_ns_capable
 => rtnl_link_get_net_capable.constprop.0
 => rtnl_newlink
 => netlink_rcv_skb
"""

# Two tasks on two CPUs: B's event lands between A's event and A's stack, and a denied check.
INTERLEAVED = """\
          worker-100   [000] .....   10.000001: cap_capable: cred 0000000000000001, target_ns 0000000000000002, capable_ns 0000000000000002, cap 10, ret 0
     other proc-200   [001] d..1.   10.000002: cap_capable: cred 0000000000000003, target_ns 0000000000000002, capable_ns 0000000000000002, cap 13, ret -1
          worker-100   [000] .....   10.000003: <stack trace>
 => trace_event_raw_event_cap_capable+0x10/0x20
 => cap_capable+0x5a/0x90
 => security_capable+0x3c/0x60
 => ns_capable+0x20/0x40
 => __inet_bind+0x1ab/0x230
 => __sys_bind+0xe0/0x110
     other proc-200   [001] d..1.   10.000004: <stack trace>
 => trace_event_raw_event_cap_capable
 => cap_capable
 => security_capable
 => ns_capable
 => do_ip_setsockopt
"""


def test_recorded_output_pairs_each_event_with_its_stack():
    checks, parser = parse_lines(RECORDED_IP_LINK_SHOW.splitlines())
    assert [c.cap for c in checks] == [12, 12]
    first, second = checks
    assert first == CapCheck(
        pid=4623, comm="ip", cpu=0, mono_ts=214.957345, cap=12, granted=True,
        stack=first.stack,
    )
    assert first.stack[5] == "rtnetlink_rcv_msg"
    assert first.stack[-1] == "entry_SYSCALL_64_after_hwframe"
    # compiler suffixes are kept by the parser (they are part of the symbol); classify strips them
    assert "rtnl_link_get_net_capable.constprop.0" in second.stack
    assert second.stack[-1] == "netlink_rcv_skb"
    assert parser.unparsed_count == 0  # header comments are not "unparsed"


def test_interleaved_cpus_pair_stacks_by_pid_and_cpu():
    checks, parser = parse_lines(INTERLEAVED.splitlines())
    by_pid = {c.pid: c for c in checks}
    assert set(by_pid) == {100, 200}
    assert by_pid[100].stack[4] == "__inet_bind"
    assert by_pid[100].stack[0] == "trace_event_raw_event_cap_capable"  # offsets stripped
    assert by_pid[100].granted and by_pid[100].cap == 10
    assert by_pid[200].stack[-1] == "do_ip_setsockopt"
    assert not by_pid[200].granted and by_pid[200].cap == 13
    assert by_pid[200].comm == "other proc" and by_pid[200].cpu == 1
    assert parser.unparsed_count == 0


def test_event_is_emitted_when_its_stack_is_complete_not_before():
    parser = CapCheckParser()
    lines = INTERLEAVED.splitlines()
    emitted = []
    for index, line in enumerate(lines):
        emitted.append((index, parser.feed(line)))
    # worker's stack ends when "other proc"'s stack header arrives (line 9)
    completed_at = {c.pid: index for index, out in emitted for c in out}
    assert completed_at == {100: 9}
    # the last stack has no following line: flush() completes it
    flushed = parser.flush()
    assert [c.pid for c in flushed] == [200]
    assert flushed[0].stack[-1] == "do_ip_setsockopt"
    assert parser.flush() == []


def test_event_without_stack_is_emitted_when_next_event_of_same_task_arrives():
    parser = CapCheckParser()
    first = "  a-7   [002] .....   1.000000: cap_capable: cred 1, target_ns 2, capable_ns 2, cap 21, ret 0"
    second = "  a-7   [002] .....   1.000010: cap_capable: cred 1, target_ns 2, capable_ns 2, cap 0, ret -1"
    assert parser.feed(first) == []
    out = parser.feed(second)
    assert len(out) == 1 and out[0].cap == 21 and out[0].stack == ()
    rest = parser.flush()
    assert len(rest) == 1 and rest[0].cap == 0 and rest[0].granted is False


def test_denied_eperm_and_unknown_comm():
    line = "           <...>-55    [003] .....   2.5: cap_capable: cred 1, target_ns 2, capable_ns 2, cap 12, ret -1"
    checks, _ = parse_lines([line])
    assert checks == [CapCheck(55, "<...>", 3, 2.5, 12, False, ())]


def test_comm_with_dashes_and_tgid_column_and_no_irq_flags():
    lines = [
        "  kworker-u8-3-42  (   40) [001] .....  3.25: cap_capable: cred 1, target_ns 2, capable_ns 2, cap 1, ret 0",
        "  my-daemon-9001 [000]  4.5: cap_capable: cred 1, target_ns 2, capable_ns 2, cap 2, ret 0",
    ]
    checks, parser = parse_lines(lines)
    assert parser.unparsed_count == 0
    assert [(c.comm, c.pid, c.cpu, c.cap) for c in checks] == [
        ("kworker-u8-3", 42, 1, 1), ("my-daemon", 9001, 0, 2)]


def test_unparsed_lines_are_counted_and_sampled_never_dropped_silently():
    parser = CapCheckParser()
    garbage = [f"this is not a trace line {n}" for n in range(MAX_UNPARSED_EXAMPLES + 5)]
    other_event = "  x-1  [000] .....  1.0: sched_switch: prev_comm=x"
    for line in garbage + [other_event]:
        assert parser.feed(line) == []
    assert parser.unparsed_count == len(garbage) + 1
    assert parser.unparsed_examples == garbage[:MAX_UNPARSED_EXAMPLES]


def test_stray_frames_and_orphan_stacks_are_accounted():
    parser = CapCheckParser()
    parser.feed(" => stray_frame_without_header")
    parser.feed("  a-7  [000] .....  1.0: <stack trace>")  # its event was lost
    parser.feed(" => cap_capable")
    parser.feed(" => foo")
    assert parser.unparsed_count == 1
    assert parser.orphan_stacks == 1
    assert parser.flush() == []


def test_lost_events_lines_are_counted():
    parser = CapCheckParser()
    parser.feed("CPU:1 [LOST 17 EVENTS]")
    parser.feed("CPU:0 [LOST 3 EVENTS]")
    assert parser.lost_events == 20
    assert parser.unparsed_count == 0


def test_frame_function_strips_offsets_only():
    assert frame_function("do_ip_setsockopt+0x5a/0x1230") == "do_ip_setsockopt"
    assert frame_function("rtnl_newlink") == "rtnl_newlink"
