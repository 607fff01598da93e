"""`capprobe export`: each format checked by its consumer, on a profile of a real run.

- oci-seccomp: crun runs the profiled workload in a busybox root file system under the
  exported filter; the workload works, and a call it never made fails with EPERM.
- docker and compose: podman runs the exported flags (podman takes docker's) with
  `--rootfs`, no image and no registry: the workload works with exactly its capability, and
  fails without it, on a read-only root, under the filter.
- k8s: kubernetes-validate checks the exported Pod against the Kubernetes schema.

Two things of this host shape how crun and podman are started (each run's docstring says why):
cgroup v2 is mounted beside v1 (hybrid), and root lacks CAP_SYS_RESOURCE.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import capprobe, load, needs_root, needs_strace

from capprobe.merge import merge_profiles
from capprobe.needs import needs_of
from capprobe.render.export import ExportFormat, export_options
from capprobe.render.export import export as export_profile

BUSYBOX = "/bin/busybox"
needs_busybox = pytest.mark.skipif(not os.path.exists(BUSYBOX) or shutil.which("unshare") is None,
                                   reason="busybox-static (/bin/busybox) and unshare needed (.ci/run installs them)")
needs_crun = pytest.mark.skipif(shutil.which("crun") is None, reason="crun not installed (.ci/run installs it)")
needs_podman = pytest.mark.skipif(shutil.which("podman") is None or shutil.which("crun") is None,
                                  reason="podman and crun not installed (.ci/run installs them)")

_ids = itertools.count()

# crun and podman run in a network namespace of their own (whatever network a container gets
# is set up there, never on the host: podman's netavark adds firewall chains and turns on
# forwarding), and in a private mount namespace:
# - without the cgroup2 mount this hybrid host has at /sys/fs/cgroup/unified: crun 1.8 refuses
#   hybrid mode ("cgroups in hybrid mode not supported"), sees plain v1 without it, and with
#   cgroups disabled needs none at all (a host with only v2, or only v1, is left as it is);
# - with a tmpfs of its own on /run, where crun and podman keep state (/run/crun,
#   /run/containers/networks): it goes with the namespace, nothing is left on the host.
_PRIVATE_VIEW = ("mount --make-rprivate / && "
                 "{ ! mountpoint -q /sys/fs/cgroup/unified || umount -l /sys/fs/cgroup/unified; } && "
                 "mount -t tmpfs capprobe-test-run /run && "
                 'exec "$@"')


def in_private_view(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "--mount", "--net", "sh", "-c", _PRIVATE_VIEW, "sh", *argv],
                          capture_output=True, text=True, check=False, **kw)


def busybox_rootfs(where: Path) -> Path:
    """A root file system of one static busybox (and /tmp): the same binary the host profiled."""
    root = where / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    return root


def profile_of(tmp_path: Path, script: str) -> Path:
    """A real `capprobe run` of `busybox sh -c SCRIPT` on this host."""
    out = tmp_path / "workload.profile.json"
    r = capprobe("run", "-q", "--no-unit", "-o", str(out), "--", BUSYBOX, "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    return out


def export(fmt: str, profile: Path, *extra: str) -> str:
    r = capprobe("export", "--format", fmt, str(profile), *extra)
    assert r.returncode == 0, r.stderr
    return r.stdout


class CrunBundle:
    """An OCI bundle (`crun spec`'s config, busybox rootfs) run with `crun run` in the foreground."""

    def __init__(self, where: Path):
        self.dir = where / "bundle"
        self.dir.mkdir()
        busybox_rootfs(self.dir)
        self.state = where / "crun-state"
        subprocess.run(["crun", "spec"], cwd=self.dir, check=True, capture_output=True)
        self.config = json.loads((self.dir / "config.json").read_text())
        self.config["process"]["terminal"] = False
        self.config["root"]["readonly"] = False

    def run(self, argv: list[str], seccomp: dict | None) -> subprocess.CompletedProcess:
        config = json.loads(json.dumps(self.config))
        config["process"]["args"] = argv
        if seccomp is not None:
            config["linux"]["seccomp"] = seccomp
        (self.dir / "config.json").write_text(json.dumps(config))
        cid = f"capprobe-test-{os.getpid()}-{next(_ids)}"
        try:
            return in_private_view(["crun", "--root", str(self.state), "--cgroup-manager=disabled",
                                    "run", "--bundle", str(self.dir), cid], timeout=60)
        finally:  # `crun run` deletes what it made when the process ends; a timeout leaves it
            subprocess.run(["crun", "--root", str(self.state), "delete", "-f", cid], capture_output=True, check=False)


@needs_root
@needs_strace
@needs_busybox
@needs_crun
def test_oci_seccomp_export_runs_the_workload_under_crun_and_refuses_a_call_it_never_made(tmp_path):
    out = f"/tmp/capprobe-oci-{os.getpid()}"
    script = f"echo hello > {out}; cat {out}; ls / > /dev/null"
    try:
        profile = profile_of(tmp_path, script)
    finally:
        Path(out).unlink(missing_ok=True)
    seen = set(load(profile)["syscalls"])
    assert not {"mkdir", "mkdirat"} & seen
    seccomp = json.loads(export("oci-seccomp", profile))
    assert seccomp["defaultAction"] == "SCMP_ACT_ERRNO" and seccomp["defaultErrnoRet"] == 1
    assert "SCMP_ARCH_X86_64" in seccomp["architectures"]
    assert seen <= set(seccomp["syscalls"][0]["names"])

    bundle = CrunBundle(tmp_path)
    works = bundle.run([BUSYBOX, "sh", "-c", script], seccomp)
    assert works.returncode == 0, works.stderr
    assert works.stdout == "hello\n"

    refused = bundle.run([BUSYBOX, "sh", "-c", f"{script}; mkdir /tmp/new-dir"], seccomp)
    assert refused.stdout == "hello\n"
    assert refused.returncode != 0
    assert "Operation not permitted" in refused.stderr  # EPERM: the filter's default, not a kill
    control = bundle.run([BUSYBOX, "sh", "-c", f"{script}; mkdir /tmp/new-dir"], None)
    assert control.returncode == 0, control.stderr  # the refusal above is the filter's


@needs_root
@needs_strace
@needs_busybox
@needs_crun
def test_oci_seccomp_export_allows_the_runtimes_execve(tmp_path):
    """crun calls execve() under the filter: a filter without it stops every start (a profile taken
    by attaching to a running service has no execve of its own, so the export adds it)."""
    profile = profile_of(tmp_path, "exec /bin/busybox true")
    seccomp = json.loads(export("oci-seccomp", profile))
    bundle = CrunBundle(tmp_path)
    assert bundle.run([BUSYBOX, "true"], seccomp).returncode == 0
    without = {**seccomp, "syscalls": [{**rule, "names": [n for n in rule["names"] if n != "execve"]}
                                       for rule in seccomp["syscalls"]]}
    broken = bundle.run([BUSYBOX, "true"], without)
    assert broken.returncode != 0 and "Operation not permitted" in broken.stderr


class Podman:
    """podman in a state directory of the test's own (vfs storage, no events, no cgroups).

    `--rootfs` runs a directory without an image or a registry. Two settings are this host's,
    not the export's: cgroups are disabled (see _PRIVATE_VIEW), and the open-files and
    processes limits are set below this host's hard limits, since root here lacks
    CAP_SYS_RESOURCE and podman's defaults (1048576) are above them."""

    def __init__(self, where: Path, state: Path):
        self.where = where
        self.rootfs = busybox_rootfs(where / "image")
        self.state = state  # podman refuses a runroot path longer than 50 characters
        # podman makes its network configuration directory (/etc/containers/networks) even for
        # --network=none: this one is the test's
        self.conf = state / "containers.conf"
        self.conf.write_text(f'[network]\nnetwork_config_dir = "{state / "networks"}"\n')

    def run(self, flags: list[str], argv: list[str]) -> subprocess.CompletedProcess:
        cmd = ["podman", "--root", str(self.state / "root"), "--runroot", str(self.state / "run"),
               "--tmpdir", str(self.state / "tmp"),
               "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none",
               "run", "--cgroups=disabled", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
               *flags, "--rootfs", str(self.rootfs), *argv]
        return in_private_view(cmd, cwd=self.where, timeout=120,
                               env={**os.environ, "CONTAINERS_CONF": str(self.conf)})


@pytest.fixture
def podman(tmp_path):
    state = Path(tempfile.mkdtemp(prefix="capprobe-pm-"))
    try:
        yield Podman(tmp_path, state)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def docker_argv(text: str) -> list[str]:
    """The `docker run` command of the docker export: comments dropped, continuations joined."""
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    return shlex.split(" ".join(line.removesuffix("\\") for line in lines))


OWNED = f"/tmp/capprobe-owned-{os.getpid()}"
CHOWN_SCRIPT = f"echo hi > {OWNED} && chown 1:1 {OWNED} && cat {OWNED}"


@pytest.fixture
def chown_profile(tmp_path):
    """A workload that needs exactly one capability (CAP_CHOWN: giving a file away), its seccomp export."""
    try:
        profile = profile_of(tmp_path, CHOWN_SCRIPT)
    finally:
        Path(OWNED).unlink(missing_ok=True)
    assert load(profile)["capabilities"]["required"] == ["CAP_CHOWN"]
    (tmp_path / "chown.seccomp.json").write_text(export("oci-seccomp", profile))
    return profile


@needs_root
@needs_strace
@needs_busybox
@needs_podman
def test_docker_export_runs_under_podman_with_exactly_its_capability(podman, chown_profile):
    text = export("docker", chown_profile, "--name", "chown", "--image", "IMAGE")
    argv = docker_argv(text)
    assert argv[:3] == ["docker", "run", "--rm"]
    image = argv.index("IMAGE")
    flags, command = argv[3:image], argv[image + 1:]
    assert command == [BUSYBOX, "sh", "-c", CHOWN_SCRIPT]
    assert {"--cap-drop=ALL", "--cap-add=CAP_CHOWN", "--read-only", "--tmpfs=/tmp", "--network=none",
            "--security-opt=no-new-privileges", "--security-opt=seccomp=chown.seccomp.json"} <= set(flags)
    assert "# --cap-add=CAP_CHOWN: " in text  # the evidence rides along

    works = podman.run(["--rm", *flags], command)
    assert works.returncode == 0, works.stderr
    assert works.stdout == "hi\n"
    without_cap = podman.run(["--rm", *(f for f in flags if f != "--cap-add=CAP_CHOWN")], command)
    assert without_cap.returncode != 0 and "Operation not permitted" in without_cap.stderr
    # the same calls as the workload's own, outside the tmpfs: the read-only root refuses it
    read_only = podman.run(["--rm", *flags], [BUSYBOX, "sh", "-c", "echo hi > /outside-tmpfs"])
    assert read_only.returncode != 0 and "Read-only file system" in read_only.stderr
    unseen_call = podman.run(["--rm", *flags], [BUSYBOX, "mkdir", "/tmp/new-dir"])
    assert unseen_call.returncode != 0 and "Operation not permitted" in unseen_call.stderr


# compose's service keys and the `docker run` flag each stands for (the compose specification
# documents them so); a key the export writes that is not here fails the test.
COMPOSE_FLAGS = {
    "user": lambda v: [f"--user={v}"],
    "cap_drop": lambda v: [f"--cap-drop={c}" for c in v],
    "cap_add": lambda v: [f"--cap-add={c}" for c in v],
    "read_only": lambda v: ["--read-only"] if v is True else [],
    "tmpfs": lambda v: [f"--tmpfs={p}" for p in v],
    "volumes": lambda v: [f"--volume={x}" for x in v],
    "devices": lambda v: [f"--device={x}" for x in v],
    "network_mode": lambda v: [f"--network={v}"],
    "security_opt": lambda v: [f"--security-opt={x}" for x in v],
    "labels": lambda v: [f"--label={k}={x}" for k, x in v.items()],
}


@needs_root
@needs_strace
@needs_busybox
@needs_podman
def test_compose_export_runs_under_podman(podman, chown_profile):
    text = export("compose", chown_profile, "--name", "chown")
    document = json.loads(text)  # JSON is YAML: compose reads it as it is
    assert set(document) == {"services"}
    service = document["services"]["chown"]
    assert service["image"] == "IMAGE"
    assert service["cap_drop"] == ["ALL"] and service["cap_add"] == ["CAP_CHOWN"]
    assert service["read_only"] is True and service["tmpfs"] == ["/tmp"]
    flags = [flag for key, value in service.items() if key not in ("image", "command")
             for flag in COMPOSE_FLAGS[key](value)]
    works = podman.run(["--rm", *flags], service["command"])
    assert works.returncode == 0, works.stderr
    assert works.stdout == "hi\n"


@needs_root
@needs_strace
@needs_busybox
def test_k8s_export_is_a_valid_pod(tmp_path, chown_profile):
    kubernetes_validate = pytest.importorskip("kubernetes_validate",
                                              reason="kubernetes-validate not installed (pip install '.[test]')")
    text = export("k8s", chown_profile, "--name", "Chown_Service")
    pod = json.loads(text)
    container = pod["spec"]["containers"][0]
    context = container["securityContext"]
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["seccompProfile"] == {"type": "Localhost", "localhostProfile": "capprobe/Chown_Service.seccomp.json"}
    assert "runAsNonRoot" not in context  # the run was root's
    assert pod["metadata"]["name"] == "chown-service"
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
    (tmp_path / "pod.json").write_text(text)
    r = subprocess.run([shutil.which("kubernetes-validate") or "kubernetes-validate", "--strict",
                        str(tmp_path / "pod.json")], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "passed" in r.stdout + r.stderr
    # the validator is strict: a misspelt field of the context fails it
    context["readOnlyRootFS"] = context.pop("readOnlyRootFilesystem")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)


# -- the renderers on a recorded profile (pure) -------------------------------------------

RECORDED_PROFILE = Path(__file__).resolve().parent / "recorded" / "profile_python_net.json"


def recorded(**run_changes) -> dict:
    profile = load(RECORDED_PROFILE)
    profile["run"].update(run_changes)
    return profile


def rendered(profile: dict, fmt: str) -> str:
    return export_profile(profile, ExportFormat(fmt), export_options(profile, "app"))


def test_every_format_has_an_exporter():
    assert {f.value for f in ExportFormat} == {"oci-seccomp", "docker", "compose", "k8s"}
    assert all(callable(f.exporter().render) for f in ExportFormat)


def test_a_service_user_runs_as_non_root_and_a_state_directory_gets_a_volume():
    profile = recorded(user={"uid": 1000, "name": "app", "gid": 1000})
    pod = json.loads(rendered(profile, "k8s"))
    context = pod["spec"]["containers"][0]["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["runAsNonRoot"]) == (1000, 1000, True)
    # the directory the needs open for the service's writes (it made /srv/cprec/data and a file in it)
    [state] = [d.path.decode() for d in needs_of(profile).writable_dirs if d.kind == "state"]
    assert state in ("/srv/cprec", "/srv/cprec/data")
    volume = "app-" + state.strip("/").replace("/", "-")
    mounts = {m["mountPath"]: m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts == {state: volume}
    assert pod["spec"]["volumes"] == [{"name": volume, "persistentVolumeClaim": {"claimName": volume}}]
    flags = docker_argv(rendered(profile, "docker"))
    assert "--user=1000:1000" in flags and f"--volume={volume}:{state}" in flags
    assert "--network=none" not in flags  # it used AF_INET
    compose = json.loads(rendered(profile, "compose"))
    assert compose["volumes"] == {volume: {}}
    assert compose["services"]["app"]["volumes"] == [f"{volume}:{state}"]


def test_a_program_that_switches_user_itself_starts_as_root():
    profile = recorded()
    profile["processes"][0]["identity_changes"] = [{"call": "setuid", "args": ["33"], "result": 0}]
    context = json.loads(rendered(profile, "k8s"))["spec"]["containers"][0]["securityContext"]
    assert context["runAsUser"] == 0 and "runAsNonRoot" not in context
    assert "--user=0:0" in docker_argv(rendered(profile, "docker"))


def test_a_path_the_flag_syntax_cannot_carry_is_left_out_and_said():
    profile = recorded()
    profile["files"].append({"path": "/srv/a:b/f", "ops": {"create": {"count": 1, "first_seen": 0, "by": []}}})
    text = rendered(profile, "docker")
    assert "# left out: writable directory /srv/a:b" in text
    assert "a:b" not in "".join(line for line in text.splitlines() if not line.startswith("#"))


def test_seccomp_of_an_unknown_architecture_is_one_line(tmp_path):
    profile = recorded()
    profile["host"]["architecture"] = "vax"
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile))
    r = capprobe("export", "--format", "oci-seccomp", str(path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "vax" in r.stderr


def test_export_never_replaces_a_file_without_force(tmp_path):
    out = tmp_path / "app.seccomp.json"
    out.write_text("keep me")
    r = capprobe("export", "--format", "oci-seccomp", str(RECORDED_PROFILE), "-o", str(out))
    assert r.returncode == 2 and "exists" in r.stderr and out.read_text() == "keep me"
    r = capprobe("export", "--format", "oci-seccomp", str(RECORDED_PROFILE), "-o", str(out), "--force")
    assert r.returncode == 0 and json.loads(out.read_text())["defaultAction"] == "SCMP_ACT_ERRNO"
    r = capprobe("export", "--format", "k8s", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_a_merged_profile_exports_what_every_session_needed():
    startup, backup = recorded(), recorded()
    backup["syscalls"]["mkdirat"] = {"count": 1, "errors": {}}
    merged = merge_profiles([startup, backup], ["startup", "backup"])
    names = json.loads(rendered(merged, "oci-seccomp"))["syscalls"][0]["names"]
    assert "mkdirat" in names and "mkdirat" not in json.loads(rendered(startup, "oci-seccomp"))["syscalls"][0]["names"]


def test_a_device_is_passed_to_docker_and_named_as_left_out_for_kubernetes():
    profile = recorded()
    profile["devices"] = [{"path": "/dev/net/tun", "kind": "char", "major": 10, "minor": 200, "access": "rw",
                           "count": 1, "by": ["/usr/bin/python3"]}]
    assert "--device=/dev/net/tun:/dev/net/tun:rw" in docker_argv(rendered(profile, "docker"))
    assert json.loads(rendered(profile, "compose"))["services"]["app"]["devices"] == ["/dev/net/tun:/dev/net/tun:rw"]
    annotations = json.loads(rendered(profile, "k8s"))["metadata"]["annotations"]
    assert any(v.startswith("device /dev/net/tun: ") for k, v in annotations.items() if "left-out" in k)


@needs_root
@needs_strace
@needs_busybox
@needs_podman
def test_docker_export_of_a_non_root_service_binds_its_low_port_under_podman(tmp_path, podman):
    """A service profiled as nobody binding port 979: the export runs it as nobody with
    CAP_NET_BIND_SERVICE, which podman makes ambient (the caveat the export prints is about
    runtimes that do not); without it the bind is refused."""
    command = [BUSYBOX, "httpd", "-p", "127.0.0.1:979"]  # binds, then daemonizes: exit 0 = bound
    out = tmp_path / "httpd.profile.json"
    r = capprobe("run", "-q", "--no-unit", "--user", "nobody", "--duration", "2", "-o", str(out), "--", *command)
    assert r.returncode == 0, r.stderr
    # (busybox also calls setgid/setuid to the ids it already has: granted checks, so required)
    assert "CAP_NET_BIND_SERVICE" in load(out)["capabilities"]["required"]
    (podman.where / "httpd.seccomp.json").write_text(export("oci-seccomp", out))
    text = export("docker", out, "--name", "httpd")
    argv = docker_argv(text)
    image = argv.index("IMAGE")
    flags, exported_command = argv[3:image], argv[image + 1:]
    assert exported_command == command
    assert "--user=65534:65534" in flags and "--cap-add=CAP_NET_BIND_SERVICE" in flags
    assert "--network=none" not in flags
    assert "runtime makes them ambient" in text
    bound = podman.run(["--rm", *flags], command)
    assert bound.returncode == 0, bound.stderr
    refused = podman.run(["--rm", *(f for f in flags if f != "--cap-add=CAP_NET_BIND_SERVICE")], command)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr


def test_a_setuid_to_the_ids_it_already_has_is_no_switch():
    """busybox calls setgid/setuid with its own ids at every start: still a non-root service."""
    profile = recorded(user={"uid": 65534, "name": "nobody", "gid": 65534})
    profile["processes"][0]["identity_changes"] = [
        {"call": "setgid", "args": "65534", "result": 0, "errno": None},
        {"call": "setuid", "args": "65534", "result": 0, "errno": None}]
    context = json.loads(rendered(profile, "k8s"))["spec"]["containers"][0]["securityContext"]
    assert (context["runAsUser"], context.get("runAsNonRoot")) == (65534, True)
    profile["processes"][0]["identity_changes"].append({"call": "setuid", "args": "0", "result": 0, "errno": None})
    context = json.loads(rendered(profile, "k8s"))["spec"]["containers"][0]["securityContext"]
    assert (context["runAsUser"], context.get("runAsNonRoot")) == (0, None)


def test_an_export_of_an_incomplete_profile_says_so(tmp_path):
    profile = recorded()
    profile["complete"], profile["incomplete"] = False, ["a process the trace never saw"]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile))
    r = capprobe("export", "--format", "oci-seccomp", str(path))
    assert r.returncode == 0 and json.loads(r.stdout)["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "WARNING: the profile is incomplete" in r.stderr and "a process the trace never saw" in r.stderr
