"""strace text -> typed facts -> the profile's tables (pure: no process is started)."""

from capprobe.events.facts import Exec, Exited, FileOp, Forked, Opened, SockAddr, SyscallSeen
from capprobe.facts.collector import FactCollector
from capprobe.facts.decode import StraceDecoder, collect_strace, parse_sockaddr

from conftest import RECORDED


def collect(lines, cwd=b"/", **kw) -> dict:
    return collect_strace(lines, cwd, **kw).sections()


def strace_collector(cwd=b"/") -> tuple[FactCollector, StraceDecoder]:
    collector = FactCollector()
    return collector, StraceDecoder(collector, cwd)


def ops(sections, path):
    entry = next((f for f in sections["files"] if f["path"] == path), None)
    return set(entry["ops"]) if entry else set()


def test_recorded_shell_session_paths_are_absolute_through_chdir():
    lines = (RECORDED / "shell_files.txt").read_text("latin-1").splitlines()
    s = collect(lines, cwd=b"/tmp/rec")
    assert "mkdir" in ops(s, "/tmp/rec/d") and "rmdir" in ops(s, "/tmp/rec/d")
    assert {"create", "write", "truncate", "rename_from"} <= ops(s, "/tmp/rec/d/f")
    assert {"rename_to", "delete"} <= ops(s, "/tmp/rec/d/g")
    # after `cd d`, relative names resolve against the new cwd
    assert {"create", "chmod", "delete"} <= ops(s, "/tmp/rec/d/rel")
    assert "symlink" in ops(s, "/tmp/rec/d/sym")
    assert not [f for f in s["files"] if not f["path"].startswith("/")]
    mv = next(f for f in s["files"] if f["path"] == "/tmp/rec/d/g")
    assert mv["ops"]["rename_to"]["by"] == ["/usr/bin/mv"]
    assert mv["renamed_from"] == ["/tmp/rec/d/f"]
    root = s["processes"][0]
    assert root["exe"] == "/usr/bin/sh" and root["exit_status"] == 3
    children = {p["exe"] for p in s["processes"][1:]}
    assert {"/usr/bin/mkdir", "/usr/bin/mv", "/usr/bin/rm"} <= children
    assert all(p["ppid"] == root["pid"] for p in s["processes"][1:])
    assert s["parser"]["unparsed"] == 0


def test_child_inherits_cwd_at_fork_and_relative_mkdir_without_dirfd():
    s = collect([
        '10 1.0 [ 59] execve("/bin/sh", ["sh"], 0x1 /* 1 vars */) = 0',
        '10 1.1 [ 80] chdir("/srv/app") = 0',
        "10 1.2 [ 56] clone(child_stack=NULL, flags=0x1200000 /* CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID */|17 /* SIGCHLD */, child_tidptr=0x7f) = 11",
        '10 1.3 [ 80] chdir("/") = 0',
        '11 1.4 [ 83] mkdir("cache", 0777) = 0',
        '11 1.5 [ 83] mkdir("/etc/forbidden", 0777) = -1 EACCES (Permission denied)',
        '11 1.6 [ 83] mkdir("exists", 0777) = -1 EEXIST (File exists)',
    ], cwd=b"/home/u")
    assert ops(s, "/srv/app/cache") == {"mkdir"}
    denied = next(f for f in s["files"] if f["path"] == "/etc/forbidden")
    assert denied["failed"][0]["errno"] == "EACCES" and not denied["ops"]
    assert ops(s, "/srv/app/exists") == set()


def test_threads_share_cwd_and_are_not_listed_as_processes():
    s = collect([
        '20 1.0 [ 59] execve("/usr/bin/daemon", ["daemon"], 0x1 /* 1 vars */) = 0',
        "20 1.1 [435] clone3({flags=0x3d0f00 /* CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID */, child_tid=0x7f, parent_tid=0x7f, exit_signal=0, stack=0x7f, stack_size=0x7fff80, tls=0x7f} => {parent_tid=[21]}, 88) = 21",
        '21 1.2 [ 80] chdir("/var/lib/daemon") = 0',
        '20 1.3 [  2] open("state", 0x41 /* O_WRONLY|O_CREAT */, 0600) = -1 EROFS (Read-only file system)',
    ])
    assert [p["pid"] for p in s["processes"]] == [20]
    assert s["processes"][0]["threads"] == 1
    f = next(f for f in s["files"] if f["path"] == "/var/lib/daemon/state")
    assert {x["errno"] for x in f["failed"]} == {"EROFS"}


