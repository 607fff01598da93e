"""The syscall-filter rule: hand-made profiles for each outcome, then a real trace
checked by the real `systemd-analyze verify` and `systemd-analyze syscall-filter`."""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from capprobe.needs import X86_64_SYSCALL_NUMBERS, systemd_syscall_name
from capprobe.rules.base import Directive, RuleContext, UnitOptions
from capprobe.rules.syscalls import DENY_CANDIDATES, decide_syscall_filter, syscall_filter
from capprobe.syscall_groups import (_from_shipped_table, expand_groups, parse_syscall_filter_output,
                                     syscall_groups, systemd_version)

from conftest import SYSTEM_PYTHON, capprobe, load, needs_strace

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze not installed")

GROUPS = syscall_groups()


def seen(*names: str, count: int = 1) -> dict:
    return {n: {"count": count} for n in names}


def filter_lines(directives: list[Directive]) -> list[tuple[str, ...]]:
    return [d.values for d in directives if d.key == "SystemCallFilter"]


def written_names(directives: list[Directive]) -> set[str]:
    return {v for d in directives if d.key == "SystemCallFilter" for v in d.values}


def by_key(directives: list[Directive], key: str) -> list[Directive]:
    return [d for d in directives if d.key == key]


def final_allowed_set(lines: list[tuple[str, ...]], expand) -> set[str]:
    """The allow set systemd builds from SystemCallFilter= LINES, in its order.

    The first line's polarity fixes the mode; this helper is for allow-lists, where
    each later line adds its names or ("~" on the first word) removes them.  systemd
    seeds an allow-list with @default (config_parse_syscall_filter: "Accept default
    syscalls if we are on an allow list"); a later "~" line can still remove those.
    """
    assert lines and not lines[0][0].startswith("~"), "not an allow-list"
    allowed: set[str] = set(expand("@default"))
    for values in lines:
        deny = values[0].startswith("~")
        names = set()
        for word in (values[0].removeprefix("~"), *values[1:]):
            names |= expand(word)
        allowed = allowed - names if deny else allowed | names
    return allowed


# -- the groups ---------------------------------------------------------------------

SAMPLE_OUTPUT = """\
@default
    # System calls that are always permitted
    brk
    exit_group

@basic-io
    # Basic IO
    read
    write

@system-service
    # General system service operations
    @basic-io
    @default
    uname

@known
    # All known syscalls declared in the kernel
    @obsolete
    brk
    read

@obsolete
    # Unusual, obsolete or unimplemented system calls
    vserver

# Ungrouped System Calls (known but not included in any of the groups except @known):
#   kern_features

# Unlisted System Calls (supported by the local kernel, but not included in any of the groups listed above):
#   cachestat
"""


def test_parser_keeps_members_and_references_and_skips_comments():
    table = parse_syscall_filter_output(SAMPLE_OUTPUT)
    assert set(table) == {"@default", "@basic-io", "@system-service", "@known", "@obsolete"}
    assert table["@system-service"] == ["@basic-io", "@default", "uname"]
    assert not any(m.startswith("#") or "kern_features" in m or "cachestat" in m
                   for members in table.values() for m in members)


def test_groups_expand_recursively_even_forward_references():
    groups = expand_groups(parse_syscall_filter_output(SAMPLE_OUTPUT))
    assert groups["@system-service"] == {"brk", "exit_group", "read", "write", "uname"}
    assert groups["@known"] == {"brk", "read", "vserver"}   # @obsolete is defined after @known


def test_host_groups_have_the_shape_systemd_252_prints():
    assert {"@system-service", "@known", "@privileged", "@default", "@basic-io"} <= set(GROUPS)
    assert {"read", "newfstatat", "rt_sigaction", "exit_group", "clone3"} <= GROUPS["@system-service"]
    assert "setuid" in GROUPS["@privileged"] and "mount" in GROUPS["@mount"]
    # Sub-groups are expanded, no reference is left over.
    assert GROUPS["@basic-io"] <= GROUPS["@system-service"]
    assert not any(n.startswith("@") for names in GROUPS.values() for n in names)


def test_shipped_table_loads_and_matches_this_host_when_versions_agree():
    table, origin = _from_shipped_table()
    shipped = expand_groups(table)
    assert len(shipped["@system-service"]) > 300 and len(shipped["@known"]) > 500
    assert origin.startswith("probes/syscall_groups.toml (systemd ")
    version = systemd_version()
    if version is None or version not in origin:
        pytest.skip(f"host systemd {version} is not the one the table was generated from ({origin})")
    assert shipped == GROUPS


def test_without_systemd_analyze_the_shipped_table_is_used(monkeypatch):
    import capprobe.syscall_groups as module
    monkeypatch.setattr(module, "_run", lambda cmd: None)
    module._load.cache_clear()
    try:
        assert module.syscall_groups_origin().startswith("probes/syscall_groups.toml")
        assert "newfstatat" in module.syscall_groups()["@system-service"]
    finally:
        monkeypatch.undo()
        module._load.cache_clear()


