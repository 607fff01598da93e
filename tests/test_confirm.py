"""Empirical confirmation (issue 9 §3): re-run without each doubtful capability, keep what matters."""

from __future__ import annotations

import copy
import shutil
import subprocess

import pytest

from capprobe.confirm import (Judged, Rerun, Verdict, apply_confirmation, doubtful_capabilities, drop_group,
                              judge, observe)
from conftest import SYSTEM_PYTHON, capprobe, capprobe_in_netns, load, needs_root, needs_strace

# Binds port 80 as root, then keeps only CAP_NET_BIND_SERVICE with capset(): inheritable
# NET_BIND_SERVICE makes the kernel's table list CAP_SETPCAP as required (cap_inh_is_capped),
# yet the new inheritable set lies within the old permitted set, so capset passes without it.
CAPSET_AND_BIND = r"""
import ctypes, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 80))
s.listen(1)
class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
keep = 1 << 10
libc = ctypes.CDLL(None, use_errno=True)
sys.exit(libc.syscall(126, ctypes.byref(Header(0x20080522, 0)), (Data * 2)(Data(keep, keep, keep))))
"""

# A daemon's pid file, handed to nobody; like many daemons it ignores a failed chown.
PIDFILE_CHOWN = r"""
import os, sys
with open(sys.argv[1], "w") as f:
    f.write(f"{os.getpid()}\n")
try:
    os.chown(sys.argv[1], 65534, 65534)
except PermissionError:
    pass
"""

# Creates its spool directory and chowns it only when it is missing (nginx's temp paths do this).
CHOWN_WHEN_MISSING = r"""
import os, sys
if not os.path.isdir(sys.argv[1]):
    os.mkdir(sys.argv[1])
    os.chown(sys.argv[1], 65534, 65534)
"""


def base_profile(**run) -> dict:
    return {"run": {"exit_status": 0, "ended_by": "exit", "notifications": [], **run},
            "files": [{"path": "/run/x.pid", "ops": {"write": {"count": 1}, "chown": {"count": 1}}}],
            "network": {"binds": [{"family": "AF_INET", "type": "SOCK_STREAM", "address": "127.0.0.1",
                                   "port": 80, "errno": None, "by": ["/x"]}],
                        "listens": [{"socket": "TCP:[127.0.0.1:80]", "errno": None}]},
            "syscalls": {"bind": {"count": 1}, "chown": {"count": 1}},
            "capabilities": {"method": "tracefs", "required": ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"], "uses": [
                {"capability": "CAP_CHOWN", "status": "required", "syscall": "chown", "call_site": "chown_common"},
                {"capability": "CAP_NET_BIND_SERVICE", "status": "required", "syscall": "bind",
                 "call_site": "__inet_bind", "targets": ["127.0.0.1:80"]}]}}


def rerun_of(profile: dict, dropped: str, *, exit_status=0, failed_syscall=None, wrote=True, bound=True) -> Rerun:
    p = copy.deepcopy(profile)
    p["run"]["exit_status"] = exit_status
    if not wrote:
        p["files"] = []
    if not bound:
        p["network"]["binds"][0]["errno"] = "EACCES"
        p["network"]["listens"] = []
    if failed_syscall:
        p["syscalls"][failed_syscall] = {"count": 1, "errors": {"EPERM" if failed_syscall == "chown" else "EACCES": 1}}
    p["capabilities"]["uses"] = [{"capability": dropped, "status": "optional", "syscall": failed_syscall or "chown",
                                  "call_site": "x", "targets": ["/run/x.pid"]}]
    return Rerun((dropped,), p, None, 0.5)


def test_observe_keeps_what_a_user_would_notice_not_the_owner_change():
    facts = observe(base_profile()).facts
    assert ("wrote", "/run/x.pid") in facts and ("exit", "exit status 0") in facts
    assert ("listening", "AF_INET SOCK_STREAM 127.0.0.1:80") in facts
    assert not any(kind == "chown" for kind, _ in facts)


def test_an_ignored_failure_of_the_dropped_capability_is_the_same_behaviour():
    reference = observe(base_profile())
    v = judge(reference, rerun_of(base_profile(), "CAP_CHOWN", failed_syscall="chown"), {"CAP_CHOWN"}, False)
    assert v.same and v.ignored == ("chown /run/x.pid (EPERM)",) and v.proof is None


