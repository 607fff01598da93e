"""Loading a profile is loading untrusted input: devices, FIFOs, huge files and
wrong-typed fields give one line and exit 2, never a traceback or all the memory."""

from __future__ import annotations

import json
import os
import resource

import pytest

from capprobe.profile import ProfileError, load_profile

from conftest import capprobe


def _one_gib_address_space() -> None:
    # Without the fix `show /dev/zero` reads until the OOM killer: keep a regression cheap.
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def _minimal_profile() -> dict:
    return {
        "schema": "capprobe/profile/v1", "host": {"hostname": "h"},
        "run": {"command": ["/bin/true"], "exit_status": 0, "ended_by": "exit", "duration": 0.1},
        "processes": [], "syscalls": {}, "files": [],
        "network": {"sockets": [], "binds": [], "connects": [], "setsockopts": []},
        "parser": {"lines": 0, "unparsed": 0},
    }


@pytest.mark.parametrize("command", ["show", "unit"])
def test_a_character_device_is_refused_before_reading(command, tmp_path):
    args = [command, "/dev/zero"] + (["-o", str(tmp_path / "x.service")] if command == "unit" else [])
    r = capprobe(*args, timeout=30, preexec_fn=_one_gib_address_space)
    assert r.returncode == 2, r.stderr
    assert r.stderr == "capprobe: /dev/zero is not a regular file; a profile is a JSON file\n"


def test_a_directory_is_refused_in_one_line(tmp_path):
    r = capprobe("show", str(tmp_path), timeout=30)
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"capprobe: {tmp_path} is not a regular file; a profile is a JSON file\n"


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "p.json"
    os.mkfifo(fifo)
    r = capprobe("show", str(fifo), timeout=30)
    assert r.returncode == 2 and "is not a regular file" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.parametrize("text", ['{"schema": ' + "9" * 5000 + "}", "[" * 100_000])
def test_json_that_python_refuses_to_build_is_one_line(tmp_path, text):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(ProfileError, match="is not a capprobe profile"):
        load_profile(path)


def test_a_file_over_the_cap_is_refused_naming_the_cap(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(256 * 1024 * 1024 + 1)  # sparse: costs no disk
    with pytest.raises(ProfileError, match=r"profiles are read up to 256 MiB"):
        load_profile(big)


@pytest.mark.parametrize("mutate, field", [
    (lambda p: p["files"].append({"path": "/x", "ops": "write"}), "files[0].ops must be an object"),
    (lambda p: p["run"].update(command="/bin/true"), "run.command must be a list"),
    (lambda p: p["run"].update(command=[]), "run.command must not be empty"),
    (lambda p: p["syscalls"].update(read={"count": "7"}), 'syscalls["read"].count must be an integer'),
    (lambda p: p["network"].update(binds=[{"family": "AF_INET", "port": "80"}]), "network.binds[0].port"),
    (lambda p: p["files"].append({"path": "/x", "ops": {}, "stat": {"mode": "rwx"}}), "octal mode"),
    (lambda p: p.update(capabilities={"required": "CAP_NET_ADMIN"}), "capabilities.required must be a list"),
    (lambda p: p["parser"].update(unparsed=True), "parser.unparsed must be an integer"),
    (lambda p: p.update(complete="no"), "complete must be true or false"),
])
def test_wrong_typed_fields_are_named_in_one_line(tmp_path, mutate, field):
    profile = _minimal_profile()
    path = tmp_path / "good.json"
    path.write_text(json.dumps(profile))
    assert load_profile(path) == profile
    mutate(profile)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile))
    for command in ("show", "unit"):
        args = [command, str(path)] + (["-o", "-"] if command == "unit" else [])
        r = capprobe(*args, timeout=60)
        assert r.returncode == 2, r.stderr
        assert "internal error" not in r.stderr and r.stderr.count("\n") == 1
        assert "damaged profile" in r.stderr and field in r.stderr


def _field_paths(value, prefix=()):
    """Every field of a profile (the first row of each list)."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _field_paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value[:1]):
            yield from _field_paths(item, prefix + (i,))


WRONG_VALUES = ["x", 5, -1, 1.5, True, None, [], {}, ["x"], "b64:!!", "\ud800"]


def test_any_field_of_a_real_profile_with_a_wrong_value_is_refused_or_rendered():
    # Recorded from a real run (python: TCP listen/connect/accept, a unix sendto, a file
    # written, chmod, an exec, /dev/null). Every field, replaced by each wrong value, must be
    # refused by the loader in one line, or be rendered by show/unit: never "internal error".
    import copy

    from capprobe.profile import shape_problem
    from capprobe.render.summary import one_paragraph, render_summary
    from capprobe.rules.base import UnitOptions
    from capprobe.synthesis import synthesize
    from capprobe.validate import InvalidField, validate_profile

    from conftest import RECORDED
    base = json.loads((RECORDED / "profile_python_net.json").read_text())
    assert shape_problem(base) is None
    cases = refused = 0
    for where in list(_field_paths(base))[1:]:
        for wrong in WRONG_VALUES:
            mutated = copy.deepcopy(base)
            parent = mutated
            for key in where[:-1]:
                parent = parent[key]
            parent[where[-1]] = wrong
            cases += 1
            problem = shape_problem(mutated)
            if problem is not None:
                assert "\n" not in problem
                refused += 1
                continue
            try:
                validate_profile(mutated, None, None)
            except InvalidField:
                refused += 1
                continue
            synthesize(mutated, UnitOptions(name="svc"), score=False)
            render_summary(mutated)
            one_paragraph(mutated, "p.json")
    print(f"\n{cases} wrong-typed profiles: {refused} refused in one line, {cases - refused} rendered")
    assert cases > 1500
