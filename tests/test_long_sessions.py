"""Long sessions (issue 10, section 4): checkpoints that survive a killed capprobe, losses
that are counted and mark the profile incomplete, and the trace spool that never makes
strace wait. Everything runs for real: capprobe, strace, the kernel probe, a tiny tmpfs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capprobe import cgroup
from capprobe.events import strace_line

from conftest import SYSTEM_PYTHON, capprobe, load, needs_root, needs_strace

MARKS = ("import os, sys, time\n"
         "for i in range(int(sys.argv[2])):\n"
         "    open(os.path.join(sys.argv[1], f'mark-{i}'), 'w').close()\n"
         "    time.sleep(0.05)\n")


def _marks(profile: dict, directory: Path) -> set[str]:
    return {f["path"] for f in profile["files"] if f["path"].startswith(f"{directory}/mark-")}


def _read_checkpoint(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _wait_for(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    return None


def _kill_orphaned_target(pid: int, marks: Path) -> None:
    """The target outlives a SIGKILLed capprobe (by design); stop it, and only it."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if str(marks).encode() in cmdline:
        os.kill(pid, signal.SIGKILL)


def _reclaim_our_stale_cgroups() -> None:
    mount = cgroup.cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    inside = cgroup.own_cgroup(Path("/proc/self/cgroup").read_text())
    if mount is not None and inside is not None:
        cgroup.reclaim_stale(os.path.join(mount, inside.lstrip("/")))


@needs_root
@needs_strace
def test_the_last_checkpoint_of_a_killed_capprobe_is_a_profile_show_reads(tmp_path):
    out, marks = tmp_path / "p.json", tmp_path / "marks"
    marks.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "capprobe", "run", "-q", "--no-unit", "--checkpoint", "1",
                             "-o", str(out), "--", SYSTEM_PYTHON, "-c", MARKS, str(marks), "1200"])
    target = None
    try:
        first = _wait_for(lambda: (p := _read_checkpoint(out)) and _marks(p, marks) and p, timeout=40)
        assert first, "no checkpoint with the target's files within 40 s"
        target = first["run"]["main_pid"]
        # a later checkpoint replaces it, with more of the run
        later = _wait_for(lambda: (p := _read_checkpoint(out)) and len(_marks(p, marks)) > len(_marks(first, marks))
                          and p, timeout=20)
        assert later, "the checkpoint was written once, not every second"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        last = load(out)  # whole: every write was a rename of a complete file
        assert len(_marks(last, marks)) >= len(_marks(later, marks))
        assert last["complete"] is False and "checkpoint of a run still going" in last["incomplete"][0]
        assert last["run"]["exit_status"] is None and last["run"]["ended_by"] == "still running"
        shown = capprobe("show", str(out))
        assert shown.returncode == 0, shown.stderr
        assert "incomplete" in shown.stdout + shown.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if target is not None:
            _kill_orphaned_target(target, marks)
        _reclaim_our_stale_cgroups()


@needs_root
@needs_strace
def test_checkpoints_leave_the_final_profile_as_it_would_be_without_them(tmp_path):
    profiles = {}
    for name, extra in (("plain", []), ("checkpointed", ["--checkpoint", "1"])):
        marks = tmp_path / name
        marks.mkdir()
        r = capprobe("run", "-q", "--no-unit", *extra, "-o", str(tmp_path / f"{name}.json"), "--",
                     SYSTEM_PYTHON, "-c", MARKS, str(marks), "50")
        assert r.returncode == 0, r.stderr  # the final write replaced the checkpoints without --force
        profiles[name] = load(tmp_path / f"{name}.json")
    plain, checkpointed = profiles["plain"], profiles["checkpointed"]
    assert checkpointed["complete"] is True and checkpointed["incomplete"] == []
    assert len(_marks(checkpointed, tmp_path / "checkpointed")) == len(_marks(plain, tmp_path / "plain")) == 50
    assert set(checkpointed["syscalls"]) == set(plain["syscalls"])
    assert checkpointed["capabilities"]["required"] == plain["capabilities"]["required"]


