"""The setup script and its tmpfiles.d lines, attacked: a service user who swaps a file for a
symlink between two runs, profiles crafted to steer it, secrets the service only reads, and a
real daemon (nginx) that starts as root and writes as www-data.

Each test runs real programs (strace, sh, cat, nginx, systemd-tmpfiles) as a real system user
that the test creates and removes.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import SYSTEM_PYTHON, capprobe, load, needs_root, needs_strace
from test_quoting import parse_unit_like_systemd

pytestmark = [needs_root, needs_strace,
              pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None,
                                 reason="systemd-tmpfiles missing (Debian package systemd)")]

SETUP_ENV = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def unit_values(unit: Path, key: str) -> list[str]:
    return [v.decode() for _s, k, v in parse_unit_like_systemd(unit.read_bytes()) if k.decode() == key]


def commands(script: str) -> list[str]:
    """The script's lines that do something (not comments, not the tmpfiles.d text it installs)."""
    body = re.sub(r"<<'CAPPROBE_TMPFILES'\n.*?\nCAPPROBE_TMPFILES\n", "\n", script, flags=re.S)
    return [line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def tmpfiles_lines(script: str) -> list[list[str]]:
    """The tmpfiles.d lines the script installs, split into fields."""
    m = re.search(r"<<'CAPPROBE_TMPFILES'\n(.*?)\nCAPPROBE_TMPFILES\n", script, flags=re.S)
    return [line.split() for line in (m.group(1).splitlines() if m else []) if line and not line.startswith("#")]


def run_setup(script: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(script)], env=SETUP_ENV, capture_output=True, text=True, timeout=60)


def owners(*paths: Path) -> list[tuple[int, int, int]]:
    out = []
    for p in paths:
        st = os.lstat(p)
        out.append((st.st_uid, st.st_gid, st.st_mode))
    return out


@pytest.fixture
def srv():
    d = Path(tempfile.mkdtemp(prefix="capprobe-test-", dir="/srv"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def service_user():
    """A real system user with its own group, and its /etc/NAME and tmpfiles.d file, all removed afterwards."""
    name = f"cpt{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        yield name
    finally:
        shutil.rmtree(f"/etc/{name}", ignore_errors=True)
        for leftover in (f"/etc/tmpfiles.d/{name}.conf", f"/etc/tmpfiles.d/{name}.conf.new"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)


def as_user(user: str, command: str) -> subprocess.CompletedProcess:
    """COMMAND as USER with no capability at all (the service after the unit starts it)."""
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--inh-caps=-all",
                           "--bounding-set=-all", "sh", "-c", command], capture_output=True, text=True, timeout=30)


# --- issue 8 item 1: a re-run after a symlink swap --------------------------------------------

