"""What capprobe prints must be honest and safe: a failed target or an incomplete profile
is said at the top of the summary and in the unit's header, and text from the target or
a profile never reaches the terminal as escape sequences or bidi controls."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from capprobe.render.summary import one_paragraph, render_summary
from capprobe.rules.base import UnitOptions
from capprobe.synthesis import synthesize

from conftest import capprobe, load, needs_root, needs_strace

BASE = {
    "schema": "capprobe/profile/v1",
    "host": {"hostname": "h", "kernel": "6.18", "architecture": "x86_64"},
    "run": {"command": ["/usr/bin/svc"], "executable": "/usr/bin/svc", "ended_by": "exit",
            "duration": 2.0, "exit_status": 0, "exit_signal": None, "started": 0,
            "user": {"uid": 0, "name": "root"}},
    "processes": [{"pid": 1, "ppid": None, "exe": "/usr/bin/svc", "execs": [], "identity_changes": []}],
    "syscalls": {"read": {"count": 1}}, "files": [], "devices": [],
    "network": {"sockets": [], "binds": [], "listens": [], "connects": [], "sends": [], "accepts": [],
                "setsockopts": [], "netlink": []},
    "behaviour": [], "parser": {"lines": 1, "unparsed": 0},
    "capabilities": {"method": "tracefs", "required": [], "uses": []},
}


def profile(run=None, **top) -> dict:
    p = copy.deepcopy(BASE)
    p["run"].update(run or {})
    p.update(top)
    return p


def unit_header(p: dict) -> str:
    text = synthesize(p, UnitOptions(name="svc"), score=False).unit_text
    return text.split("[Service]")[0]


@pytest.mark.parametrize("run, said", [
    ({"exit_status": 3}, "the target failed: exit status 3"),
    ({"exit_status": 139, "exit_signal": "SIGSEGV"}, "the target was killed by SIGSEGV"),
    ({"requested_duration": 30.0, "duration": 2.0},
     "the target stopped on its own after 2.0 s, before --duration 30 s"),
])
def test_a_failed_or_short_run_is_said_first_and_in_the_unit_header(run, said):
    p = profile(run)
    assert one_paragraph(p, "p.json").splitlines()[0].startswith(f"capprobe: WARNING: {said}")
    assert render_summary(p).splitlines()[0].startswith(f"WARNING: {said}")
    assert f"# WARNING: {said}" in unit_header(p)


@pytest.mark.parametrize("run", [
    {"exit_status": 0},
    {"ended_by": "duration", "exit_status": 143, "exit_signal": "SIGTERM", "requested_duration": 2.0},
    {"ended_by": "SIGINT", "exit_status": 130},
])
def test_a_good_run_or_one_stopped_on_request_has_no_warning(run):
    p = profile(run)
    assert "WARNING" not in one_paragraph(p, "p.json") + render_summary(p) + unit_header(p)


def test_an_incomplete_profile_lists_its_reasons_everywhere():
    reasons = ["2 process(es) of the target were never traced", "the kernel probe lost 7 capability checks"]
    p = profile(complete=False, incomplete=reasons)
    for text in (one_paragraph(p, "p.json"), render_summary(p), unit_header(p)):
        assert "not proven minimal" in text
        assert all(r in text for r in reasons)


def test_terminal_escapes_and_bidi_controls_in_a_profile_are_escaped():
    evil = "\x1b]0;pwned\x07\x1b[2J\u202egnp.exe"
    p = profile({"command": ["/usr/bin/svc", evil]}, complete=False, incomplete=[evil])
    p["host"]["hostname"] = evil
    p["network"]["connects"] = [{"family": "AF_UNIX", "address": "@" + evil, "port": None, "by": ["/x"]}]
    p["files"] = [{"path": "/srv/" + evil, "ops": {"write": {"count": 1, "by": ["/usr/bin/" + evil]}}}]
    p["behaviour"] = [{"kind": "sd_notify", "detail": evil, "count": 1, "by": []}]
    for text in (render_summary(p), one_paragraph(p, "p.json"), unit_header(p)):
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
        assert "\\x1b]0;pwned\\x07\\x1b[2J\\u202egnp.exe" in text


@pytest.fixture
def srv_dir():
    d = tempfile.mkdtemp(prefix="capprobe-test-", dir="/srv")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@needs_root
@needs_strace
def test_real_failing_target_keeps_its_exit_code_and_is_loud(srv_dir):
    r = capprobe("run", "-o", str(srv_dir / "p.json"), "--unit", "fails", "--", "/bin/sh", "-c", "exit 3",
                 cwd=srv_dir)
    assert r.returncode == 3, r.stderr
    assert "capprobe: WARNING: the target failed: exit status 3" in r.stderr
    warning = r.stderr.index("WARNING: the target failed")
    assert warning < r.stderr.index("profile written to")
    unit = (srv_dir / "fails.service").read_text()
    assert "# WARNING: the target failed: exit status 3" in unit
    if shutil.which("systemd-analyze"):
        exposure = next(line for line in r.stderr.splitlines() if "exposure" in line)
        assert "WARNING" in exposure


@needs_root
@needs_strace
def test_real_non_utf8_argument_keeps_exit_code_and_unit(srv_dir):
    # argv bytes that are not UTF-8 crashed unit generation (exit 70, no unit)
    r = capprobe("run", "-o", str(srv_dir / "p.json"), "--unit", "bytes", "--",
                 "/bin/sh", "-c", "exit 3", os.fsdecode(b"\xff"), cwd=srv_dir)
    assert r.returncode == 3, r.stderr
    assert "internal error" not in r.stderr
    assert load(srv_dir / "p.json")["run"]["command"][-1] == "b64:/w=="
    unit = (srv_dir / "bytes.service").read_text()
    assert "ExecStart: left out" in unit  # the D-Bus API cannot carry it: said, not crashed
    assert "ExecStart= left out of the unit" in r.stderr and "--exec" in r.stderr
    shown = capprobe("show", str(srv_dir / "p.json"))
    assert shown.returncode == 0 and "/bin/sh -c exit 3 \\xff" in shown.stdout


@needs_root
@needs_strace
def test_real_non_utf8_file_name_widens_to_its_directory(srv_dir):
    (srv_dir / "a").mkdir()
    (srv_dir / "b").mkdir()
    os.mkdir(os.fsencode(srv_dir) + b"/a/d\xff")
    script = f'printf x > "$(printf "{srv_dir}/a/d\\377")/f"; printf y > {srv_dir}/b/ok'
    r = capprobe("run", "-o", str(srv_dir / "p.json"), "--unit", "odd", "--", "/bin/sh", "-c", script,
                 cwd=srv_dir)
    assert r.returncode == 0, r.stderr
    assert os.path.exists(os.fsencode(srv_dir) + b"/a/d\xff/f")
    unit = (srv_dir / "odd.service").read_text()
    rw = next(line for line in unit.splitlines() if line.startswith("ReadWritePaths="))
    assert rw.split("=", 1)[1].split() == [f"{srv_dir}/a", f"{srv_dir}/b"]
    comments = " ".join(line[2:] for line in unit.splitlines() if line.startswith("# "))
    assert f"widened to {srv_dir}/a" in comments


INTERRUPTED_IMPORT = """
import sys
class Interrupt:  # Ctrl-C arriving while capprobe's modules load (about half a second)
    def find_spec(self, name, path=None, target=None):
        if name == "capprobe.cli":
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
from capprobe.__main__ import entry
entry()
"""


def test_ctrl_c_while_capprobe_loads_is_an_interrupt_not_a_traceback():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT], capture_output=True, text=True, timeout=60)
    assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr
