"""Parser unit tests on recorded strace output (strace 6.1, capprobe's flags)."""

from capprobe.events.strace_line import (
    ProcessExit, SignalDelivery, StraceLineParser, Syscall, Unparsed, annotated_device, annotated_path,
    annotation, int_arg, split_args, string_arg, symbols, unescape,
)

from conftest import RECORDED


def parse_all(lines):
    parser = StraceLineParser()
    return [e for e in (parser.feed(line) for line in lines) if e is not None]


def test_plain_call_with_cwd_annotation_and_result_path():
    (ev,) = parse_all([
        '2880  1795445073.888818 [ 257] openat(-100 /* AT_FDCWD */</var/tmp>, "d/f", '
        '0x241 /* O_WRONLY|O_CREAT|O_TRUNC */, 0666) = 3</var/tmp/d/f>'])
    assert isinstance(ev, Syscall)
    assert (ev.pid, ev.name, ev.ret, ev.errno, ev.annot) == (2880, "openat", 3, None, "/var/tmp/d/f")
    assert ev.ts == 1795445073.888818
    args = split_args(ev.args)
    assert annotated_path(annotation(args[0])) == b"/var/tmp"
    assert string_arg(args[1]) == b"d/f"
    assert int_arg(args[2]) == 0x241 and symbols(args[2]) == ["O_WRONLY", "O_CREAT", "O_TRUNC"]
    assert int_arg(args[3]) == 0o666


def test_failure_carries_errno():
    (ev,) = parse_all(['2881  1795445073.867632 [  21] access("/etc/ld.so.preload", 0x4 /* R_OK */)'
                       ' = -1 ENOENT (No such file or directory)'])
    assert ev.ret == -1 and ev.errno == "ENOENT"


def test_unfinished_and_resumed_are_joined_by_pid_even_when_interleaved():
    events = parse_all([
        "2880  1795445073.865276 [  58] vfork( <unfinished ...>",
        '2881  1795445073.865606 [  59] execve("/usr/bin/mkdir", ["mkdir", "d"], 0x5583174e5ed0 /* 35 vars */ <unfinished ...>',
        "2880  1795445073.865768 [  58] <... vfork resumed>) = 2881",
        "2881  1795445073.865859 [  59] <... execve resumed>) = 0",
        "2880  1795445073.865967 [  61] wait4(-1,  <unfinished ...>",
        "2881  1795445073.888376 [ 231] exit_group(0) = ?",
        "2881  1795445073.888400 [ 231] +++ exited with 0 +++",
        "2880  1795445073.888726 [  61] <... wait4 resumed>[{WIFEXITED(s) && WEXITSTATUS(s) == 0}], 0, NULL) = 2881",
    ])
    names = [(e.pid, e.name) for e in events if isinstance(e, Syscall)]
    assert names == [(2880, "vfork"), (2881, "execve"), (2881, "exit_group"), (2880, "wait4")]
    vfork, execve, exit_group, wait4 = [e for e in events if isinstance(e, Syscall)]
    assert vfork.ret == 2881 and vfork.ts == 1795445073.865276  # time of entry, not resume
    assert split_args(execve.args)[0] == '"/usr/bin/mkdir"' and execve.ret == 0
    assert exit_group.ret is None
    assert split_args(wait4.args) == ["-1", "[{WIFEXITED(s) && WEXITSTATUS(s) == 0}]", "0", "NULL"]
    exits = [e for e in events if isinstance(e, ProcessExit)]
    assert exits == [ProcessExit(2881, 1795445073.8884, 0, None)]


def test_killed_by_signal_and_signal_lines():
    events = parse_all([
        "8758  1795446135.823000 [  35] --- SIGTERM {si_signo=SIGTERM, si_code=SI_USER, si_pid=1, si_uid=0} ---",
        "8758  1795446135.823100 [  35] +++ killed by SIGKILL +++",
        "8759  1795446135.823200 [  35] +++ killed by SIGSEGV (core dumped) +++",
    ])
    assert events == [SignalDelivery(8758, 1795446135.823, "SIGTERM", 1),
                      ProcessExit(8758, 1795446135.8231, None, "SIGKILL"),
                      ProcessExit(8759, 1795446135.8232, None, "SIGSEGV")]


