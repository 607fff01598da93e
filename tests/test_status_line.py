"""The live status line: drawn on a terminal (a real pseudo-terminal here), silent elsewhere."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time

import pytest
from conftest import SYSTEM_PYTHON, needs_root, needs_strace
from rich.console import Console

from capprobe.facts.collector import FactCounts
from capprobe.status import Progress, StatusLine, status_text

# once traced: writes a new file every 0.3 s for 1.5 s, then only reads for 2.5 s: "nothing new" must grow
WORKLOAD = ("import os, sys, time\n"
            "d = sys.argv[1]\n"
            "while 'TracerPid:\\t0' in open('/proc/self/status').read():\n"
            "    time.sleep(0.05)\n"
            "for i in range(5):\n"
            "    open(os.path.join(d, f'f{i}'), 'w').write('x'); time.sleep(0.3)\n"
            "end = time.time() + 2.5\n"
            "while time.time() < end:\n"
            "    os.stat(d); time.sleep(0.01)\n")


def test_status_text_shows_counts_capabilities_ports_and_quiet_time():
    progress = Progress(FactCounts(processes=9, syscalls=48211, written_paths=14, ports=frozenset({"443", "80"})),
                        frozenset({"CAP_SETUID", "CAP_NET_BIND_SERVICE"}))
    assert status_text(progress, 724, 190) == ("capprobe: 12:04 · 9 processes · 48,211 syscalls · "
                                               "CAP_NET_BIND_SERVICE CAP_SETUID · 14 paths written · "
                                               "ports 80 443 · nothing new for 3:10")
    assert "no capability yet" in status_text(Progress(), 0, 0) and "no port" in status_text(Progress(), 0, 0)


def test_only_a_new_capability_path_or_port_counts_as_new():
    base = Progress(FactCounts(1, 10, 2, frozenset({"80"})), frozenset({"CAP_CHOWN"}))
    assert not Progress(FactCounts(3, 5000, 2, frozenset({"80"})), frozenset({"CAP_CHOWN"})).has_more_than(base)
    assert Progress(FactCounts(1, 10, 3, frozenset({"80"})), frozenset({"CAP_CHOWN"})).has_more_than(base)
    assert Progress(FactCounts(1, 10, 2, frozenset({"80", "81"})), frozenset({"CAP_CHOWN"})).has_more_than(base)
    assert Progress(FactCounts(1, 10, 2, frozenset({"80"})), frozenset({"CAP_CHOWN", "CAP_KILL"})).has_more_than(base)


@pytest.mark.parametrize("asked", [False, True])
def test_status_line_is_off_when_not_asked_or_not_on_a_terminal(asked):
    calls, out = [], io.StringIO()  # a file, not a terminal
    line = StatusLine(lambda: calls.append(1) or Progress(), enabled=asked, console=Console(file=out))
    with line:
        line.tick()
    assert calls == [] and not line.enabled and out.getvalue() == ""


def _run_on_pty(argv: list[str], seconds: float = 60) -> tuple[int, str]:
    """Run ARGV with stderr (and stdout) on a new pseudo-terminal; its exit status and all it drew."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "200"}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    out = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's last writer has gone
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(controller)
    return proc.wait(timeout=10), out.decode(errors="replace")


@needs_root
@needs_strace
@pytest.mark.parametrize("command", ["run", "attach"])
def test_on_a_terminal_run_and_attach_draw_the_status_line(tmp_path, command):
    profile = str(tmp_path / "p.json")
    if command == "run":
        rc, drawn = _run_on_pty([sys.executable, "-m", "capprobe", "run", "--no-unit", "-o", profile,
                                 "--", SYSTEM_PYTHON, "-c", WORKLOAD, str(tmp_path)])
    else:
        target = subprocess.Popen([SYSTEM_PYTHON, "-c", WORKLOAD, str(tmp_path)], start_new_session=True)
        try:
            rc, drawn = _run_on_pty([sys.executable, "-m", "capprobe", "attach", str(target.pid), "--no-unit",
                                     "-o", profile])
        finally:
            target.kill()
            target.wait()
    assert rc == 0, drawn
    assert "syscalls" in drawn and "paths written" in drawn and "nothing new for" in drawn, drawn[-2000:]
    # after the last new file, the quiet time grows past a second while the target only reads
    quiet = [line.rsplit("nothing new for ", 1)[1][:4] for line in drawn.split("\r") if "nothing new for" in line]
    assert any(q.startswith(("0:01", "0:02", "0:03")) for q in quiet), quiet
    assert "5 paths written" in drawn or "6 paths written" in drawn, drawn[-2000:]


@needs_root
@needs_strace
@pytest.mark.parametrize("how", ["pipe", "quiet"])
def test_no_status_line_without_a_terminal_or_with_quiet(tmp_path, how):
    argv = [sys.executable, "-m", "capprobe", "run", "--no-unit", "-o", str(tmp_path / "p.json"),
            *(["--quiet"] if how == "quiet" else []), "--", SYSTEM_PYTHON, "-c", WORKLOAD, str(tmp_path)]
    if how == "pipe":
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        rc, drawn = r.returncode, r.stderr
    else:
        rc, drawn = _run_on_pty(argv)
    assert rc == 0, drawn
    assert "nothing new for" not in drawn and "\x1b[" not in drawn, drawn[-2000:]
    assert (tmp_path / "p.json").exists()