def test_rerun_after_a_symlink_swap_gives_the_root_file_nothing(srv, service_user):
    name = service_user
    etc = Path(f"/etc/{name}")  # the service's own configuration directory
    etc.mkdir(mode=0o755)
    state = etc / "state"
    state.write_text("0\n")
    os.chmod(state, 0o600)
    victim = srv / "root-only"
    victim.write_text("root's secret\n")
    os.chmod(victim, 0o600)
    profile = srv / "p.json"
    # as the service user: changes its root-owned state in place (DAC_OVERRIDE) and renames a
    # token into the directory, so the directory must be the service's too
    r = capprobe("run", "-q", "--no-unit", "--user", name, "-o", str(profile), "--", "sh", "-c",
                 f"truncate -c -s 2 {state}; echo 2 > {etc}/token.new && mv {etc}/token.new {etc}/token")
    assert r.returncode == 0, r.stderr
    unit, setup = srv / f"{name}.service", srv / "setup.sh"
    r = capprobe("unit", str(profile), "--user", name, "--name", name, "-o", str(unit), "--setup", str(setup))
    assert r.returncode == 0, r.stderr
    first = run_setup(setup)
    assert first.returncode == 0, first.stderr
    uid = int(subprocess.run(["id", "-u", name], capture_output=True, text=True).stdout)
    assert os.stat(etc).st_uid == uid and os.stat(state).st_uid == uid
    # safe to run twice: the second run changes nothing
    before = owners(etc, state, etc / "token")
    again = run_setup(setup)
    assert again.returncode == 0, again.stderr
    assert owners(etc, state, etc / "token") == before

    # the attack: the service user, owning the directory now, swaps its file for a symlink
    swap = as_user(name, f"rm -f {state} && ln -s {victim} {state}")
    assert swap.returncode == 0, swap.stderr
    third = run_setup(setup)
    st = os.stat(victim)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o600), "the root-only file was given away"
    assert third.returncode == 1, (third.stdout, third.stderr)
    assert len(third.stderr.strip().splitlines()) == 1 and str(state) in third.stderr, third.stderr
    # and systemd-tmpfiles alone would not follow the link either
    subprocess.run(["systemd-tmpfiles", "--create", f"/etc/tmpfiles.d/{name}.conf"], env=SETUP_ENV,
                   capture_output=True)
    assert os.stat(victim).st_uid == 0
    # a hard link instead (refused by fs.protected_hardlinks; if not, the inode check refuses it)
    swap = as_user(name, f"rm -f {state} && ln {victim} {state}")
    assert run_setup(setup).returncode == (0 if swap.returncode else 1)
    assert os.stat(victim).st_uid == 0
    assert not any(re.search(r"\bch(own|mod)\b", c) for c in commands(setup.read_text()))


# --- issue 8 item 1: lines systemd-tmpfiles would refuse (an unsafe path transition) ----------

def restic(srv: Path, *args: str) -> list[str]:
    return ["restic", "-r", f"{srv}/lib/repo", "--password-file", f"{srv}/pass", "--cache-dir", f"{srv}/lib/cache",
            *args]