def test_a_changed_exit_keeps_it_required_with_the_failed_call_as_proof():
    reference = observe(base_profile())
    r = rerun_of(base_profile(), "CAP_NET_BIND_SERVICE", exit_status=1, failed_syscall="bind", bound=False)
    v = judge(reference, r, {"CAP_NET_BIND_SERVICE"}, False)
    assert not v.same and v.difference == "exit status 1 instead of exit status 0"
    assert v.proof["syscall"] == "bind" and v.proof["errno"] == "EACCES"


def test_a_lost_write_or_an_unrelated_new_refusal_is_a_difference():
    reference = observe(base_profile())
    v = judge(reference, rerun_of(base_profile(), "CAP_CHOWN", wrote=False), {"CAP_CHOWN"}, False)
    assert v.difference == "did not write /run/x.pid"
    r = rerun_of(base_profile(), "CAP_CHOWN")
    r.profile["syscalls"]["openat"] = {"count": 3, "errors": {"EACCES": 1}}
    assert judge(reference, r, {"CAP_CHOWN"}, False).difference == "openat failed with EACCES"


def test_a_dying_worker_or_a_failed_exercise_is_a_difference_though_the_main_process_lives():
    base = base_profile(exercises=[{"command": "curl -sf http://127.0.0.1/", "exit": 0}])
    base["processes"] = [{"exe": "/usr/sbin/nginx", "exit_status": 0, "exit_signal": None}]
    reference = observe(base)
    r = rerun_of(base, "CAP_SETGID", failed_syscall="setgid")
    r.profile["processes"] = [*base["processes"], {"exe": "/usr/sbin/nginx", "exit_status": 2, "exit_signal": None}]
    assert judge(reference, r, {"CAP_SETGID"}, False).difference == "/usr/sbin/nginx exited with status 2"
    r.profile["run"]["exercises"] = [{"command": "curl -sf http://127.0.0.1/", "exit": 7}]
    assert judge(reference, r, {"CAP_SETGID"}, False).difference == "the exercise 'curl -sf http://127.0.0.1/' failed"


def test_a_failure_already_confirmed_harmless_is_no_difference_in_a_later_re_run():
    reference = observe(base_profile())
    r = rerun_of(base_profile(), "CAP_CHOWN", failed_syscall="chown")  # CAP_CHOWN was confirmed optional before
    r = Rerun(("CAP_CHOWN", "CAP_FOWNER"), r.profile, None, 0.5)
    r.profile["capabilities"]["uses"].append({"capability": "CAP_FOWNER", "status": "optional", "syscall": "utimensat"})
    v = judge(reference, r, {"CAP_FOWNER"}, False)
    assert v.same and v.ignored == ()  # chown's EPERM belongs to CAP_CHOWN, not to the one tested now


def test_surviving_without_a_capability_it_never_asked_proves_nothing():
    r = rerun_of(base_profile(), "CAP_CHOWN")
    r.profile["capabilities"]["uses"] = []
    v = judge(observe(base_profile()), r, {"CAP_CHOWN"}, False)
    assert not v.same and "never asked for CAP_CHOWN" in v.inconclusive


def test_confirmation_rewrites_rows_and_required_and_a_proof_ends_the_doubt():
    section = base_profile()["capabilities"]
    tested = [Judged("CAP_CHOWN", rerun_of(base_profile(), "CAP_CHOWN"), Verdict(True, None, None, ("chown x",))),
              Judged("CAP_NET_BIND_SERVICE", rerun_of(base_profile(), "CAP_NET_BIND_SERVICE", exit_status=1),
                     Verdict(False, "exit status 1 instead of exit status 0", {"syscall": "bind"}, ()))]
    out = apply_confirmation(section, tested, {"reruns": 3, "seconds": 1.5})
    assert out["required"] == ["CAP_NET_BIND_SERVICE"]
    chown, bind = out["uses"]
    assert chown["status"] == "optional" and chown["confirmed_by"]["same_facts"] is True
    assert chown["confirmed_by"]["ignored_failures"] == ["chown x"]
    assert bind["status"] == "required" and bind["confirmed_by"]["first_difference"].startswith("exit status 1")
    assert out["confirmation"]["reruns"] == 3 and out["confirmation"]["optional"] == ["CAP_CHOWN"]
    assert doubtful_capabilities(section) == ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]
    assert doubtful_capabilities(out) == []
    assert section["required"] == ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]  # the input is not changed


