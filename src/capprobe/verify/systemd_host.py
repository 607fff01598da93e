"""Run a unit under the host's real systemd and read back how it went (side effects)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field

RUNTIME_UNITS = "/run/systemd/system"


class NoSystemd(Exception):
    """PID 1 is not systemd: nothing real to verify against."""


def require_systemd() -> None:
    if not os.path.isdir("/run/systemd/system"):
        try:
            with open("/proc/1/comm") as f:
                pid1 = f.read().strip()
        except OSError:
            pid1 = "unknown"
        raise NoSystemd(f"capprobe: verify needs systemd as PID 1; PID 1 here is {pid1!r} "
                        "(run it on the staging host, or in vm-tests/)")
    if shutil.which("systemctl") is None:
        raise NoSystemd("capprobe: systemctl not found")


@dataclass
class UnitRun:
    name: str
    active_state: str = ""
    result: str = ""
    exit_code: str = ""          # ExecMainCode as text: exited, killed, dumped
    exit_status: int | None = None
    check_status: int | None = None
    check_output: str = ""
    journal: list[str] = field(default_factory=list)
    start_error: str = ""

    def passed(self, oneshot: bool) -> bool:
        if self.start_error:
            return False
        if self.check_status not in (None, 0):
            return False
        if oneshot:
            return self.result == "success" and self.exit_status in (0, None)
        return self.active_state in ("active", "reloading") and self.result == "success"


def _systemctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=timeout)


def _show(name: str) -> dict[str, str]:
    out = _systemctl("show", f"{name}.service", "-p",
                     "ActiveState,Result,ExecMainCode,ExecMainStatus,Type").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


_CODES = {"1": "exited", "2": "killed", "3": "dumped"}


def run_unit(unit_text: str, name: str, duration: float, check: str | None) -> UnitRun:
    """Install UNIT_TEXT as a runtime unit, start it, wait, run CHECK, read the outcome, remove it."""
    path = os.path.join(RUNTIME_UNITS, f"{name}.service")
    run = UnitRun(name)
    with open(path, "w") as f:
        f.write(unit_text)
    try:
        _systemctl("daemon-reload")
        _systemctl("reset-failed", f"{name}.service")
        started = _systemctl("start", f"{name}.service", timeout=max(120, duration + 60))
        if started.returncode != 0:
            run.start_error = (started.stderr or started.stdout).strip().splitlines()[0] if (
                started.stderr or started.stdout).strip() else f"systemctl start exited {started.returncode}"
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline and _show(name).get("ActiveState") in ("active", "activating"):
            time.sleep(0.2)
            if _show(name).get("Type") == "oneshot":
                break
        if check:
            c = subprocess.run(check, shell=True, capture_output=True, text=True, timeout=120)
            run.check_status, run.check_output = c.returncode, (c.stdout + c.stderr)[-2000:]
        props = _show(name)
        run.active_state, run.result = props.get("ActiveState", ""), props.get("Result", "")
        run.exit_code = _CODES.get(props.get("ExecMainCode", ""), props.get("ExecMainCode", ""))
        status = props.get("ExecMainStatus", "")
        run.exit_status = int(status) if status.isdigit() else None
        j = subprocess.run(["journalctl", "-u", f"{name}.service", "-b", "--no-pager", "-o", "cat", "-n", "50"],
                           capture_output=True, text=True, timeout=60)
        run.journal = j.stdout.splitlines()
    finally:
        _systemctl("stop", f"{name}.service")
        _systemctl("reset-failed", f"{name}.service")
        os.unlink(path)
        _systemctl("daemon-reload")
    return run


def traced_rerun_dir(name: str) -> str:
    return f"/run/capprobe-trace-{name}"