def test_network_facts_and_sd_notify():
    s = collect([
        '30 1.0 [ 59] execve("/usr/bin/svc", ["svc"], 0x1 /* 1 vars */) = 0',
        "30 1.1 [ 41] socket(0x2 /* AF_INET */, 0x1 /* SOCK_STREAM */|0x80000 /* SOCK_CLOEXEC */, 0 /* IPPROTO_IP */) = 3<TCP:[5819]>",
        '30 1.2 [ 49] bind(3<TCP:[5819]>, {sa_family=0x2 /* AF_INET */, sin_port="\\x1f\\x90" /* htons(8080) */, sin_addr="\\x7f\\x00\\x00\\x01" /* inet_addr("127.0.0.1") */}, 16) = 0',
        "30 1.3 [ 50] listen(3<TCP:[127.0.0.1:8080]>, 128) = 0",
        "30 1.4 [ 41] socket(0x10 /* AF_NETLINK */, 0x3 /* SOCK_RAW */|0x80000 /* SOCK_CLOEXEC */, 0 /* NETLINK_ROUTE */) = 5<NETLINK:[5821]>",
        "30 1.5 [ 54] setsockopt(3<TCP:[127.0.0.1:8080]>, 0 /* SOL_IP */, 0x13 /* IP_TRANSPARENT */, [1], 4) = 0",
        "30 1.6 [ 41] socket(0x1 /* AF_UNIX */, 0x2 /* SOCK_DGRAM */|0x80000 /* SOCK_CLOEXEC */, 0) = 6<UNIX-DGRAM:[5830]>",
        '30 1.7 [ 46] sendmsg(6<UNIX-DGRAM:[5830]>, {msg_name={sa_family=0x1 /* AF_UNIX */, sun_path="/run/systemd/notify"}, msg_namelen=22, msg_iov=[{iov_base="READY=1", iov_len=7}], msg_iovlen=1, msg_controllen=0, msg_flags=0}, 0x4000 /* MSG_NOSIGNAL */) = 7',
        '30 1.8 [ 42] connect(7<TCP:[5840]>, {sa_family=0xa /* AF_INET6 */, sin6_port="\\x01\\xbb" /* htons(443) */, sin6_flowinfo=0, inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = -1 EINPROGRESS (Operation now in progress)',
    ], notify_socket=b"/run/systemd/notify")
    net = s["network"]
    assert {(x["family"], x["type"], x["protocol"]) for x in net["sockets"]} == {
        ("AF_INET", "SOCK_STREAM", "IPPROTO_IP"), ("AF_NETLINK", "SOCK_RAW", "NETLINK_ROUTE"),
        ("AF_UNIX", "SOCK_DGRAM", "0")}
    (bind,) = net["binds"]
    assert (bind["address"], bind["port"], bind["type"], bind["by"]) == ("127.0.0.1", 8080, "SOCK_STREAM", ["/usr/bin/svc"])
    assert net["listens"][0]["socket"] == "TCP:[127.0.0.1:8080]"
    assert [(o["level"], o["option"]) for o in net["setsockopts"]] == [("SOL_IP", "IP_TRANSPARENT")]
    assert [(c["family"], c["address"], c["port"], c["errno"]) for c in net["connects"]] == [
        ("AF_INET6", "::1", 443, None)]
    assert [b["kind"] for b in s["behaviour"]] == ["sd_notify"]