def test_an_either_or_alternative_is_dropped_with_the_capability_unless_required_itself():
    section = {"required": ["CAP_DAC_READ_SEARCH"], "uses": [
        {"capability": "CAP_DAC_READ_SEARCH", "status": "required",
         "alternatives": ["CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH"]}]}
    assert drop_group(section, "CAP_DAC_READ_SEARCH") == {"CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH"}
    section["required"].append("CAP_DAC_OVERRIDE")
    assert drop_group(section, "CAP_DAC_READ_SEARCH") == {"CAP_DAC_READ_SEARCH"}


def _confirmed_by(profile: dict, cap: str) -> list[dict]:
    return [u for u in profile["capabilities"]["uses"] if u["capability"] == cap and u.get("confirmed_by")]


@needs_root
@needs_strace
def test_run_confirm_keeps_bind_and_makes_setpcap_optional(netns, tmp_path):
    script = tmp_path / "capset_bind.py"
    script.write_text(CAPSET_AND_BIND)
    r = capprobe_in_netns(netns, "run", "--confirm", "-o", str(tmp_path / "p.json"), "--unit", "cb",
                          "--", SYSTEM_PYTHON, str(script))
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    caps = p["capabilities"]
    assert caps["required"] == ["CAP_NET_BIND_SERVICE"]
    (setpcap,) = _confirmed_by(p, "CAP_SETPCAP")  # the kernel's table said required; the re-run says not
    assert setpcap["status"] == "optional" and setpcap["call_site"] == "cap_capset"
    assert setpcap["confirmed_by"]["same_facts"] is True and setpcap["confirmed_by"]["exit"] == 0
    (bind,) = _confirmed_by(p, "CAP_NET_BIND_SERVICE")
    evidence = bind["confirmed_by"]
    assert bind["status"] == "required" and evidence["same_facts"] is False and evidence["exit"] == 1
    assert evidence["first_difference"] == "exit status 1 instead of exit status 0"
    assert evidence["proof"]["syscall"] == "bind" and evidence["proof"]["errno"] == "EACCES"
    assert caps["confirmation"]["reruns"] == 3 and caps["confirmation"]["seconds"] > 0
    assert "3 re-runs in" in r.stderr
    unit = (tmp_path / "cb.service").read_text()
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n" in unit
    comment = unit.replace("\n# ", " ")  # the evidence of each line says what the re-runs showed
    assert "confirmed: without it, exit status 1 instead of exit status 0" in comment
    assert "(CAP_SETPCAP: a re-run without it behaved the same" in comment


@needs_root
@needs_strace
def test_a_pidfile_chown_whose_failure_is_ignored_becomes_optional(tmp_path):
    script, pidfile = tmp_path / "pidfile.py", tmp_path / "x.pid"
    script.write_text(PIDFILE_CHOWN)
    r = capprobe("run", "--confirm", "--no-unit", "--reset", f"rm -f {pidfile}", "-o", str(tmp_path / "p.json"),
                 "--", SYSTEM_PYTHON, str(script), str(pidfile))
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    assert p["capabilities"]["required"] == []
    (chown,) = _confirmed_by(p, "CAP_CHOWN")
    assert chown["status"] == "optional"
    assert chown["confirmed_by"]["ignored_failures"] == [f"chown {pidfile} (EPERM)"]
    assert p["capabilities"]["confirmation"]["reruns"] == 2


@needs_root
@needs_strace
def test_confirm_on_a_saved_profile_and_again_on_the_confirmed_one(netns, tmp_path):
    script, out = tmp_path / "capset_bind.py", tmp_path / "p.json"
    script.write_text(CAPSET_AND_BIND)
    r = capprobe_in_netns(netns, "run", "-q", "--no-unit", "-o", str(out), "--", SYSTEM_PYTHON, str(script))
    assert r.returncode == 0, r.stderr
    assert load(out)["capabilities"]["required"] == ["CAP_NET_BIND_SERVICE", "CAP_SETPCAP"]
    r = capprobe_in_netns(netns, "confirm", str(out))
    assert r.returncode == 0, r.stderr
    p = load(out)
    assert p["capabilities"]["required"] == ["CAP_NET_BIND_SERVICE"]
    assert p["capabilities"]["confirmation"]["optional"] == ["CAP_SETPCAP"]
    assert f"profile written to {out}" in r.stderr
    # what is left required was proven by its failed bind: nothing stays doubtful
    r = capprobe_in_netns(netns, "confirm", str(out), "-o", str(tmp_path / "again.json"))
    assert r.returncode == 0 and "no re-run" in r.stderr, r.stderr
    unit = capprobe("unit", str(out), "-o", "-", "-q")
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n" in unit.stdout