@needs_root
@needs_strace
def test_a_full_spool_disk_is_counted_as_lost_and_the_summary_says_so(tmp_path):
    # strace cannot write its trace (a 64 KiB tmpfs as the spool's place): every failed write is
    # counted, the profile is incomplete, and the terminal gets one warning, not one per line.
    spool = tmp_path / "tiny"
    spool.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "capprobe-test-spool", str(spool)],
                   check=True)
    try:
        r = capprobe("run", "--no-unit", "-o", str(tmp_path / "p.json"), "--", SYSTEM_PYTHON, "-c",
                     "import os\nfor _ in range(5000):\n    os.stat('/')\n",
                     env={**os.environ, "CAPPROBE_SPOOL_DIR": str(spool)})
    finally:
        subprocess.run(["umount", str(spool)], check=True)
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    assert p["complete"] is False
    (reason,) = [x for x in p["incomplete"] if x.startswith("strace failed")]
    failed = int(re.search(r"failed (\d+) time", reason).group(1))
    assert "No space left on device" in reason and failed > 1000  # most of 5,000 stat lines
    assert p["parser"]["lines"] + failed >= 5000
    assert "WARNING: the profile is incomplete" in r.stderr and "strace failed" in r.stderr
    assert r.stderr.count("No space left on device") == 1  # the reason, once: strace's own lines were counted


@needs_root
@needs_strace
def test_capability_checks_lost_to_a_tiny_ring_buffer_mark_the_run_incomplete(monkeypatch, tmp_path):
    # 20,000 SO_SNDBUFFORCE checks (CAP_NET_ADMIN each) into an 8 KiB-per-CPU tracefs buffer whose
    # reader is held until the target is done: the kernel overwrites what nobody read, and the
    # loss reaches the whole session's profile and its summary.
    from capprobe import capability_recorder
    from capprobe.render.summary import profile_warnings
    from capprobe.session import RunOptions, run_session
    from capprobe.tracing import tracefs

    done = tmp_path / "done"

    class TinyHeldBuffer(tracefs.CapabilityProbe):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, buffer_size_kb=8, **kwargs)

        def _read_loop(self):
            _wait_for(lambda: done.exists() or self._stopping.is_set(), timeout=60)
            super()._read_loop()

    monkeypatch.setitem(capability_recorder.PROBE_BACKENDS, "tracefs", TinyHeldBuffer)
    burst = ("import socket, sys\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
             "for _ in range(20000):\n    s.setsockopt(socket.SOL_SOCKET, 32, 65536)\n"
             "open(sys.argv[1], 'w').close()\n")
    try:
        result = run_session(RunOptions(command=[SYSTEM_PYTHON, "-c", burst, str(done)], cwd=str(tmp_path),
                                        cap_probe="tracefs"))
    except Exception as e:  # noqa: BLE001 - the session says why the probe cannot run here
        if "tracefs" in str(e):
            pytest.skip(f"no tracefs capability probe here: {e}")
        raise
    p = result.profile
    lost = p["capabilities"]["lost_events"]
    assert lost > 0, "no overrun: the provocation did not work"
    assert p["complete"] is False and any(f"lost {lost} capability checks" in x for x in p["incomplete"])
    assert any("incomplete" in w for w in profile_warnings(p))
    uses = [u for u in p["capabilities"]["uses"] if u["capability"] == "CAP_NET_ADMIN"]
    assert sum(u["count"] for u in uses) + lost >= 20000


# -- the spool: strace never waits on capprobe ------------------------------------------------