def test_x86_64_number_table_agrees_with_the_kernel_header():
    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    if not header.exists():
        pytest.skip("no x86_64 kernel header")
    numbers = {int(n): name for name, n in re.findall(r"#define __NR_(\w+) (\d+)", header.read_text())}
    common = set(numbers) & set(X86_64_SYSCALL_NUMBERS)
    assert len(common) > 20
    assert {n: numbers[n] for n in common} == {n: X86_64_SYSCALL_NUMBERS[n] for n in common}


def test_strace_numbered_names_map_on_x86_64_only():
    assert systemd_syscall_name("syscall_0x1c4", "x86_64") == "fchmodat2"
    assert systemd_syscall_name("syscall_452", "x86_64") == "fchmodat2"
    assert systemd_syscall_name("syscall_0x1c4", "aarch64") == "syscall_0x1c4"
    assert systemd_syscall_name("syscall_0xfff", "x86_64") == "syscall_0xfff"
    assert systemd_syscall_name("newfstatat", "x86_64") == "newfstatat"


# -- the decisions, on hand-made profiles ---------------------------------------------

BASIC = seen("read", "write", "openat", "newfstatat", "mmap", "rt_sigaction", "exit_group", "clone3")


def test_allow_list_comes_first_then_denies():
    directives = decide_syscall_filter(BASIC, GROUPS, architecture="x86_64")
    lines = filter_lines(directives)
    assert lines[0] == ("@system-service",)
    assert all(v[0].startswith("~") for v in lines[1:])      # nothing outside @system-service seen
    assert [d.key for d in directives][-2:] == ["SystemCallErrorNumber", "SystemCallArchitectures"]


def test_no_privileged_syscall_seen_denies_privileged():
    directives = decide_syscall_filter(BASIC, GROUPS, architecture="x86_64")
    deny = [d for d in directives if d.values == ("~@privileged",)]
    assert len(deny) == 1 and "no syscall of @privileged seen" in deny[0].comment
    # Every candidate group gets its own line.
    assert {v for v in written_names(directives) if v.startswith("~")} == {"~" + g for g in DENY_CANDIDATES}


def test_observed_privileged_syscall_keeps_privileged_allowed_and_says_why():
    nginx_like = {**BASIC, "setuid": {"count": 3}, "setgid": {"count": 3}}
    directives = decide_syscall_filter(nginx_like, GROUPS, architecture="x86_64")
    assert "~@privileged" not in written_names(directives)
    assert "~@mount" in written_names(directives)
    allow = directives[0]
    assert "@privileged (setuid x3)" in allow.comment
    assert "setuid" in final_allowed_set(filter_lines(directives), lambda w: GROUPS.get(w, {w}))


def test_observed_resources_syscall_keeps_resources_allowed():
    directives = decide_syscall_filter({**BASIC, **seen("setrlimit", count=2)}, GROUPS)
    assert "~@resources" not in written_names(directives)
    assert "@resources (setrlimit x2)" in directives[0].comment


def test_syscall_outside_system_service_joins_the_allow_list_with_its_count():
    directives = decide_syscall_filter({**BASIC, **seen("seccomp", count=2), **seen("mincore", count=7)},
                                       GROUPS, architecture="x86_64")
    extra = filter_lines(directives)[1]
    assert extra == ("mincore", "seccomp")
    comment = directives[1].comment
    assert "mincore x7" in comment and "seccomp x2" in comment and "SIGSYS" in comment


def test_observed_group_outside_system_service_is_allowed_and_not_denied():
    # chroot is in @privileged but not in @system-service: allowed by name, and
    # the ~@privileged line would take it away again, so it is not written.
    directives = decide_syscall_filter({**BASIC, **seen("chroot")}, GROUPS)
    assert ("chroot",) in filter_lines(directives)
    assert "~@privileged" not in written_names(directives)


def test_unknown_names_are_not_written_and_are_named_in_the_comment():
    profile = {**BASIC, **seen("frobnicate"), **seen("syscall_0x1ce", count=4)}   # 462: mseal
    directives = decide_syscall_filter(profile, GROUPS, architecture="x86_64")
    names = written_names(directives)
    assert not {"frobnicate", "mseal", "syscall_0x1ce"} & names
    comment = directives[0].comment
    assert "frobnicate x1" in comment and "mseal x4 (strace: syscall_0x1ce)" in comment
    assert "not in @known" in comment


def test_numbered_name_strace_did_not_know_is_written_by_its_systemd_name():
    directives = decide_syscall_filter({**BASIC, **seen("syscall_0x1c5")}, GROUPS, architecture="x86_64")
    assert ("map_shadow_stack",) in filter_lines(directives)   # 453: in @known, in no group
    assert "map_shadow_stack x1 (strace: syscall_0x1c5)" in directives[1].comment


