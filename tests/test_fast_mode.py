"""Fast mode (strace for the start-up, then bpftrace's first-seen facts) against full mode.

The equality tests run each reference workload twice, `capprobe run --full` and `--fast`,
and compare the profiles with counts, times and pids left out: the same facts, whatever
method saw them. The record parser is tested on recorded bpftrace output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

import pytest
from capprobe.probes import load_table
from conftest import REPO, SYSTEM_PYTHON, load, needs_root, needs_strace

from capprobe.events.facts import Accepted, Opened, Renamed, SyscallSeen
from capprobe.events.kernel_records import (
    KernelCall,
    KernelDecoder,
    RecordAssembler,
    json_data,
    syscall_names,
    syscall_numbers,
)
from capprobe.tracing.kernel import LiveProc

UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
needs_bpftrace = pytest.mark.skipif(shutil.which("bpftrace") is None or os.geteuid() != 0,
                                    reason="fast mode needs root and bpftrace (Debian package bpftrace)")
# a one-shot program is over before the kernel program compiles: --settle 0 starts it under the
# kernel side (it waits for the program), so these runs compare bpftrace's facts with strace's
FROM_START = {"full": (), "fast": ("--settle", "0")}
SWITCH_TIMEOUT = 240  # the kernel program compiles in 10-50 s on a loaded 2-core machine


# -- the record parser, on recorded output ------------------------------------------------------

def _line(data: str) -> bytes:
    return json.dumps({"type": "printf", "data": data}).encode() + b"\n"


class FakeProc:
    """/proc at the time a record is read: whatever the target made of it by then."""

    def __init__(self, fds=None, devices=None):
        self._fds, self._devices = fds or {}, devices or {}

    def fd_path(self, tgid, fd):
        return self._fds.get(fd)

    def through_root_symlinks(self, path):
        return path

    def device(self, path):
        return self._devices.get(path)

    def socket_name(self, tgid, fd):
        return None

    def socket_type(self, tgid, fd):
        return None


@pytest.fixture(scope="module")
def decoder_parts():
    if not UNISTD.exists():
        pytest.skip(f"{UNISTD} missing (Debian package linux-libc-dev)")
    numbers = syscall_numbers(UNISTD.read_text())
    args = {name: spec["args"] for name, spec in load_table("kernel_syscalls").items()}
    return numbers, args


def test_entry_and_exit_lines_join_in_either_order_and_paths_resolve(decoder_parts):
    numbers, args = decoder_parts
    decoder = KernelDecoder(syscall_names(numbers), args, FakeProc(), 0.0)
    decoder.adopt_cwds({10: b"/srv"})  # strace's, at the switch
    a = RecordAssembler(frozenset({numbers["renameat2"]}))
    nr = numbers["renameat2"]
    # the exit's lines (another CPU) arrive before the entry's second path
    a.feed(_line(f"R\t5000\t10\t11\t99\t{nr}\t0\t4294967196\t4294967196\n"))
    a.feed(_line("1\t11\tdata/x.tmp\n"))
    a.feed(_line("2\t11\t5000\t/srv/data/x\n"))
    nr_open = numbers["openat"]
    a.feed(_line(f"R\t6000\t10\t11\t99\t{nr_open}\t3\t4294967196\t{0o1101}\t420\t{0o100644}\t0\n"))
    a.feed(_line("1\t11\t/var/log/./app.log\n"))
    a.feed(_line(f"S\t7000\t10\t11\t99\t{nr_open}\t13\n"))
    records = a.take()
    assert [type(r).__name__ for r in records] == ["KernelCall", "KernelCall", "FirstSeen"]
    facts = [f for r in records for f in decoder.facts(r)]
    renamed, opened, seen = facts
    assert renamed == Renamed(11, 5e-6, "renameat2", b"/srv/data/x.tmp", b"/srv/data/x", None)
    assert isinstance(opened, Opened) and opened.path == b"/var/log/app.log" and opened.flags == 0o1101
    assert seen == SyscallSeen(11, 7e-6, "openat", "EACCES")


def test_high_bytes_survive_bpftrace_json_and_long_paths_are_not_guessed(decoder_parts):
    numbers, args = decoder_parts
    decoder = KernelDecoder(syscall_names(numbers), args, FakeProc(), 0.0)
    a = RecordAssembler()
    nr = numbers["unlink"]
    # bpftrace 0.17 writes byte 0xff as "\uffffffff" (sign-extended)
    a.feed(f'{{"type": "printf", "data": "R\\t1\\t2\\t2\\t9\\t{nr}\\t0\\n"}}\n'.encode())
    a.feed(b'{"type": "printf", "data": "1\\t2\\t/tmp/a\\nb\\uffffffff\\n"}\n')
    a.feed(_line(f"R\t2\t2\t2\t9\t{nr}\t0\n"))
    a.feed(_line("1\t2\t/" + "x" * 198 + "\n"))  # 199 bytes: as long as str() reads, maybe cut
    first, second = (decoder.facts(r) for r in a.take())
    assert first[0].path == b"/tmp/a\nb\xff"
    assert second[0].text.startswith("[fast mode] path of 199 bytes or more")
    assert decoder.unresolved == {"unlink: path of 199 bytes or more (the kernel program's string limit)": 1}


def test_the_high_byte_repair_leaves_an_escaped_backslash_alone():
    # bpftrace writes byte 0xe9 as "\uffffffe9", a backslash as "\\": the text "\uffffffe9" in a
    # path comes out as "\\uffffffe9" and must stay that text (R-findings F12)
    assert json_data(b'{"type": "printf", "data": "/a\\\\uffffffe9"}') == ("printf", "/a\\uffffffe9")
    assert json_data(b'{"type": "printf", "data": "/a\\\\\\uffffffe9"}') == ("printf", "/a\\\xe9")
    assert json_data(b'{"type": "printf", "data": "/a\\uffffffe9"}') == ("printf", "/a\xe9")


def test_a_path_keeps_its_own_trailing_newline():
    a = RecordAssembler()
    a.feed(_line("R\t1\t2\t2\t9\t87\t0\n"))
    a.feed(_line("1\t2\t/srv/own/config\n\n"))  # the file "config\n", then printf's own "\n"
    [call] = a.take()
    assert call.path == b"/srv/own/config\n"


class HostileProc(LiveProc):
    """/proc and the file system after the target changed them: every fd names /etc/cron.d
    (R-findings F2)."""

    def fd_path(self, tgid, fd):
        return b"/etc/cron.d"


def _decode(numbers, args, lines, resolver=None, cwds=None):
    decoder = KernelDecoder(syscall_names(numbers), args, resolver or HostileProc(), 0.0,
                            frozenset({"personality", "setxattr"}))
    decoder.adopt_cwds(cwds or {10: b"/srv/own"})
    a = RecordAssembler(frozenset({numbers["renameat"]}))
    for line in lines:
        a.feed(_line(line))
    return decoder, [f for r in a.take() for f in decoder.facts(r)]


def test_nothing_named_from_live_state_after_the_call_becomes_a_fact(decoder_parts, tmp_path):
    """A dirfd, an fd argument, a cwd set by fchdir or of a process never seen, '..' after a
    component: named from /proc or the file system after the call, which the target may have
    changed. Each is counted unresolved, never a fact; what the target wrote stays its text."""
    numbers, args = decoder_parts
    n = numbers
    at, creat = 4294967196, 0o101
    swap = tmp_path / "swap"
    swap.symlink_to("/etc/cron.d")  # the directory the target opened in, swapped after the call
    reg = 0o100644
    decoder, facts = _decode(numbers, args, [
        f"R\t1\t10\t10\t9\t{n['openat']}\t3\t5\t{creat}\t384\t{reg}\t0", "1\t10\tforged-by-dirfd",
        f"R\t2\t10\t10\t9\t{n['ftruncate']}\t0\t3\t0", f"R\t3\t10\t10\t9\t{n['fchmod']}\t0\t3\t511",
        f"R\t4\t10\t10\t9\t{n['fchown']}\t0\t3\t0\t0",
        f"R\t5\t10\t10\t9\t{n['openat']}\t3\t{at}\t{creat}\t384\t{reg}\t0",
        "1\t10\t/srv/own/S/../../../../etc/cron.d/forged-by-dotdot",
        f"R\t6\t20\t20\t9\t{n['openat']}\t3\t{at}\t{creat}\t384\t{reg}\t0", "1\t20\tforged-by-unseen-cwd",
        f"R\t7\t10\t10\t9\t{n['openat']}\t3\t{at}\t{creat}\t384\t{reg}\t0", f"1\t10\t{swap}/own-file",
        f"R\t8\t10\t10\t9\t{n['openat']}\t3\t{at}\t{creat}\t384\t{reg}\t0", "1\t10\trelative-in-own",
        f"R\t9\t10\t10\t9\t{n['renameat']}\t0\t5\t{at}", "1\t10\tsrc", "2\t10\t9\t/srv/own/dst",
        f"R\t10\t10\t10\t9\t{n['fchdir']}\t0\t5",
        f"R\t11\t10\t10\t9\t{n['openat']}\t3\t{at}\t{creat}\t384\t{reg}\t0", "1\t10\tforged-by-cwd",
        f"R\t12\t10\t10\t9\t{n['utimensat']}\t0\t3\t0", "1\t10\t",
        f"S\t13\t10\t10\t9\t{n['personality']}\t0",
    ])
    paths = sorted(f.path for f in facts if getattr(f, "path", None))
    assert paths == sorted([str(swap).encode() + b"/own-file", b"/srv/own/relative-in-own"]), facts
    # a rename's side named by its own text stays; the dirfd-relative side is not named
    assert [(f.src, f.dst) for f in facts if isinstance(f, Renamed)] == [(None, b"/srv/own/dst")]
    assert decoder.unresolved == {
        "openat: relative to a directory fd: named from /proc after the call, which the target can change "
        "(--full sees it)": 1,
        "ftruncate: fd argument: named from /proc after the call, which the target can change (--full sees it)": 1,
        "fchmod: fd argument: named from /proc after the call, which the target can change (--full sees it)": 1,
        "fchown: fd argument: named from /proc after the call, which the target can change (--full sees it)": 1,
        "utimensat: fd argument: named from /proc after the call, which the target can change (--full sees it)": 1,
        "openat: '..' after a component that may be a symlink: the kernel resolves it, not the text "
        "(--full sees it)": 1,
        "openat: relative to the cwd of a process first seen after the switch: named from /proc after the "
        "call, which the target can change (--full sees it)": 1,
        "renameat: relative to a directory fd: named from /proc after the call, which the target can change "
        "(--full sees it)": 1,
        "openat: relative to a cwd set by fchdir: named from /proc after the call, which the target can "
        "change (--full sees it)": 1,
        "personality: not decoded by the kernel side (--full decodes it)": 1,
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: makes a root-only directory and a link of nobody's")
def test_an_opened_path_follows_only_the_symlinks_root_alone_can_change():
    """As strace's -yy shows an open, merged /usr's /lib -> usr/lib is followed; a link in a
    directory a user owns (the target could swap it after the call) is not."""
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="capprobe-test-", dir="/run"))  # root's, 0700: no one else's
    try:
        (base / "real").mkdir()
        (base / "lib").symlink_to("real")
        own = base / "own"
        own.mkdir()
        os.chown(own, 65534, 65534)
        (own / "swap").symlink_to("/etc/cron.d")
        os.lchown(own / "swap", 65534, 65534)
        (base / "theirs").symlink_to("/etc/cron.d")
        os.lchown(base / "theirs", 65534, 65534)  # a user's link in root's directory
        proc = LiveProc()
        assert proc.through_root_symlinks(b"%s/lib/f" % bytes(base)) == b"%s/real/f" % bytes(base)
        for kept in (own / "swap" / "f", base / "theirs" / "f", Path("/proc/self/fd/0")):
            assert proc.through_root_symlinks(bytes(kept)) == bytes(kept)
        assert proc.through_root_symlinks(b"/lib/x86_64-linux-gnu/libc.so.6") == \
            os.fsencode(os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6"))
    finally:
        shutil.rmtree(base)


def test_cwds_follow_fork_and_chdir_but_not_a_shared_one(decoder_parts):
    numbers, args = decoder_parts
    n, at, reg = numbers, 4294967196, 0o100644
    clone_fs = 0x200 | 17  # CLONE_FS | SIGCHLD: parent and child change one cwd
    decoder, facts = _decode(numbers, args, [
        f"R\t1\t10\t10\t9\t{n['vfork']}\t30", f"R\t2\t10\t10\t9\t{n['chdir']}\t0", "1\t10\tsub",
        f"R\t3\t30\t30\t9\t{n['openat']}\t3\t{at}\t0\t0\t{reg}\t0", "1\t30\tchild",
        f"R\t4\t10\t10\t9\t{n['openat']}\t3\t{at}\t0\t0\t{reg}\t0", "1\t10\tparent",
        f"R\t5\t10\t10\t9\t{n['clone']}\t31\t{clone_fs}\t0",
        f"R\t6\t10\t10\t9\t{n['openat']}\t3\t{at}\t0\t0\t{reg}\t0", "1\t10\tafter-clone-fs",
        f"R\t7\t31\t31\t9\t{n['openat']}\t3\t{at}\t0\t0\t{reg}\t0", "1\t31\tshared-child",
    ])
    assert [f.path for f in facts if isinstance(f, Opened)] == [b"/srv/own/child", b"/srv/own/sub/parent"]
    assert sum(decoder.unresolved.values()) == 2, decoder.unresolved


def test_proc_self_and_its_links_are_the_targets(decoder_parts):
    numbers, args = decoder_parts
    nr, at, reg = numbers["openat"], 4294967196, 0o100444
    _, facts = _decode(numbers, args, [
        f"R\t1\t10\t11\t9\t{nr}\t3\t{at}\t0\t0\t{reg}\t0", "1\t11\t/proc/net/psched",
        f"R\t2\t10\t11\t9\t{nr}\t3\t{at}\t0\t0\t{reg}\t0", "1\t11\t/proc/thread-self/comm",
        f"R\t3\t10\t11\t9\t{nr}\t3\t{at}\t0\t0\t{reg}\t0", "1\t11\t/proc/self/status",
    ], resolver=FakeProc())
    assert [f.path for f in facts] == [b"/proc/10/net/psched", b"/proc/10/task/11/comm", b"/proc/10/status"]


def test_an_ioctl_is_a_device_fact_only_when_the_kernel_saw_a_device(decoder_parts):
    from capprobe.events.facts import DeviceIoctl, DeviceNumber
    numbers, args = decoder_parts
    nr = numbers["ioctl"]
    tun, null = DeviceNumber("char", 10, 200), DeviceNumber("char", 1, 3)
    proc = FakeProc(fds={3: b"/dev/net/tun", 4: b"/dev/null", 5: b"/dev/null"},
                    devices={b"/dev/net/tun": tun, b"/dev/null": null})
    chr_ = 0o020644
    decoder, facts = _decode(numbers, args, [
        f"R\t1\t10\t10\t9\t{nr}\t0\t3\t{0x400454CA}\t0\t{chr_}\t{10 << 20 | 200}",  # tun: /proc agrees
        f"R\t2\t10\t10\t9\t{nr}\t-25\t4\t{0x5401}\t0\t{0o100644}\t0",  # a regular file, /proc says /dev/null
        f"R\t3\t10\t10\t9\t{nr}\t0\t5\t{0x400454CA}\t0\t{chr_}\t{10 << 20 | 200}",  # tun, fd now /dev/null
    ], resolver=proc)
    assert facts[0] == DeviceIoctl(10, 1e-9, b"/dev/net/tun", "TUNSETIFF", None)
    assert len([f for f in facts if isinstance(f, DeviceIoctl)]) == 1, facts
    assert list(decoder.unresolved) == [("ioctl: ioctl on device char 10:200: fd argument: named from /proc "
                                         "after the call, which the target can change (--full sees it)")]


def test_accepted_connection_names_local_and_peer_like_strace(decoder_parts):
    numbers, args = decoder_parts
    decoder = KernelDecoder(syscall_names(numbers), args, FakeProc(), 0.0)
    a = RecordAssembler()
    a.feed(_line(f"R\t1\t5\t5\t9\t{numbers['accept4']}\t7\t3\t524288\n"))
    # peer sockaddr_in: family 2, port 53210 (network order), 127.0.0.1
    head = 2 | (int.from_bytes((53210).to_bytes(2, "big"), "little") << 16)
    a.feed(_line(f"N\t5\t{head}\t{int.from_bytes(bytes([127, 0, 0, 1]) + bytes(4), 'little')}\t0\t0\n"))
    # the accepted socket: AF_INET, SOCK_STREAM, IPPROTO_TCP, port 8080, 127.0.0.1, inode
    v4 = int.from_bytes(bytes([127, 0, 0, 1]), "little")
    a.feed(_line(f"L\t5\t2\t1\t6\t8080\t{v4}\t0\t0\t65535\t{v4}\t4242\n"))
    [call] = a.take()
    assert isinstance(call, KernelCall)
    assert decoder.facts(call) == [Accepted(5, 1e-9, "TCP", "127.0.0.1:8080", "127.0.0.1")]


def test_netlink_bytes_decode_with_the_strace_paths_decoder(decoder_parts):
    """A send on a NETLINK_ROUTE socket: its bytes, captured in 64-byte words, decoded by facts/netlink."""
    import struct as st
    numbers, args = decoder_parts
    decoder = KernelDecoder(syscall_names(numbers), args, FakeProc(), 0.0)
    a = RecordAssembler(frozenset({numbers["sendto"]}))
    message = st.pack("=IHHII", 32, 18, 0x301, 1, 0) + bytes(16)  # RTM_GETLINK, NLM_F_REQUEST|NLM_F_DUMP
    words = [st.unpack_from("<Q", message.ljust(64, b"\0"), i)[0] for i in range(0, 64, 8)]
    a.feed(_line(f"P\t7\t900\t16\t{len(message)}\t0\n"))  # AF_NETLINK, 32 bytes, NETLINK_ROUTE
    a.feed(_line("W\t7\t0\t" + "\t".join(f"{w:x}" for w in words) + "\n"))
    a.feed(_line(f"R\t900\t7\t7\t9\t{numbers['sendto']}\t32\t3\t32\t0\t12\n"))
    [sent] = [f for r in a.take() for f in decoder.facts(r)]
    assert sent.protocol == "NETLINK_ROUTE" and [op.op for op in sent.ops] == ["RTM_GETLINK"], sent


# -- fast vs full on real programs -----------------------------------------------------------------

DROPPED = {"count", "first_seen", "time", "at", "started", "ended", "duration", "pid", "ppid", "main_pid", "ino",
           "from_pid", "threads", "seconds", "output_bytes", "checks", "lines", "unparsed", "unparsed_examples"}


def facts_view(profile: dict) -> dict:
    """The profile without counts, times, pids and how it was watched."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in DROPPED}
        if isinstance(value, list):
            return sorted((clean(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
        if isinstance(value, str):
            return re.sub(r"@capprobe-notify-[0-9a-f]+", "@capprobe-notify-X", re.sub(r"/proc/\d+", "/proc/N", value))
        return value
    run = profile["run"]
    kept = {k: v for k, v in profile.items() if k not in ("run", "host", "parser", "complete", "incomplete")}
    kept["run"] = {"exit_status": run["exit_status"], "exit_signal": run["exit_signal"],
                   "notifications": [m["words"] for m in run["notifications"]]}
    if "syscalls" in kept:  # which calls and which errnos, not how many
        kept["syscalls"] = {n: sorted(v.get("errors", {})) for n, v in kept["syscalls"].items()}
    return clean(kept)


def differences(full: dict, fast: dict, path: str = "") -> list[str]:
    if isinstance(full, dict) and isinstance(fast, dict):
        out = []
        for k in sorted(set(full) | set(fast)):
            if k not in fast:
                out.append(f"{path}/{k}: only in full")
            elif k not in full:
                out.append(f"{path}/{k}: only in fast")
            else:
                out += differences(full[k], fast[k], f"{path}/{k}")
        return out
    if isinstance(full, list) and isinstance(fast, list):
        a = {json.dumps(x, sort_keys=True) for x in full}
        b = {json.dumps(x, sort_keys=True) for x in fast}
        return [f"{path}: only in full: {x}" for x in sorted(a - b)] + \
               [f"{path}: only in fast: {x}" for x in sorted(b - a)]
    return [] if full == fast else [f"{path}: full {full!r} != fast {fast!r}"]


class Run:
    """`capprobe run --MODE` of ARGV, its stderr followed live (the switch is said there)."""

    started: ClassVar[list[Run]] = []  # every run of the module: none may leave a bpftrace behind

    def __init__(self, mode: str, out: Path, argv: list[str], *options: str, prefix=(), cwd=None) -> None:
        self.out = out
        self.lines: list[str] = []
        self.switched = threading.Event()
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "capprobe", "run", f"--{mode}", "--no-unit",
                                      "--force", "-o", str(out), *options, "--", *argv],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=cwd)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        Run.started.append(self)

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if "fast mode: switched" in line or "fast mode: the kernel program did not" in line:
                self.switched.set()

    def settle(self, mode: str) -> None:
        """Fast: until the switch (or the end); full: a moment for the start-up."""
        if mode == "fast":
            deadline = time.monotonic() + SWITCH_TIMEOUT
            while not self.switched.wait(0.5) and self.proc.poll() is None and time.monotonic() < deadline:
                pass
        else:
            time.sleep(3)

    def finish(self, stop: bool = False, timeout: float = 120) -> dict:
        if stop and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._reader.join(5)
        assert self.out.exists(), "".join(self.lines)
        return load(self.out)


def switched(profile: dict) -> bool:
    """Did the kernel side take over? If not, run.tracer says why (the target ended first)."""
    tracer = profile["run"]["tracer"]
    assert tracer["mode"] == "fast"
    if tracer["backend"] == "strace":
        assert tracer["not_switched"], tracer
        return False
    assert tracer["backend"] == "strace+bpftrace" and tracer["phases"][1]["method"] == "bpftrace", tracer
    return True


def renamed(profile: dict, *names: str) -> dict:
    """PROFILE with the fast run's own names (its data directory) spelled as the full run's."""
    text = json.dumps(profile)
    for name in names:
        text = text.replace(name, name.replace("fast", "full"))
    return json.loads(text)


def unit_lines(profile: dict) -> list[str]:
    """The directives of the unit synthesized from PROFILE (evidence comments left out)."""
    from capprobe.rules.base import UnitOptions
    from capprobe.synthesis import synthesize
    text = synthesize(profile, UnitOptions(name="equality"), score=False).unit_text
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def compare(full: dict, fast: dict, record: Path) -> list[str]:
    """The differences that count: every fact outside the syscall table, and the unit's directives.

    The syscall table's names and errnos of calls racing the load or the stop (a worker's
    epoll_wait EINTR, a shutdown() or recvmsg on the way out) differ between two full runs as
    well (measured on nginx under wrk: `shutdown` in one run only, epoll_wait EINTR in the
    other), so they are recorded, not asserted; the unit built from the table must not change."""
    diff = differences(facts_view(full), facts_view(fast))
    syscalls = [d for d in diff if d.startswith("/syscalls/")]
    units = [] if unit_lines(full) == unit_lines(fast) else \
        [f"unit: {line}" for line in sorted(set(unit_lines(full)) ^ set(unit_lines(fast)))]
    record.write_text(json.dumps({"tracer": fast["run"]["tracer"], "differences": diff, "units": units}, indent=1))
    print(f"{record}:", json.dumps(fast["run"]["tracer"]), *diff, *units, sep="\n  ")
    return [d for d in diff if d not in syscalls] + units


def bpftrace_left(*runs: Run) -> list[str]:
    """bpftrace processes still running for these runs (the program's last argument is capprobe's pid)."""
    found = subprocess.run(["pgrep", "-af", "bpftrace"], check=False, capture_output=True, text=True).stdout.splitlines()
    return [line for line in found for run in runs if line.endswith(f" {run.proc.pid}")]


@pytest.fixture
def workdir():
    d = Path(subprocess.check_output(["mktemp", "-d", "-p", "/var/tmp", "capprobe-fast-test-XXXXXX"],
                                     text=True).strip())
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


STEADY_SERVICE = r'''
import os, socket, subprocess, sys, time
path = os.environ["NOTIFY_SOCKET"]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect("\0" + path[1:] if path.startswith("@") else path)
s.send(b"READY=1")
trigger, data, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
while not os.path.exists(trigger):
    time.sleep(0.05)
os.makedirs(data, exist_ok=True)
with open(os.path.join(data, "state.tmp"), "w") as f:
    f.write("x")
os.chmod(os.path.join(data, "state.tmp"), 0o640)
os.rename(os.path.join(data, "state.tmp"), os.path.join(data, "state"))
os.chdir(data)
open("relative.log", "a").close()
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen()
c = socket.create_connection(("127.0.0.1", port))
a, _ = srv.accept()
a.close(); c.close()
subprocess.run(["/bin/true"], check=True)
'''


@needs_root
@needs_strace
@needs_bpftrace
def test_fast_equals_full_on_a_service_acting_after_ready(workdir):
    """READY=1 switches; every kind of fact after it comes from the kernel side, the same as strace's."""
    (workdir / "svc.py").write_text(STEADY_SERVICE)
    profiles = {}
    for mode in ("full", "fast"):
        trigger = workdir / f"go-{mode}"
        run = Run(mode, workdir / f"{mode}.json", [SYSTEM_PYTHON, str(workdir / "svc.py"), str(trigger),
                                                  str(workdir / f"data-{mode}"), "47391"])
        run.settle(mode)
        trigger.touch()
        profiles[mode] = run.finish(timeout=60)
    profiles["fast"] = renamed(profiles["fast"], "data-fast", "go-fast")
    tracer = profiles["fast"]["run"]["tracer"]
    assert tracer["backend"] == "strace+bpftrace", tracer
    assert tracer["phases"][1]["switched_because"] == "READY=1"
    diff = compare(profiles["full"], profiles["fast"], workdir / "diff.json")
    assert diff == []
    assert profiles["fast"]["complete"], profiles["fast"]["incomplete"]
    assert bpftrace_left(*Run.started) == []


def nginx_conf(d: Path, port: int) -> Path:
    temp = [d / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")]
    (d / "www").mkdir(exist_ok=True)
    (d / "www" / "index.html").write_text("x" * 4096)
    conf = d / "nginx.conf"
    conf.write_text(
        f"user www-data;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nworker_processes 1;\n"
        "events { worker_connections 64; }\nhttp {\n" f"  access_log {d}/access.log;\n"
        + "".join(f"  {t.name}_temp_path {t};\n".replace("body_temp", "client_body_temp") for t in temp)
        + f"  server {{ listen 127.0.0.1:{port}; root {d}/www; }}\n}}\n")
    for path in (d, d / "www", d / "www" / "index.html"):
        path.chmod(0o755)
    return conf


def load_with(url: str, seconds: float) -> None:
    if shutil.which("wrk"):
        subprocess.run(["wrk", "-t1", "-c4", f"-d{seconds:g}s", url], check=False, capture_output=True, timeout=seconds + 30)
    else:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            urllib.request.urlopen(url, timeout=5).read()


@needs_root
@needs_strace
@needs_bpftrace
@pytest.mark.skipif(not os.path.exists("/usr/sbin/nginx"), reason="nginx-light not installed (.ci/run installs it)")
def test_fast_equals_full_on_nginx_under_load(workdir):
    port = 47392
    conf = nginx_conf(workdir, port)
    profiles = {}
    for mode in ("full", "fast"):
        run = Run(mode, workdir / f"{mode}.json",
                  ["/usr/sbin/nginx", "-g", "daemon off; master_process on;", "-c", str(conf)])
        run.settle(mode)
        load_with(f"http://127.0.0.1:{port}/index.html", 3)
        profiles[mode] = run.finish(stop=True)
        for temp in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):  # each run starts without them
            shutil.rmtree(workdir / temp, ignore_errors=True)
    assert switched(profiles["fast"])
    diff = compare(profiles["full"], profiles["fast"], workdir / "diff.json")
    assert diff == []
    assert bpftrace_left(*Run.started) == []


@needs_root
@needs_strace
@needs_bpftrace
@pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy not installed (Debian package caddy)")
@pytest.mark.xfail(strict=False, reason="known difference, intermittent (1 run in 3 here): the --full run "
                   "reads /sys/devices/system/cpu/online (Go's runtime), which the --fast run does not show "
                   "when that read comes after the switch; the same difference as restic's, not explained yet")
def test_fast_equals_full_on_caddy(workdir):
    port = 47393
    caddyfile = workdir / "Caddyfile"
    caddyfile.write_text("{\n\tadmin off\n}\n" f"http://127.0.0.1:{port} {{\n\trespond \"ok\"\n}}\n")
    profiles = {}
    for mode in ("full", "fast"):
        run = Run(mode, workdir / f"{mode}.json",
                  ["caddy", "run", "--config", str(caddyfile), "--adapter", "caddyfile"], "--env",
                  f"HOME={workdir}", "--env", f"XDG_DATA_HOME={workdir}/data", "--env",
                  f"XDG_CONFIG_HOME={workdir}/config")
        run.settle(mode)
        load_with(f"http://127.0.0.1:{port}/", 2)
        profiles[mode] = run.finish(stop=True)
        for made in ("data", "config", ".step"):  # each run starts without caddy's own directories
            shutil.rmtree(workdir / made, ignore_errors=True)
    assert switched(profiles["fast"])
    diff = compare(profiles["full"], profiles["fast"], workdir / "diff.json")
    assert diff == []
    assert bpftrace_left(*Run.started) == []


@needs_root
@needs_strace
@needs_bpftrace
@pytest.mark.skipif(shutil.which("restic") is None, reason="restic not installed (Debian package restic)")
@pytest.mark.xfail(strict=False, reason="known difference: the backup under --full also reads "
                   "/sys/devices/system/cpu/online, which the --fast run (kernel side from the start) did "
                   "not show in 3 runs out of 3; not explained yet")
def test_fast_equals_full_on_restic_backup_and_restore(workdir):
    """A repository per mode (restic names packs and temporary files at random: those paths are
    left out of the comparison), the same tree backed up and restored."""
    tree = workdir / "tree"
    (tree / "sub").mkdir(parents=True)
    for i in range(50):
        (tree / "sub" / f"f{i}").write_text(str(i) * 100)
    profiles: dict = {"backup": {}, "restore": {}}
    for mode in ("full", "fast"):
        repo, cache = workdir / f"repo-{mode}", workdir / f"cache-{mode}"
        env = dict(os.environ, RESTIC_PASSWORD="x", RESTIC_CACHE_DIR=str(cache))
        subprocess.run(["restic", "-r", str(repo), "init"], env=env, check=True, capture_output=True)
        passed = ["--env", "RESTIC_PASSWORD=x", "--env", f"RESTIC_CACHE_DIR={cache}"]
        passed += FROM_START[mode]
        profiles["backup"][mode] = Run(mode, workdir / f"backup-{mode}.json",
                                       ["restic", "-r", str(repo), "backup", str(tree)], *passed).finish()
        profiles["restore"][mode] = Run(mode, workdir / f"restore-{mode}.json",
                                        ["restic", "-r", str(repo), "restore", "latest", "--target",
                                         str(workdir / f"restored-{mode}")], *passed).finish()
    for step, pair in profiles.items():
        fast = renamed(pair["fast"], "repo-fast", "cache-fast", "restored-fast")
        assert switched(fast)
        diff = compare(pair["full"], fast, workdir / f"diff-{step}.json")
        random_names = re.compile(r"/(repo|cache)-full/|/tmp/restic-|ReadWritePaths=")
        assert [d for d in diff if not random_names.search(d)] == [], step
    assert bpftrace_left(*Run.started) == []


@needs_root
@needs_strace
@needs_bpftrace
@pytest.mark.xfail(strict=True, reason="known difference: sqlite fchown()s its journal through an fd; an "
                   "fd-argument call is never named from /proc after the call (the target could have dup2'ed "
                   "another file onto the fd), so --fast counts it in run.tracer.unresolved and the profile is "
                   "incomplete, where --full records the journal's chown")
def test_fast_equals_full_on_arctic_like(workdir):
    """Each run in a network namespace of its own: the agent's TUN, rule, route and table are new."""
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 for the network namespaces")
    workload = workdir / "arctic_like.py"
    workload.write_text((REPO / "tests" / "workloads" / "arctic_like.py").read_text())
    profiles = {}
    for mode in ("full", "fast"):
        data, token = workdir / f"data-{mode}", workdir / f"token-{mode}"
        data.mkdir()
        token.mkdir()
        ns = f"capprobe-fast-{os.getpid()}-{mode}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            run = Run(mode, workdir / f"{mode}.json",
                      [SYSTEM_PYTHON, str(workload), "--data", str(data), "--token-dir", str(token), "--hold", "1"],
                      *FROM_START[mode],
                      prefix=["nsenter", f"--net=/run/netns/{ns}"])  # not `ip netns exec`: it hides the cgroups
            profiles[mode] = run.finish()
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    profiles["fast"] = renamed(profiles["fast"], "data-fast", "token-fast")
    assert switched(profiles["fast"])
    diff = compare(profiles["full"], profiles["fast"], workdir / "diff.json")
    assert diff == []
    assert bpftrace_left(*Run.started) == []


@needs_root
@needs_strace
@needs_bpftrace
def test_fast_equals_full_on_the_demo_service(workdir):
    from importlib import resources
    service = workdir / "notes_service.py"
    service.write_bytes(resources.files("capprobe.examples").joinpath("notes_service.py").read_bytes())
    profiles = {}
    port = next(p for p in (880, 881, 882, 843, 853) if _free(p))  # one port: it is in the unit
    for mode in ("full", "fast"):
        config = workdir / "notes.toml"
        config.write_text(f'data_dir = "{workdir}/data"\nlog_file = "{workdir}/notes.log"\n')
        profiles[mode] = Run(mode, workdir / f"{mode}.json", [SYSTEM_PYTHON, str(service), "--config", str(config),
                                                             "--port", str(port)], *FROM_START[mode]).finish()
        shutil.rmtree(workdir / "data", ignore_errors=True)
        (workdir / "notes.log").unlink(missing_ok=True)
    assert switched(profiles["fast"])
    diff = compare(profiles["full"], profiles["fast"], workdir / "diff.json")
    assert diff == []
    assert bpftrace_left(*Run.started) == []


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
