#!/usr/bin/env python3
"""capprobe benchmarks: overhead and memory, ratios measured in one run.

    python3 bench/run.py [--repeat 5]

1. Tracing overhead: the same syscall-heavy command untraced and under
   `capprobe run` (strace + kernel capability probe + parser), median of
   --repeat runs each, interleaved so machine noise hits both alike.
2. Memory against syscall volume: capprobe's peak RSS tracing 1x and 4x the
   syscalls with the same distinct facts (it should stay flat: facts are
   aggregated, never kept per syscall).
3. Parser throughput: recorded strace lines through the fact collector alone.
Nothing here asserts; it prints figures to compare between versions.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
RECORDED = HERE.parent / "tests" / "recorded" / "shell_files.txt"


def busy_command(n: int) -> list[str]:
    # n reads + n writes of one byte: syscall-bound, no file facts beyond /dev/zero and /dev/null
    return ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={n}", "status=none"]


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def capprobe_cmd(target: list[str], out: Path) -> list[str]:
    return [sys.executable, "-m", "capprobe", "run", "-q", "--no-unit", "--force", "-o", str(out), "--", *target]


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS of the capprobe process in MiB), sampled every 20 ms."""
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(peak, proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    start = time.perf_counter()
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    proc.wait()
    done.set()
    t.join()
    return time.perf_counter() - start, peak / 2**20


def parser_throughput(seconds: float = 3.0) -> float:
    from capprobe.facts.collector import FactCollector
    lines = RECORDED.read_text("latin-1").splitlines()
    fed = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        c = FactCollector(b"/tmp/rec")
        for line in lines:
            c.feed_line(line)
        fed += len(lines)
    return fed / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--syscalls", type=int, default=100_000, help="reads (and as many writes) per run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="capprobe-bench-") as d:
        out = Path(d) / "p.json"
        target = busy_command(args.syscalls)
        plain, traced = [], []
        for _ in range(args.repeat):
            plain.append(timed(target))
            traced.append(timed(capprobe_cmd(target, out)))
        mp, mt = statistics.median(plain), statistics.median(traced)
        print(f"overhead: {2 * args.syscalls} syscalls; untraced median {mp:.3f} s, "
              f"under capprobe median {mt:.3f} s, ratio {mt / mp:.1f}x ({args.repeat} runs each)")
        base_s, base_mb = peak_rss_mb(capprobe_cmd(busy_command(args.syscalls), out))
        big_s, big_mb = peak_rss_mb(capprobe_cmd(busy_command(4 * args.syscalls), out))
        print(f"memory: capprobe peak RSS {base_mb:.1f} MiB for {2 * args.syscalls} syscalls, "
              f"{big_mb:.1f} MiB for {8 * args.syscalls} (ratio {big_mb / base_mb:.2f}); "
              f"{base_s:.1f} s and {big_s:.1f} s")
    rate = parser_throughput()
    print(f"parser: {rate:,.0f} strace lines/s through the fact collector (recorded shell session)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