def test_error_number_and_architectures():
    directives = decide_syscall_filter(BASIC, GROUPS, architecture="x86_64")
    (errno,) = by_key(directives, "SystemCallErrorNumber")
    (arch,) = by_key(directives, "SystemCallArchitectures")
    assert errno.values == ("EPERM",) and "instead of killing" in errno.comment and "one run" in errno.comment
    assert arch.values == ("native",) and "x86_64" in arch.comment
    (arch_unknown,) = by_key(decide_syscall_filter(BASIC, GROUPS), "SystemCallArchitectures")
    assert arch_unknown.values == ("native",) and "x86_64" not in arch_unknown.comment


def test_no_syscalls_no_filter():
    assert decide_syscall_filter({}, GROUPS) == []


def test_hand_made_groups_and_a_group_this_systemd_lacks():
    groups = {"@system-service": frozenset({"read", "setuid"}), "@known": frozenset({"read", "setuid", "ptrace"}),
              "@privileged": frozenset({"setuid"}), "@debug": frozenset({"ptrace"})}
    directives = decide_syscall_filter(seen("read", "setuid"), groups)
    assert filter_lines(directives) == [("@system-service",), ("~@debug",)]   # no ~@mount: not a group here


def test_registered_rule_reads_profile_and_groups_through_the_context():
    ctx = RuleContext({"host": {"architecture": "x86_64"}, "syscalls": seen("read", "setuid")}, UnitOptions())
    ctx.cache["syscall_groups"] = {"@system-service": frozenset({"read", "setuid"}),
                                   "@known": frozenset({"read", "setuid"}), "@privileged": frozenset({"setuid"})}
    directives = list(syscall_filter(ctx))
    assert filter_lines(directives) == [("@system-service",)]
    assert "x86_64" in by_key(directives, "SystemCallArchitectures")[0].comment


@settings(max_examples=200, deadline=None)
@given(st.sets(st.sampled_from(sorted(GROUPS["@known"])), min_size=1, max_size=40))
def test_no_deny_line_ever_removes_an_observed_syscall(names):
    directives = decide_syscall_filter(seen(*names), GROUPS, architecture="x86_64")
    allowed = final_allowed_set(filter_lines(directives), lambda w: GROUPS.get(w, {w}))
    assert set(names) <= allowed


# -- a real trace, checked by the real systemd ------------------------------------------

@lru_cache(maxsize=None)
def systemd_expands(word: str) -> frozenset[str]:
    """WORD as systemd-analyze itself lists it: a group followed through its references."""
    if not word.startswith("@"):
        return frozenset({word})
    out = subprocess.run(["systemd-analyze", "syscall-filter", word], capture_output=True, text=True,
                         check=True).stdout
    names: set[str] = set()
    for line in out.splitlines():
        if line.startswith(" ") and line.strip() and not line.strip().startswith("#"):
            names |= systemd_expands(line.strip())
    return frozenset(names)


def unit_text(directives: list[Directive]) -> str:
    lines = ["[Service]", "ExecStart=/bin/true"]
    for d in directives:
        lines.append(f"# {d.comment}")
        lines.append(f"{d.key}={' '.join(d.values)}")
    return "\n".join(lines) + "\n"


@needs_strace
@needs_systemd_analyze
def test_real_trace_gives_a_filter_systemd_accepts_and_that_allows_every_observed_call(tmp_path):
    # --no-unit: only the profile; this test builds and checks its own unit.
    r = capprobe("run", "-q", "--no-cap-probe", "--no-unit", "-o", str(tmp_path / "p.json"), "--",
                 SYSTEM_PYTHON, "-c", "import os; os.listdir('/')")
    assert r.returncode == 0, r.stderr
    profile = load(tmp_path / "p.json")
    observed = profile["syscalls"]
    assert {"execve", "getdents64", "exit_group"} <= set(observed)

    ctx = RuleContext(profile, UnitOptions())
    directives = list(syscall_filter(ctx))
    assert all(isinstance(v, str) for d in directives for v in d.values)

    unit = tmp_path / "capprobe-syscalls.service"
    unit.write_text(unit_text(directives))
    v = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (v.stdout + v.stderr).splitlines()
                  if unit.name in line or "system call" in line.lower() or "SystemCall" in line]
    assert v.returncode == 0 and not complaints, v.stdout + v.stderr + unit.read_text()

    lines = filter_lines(directives)
    allowed = final_allowed_set(lines, systemd_expands)
    extras = {n for v in lines[1:] if not v[0].startswith("~") for n in v}
    assert allowed <= systemd_expands("@system-service") | extras   # nothing beyond what it claims
    architecture = profile["host"]["architecture"]
    known = systemd_expands("@known")
    observed_names = {systemd_syscall_name(n, architecture) for n in observed}
    assert observed_names <= known, "python listing / should only make calls systemd knows"
    missing = observed_names - allowed
    assert not missing, f"the filter would refuse observed syscalls: {sorted(missing)}\n{unit.read_text()}"
    assert any(v == ("~@mount",) for v in lines)   # and it does deny something