def test_behaviour_that_decides_directives():
    s = collect([
        '40 1.0 [ 59] execve("/usr/bin/jit", ["jit"], 0x1 /* 1 vars */) = 0',
        "40 1.1 [  9] mmap(NULL, 4096, 0x7 /* PROT_READ|PROT_WRITE|PROT_EXEC */, 0x22 /* MAP_PRIVATE|MAP_ANONYMOUS */, -1, 0) = 0x7f0000000000",
        "40 1.2 [  9] mmap(NULL, 4096, 0x5 /* PROT_READ|PROT_EXEC */, 0x22 /* MAP_PRIVATE|MAP_ANONYMOUS */, -1, 0) = 0x7f0000001000",
        "40 1.3 [135] personality(0xffffffff) = 0 (PER_LINUX)",
        "40 1.4 [272] unshare(0x40000000 /* CLONE_NEWNET */) = 0",
        '40 1.5 [165] mount("none", "/mnt", "tmpfs", 0, NULL) = -1 EPERM (Operation not permitted)',
        "40 1.6 [ 62] kill(1, 0 /* SIG_0 */) = 0",
        '40 1.7 [257] openat(-100 /* AT_FDCWD */</>, "/proc/sys/net/ipv4/ip_forward", 0x1 /* O_WRONLY */) = 3</proc/sys/net/ipv4/ip_forward>',
        '40 1.8 [257] openat(-100 /* AT_FDCWD */</>, "/proc/1/status", 0 /* O_RDONLY */) = 3</proc/1/status>',
    ])
    kinds = {(b["kind"], b["detail"]) for b in s["behaviour"]}
    assert ("wx_memory", "mmap PROT_WRITE|PROT_EXEC") in kinds
    assert ("personality", "0xffffffff") in kinds
    assert ("namespace", "unshare:net") in kinds
    assert ("mount", "mount EPERM") in kinds
    assert ("signal_other_process", "pid 1") in kinds
    assert ("write_kernel_tunable", "/proc/sys/net/ipv4/ip_forward") in kinds
    assert ("read_other_process", "/proc/1") in kinds
    assert sum(b["kind"] == "wx_memory" for b in s["behaviour"]) == 1


def test_arguments_a_handler_cannot_read_are_kept_as_examples():
    s = collect(['50 1.0 [ 49] bind(3<TCP:[1]>) = 0', '50 1.1 [ 82] rename("only-one") = 0'])
    assert s["parser"]["unparsed"] == 2
    assert "bind" in s["parser"]["unparsed_examples"][0]
    assert "rename" in s["parser"]["unparsed_examples"][1]


def test_parse_sockaddr_unix_abstract_and_inet6():
    assert parse_sockaddr('{sa_family=0x1 /* AF_UNIX */, sun_path=@"x\\0y"}') == SockAddr("AF_UNIX", "@x\x00y")
    assert parse_sockaddr('{sa_family=0xa /* AF_INET6 */, sin6_port="\\x00\\x50" /* htons(80) */, '
                          'sin6_flowinfo=0, inet_pton(AF_INET6, "::", &sin6_addr), sin6_scope_id=0}') == \
        SockAddr("AF_INET6", "::", 80)


def test_docker_socket_is_flagged_root_equivalent():
    s = collect([
        '60 1.0 [ 59] execve("/usr/bin/agent", ["agent"], 0x1 /* 1 vars */) = 0',
        '60 1.1 [ 42] connect(3<UNIX-STREAM:[77]>, {sa_family=0x1 /* AF_UNIX */, sun_path="/var/run/docker.sock"}, 23) = 0',
        '60 1.2 [ 42] connect(4<UNIX-STREAM:[78]>, {sa_family=0x1 /* AF_UNIX */, sun_path="/run/other.sock"}, 18) = 0',
    ])
    assert [(b["kind"], b["detail"], b["by"]) for b in s["behaviour"]] == [
        ("root_equivalent_socket", "/var/run/docker.sock", ["/usr/bin/agent"])]


def test_forged_ioctl_line_is_counted_not_raised():
    # A device annotation with no path before it (a line a target can forge into the
    # trace): h_ioctl used to call encode_path(None) and end the session with exit 70.
    c = collect_strace(['60 1.0 [ 16] ioctl(3<x<char 10:200>>, TUNSETIFF, 0x1) = 0',
                        '60 1.1 [ 16] ioctl(3</dev/net/tun<char 10:200>>, TUNSETIFF, 0x1) = 0'])
    s = c.sections()
    assert c.lines == 2 and s["parser"]["unparsed"] == 0
    assert c.ioctls and all(key[0] == "/dev/net/tun" for key in c.ioctls)