@needs_root
@needs_strace
def test_a_capability_the_re_runs_no_longer_ask_for_stays_required(tmp_path):
    """The first run made the directory it chowns; without --reset the re-runs never reach the chown."""
    script, spool = tmp_path / "spool.py", tmp_path / "spool"
    script.write_text(CHOWN_WHEN_MISSING)
    r = capprobe("run", "--confirm", "--no-unit", "-o", str(tmp_path / "p.json"), "--",
                 SYSTEM_PYTHON, str(script), str(spool))
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    assert p["capabilities"]["required"] == ["CAP_CHOWN"]
    assert p["capabilities"]["confirmation"]["inconclusive"] == ["CAP_CHOWN"]
    assert p["capabilities"]["confirmation"]["reruns"] == 1  # the control only
    (chown,) = _confirmed_by(p, "CAP_CHOWN")
    assert "never asked for CAP_CHOWN" in chown["confirmed_by"]["inconclusive"]


@pytest.mark.skipif(shutil.which("nginx") is None or shutil.which("curl") is None,
                    reason="needs nginx (nginx-light) and curl")
@needs_root
@needs_strace
def test_nginx_dropping_to_www_data_keeps_chown_setuid_setgid(tmp_path):
    port = 18000 + (hash(str(tmp_path)) % 1000)
    temp = [tmp_path / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")]
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"user www-data;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nworker_processes 1;\n"
        "events { worker_connections 16; }\nhttp {\n" f"  access_log {tmp_path}/access.log;\n"
        + "".join(f"  {t.name}_temp_path {t};\n".replace("body_temp", "client_body_temp") for t in temp)
        + f"  server {{ listen 127.0.0.1:{port}; location / {{ return 200 ok; }} }}\n}}\n")
    tmp_path.chmod(0o755)
    r = capprobe("run", "--confirm", "--no-unit", "--duration", "2", "-o", str(tmp_path / "p.json"),
                 "--check", f"curl -sf http://127.0.0.1:{port}/", "--reset", "rm -rf " + " ".join(map(str, temp)),
                 "--", "/usr/sbin/nginx", "-g", "daemon off; master_process on;", "-c", str(conf), timeout=180)
    assert r.returncode == 0, r.stderr
    caps = load(tmp_path / "p.json")["capabilities"]
    assert caps["required"] == ["CAP_CHOWN", "CAP_SETGID", "CAP_SETUID"]
    assert caps["confirmation"]["required"] == ["CAP_CHOWN", "CAP_SETGID", "CAP_SETUID"]
    assert caps["confirmation"]["reruns"] == 4
    assert subprocess.run(["pgrep", "-f", str(conf)], capture_output=True, check=False).returncode == 1  # nothing left running


@needs_root
@needs_strace
def test_a_failed_run_is_not_confirmed_but_still_gets_its_profile_and_unit(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text(PIDFILE_CHOWN + "sys.exit(3)\n")
    r = capprobe("run", "--confirm", "--unit", "fails", "-o", str(tmp_path / "p.json"), "--",
                 SYSTEM_PYTHON, str(script), str(tmp_path / "x.pid"))
    assert r.returncode == 3, r.stderr
    assert "capprobe: confirm: not confirming: the base run is not a good run (the target failed: exit status 3)" \
        in r.stderr
    p = load(tmp_path / "p.json")
    assert p["capabilities"]["required"] == ["CAP_CHOWN"] and "confirmation" not in p["capabilities"]
    assert (tmp_path / "fails.service").exists()


def test_bad_input_is_one_line():
    r = capprobe("confirm", "/nonexistent/p.json")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = capprobe("run", "--check", "true", "--", "true")
    assert r.returncode == 2 and r.stderr == "capprobe: --check and --reset go with --confirm\n"