@pytest.mark.skipif(shutil.which("restic") is None, reason="restic not installed (Debian package restic)")
def test_a_restore_keeps_its_capability_and_the_setup_gives_nothing_it_restored(srv):
    """vm-tests' restic-restore on this host: restic restores, as nobody, files of uid 4242 into a
    target that is nobody's, below which the restored directories are root's. The plan once gave
    every restored entry to nobody: systemd-tmpfiles refused "unsafe path transition" and the
    script stopped; had it run, the files would have been taken from their owner."""
    owned = srv / "owned"
    owned.mkdir()
    for name in ("config", "notes"):
        (owned / name).write_text(f"{name}\n")
        os.chown(owned / name, 4242, 4242)
    (srv / "lib").mkdir()
    shutil.chown(srv / "lib", "nobody", "nogroup")
    (srv / "pass").write_text("correct horse battery staple\n")
    shutil.chown(srv / "pass", "nobody", "nogroup")
    os.chmod(srv / "pass", 0o400)
    for step in (["init"], ["backup", str(owned)]):
        r = subprocess.run(["runuser", "-u", "nobody", "--", *restic(srv, *step)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    target = srv / "target"

    def empty_target():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        shutil.chown(target, "nobody", "nogroup")

    empty_target()
    profile = srv / "p.json"
    r = capprobe("run", "-q", "--no-unit", "--user", "nobody", "-o", str(profile), "--",
                 *restic(srv, "restore", "latest", "--target", str(target)))
    assert r.returncode == 0, r.stderr
    restored = target / str(owned).lstrip("/")
    assert os.stat(restored / "notes").st_uid == 4242 and os.stat(target / "srv").st_uid == 0
    name = f"capprobe-test-restore-{os.getpid()}"
    unit, setup = srv / f"{name}.service", srv / "setup.sh"
    r = capprobe("unit", str(profile), "--user", "nobody", "--name", name, "-o", str(unit), "--setup", str(setup))
    assert r.returncode == 0, r.stderr
    assert not [f for f in tmpfiles_lines(setup.read_text()) if f[1].startswith(f"{target}/")], setup.read_text()
    caps = unit_values(unit, "CapabilityBoundingSet")[0].split()
    assert {"CAP_CHOWN", "CAP_FOWNER"} <= set(caps), caps
    try:
        for run in ("the first run", "a run after the restore"):
            done = run_setup(setup)
            assert done.returncode == 0, (run, done.stderr)
            assert owners(restored / "notes", restored / "config") == [(4242, 4242, 0o100644)] * 2 \
                or not restored.exists()
            empty_target()
            # the service as the unit runs it: nobody with its two capabilities, ambient
            caps_list = ",".join(f"+{c[4:].lower()}" for c in caps)
            r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                f"--inh-caps=-all,{caps_list}", f"--ambient-caps=-all,{caps_list}",
                                *restic(srv, "restore", "latest", "--target", str(target))],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            assert os.stat(restored / "notes").st_uid == 4242, "the restore no longer gives files back"
    finally:
        if os.path.exists(f"/etc/tmpfiles.d/{name}.conf"):
            os.unlink(f"/etc/tmpfiles.d/{name}.conf")


def test_a_root_file_in_the_services_own_directory_is_left_to_the_operator(srv, service_user):
    """/etc/NAME is the service user's, its file still root's: a z line for that file is the
    transition systemd-tmpfiles refuses (the trace never saw the directory: this host's owner
    counts), so the plan names it instead of stopping the script half-way."""
    name = service_user
    etc = Path(f"/etc/{name}")
    etc.mkdir(mode=0o755)
    shutil.chown(etc, name, name)
    state = etc / "state"
    state.write_text("0\n")
    profile = srv / "p.json"
    r = capprobe("run", "-q", "--no-unit", "-o", str(profile), "--", "truncate", "-c", "-s", "1", str(state))
    assert r.returncode == 0, r.stderr
    unit, setup = srv / f"{name}.service", srv / "setup.sh"
    r = capprobe("unit", str(profile), "--user", name, "--name", name, "-o", str(unit), "--setup", str(setup))
    assert r.returncode == 0, r.stderr
    assert str(state) not in [f[1] for f in tmpfiles_lines(setup.read_text())], setup.read_text()
    assert "unsafe path transition" in unit.read_text() and "unsafe path transition" in setup.read_text()
    done = run_setup(setup)
    assert done.returncode == 0, done.stderr
    assert os.stat(state).st_uid == 0


TREE = {"a": "dir", "a/b": "dir", "a/b/f": "file", "a/g": "file", "c": "dir", "c/h": "file"}


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(owners_of=st.fixed_dictionaries({p: st.sampled_from([0, 65534, 4242]) for p in TREE}),
       given_to=st.dictionaries(st.sampled_from(sorted(TREE)), st.sampled_from(["nobody", "-"]), max_size=4),
       as_z=st.booleans())
def test_the_plan_predicts_which_lines_systemd_tmpfiles_refuses(owners_of, given_to, as_z):
    """The replay in rules.ownership against the real systemd-tmpfiles, run as the setup script
    runs it (twice): it predicts a refusal exactly when a run fails."""
    from capprobe.render.setup_script import tmpfiles_commands
    from capprobe.render.tmpfiles import tmpfiles_snippet
    from capprobe.rules.ownership import Grant, OwnershipPlan, _tmpfiles_refusals
    srv = Path(tempfile.mkdtemp(prefix="capprobe-test-", dir="/srv"))
    try:
        os.chmod(srv, 0o755)
        stats = {}
        for rel, kind in TREE.items():
            p = srv / rel
            p.mkdir() if kind == "dir" else p.write_text("x")
        for rel, kind in TREE.items():
            os.chown(srv / rel, owners_of[rel], owners_of[rel])
            stats[bytes(srv / rel)] = {"type": kind, "uid": owners_of[rel]}
        grants = {}
        for rel, user in sorted(given_to.items()):
            kind = "z" if as_z or user == "-" else "d" if TREE[rel] == "dir" else "f"
            mode = "-" if kind == "z" else "0755" if kind == "d" else "0644"
            grants[bytes(srv / rel)] = Grant(kind, bytes(srv / rel), mode, user, "nogroup", "test", {})
        predicted = _tmpfiles_refusals(grants, stats)
        conf = srv / "t.conf"
        conf.write_text(tmpfiles_snippet(OwnershipPlan(tuple(grants.values())), "t"))
        runs = [subprocess.run(["sh", "-c", c], capture_output=True, text=True, env=SETUP_ENV)
                for _ in range(2) for c in tmpfiles_commands(list(grants.values()), str(conf))]
        failed = [r.stderr for r in runs if r.returncode]
        assert bool(predicted) == bool(failed), (predicted, failed, conf.read_text())
        assert all("unsafe path transition" in e for e in failed), failed
    finally:
        shutil.rmtree(srv, ignore_errors=True)


# --- issue 8 item 7: profiles crafted to steer the script -------------------------------------

@pytest.fixture(scope="module")
def base_profile():
    """A real profile (root writes one file) that the crafted ones start from."""
    d = Path(tempfile.mkdtemp(prefix="capprobe-test-", dir="/srv"))
    try:
        r = capprobe("run", "-q", "--no-unit", "-o", str(d / "base.json"), "--", "sh", "-c", f"echo x > {d}/out")
        assert r.returncode == 0, r.stderr
        yield load(d / "base.json")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _op() -> dict:
    return {"count": 1, "first_seen": 1.0, "by": ["/usr/bin/sh"]}


def crafted(base: dict, srv: Path, change) -> Path:
    p = copy.deepcopy(base)
    change(p)
    path = srv / "crafted.json"
    path.write_text(json.dumps(p))
    return path


def as_nobody_with(p: dict, path: str, op: str, cap: str | None = "CAP_DAC_OVERRIDE") -> None:
    """PROFILE traced as nobody, who did OP on PATH (with CAP's help)."""
    p["run"]["user"] = {"uid": 65534, "name": "nobody", "gid": 65534, "groups": []}
    p["files"].append({"path": path, "ops": {op: _op()}})
    if cap:
        p["capabilities"]["required"] = [cap]
        p["capabilities"]["uses"] = [{"capability": cap, "status": "required", "count": 1, "exe": "/usr/bin/sh",
                                      "syscall": "openat", "reason": "dac", "targets": [path]}]


@pytest.mark.parametrize("change, option, field", [
    (lambda p: p["run"]["user"].update(uid=1234, name="-R"), [], "run.user.name"),
    (lambda p: None, ["--user=-R"], "--user"),
    (lambda p: None, ["--user", "nobody", "--group=--help"], "--group"),
    (lambda p: as_nobody_with(p, "etc/cron.d", "create"), [], "not an absolute path"),
    (lambda p: as_nobody_with(p, "/../../etc/shadow", "write"), [], "not a normalised path"),
    (lambda p: as_nobody_with(p, "/srv/x/\0/y", "write"), [], "NUL"),
    (lambda p: p["files"][0]["stat"].update(uid="0; rm -rf /"), [], "stat.uid"),
], ids=["user-name-option", "user-option", "group-option", "relative", "dotdot", "nul", "stat-uid"])
def test_a_crafted_field_is_refused_with_one_line(base_profile, srv, change, option, field):
    profile = crafted(base_profile, srv, change)
    setup = srv / "setup.sh"
    r = capprobe("unit", str(profile), "-o", str(srv / "x.service"), "--setup", str(setup), *option)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and field in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not setup.exists()


@pytest.mark.parametrize("target", ["/", "/bin", "/etc/cron.d", "/root", "/usr/bin"])
def test_system_paths_are_never_given_the_capability_stays(base_profile, srv, target):
    """A capability target or written directory such as / or /bin (a symlink to /usr/bin) stays root's."""
    profile = crafted(base_profile, srv, lambda p: as_nobody_with(p, target + "/x" if target != "/" else "/x",
                                                                  "rename_to"))
    unit, setup = srv / "x.service", srv / "setup.sh"
    r = capprobe("unit", str(profile), "--user", "nobody", "-o", str(unit), "--setup", str(setup))
    assert r.returncode == 0, r.stderr
    script = setup.read_text()
    for line in commands(script) + [" ".join(f) for f in tmpfiles_lines(script)]:
        assert not re.search(rf"\s({re.escape(target)}|/usr/bin)/?(\s|$)", line), (line, script)
    assert "CAP_DAC_OVERRIDE" in unit_values(unit, "CapabilityBoundingSet")[0].split()
    assert target in unit.read_text()  # named for the operator, with the reason


def test_a_name_tmpfiles_cannot_carry_is_left_to_the_operator(base_profile, srv):
    """A blank, tab, '%' specifier or newline in a created file's name: no line, the capability stays."""
    for name in ("a b", "a\tb", "%h", "a\nz /etc/shadow 0777 nobody nogroup -"):
        path = f"{srv}/{name}/f"
        profile = crafted(base_profile, srv, lambda p: as_nobody_with(p, path, "create"))
        unit, setup = srv / "x.service", srv / "setup.sh"
        r = capprobe("unit", str(profile), "--user", "nobody", "-o", str(unit), "--setup", str(setup), "--force")
        assert r.returncode == 0, r.stderr
        # only the base profile's own file: nothing for the crafted name
        assert all(f[1].endswith("/out") for f in tmpfiles_lines(setup.read_text())), setup.read_text()
        assert "CAP_DAC_OVERRIDE" in unit_values(unit, "CapabilityBoundingSet")[0].split()
        assert "/etc/shadow 0777" not in "\n".join(commands(setup.read_text()))


def test_a_secret_only_read_keeps_the_capability_and_is_not_given(srv):
    """nobody reading /etc/shadow: no chown of /etc/shadow, CAP_DAC_READ_SEARCH stays (issue 8 §3)."""
    profile = srv / "p.json"
    r = capprobe("run", "-q", "--no-unit", "--user", "nobody", "-o", str(profile), "--", "cat", "/etc/shadow")
    assert r.returncode == 0, r.stderr
    unit, setup = srv / "cat.service", srv / "setup.sh"
    r = capprobe("unit", str(profile), "--user", "nobody", "-o", str(unit), "--setup", str(setup))
    assert r.returncode == 0, r.stderr
    script = setup.read_text()
    assert not any("/etc/shadow" in c for c in commands(script)), script
    assert not tmpfiles_lines(script)
    caps = unit_values(unit, "CapabilityBoundingSet")[0].split()
    assert {"CAP_DAC_READ_SEARCH", "CAP_DAC_OVERRIDE"} & set(caps), caps
    assert set(caps) <= set(unit_values(unit, "AmbientCapabilities")[0].split())
    before = owners(Path("/etc/shadow"))
    assert run_setup(setup).returncode == 0
    assert owners(Path("/etc/shadow")) == before


def test_a_private_config_read_is_made_group_readable_and_the_service_reads_it(srv, service_user):
    """Traced as root, run as the user: the 0600 config it read becomes root:GROUP 0640 (issue 8, Medium)."""
    name = service_user
    conf = Path(f"/etc/{name}/app.conf")
    conf.parent.mkdir(mode=0o755)
    conf.write_text("port=1\n")
    os.chmod(conf, 0o600)
    profile = srv / "p.json"
    r = capprobe("run", "-q", "--no-unit", "-o", str(profile), "--", "cat", str(conf))
    assert r.returncode == 0, r.stderr
    unit, setup = srv / f"{name}.service", srv / "setup.sh"
    snippet = srv / "review" / "app.tmpfiles.conf"
    snippet.parent.mkdir()
    r = capprobe("unit", str(profile), "--user", name, "--name", name, "-o", str(unit), "--setup", str(setup),
                 "--tmpfiles", str(snippet))
    assert r.returncode == 0, r.stderr
    assert ["z", str(conf), "0640", "-", name, "-"] in tmpfiles_lines(setup.read_text()), setup.read_text()
    assert snippet.read_text() in setup.read_text()  # the copy for review is what the script installs
    assert as_user(name, f"cat {conf}").returncode != 0  # EACCES before the setup
    done = run_setup(setup)
    assert done.returncode == 0, done.stderr
    st = os.stat(conf)
    assert st.st_uid == 0 and st.st_mode & 0o777 == 0o640
    assert as_user(name, f"cat {conf}").stdout == "port=1\n"
    assert unit_values(unit, "CapabilityBoundingSet") == [""]


# --- issue 9 §2: a path that may not exist on another host ------------------------------------

def test_a_home_path_is_optional_in_read_write_paths(srv):
    cache = Path(f"/root/.cache/capprobe-test-{os.getpid()}")
    try:
        profile = srv / "p.json"
        r = capprobe("run", "-q", "--no-unit", "-o", str(profile), "--", "sh", "-c",
                     f"mkdir -p {cache}/sub && echo x > {cache}/sub/f")
        assert r.returncode == 0, r.stderr
        unit = srv / "h.service"
        r = capprobe("unit", str(profile), "-o", str(unit))
        assert r.returncode == 0, r.stderr
        rw = " ".join(unit_values(unit, "ReadWritePaths")).split()
        home = [w for w in rw if "/root" in w]
        assert home and all(w.startswith("-/root") for w in home), rw
        assert "226/NAMESPACE" in unit.read_text()
    finally:
        shutil.rmtree(cache, ignore_errors=True)


# --- issue 9 §1: a real daemon that starts as root and writes as its own user ------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed (Debian package nginx-light)")
def test_nginx_writing_as_www_data_gets_tmpfiles_lines_not_a_state_directory(srv):
    """nginx's worker (www-data) stores a PUT body in Debian's /var/lib/nginx/body and renames it
    into a WebDAV directory: no StateDirectory= (it would make /var/lib/nginx root's), tmpfiles.d
    lines that give what www-data wrote to www-data, and a setup run that changes nothing here."""
    body_dir = Path("/var/lib/nginx/body")
    if not body_dir.is_dir() or body_dir.stat().st_uid != 33:
        pytest.skip("Debian's /var/lib/nginx/body (www-data) is missing")
    dav = srv / "dav"
    dav.mkdir()
    shutil.chown(dav, "www-data", "www-data")
    port = _free_port()
    conf = srv / "nginx.conf"
    conf.write_text(f"""user www-data; worker_processes 1; pid {srv}/nginx.pid; error_log stderr;
events {{}}
http {{ access_log off; client_body_buffer_size 1k; client_body_in_file_only on;
  server {{ listen 127.0.0.1:{port}; location / {{ root {dav}; dav_methods PUT; }} }} }}
""")
    profile = srv / "nginx.json"
    proc = subprocess.Popen(["python3", "-m", "capprobe", "run", "-q", "--no-unit", "--duration", "4",
                             "-o", str(profile), "--", "nginx", "-e", "stderr", "-c", str(conf),
                             "-g", "daemon off;"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        status = None
        deadline = time.monotonic() + 15
        while status is None and time.monotonic() < deadline:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/upload.bin", data=b"x" * 8192, method="PUT")
                status = urllib.request.urlopen(req, timeout=2).status
            except OSError:
                time.sleep(0.2)
        rc = proc.wait(timeout=60)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
    assert status == 201, stderr[-2000:]
    assert rc == 0, stderr[-2000:]
    p = load(profile)
    written = {f["path"]: f.get("write_uids") for f in p["files"]}
    assert written.get(str(dav / "upload.bin")) == [33], written

    unit, setup = srv / "nginx.service", srv / "setup.sh"
    name = f"capprobe-test-nginx-{os.getpid()}"
    r = capprobe("unit", str(profile), "--name", name, "-o", str(unit), "--setup", str(setup))
    assert r.returncode == 0, r.stderr
    assert not unit_values(unit, "StateDirectory"), unit.read_text()
    rw = " ".join(unit_values(unit, "ReadWritePaths")).split()
    assert any(w.lstrip("-") == "/var/lib/nginx" for w in rw), rw
    assert any(str(dav) == w or str(dav).startswith(w + "/") for w in rw), rw  # the pid file is in srv
    lines = tmpfiles_lines(setup.read_text())
    by_path = {f[1]: f for f in lines}
    assert by_path[str(body_dir)][:5] == ["d", str(body_dir), "0700", "www-data", "root"], lines
    assert by_path[str(dav)][0] == "d" and by_path[str(dav)][3] == "www-data", lines
    assert "/var/lib/nginx" not in by_path  # the package's own directory stays root's
    before = owners(Path("/var/lib/nginx"), body_dir, dav)
    try:
        done = run_setup(setup)
        assert done.returncode == 0, done.stderr
        assert owners(Path("/var/lib/nginx"), body_dir, dav) == before  # already right: nothing changes
    finally:
        if os.path.exists(f"/etc/tmpfiles.d/{name}.conf"):
            os.unlink(f"/etc/tmpfiles.d/{name}.conf")


@pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq not installed (Debian package dnsmasq)")
def test_dnsmasq_pid_directory_of_its_own_user_is_not_a_runtime_directory(srv):
    """dnsmasq writes its pid file as root into a /run/NAME that belongs to the dnsmasq user
    (as Debian's /run/dnsmasq does), then drops to dnsmasq: RuntimeDirectory= would make that
    directory root's and remove it at stop, so the unit opens it and tmpfiles.d keeps its owner."""
    name = f"capprobe-test-dnsmasq-{os.getpid()}"
    run_dir = Path(f"/run/{name}")
    run_dir.mkdir(mode=0o755)
    shutil.chown(run_dir, "dnsmasq", "nogroup")
    try:
        profile = srv / "dnsmasq.json"
        r = capprobe("run", "-q", "--no-unit", "--duration", "3", "-o", str(profile), "--", "dnsmasq", "-k",
                     "--conf-file=/dev/null", f"--port={_free_port()}", "--listen-address=127.0.0.1",
                     "--bind-interfaces", f"--pid-file={run_dir}/dnsmasq.pid", "--user=dnsmasq")
        assert r.returncode in (0, 128 + 15), r.stderr
        p = load(profile)
        assert any(c["call"] == "setuid" for pr in p["processes"] for c in pr["identity_changes"])
        unit, setup = srv / f"{name}.service", srv / "setup.sh"
        r = capprobe("unit", str(profile), "--name", name, "-o", str(unit), "--setup", str(setup))
        assert r.returncode == 0, r.stderr
        assert not unit_values(unit, "RuntimeDirectory"), unit.read_text()
        assert f"-{run_dir}" in " ".join(unit_values(unit, "ReadWritePaths")).split(), unit.read_text()
        assert ["d", str(run_dir), "0755", "dnsmasq", "nogroup", "-"] in tmpfiles_lines(setup.read_text())
        before = owners(run_dir)
        done = run_setup(setup)
        assert done.returncode == 0, done.stderr
        assert owners(run_dir) == before
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        if os.path.exists(f"/etc/tmpfiles.d/{name}.conf"):
            os.unlink(f"/etc/tmpfiles.d/{name}.conf")


# --- the allow-list itself, on this host's real files and dpkg lists ---------------------------

@pytest.mark.skipif(not os.path.exists("/var/lib/dpkg/info/nginx-common.list"),
                    reason="needs Debian's nginx-common package (its dpkg list)")
@pytest.mark.parametrize("path, created, allowed", [
    (b"/etc/nginx/nginx.conf", False, False),        # a package's file, even in /etc/NAME
    (b"/etc/nginx/conf.d/new.conf", True, False),    # created, but in a package's directory
    (b"/etc/nginx/capprobe-own.conf", True, False),  # /etc/nginx is dpkg's too
    (b"/var/lib/nginx-cpt/state", False, True),      # the service's own state directory (unit nginx-cpt)
    (b"/srv/app/data.db", True, True),               # created outside system places
    (b"/srv/app/data.db", False, False),             # neither created nor its own
    (b"/etc/new.conf", True, False),                 # a bare file in /etc
    (b"/bin/new", True, False),                      # /bin -> /usr/bin, resolved first
    (b"/etc/../etc/shadow", False, False),
])
def test_ownership_allow_list(path, created, allowed):
    from capprobe.validate import ownership_refusal
    refused = ownership_refusal(path, {"nginx-cpt"}, created, already_owned=False)
    assert (refused is None) == allowed, refused


def test_the_writer_uid_follows_setuid_calls_and_forks():
    """Recorded strace lines: who wrote each file, after the process's own identity changes."""
    from capprobe.facts.decode import collect_strace
    c = collect_strace(['100 1.0 mkdir("/run/d", 0755) = 0',
                 '100 1.1 setuid(5) = -1 EPERM (Operation not permitted)',
                 '100 1.2 mkdir("/run/d/after-failed-setuid", 0755) = 0',
                 '100 1.3 setresuid(-1, 33, -1) = 0',
                 '100 1.4 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|SIGCHLD) = 101',
                 '101 1.5 mkdir("/run/d/child", 0755) = 0',
                 '101 1.6 setreuid(-1, 44) = 0',
                 '101 1.7 mkdir("/run/d/child-after", 0755) = 0',
                 '100 1.8 mkdir("/run/d/parent", 0755) = 0'])
    uids = {f["path"]: f["write_uids"] for f in c.sections()["files"]}
    assert uids == {"/run/d": [None], "/run/d/after-failed-setuid": [None], "/run/d/child": [33],
                    "/run/d/child-after": [44], "/run/d/parent": [33]}


# --- hostile names, made by a real target ------------------------------------------------------

HOSTILE_NAMES = st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
                                 min_size=1, max_size=10).filter(lambda n: n not in (".", "..")),
                         min_size=8, max_size=16, unique=True)


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(names=HOSTILE_NAMES)
def test_hostile_names_created_by_a_real_target_reach_no_command(names):
    """nobody creates files with generated names in a root directory; the setup script gives
    exactly the plainly named ones, through tmpfiles.d lines, and nothing else anywhere."""
    print(f"hostile names: {len(names)}")  # pytest -s shows how many were tried
    srv = Path(tempfile.mkdtemp(prefix="capprobe-test-", dir="/srv"))
    try:
        os.chmod(srv, 0o755)
        box = srv / "box"
        box.mkdir(mode=0o755)
        sentinel = srv / "root-only"
        sentinel.write_text("x")
        os.chmod(sentinel, 0o600)
        profile = srv / "p.json"
        r = capprobe("run", "-q", "--no-unit", "--user", "nobody", "-o", str(profile), "--", SYSTEM_PYTHON, "-c",
                     "import os, sys\nfor n in sys.argv[2:]: open(os.path.join(sys.argv[1], n), 'w').close()",
                     str(box), *names)
        assert r.returncode == 0, r.stderr
        name = f"capprobe-test-names-{os.getpid()}"
        setup = srv / "setup.sh"
        r = capprobe("unit", str(profile), "--user", "nobody", "--name", name, "-o", str(srv / "u.service"),
                     "--setup", str(setup))
        assert r.returncode == 0, r.stderr
        script = setup.read_text()
        assert subprocess.run(["sh", "-n", str(setup)]).returncode == 0
        plain = {n for n in names if re.fullmatch(r"[A-Za-z0-9._+@:-]+", n)}
        given_paths = {f[1] for f in tmpfiles_lines(script)}
        assert given_paths == {f"{box}/{n}" for n in plain}, (names, given_paths)
        hostile = [n for n in names if n not in plain and len(n) > 2]
        for line in commands(script):
            assert not any(n in line for n in hostile), line
        for n in names:  # a fresh host: the setup creates what it gives
            os.unlink(box / n)
        try:
            done = run_setup(setup)
            assert done.returncode == 0, done.stderr
        finally:
            if os.path.exists(f"/etc/tmpfiles.d/{name}.conf"):
                os.unlink(f"/etc/tmpfiles.d/{name}.conf")
        assert sorted(os.listdir(box)) == sorted(plain)
        assert all(os.lstat(box / n).st_uid == 65534 for n in plain)
        assert os.stat(box).st_uid == 0 and os.stat(sentinel).st_uid == 0
    finally:
        shutil.rmtree(srv, ignore_errors=True)