def test_signal_delivery_with_verbose_constants():
    # -X verbose (capprobe's flags) writes the numbers with their names in comments
    (ev,) = parse_all(["4220  1796025289.895775 [  62] --- SIGHUP {si_signo=1 /* SIGHUP */, "
                       "si_code=0 /* SI_USER */, si_pid=4215, si_uid=0} ---"])
    assert ev == SignalDelivery(4220, 1796025289.895775, "SIGHUP", 4215)


def test_hostile_file_name_survives_escaping_exactly():
    (ev,) = parse_all([
        r'2964  1795445139.180804 [ 257] openat(-100 /* AT_FDCWD */</tmp/hx>, "a\nb c%d\"q\\\377<>|.txt", '
        r'0x80041 /* O_WRONLY|O_CREAT|O_CLOEXEC */, 0600) = 3</tmp/hx/a\nb c%d\"q\\\377\74\76|.txt>'])
    name = b'a\nb c%d"q\\\xff<>|.txt'
    assert string_arg(split_args(ev.args)[1]) == name
    assert annotated_path(ev.annot) == b"/tmp/hx/" + name


def test_parentheses_and_equals_inside_strings_do_not_confuse_the_parser():
    (ev,) = parse_all([r'7 1.5 [   1] write(1</dev/pts/0<char 136:0>>, "x) = 5 (\"(\n", 9) = 9'])
    assert ev.ret == 9 and split_args(ev.args)[1] == r'"x) = 5 (\"(\n"'
    assert annotated_device(annotation(split_args(ev.args)[0])) == ("char", 136, 0)


def test_socket_annotation_with_arrow_and_device_annotation():
    (ev,) = parse_all([
        "8183  1795446122.4 [  54] setsockopt(8<TCP:[127.0.0.1:80->127.0.0.1:58244]>, "
        "0x6 /* SOL_TCP */, 0x3 /* TCP_CORK */, [1], 4) = 0"])
    args = split_args(ev.args)
    assert annotation(args[0]) == "TCP:[127.0.0.1:80->127.0.0.1:58244]" and len(args) == 5
    (acc,) = parse_all(["8183  1795446122.3 [ 288] accept4(6<TCP:[0.0.0.0:80]>, 0x7ffd, [16], 0x800 /* SOCK_NONBLOCK */)"
                        " = 8<TCP:[127.0.0.1:80->127.0.0.1:58244]>"])
    assert acc.ret == 8 and acc.annot == "TCP:[127.0.0.1:80->127.0.0.1:58244]"
    (dev,) = parse_all(['5150  1795445263.907146 [ 257] openat(-100 /* AT_FDCWD */</tmp>, "/dev/net/tun", '
                        "0x80002 /* O_RDWR|O_CLOEXEC */) = 3</dev/net/tun<char 10:200>>"])
    assert annotated_device(dev.annot) == ("char", 10, 200)
    assert annotated_path(dev.annot) == b"/dev/net/tun"


def test_unreadable_lines_are_returned_not_dropped():
    events = parse_all(["garbage that is not strace", "12 1.0 [  1] write(1, \"unterminated"])
    assert [type(e) for e in events] == [Unparsed, Unparsed]


def test_octal_escapes_followed_by_digits():
    assert unescape(r"\0\0001\1772") == b"\x00\x001\x7f2"


def test_whole_recorded_shell_session_parses_without_unreadable_lines():
    lines = (RECORDED / "shell_files.txt").read_text("latin-1").splitlines()
    events = parse_all(lines)
    assert not [e for e in events if isinstance(e, Unparsed)]
    assert sum(isinstance(e, ProcessExit) for e in events) >= 8
    assert any(isinstance(e, Syscall) and e.name == "renameat2" for e in events)


def test_thread_exit_padded_with_two_spaces_is_a_syscall():
    (ev,) = parse_all(["4321  1795445073.9 [ 60] exit(0)  = ?"])
    assert isinstance(ev, Syscall) and ev.name == "exit" and ev.args == "0" and ev.ret is None