def test_any_exception_in_a_handler_is_counted_as_unparsed(monkeypatch):
    c, decoder = strace_collector()
    decoder._handlers["ioctl"] = lambda ev, task: None.decode()  # the class of bug, whatever the handler
    decoder.feed_line('61 1.0 [ 16] ioctl(3</dev/net/tun<char 10:200>>, TUNSETIFF, 0x1) = 0')
    assert c.unparsed == 1 and "ioctl arguments not understood" in c.unparsed_examples[0]


def test_huge_numbers_in_a_line_are_unparsed_not_raised():
    c = collect_strace(["1" * 5000 + ' 1.0 [  2] open("/x", O_RDONLY) = 3',
                        '62 1.0 [  2] open("/x", O_RDONLY) = ' + "9" * 5000,
                        '62 1.0 [ 56] clone(child_stack=NULL, flags=' + "7" * 5000 + ') = 63'])
    assert c.lines == 3 and c.unparsed == 3


def test_process_table_stays_bounded_past_the_cap():
    # 20,000 short-lived children of one shell: memory grew ~20 KB per process without bound
    from capprobe.facts.collector import MAX_EXITED_KEPT, MAX_PROCESSES
    c, decoder = strace_collector()
    decoder.feed_line('100 1.0 [ 59] execve("/bin/sh", ["sh"], 0x1 /* 1 vars */) = 0')
    for child in range(1000, 21000):
        decoder.feed_line(f"100 1.1 [ 56] clone(child_stack=NULL, flags=SIGCHLD) = {child}")
        decoder.feed_line(f'{child} 1.2 [ 59] execve("/bin/true", ["true"], 0x1 /* 1 vars */) = 0')
        decoder.feed_line(f"{child} 1.3 [231] exit_group(0) = ?")
        decoder.feed_line(f"{child} 1.3 +++ exited with 0 +++")
    assert len(c.procs) <= MAX_PROCESSES + MAX_EXITED_KEPT
    assert len(decoder._tasks) <= MAX_EXITED_KEPT + 1  # the decoder's own per-task state too
    assert sum(len(p.recent) for p in c.procs.values()) <= 64 * (MAX_EXITED_KEPT + 1)
    s = c.sections()
    assert len(s["processes"]) == MAX_PROCESSES
    assert s["processes_not_listed"] == {"/bin/true": 20000 - MAX_PROCESSES + 1}
    assert not [b for b in s["behaviour"] if b["kind"] == "read_other_process"]


def test_a_late_capability_check_still_finds_its_setsockopt_after_many_other_calls():
    """The probe's reader delivers a check up to a poll interval late; by then a busy process has
    made hundreds of calls. sd_notify's SO_SNDBUFFORCE must still be found (openvpn got a required
    CAP_NET_ADMIN when one window for all syscalls had already dropped it)."""
    c = collect_strace([
        '7 1.000000 socket(AF_UNIX, SOCK_DGRAM|SOCK_CLOEXEC, 0) = 3<socket:[1]>',
        '7 1.000100 setsockopt(3<socket:[1]>, SOL_SOCKET, SO_SNDBUF, [8388608], 4) = 0',
        '7 1.000200 setsockopt(3<socket:[1]>, SOL_SOCKET, SO_SNDBUFFORCE, [8388608], 4) = 0',
        *(f'7 {1.001 + i / 1e5:.6f} getpid() = 7' for i in range(500))])
    assert c.operand_at(7, 1.000250, "setsockopt") == "SO_SNDBUFFORCE"
    assert c.operand_at(7, 1.000150, "setsockopt") == "SO_SNDBUF"


