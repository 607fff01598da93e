"""bench/run.py's workloads in their smallest form: they measure, and leave nothing running.

No timing is asserted (other work shares the machine); only that a figure comes out
and that the processes a sample started are gone afterwards, also when it fails.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time

import psutil
import pytest

from conftest import REPO, needs_root, needs_strace

spec = importlib.util.spec_from_file_location("capprobe_bench", REPO / "bench" / "run.py")
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up while the class is made
spec.loader.exec_module(bench)

UNTRACED, STRACE = (next(m for m in bench.MODES if m.name == name) for name in ("untraced", "strace"))


@needs_root
@pytest.mark.skipif(shutil.which("nginx") is None or shutil.which("wrk") is None, reason="needs nginx and wrk")
def test_nginx_sample_serves_under_wrk_and_stops_nginx(tmp_path):
    nginx = bench.NginxWorkload.prepare(tmp_path, seconds=1)
    sample = nginx.measure(UNTRACED, tmp_path)
    assert sample.value > 0
    assert (nginx.dir / "access.log").stat().st_size > 0  # wrk's requests reached this nginx
    assert not (nginx.dir / "nginx.pid").exists()  # nginx removes it when it has stopped
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(nginx.dir) in " ".join(p.info["cmdline"] or [])]


@needs_root
@needs_strace
def test_micro_under_capprobe_reports_rss_parsed_lines_and_the_spool(tmp_path):
    sample = bench.Workload("micro", "", bench.micro_command(200), self_timed=True).measure(bench.CAPPROBE, tmp_path)
    assert sample.capprobe_peak_kib > 10 * 1024  # a Python process: this is capprobe, not an empty read
    assert sample.trace_lines >= 400  # 200 stat + 200 getpid, each one strace line
    assert 0 < sample.value < sample.whole_command_seconds  # the loop's own time, inside the whole run
    assert sample.spool_peak_bytes > 0 and sample.catch_up_seconds >= 0


def test_modes_capprobe_cannot_run_are_skipped_with_a_note():
    modes, notes = bench.available_modes({"--full", "--output"})
    names = [m.name for m in modes]
    assert "capprobe_full" in names and "capprobe_fast" not in names
    assert notes == ["`capprobe run --fast` not measured: this capprobe has no --fast option"]
    full = next(m for m in modes if m.name == "capprobe_full")
    assert "--full" in full.wrap(["/bin/true"], bench.Path("/tmp"))


def named(procs, name: str) -> list[psutil.Process]:
    """PROCS that are NAME (one may exit while we look)."""
    found = []
    for p in procs:
        try:
            if p.name() == name:
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@needs_strace
def test_a_failing_sample_leaves_no_tracer_or_target_behind(tmp_path):
    started = []

    def fails_while_running(proc):
        strace = psutil.Process(proc.pid)
        deadline = time.monotonic() + 10
        while len(named(strace.children(recursive=True), "sleep")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        started.extend(named(strace.children(recursive=True), "sleep"))
        started.append(strace)
        raise bench.BenchError("measuring failed")

    argv = STRACE.wrap(["/bin/sh", "-c", "sleep 60 & sleep 60"], tmp_path)
    with pytest.raises(bench.BenchError):
        bench.traced(argv, STRACE, tmp_path, fails_while_running)
    assert len(started) == 3  # strace and both sleeps were running when the sample failed
    assert not [p for p in started if alive(p)]
