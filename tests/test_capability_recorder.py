"""CapabilityRecorder: the choice of backend, the tracer's exclusion, and what makes a run incomplete."""

import os

import pytest

import capprobe.session  # noqa: F401 - imported before the fork below: nobody cannot read it
import capprobe.tracing.bpftrace  # noqa: F401
from capprobe.capability_recorder import CapabilityRecorder
from capprobe.session import SessionError
from capprobe.tracing.probe import ProbeStats


def _start_as_nobody(mode):
    """CapabilityRecorder.start(mode) in a child that really is not root; its outcome."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            notes = []
            try:
                recorder = CapabilityRecorder.start(mode, os.getpid(), None, notes)
                outcome = f"fallback {recorder.probe is None} {notes}"
            except SessionError as error:
                outcome = f"error {error}"
            os.write(write_end, outcome.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(pid, 0)
    return outcome


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")
@pytest.mark.parametrize("mode", ["tracefs", "bpftrace"])
def test_an_explicit_backend_that_cannot_run_is_one_line_error_not_a_fallback(mode):
    outcome = _start_as_nobody(mode)
    assert outcome.startswith(f"error --cap-probe {mode}: "), outcome
    assert "root" in outcome and "\n" not in outcome


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")
def test_auto_falls_back_to_inference_and_says_why():
    outcome = _start_as_nobody("auto")
    assert outcome.startswith("fallback True ['no kernel capability probe (tracefs: "), outcome
    assert "inferred from syscalls" in outcome


class _StoppedProbe:
    def __init__(self, stats):
        self.stats = stats
        self.excluded = []

    def stop(self):
        return self.stats

    def exclude_pid(self, pid):
        self.excluded.append(pid)


def test_lost_checks_make_the_run_incomplete_with_one_line():
    recorder = CapabilityRecorder(_StoppedProbe(ProbeStats(lost_events=1234)), None, None)
    (reason,) = recorder.incomplete_reasons()
    assert "lost 1234 capability checks" in reason and "\n" not in reason


def test_no_loss_no_reason_and_inference_is_not_a_loss():
    assert CapabilityRecorder(_StoppedProbe(ProbeStats()), None, None).incomplete_reasons() == []
    assert CapabilityRecorder(None, None, "off").incomplete_reasons() == []


def test_exclude_pid_reaches_the_probe():
    probe = _StoppedProbe(ProbeStats())
    recorder = CapabilityRecorder(probe, None, None)
    recorder.exclude_pid(4242)
    assert probe.excluded == [4242] and 4242 in recorder.excluded_pids
