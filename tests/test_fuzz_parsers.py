"""Fuzz the parsers of untrusted text: strace lines (the target can write into its own
trace), tracefs and bpftrace records. No exception may escape, and a line nothing can
read is counted, never dropped.

CAPPROBE_FUZZ_EXAMPLES=N runs N examples per test (default 250 each, 1,500 in all: about 20 s).
The number of cases run is printed at the end of the module (pytest -s shows it).
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capprobe.events.bpftrace_records import BpftraceCapParser
from capprobe.events.strace_line import StraceLineParser, Unparsed
from capprobe.events.tracefs_records import MAX_UNPARSED_EXAMPLES, CapCheckParser
from capprobe.facts.collector import MAX_UNPARSED_EXAMPLES as MAX_STRACE_EXAMPLES
from capprobe.facts.collector import FactCollector
from capprobe.facts.decode import StraceDecoder

from conftest import RECORDED
from test_bpftrace_probe import RECORDED_BIND, RECORDED_CHOWN
from test_tracefs_records import INTERLEAVED, RECORDED_IP_LINK_SHOW

EXAMPLES = int(os.environ.get("CAPPROBE_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CASES = {"strace": 0, "tracefs": 0, "bpftrace": 0}

STRACE_LINES = [line for path in sorted(RECORDED.glob("*.txt"))
                for line in path.read_text("latin-1").splitlines() if line and not line.startswith("#")]
TRACEFS_LINES = (RECORDED_IP_LINK_SHOW + INTERLEAVED).splitlines()
BPFTRACE_LINES = (RECORDED_BIND + RECORDED_CHOWN).splitlines()

# Text a hostile line may hold: any code point (NUL, escapes, bidi controls, surrogates
# as a latin-1 decode cannot make them, but a careless caller could) and strace's syntax.
HOSTILE_TEXT = st.text(alphabet=st.characters(), max_size=300)
SYNTAX = st.sampled_from(['"', "\\", "(", ")", "<", ">", "<...", " resumed>", " <unfinished ...>",
                          " = ", " = ?", " = -1 EPERM (x)", "+++ exited with 0 +++", "\0", "\x1b[2J",
                          "\u202e", "/* AT_FDCWD */", "{", "}", "[", "]", ",", "=>", "<stack trace>",
                          "CAPEND", "CAPCHECK ", "9" * 5000, "\n", "\r", " " * 50])


@st.composite
def mutated(draw, corpus: list[str]) -> str:
    """A real line, then truncated, spliced, blown up or salted with hostile text."""
    line = draw(st.sampled_from(corpus))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(line)))
        how = draw(st.sampled_from(["cut", "insert", "syntax", "huge", "delete", "repeat"]))
        if how == "cut":
            line = line[:at]
        elif how == "insert":
            line = line[:at] + draw(HOSTILE_TEXT) + line[at:]
        elif how == "syntax":
            line = line[:at] + draw(SYNTAX) + line[at:]
        elif how == "huge":
            line = line[:at] + draw(st.sampled_from(["A", "\\0", "(", "<", '"', "9"])) \
                * draw(st.integers(1000, 200_000)) + line[at:]
        elif how == "delete":
            line = line[:at] + line[at + draw(st.integers(1, 20)):]
        else:
            line = line[:at] * draw(st.integers(2, 5)) + line[at:]
    return line


def hostile_lines(corpus: list[str]):
    return st.lists(st.one_of(mutated(corpus), HOSTILE_TEXT, st.sampled_from(corpus)), min_size=1, max_size=12)


@pytest.fixture(scope="module", autouse=True)
def report_cases():
    yield
    print(f"\nfuzz cases run: {CASES} ({sum(CASES.values())} in all, {EXAMPLES} examples per test)")


def _fold_strace(lines: list[str]) -> tuple[FactCollector, int]:
    """Feed LINES to a collector; also count the Unparsed events a bare parser makes."""
    collector, parser = FactCollector(), StraceLineParser()
    decoder = StraceDecoder(collector, b"/")
    unparsed = 0
    for line in lines:
        try:
            unparsed += isinstance(parser.feed(line), Unparsed)
        except Exception:  # noqa: BLE001 - the collector must count what the parser cannot read
            unparsed += 1
        decoder.feed_line(line)
    return collector, unparsed


@FUZZ
@given(hostile_lines(STRACE_LINES))
def test_strace_collector_survives_any_line_and_counts_the_unreadable(lines):
    CASES["strace"] += 1
    collector, unparsed = _fold_strace(lines)
    sections = collector.sections()
    json.dumps(sections, ensure_ascii=True)  # the profile stays writable
    # every line the parser could not read is counted, plus the ones a handler could not
    assert sections["parser"]["unparsed"] >= unparsed
    assert len(sections["parser"]["unparsed_examples"]) <= MAX_STRACE_EXAMPLES
    assert all(len(example) <= 1000 for example in sections["parser"]["unparsed_examples"])


@FUZZ
@given(st.lists(HOSTILE_TEXT.filter(lambda t: t.strip()), min_size=1, max_size=10))
def test_strace_lines_that_cannot_be_syscalls_are_each_counted(texts):
    CASES["strace"] += 1
    lines = ["x" + t for t in texts]  # no pid first: no shape strace prints
    collector, _ = _fold_strace(lines)
    assert collector.unparsed == len(lines)


@FUZZ
@given(hostile_lines(TRACEFS_LINES))
def test_tracefs_parser_survives_any_line(lines):
    CASES["tracefs"] += 1
    parser = CapCheckParser()
    checks = [c for line in lines for c in parser.feed(line)] + parser.flush()
    assert all(isinstance(c.cap, int) and isinstance(c.pid, int) for c in checks)
    assert len(parser.unparsed_examples) <= MAX_UNPARSED_EXAMPLES
    assert parser.unparsed_count >= len(parser.unparsed_examples)


_TRACEFS_SHAPES = ("=>", "<stack trace>", "LOST", "cap_capable:")


@FUZZ
@given(st.lists(HOSTILE_TEXT.filter(lambda t: not any(s in t for s in _TRACEFS_SHAPES)),
                min_size=1, max_size=10))
def test_tracefs_lines_without_an_event_are_each_counted(texts):
    CASES["tracefs"] += 1
    parser = CapCheckParser()
    lines = ["x" + t.replace("\n", " ") for t in texts]
    for line in lines:
        parser.feed(line)
    assert parser.unparsed_count == len(lines) and not parser.flush()


@FUZZ
@given(hostile_lines(BPFTRACE_LINES))
def test_bpftrace_parser_survives_any_line(lines):
    CASES["bpftrace"] += 1
    parser = BpftraceCapParser()
    checks = [c for line in lines for c in parser.feed(line)] + parser.flush()
    assert len(checks) <= parser.records
    assert len(parser.unparsed_examples) <= MAX_UNPARSED_EXAMPLES


@FUZZ
@given(st.lists(HOSTILE_TEXT.filter(lambda t: t.strip()), min_size=1, max_size=10))
def test_bpftrace_lines_outside_a_record_are_each_counted(texts):
    CASES["bpftrace"] += 1
    parser = BpftraceCapParser()
    lines = ["x" + t.replace("\n", " ").replace("\r", " ") for t in texts]
    for line in lines:
        parser.feed(line)
    assert parser.unparsed_count == len(lines)


@pytest.mark.parametrize("line", [
    "5 1.0 [ 16] ioctl(3<x<char 10:200>>, TUNSETIFF, 0x1) = 0",  # the crash of issue 8 item 2
    "9" * 5000 + " 1.0 [  2] open(\"/x\", O_RDONLY) = 3",
    "5 1.0 [ 56] clone(child_stack=NULL, flags=" + "7" * 5000 + ") = 6",
], ids=["ioctl-device-without-path", "5000-digit-pid", "5000-digit-clone-flags"])
def test_known_killers_are_survived(line):
    collector, _ = _fold_strace([line])
    assert collector.lines == 1


def test_tracefs_record_with_huge_numbers_is_counted():
    parser = CapCheckParser()
    parser.feed("  x-" + "9" * 5000 + "  [000] .....  1.0: cap_capable: cred 0, cap 12, ret 0")
    parser.feed("  x-1  [000] .....  1.0: cap_capable: cred 0, cap " + "9" * 5000 + ", ret 0")
    assert parser.unparsed_count == 2 and not parser.flush()


def test_bpftrace_record_with_huge_numbers_is_counted():
    parser = BpftraceCapParser()
    parser.feed("CAPCHECK " + "9" * 5000 + " 1 2 2 12 0 comm")
    parser.feed("CAPPROBE MARK " + "9" * 5000 + " 5")
    assert parser.unparsed_count == 2 and not parser.flush()