def test_operands_sit_where_the_table_says_execveat_and_futimesat_relative_to_their_dirfd():
    # execveat(dirfd, path, argv, ...) and futimesat(dirfd, path, times): the path is argument 1,
    # relative to the directory fd at 0 (futimesat's path was read from argument 0, the dirfd)
    s = collect([
        '70 1.0 [ 59] execve("/bin/sh", ["sh"], 0x1 /* 1 vars */) = 0',
        '70 1.1 [322] execveat(3</usr/lib/d>, "helper", ["helper", "-x"], 0x1 /* 1 vars */, 0) = 0',
        '70 1.2 [261] futimesat(4</var/lib/d>, "stamp", NULL) = 0',
    ])
    assert s["processes"][0]["execs"][1]["path"] == "/usr/lib/d/helper"
    assert s["processes"][0]["execs"][1]["argv"] == ["helper", "-x"]
    assert ops(s, "/var/lib/d/stamp") == {"utime"}


def test_a_child_made_at_clone_return_inherits_from_its_own_parent_not_another_forking_one():
    # 80 and 81 both have a fork in flight; 81's clone returns first, before its child's first
    # line: the child runs 81's executable (it got 80's, the last pid with a fork in flight)
    s = collect([
        '80 1.0 [ 59] execve("/usr/sbin/a", ["a"], 0x1 /* 1 vars */) = 0',
        '80 1.1 [ 56] clone(child_stack=NULL, flags=SIGCHLD) = 81',
        '81 1.2 [ 59] execve("/usr/sbin/b", ["b"], 0x1 /* 1 vars */) = 0',
        '81 1.3 [ 56] clone(child_stack=NULL, flags=SIGCHLD <unfinished ...>',
        '80 1.4 [ 56] clone(child_stack=NULL, flags=SIGCHLD <unfinished ...>',
        '81 1.5 [ 56] <... clone resumed>) = 82',
        '82 1.6 [ 83] mkdir("/run/b", 0755) = 0',
    ])
    assert next(f for f in s["files"] if f["path"] == "/run/b")["ops"]["mkdir"]["by"] == ["/usr/sbin/b"]
    assert next(p for p in s["processes"] if p["pid"] == 82)["ppid"] == 81


def test_typed_facts_from_any_backend_fold_into_the_same_tables_as_strace_text():
    """The aggregator reads facts, not strace: the facts a kernel backend would send for these
    calls make the same sections as the strace lines do."""
    lines = [
        '90 1.000000 [ 59] execve("/usr/sbin/d", ["d"], 0x1 /* 1 vars */) = 0',
        '90 1.000100 [ 56] clone(child_stack=NULL, flags=SIGCHLD) = 91',
        '91 1.000200 [257] openat(AT_FDCWD</>, "/var/lib/d/db", 0x42 /* O_RDWR|O_CREAT */, 0600) = 3</var/lib/d/db>',
        '91 1.000300 [ 83] mkdir("/run/d", 0755) = -1 EACCES (Permission denied)',
        '91 1.000400 [231] exit_group(0) = ?',
        '91 1.000500 +++ exited with 0 +++',
    ]
    c = FactCollector()
    for fact in [
        SyscallSeen(90, 1.0, "execve", None, 0), Exec(90, 1.0, b"/usr/sbin/d", (b"d",)),
        SyscallSeen(90, 1.0001, "clone", None, 91), Forked(90, 1.0001, 91),
        SyscallSeen(91, 1.0002, "openat", None, 3), Opened(91, 1.0002, "openat", b"/var/lib/d/db", 0o102),
        SyscallSeen(91, 1.0003, "mkdir", "EACCES", -1), FileOp(91, 1.0003, "mkdir", b"/run/d", "mkdir", "EACCES"),
        SyscallSeen(91, 1.0004, "exit_group"), Exited(91, 1.0005, 0),
    ]:
        c.apply(fact)
    c.lines = len(lines)  # the backend counts its records
    assert c.sections() == collect(lines)
    assert c.operand_at(91, 1.00025, "openat") == "/var/lib/d/db"


def test_a_hostname_is_the_operand_of_sethostname_not_a_path_in_the_cwd():
    c = collect_strace(['95 1.0 [170] sethostname("contract", 8) = 0'], b"/tmp")
    assert c.operand_at(95, 1.0, "sethostname") == "contract"  # was "/tmp/contract"