@needs_root
@needs_strace
def test_strace_writes_ahead_of_a_stalled_parser_and_nothing_is_lost(tmp_path, monkeypatch):
    # The parser is held at its first line until the target (20,000 syscalls) has finished: with
    # a pipe strace, and so the target, would block once 1 MiB is unread, and this would wait
    # out its 60 s; with the spool the target ends, and the parser then reads every line.
    from capprobe.facts.decode import StraceDecoder
    from capprobe.session import RunOptions, run_session

    done = tmp_path / "done"
    held = []
    original = StraceDecoder.feed_line

    def held_until_the_target_is_done(self, line):
        if not held:
            held.append(_wait_for(done.exists, timeout=60))
        original(self, line)

    monkeypatch.setattr(StraceDecoder, "feed_line", held_until_the_target_is_done)
    script = ("import os, sys\nfor _ in range(10000):\n    os.stat('/')\n    os.getpid()\n"
              "open(sys.argv[1], 'w').close()\n")
    result = run_session(RunOptions(command=[SYSTEM_PYTHON, "-c", script, str(done)], cwd=str(tmp_path),
                                    cap_probe="off"))
    p = result.profile
    spool = p["run"]["tracer"]["spool"]
    assert held == [True]  # the target finished while the parser had read one line
    assert spool["peak_unread_bytes"] > 1 << 20  # more than the 1 MiB pipe held
    assert p["syscalls"]["getpid"]["count"] == 10000 and p["complete"] is True
    assert spool["catch_up_seconds"] > 0


def test_the_close_of_an_argument_list_is_found_as_the_token_regex_found_it():
    # _find_close skips quoted strings with str.find (16 KiB of escapes per nginx writev); the
    # regular expression it replaced is the reference, on random text built from the
    # characters that matter (quotes, backslashes, parentheses, annotations).
    import random
    reference = re.compile(r'"(?:[^"\\]|\\.)*"|(?<=[\d/])<(?:->|[^<>\\]|\\.|<[^<>]*>)*>|[()]')

    def by_regex(text: str, depth: int) -> int | None:
        for tok in reference.finditer(text):
            depth += {"(": 1, ")": -1}.get(tok.group(), 0)
            if tok.group() == ")" and depth == 0:
                return tok.start()
        return None

    pieces = ['"', "\\", "(", ")", "<", ">", "1", "/", "a", " ", "-", "<->", '\\"', "\\\\", "<1<", "/<", "\\x41"]
    rnd = random.Random(10)
    for _ in range(50_000):
        text = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 24)))
        for depth in (1, 2):
            assert strace_line._find_close(text, depth) == by_regex(text, depth), (text, depth)


def test_checks_ahead_of_a_lagging_parser_are_not_walked_at_every_drain():
    # The parser 10,000 checks behind the kernel probe (the spool lets it lag): a drain every
    # 32 lines must not look at each waiting check, or catching up is quadratic (measured:
    # 20,000 SO_SNDBUFFORCE checks took 16 s to catch up instead of 3.5).
    from types import SimpleNamespace

    from capprobe.capability_recorder import CapabilityRecorder

    looked_at = []

    class Probe:
        def mono_to_wall(self, mono_ts):
            looked_at.append(mono_ts)
            return mono_ts

    added = []
    collector = SimpleNamespace(last_ts=100.5, root_pid=None, last_seen=lambda pid: 100.5,
                                first_exec_time=lambda pid: 0.0)
    recorder = CapabilityRecorder(Probe(), collector, None)
    recorder.aggregator = SimpleNamespace(add=lambda check, wall: added.append(wall))
    for ts in range(10_000):
        recorder._queue.put(SimpleNamespace(pid=7, mono_ts=float(ts)))
    recorder.drain()
    assert added == [float(ts) for ts in range(101)]  # those the stream has reached, in order
    looked_at.clear()
    recorder.drain()
    assert len(looked_at) == 1  # the first check still ahead, and no further
    collector.last_ts = 10_000.0
    recorder.drain(final=True)
    assert added == [float(ts) for ts in range(10_000)]
