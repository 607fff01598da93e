"""Profile an installed systemd service where it lives: `capprobe service start|finish NAME`.

`start` reads the unit as systemd has it (`systemctl show` / `systemctl cat`, never the
files), adds ONE runtime drop-in that runs each ExecStartPre/ExecStart/ExecStartPost/
ExecReload command under `capprobe service exec` (root, '+'; the unit's User=/Group= and
capabilities passed on as `--user`/`--group`/`--keep-caps`), and restarts the unit.
Every wrapped command writes its own profile into the state directory capprobe owns
(/var/lib/capprobe/service/NAME/): results come back through those files, never the
journal. `finish` removes the drop-in (the unit is then byte for byte what it was),
restarts the unit, merges the profiles, writes profile, unit, hardening drop-in and
setup script; `--apply` installs the hardening as a drop-in, proves it with a restart
and rolls back, naming the directive, if the service does not come up.

Pure functions first (parsing, rendering), the systemctl edges after them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_ROOT = Path("/var/lib/capprobe/service")
RUNTIME_UNITS = Path("/run/systemd/system")
PERSISTENT_UNITS = Path("/etc/systemd/system")
PROFILING_DROPIN = "zz-capprobe.conf"
HARDENING_DROPIN = "zz-capprobe-hardening.conf"
WRAPPED = ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload")
# What the installed unit says about how the service runs: the hardened unit keeps these
# from the original (the traced command lines, identity and environment are the unit's).
UNIT_OWN_KEYS = frozenset({
    "Type", "ExecCondition", "ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop",
    "ExecStopPost", "User", "Group", "DynamicUser", "SupplementaryGroups", "Environment", "EnvironmentFile",
    "PassEnvironment", "UnsetEnvironment", "PIDFile", "WorkingDirectory", "RootDirectory", "RemainAfterExit",
    "NotifyAccess", "KillMode", "KillSignal", "TimeoutSec", "TimeoutStartSec", "TimeoutStopSec",
    "Restart", "RestartSec", "BusName", "GuessMainPID", "PermissionsStartOnly", "Nice", "OOMScoreAdjust", "Slice",
    "StandardInput", "StandardOutput", "StandardError", "SyslogIdentifier", "WatchdogSec", "FileDescriptorStoreMax",
})
OWN_KEY_PREFIXES = ("Limit",)   # LimitNOFILE= and the other resource limits are the unit's too
# [Unit] lines a standalone copy of the unit keeps (ordering, dependencies, conditions)
UNIT_SECTION_SKIP = frozenset({"Description"})
SHOW_PROPERTIES = ("Id", "LoadState", "ActiveState", "Type", "User", "Group", "DynamicUser",
                   "PermissionsStartOnly", "KillMode", "TimeoutStopUSec", "AmbientCapabilities",
                   "CapabilityBoundingSet", "FragmentPath", "DropInPaths")
UNIT_NAME = re.compile(r"[A-Za-z0-9:_.@-]+\Z")
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?\Z")
# capprobe writes the profile after SIGTERM: a short stop timeout would SIGKILL it first
MIN_STOP_SECONDS = 30
# what capprobe itself needs from systemd's environment, not the service's
NOT_FOR_TARGET = ("NOTIFY_SOCKET", "WATCHDOG_PID")


class ServiceError(Exception):
    """One line for the operator; exit_code is what capprobe exits with."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message if message.startswith("capprobe:") else f"capprobe: {message}")
        self.exit_code = exit_code


@dataclass(frozen=True)
class ExecLine:
    """One command of the unit, as written there (specifiers and $VARs for systemd to expand)."""

    kind: str       # ExecStartPre, ExecStart, ExecStartPost, ExecReload
    index: int      # position among the commands of its kind
    prefix: str     # systemd's special characters before the path: - @ : + ! !!
    command: str


@dataclass(frozen=True)
class UnitFacts:
    """What `systemctl show` says about the unit (the settings start needs)."""

    name: str                 # nginx.service
    load_state: str
    active_state: str
    type: str
    user: str
    group: str
    dynamic_user: bool
    permissions_start_only: bool
    kill_mode: str
    stop_seconds: float | None
    ambient_caps: tuple[str, ...]
    bounding_caps: tuple[str, ...]

    @property
    def stem(self) -> str:
        return self.name.removesuffix(".service")


# ---------------------------------------------------------------- pure functions

def unit_name(text: str) -> str:
    """'nginx' or 'nginx.service' -> 'nginx.service'; other characters are refused."""
    name = text if text.endswith(".service") else f"{text}.service"
    if not UNIT_NAME.match(name) or name.startswith(("-", ".")) or "/" in name:
        raise ServiceError(f"not a service name: {text!r} (letters, digits, : _ . @ -)")
    return name


def parse_show(text: str) -> dict[str, str]:
    """`systemctl show -p A,B` output as a dict (the first '=' splits)."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _seconds(usec: str) -> float | None:
    return int(usec) / 1e6 if usec.isdigit() else None


def unit_facts(props: dict[str, str]) -> UnitFacts:
    return UnitFacts(
        name=props.get("Id", ""), load_state=props.get("LoadState", ""),
        active_state=props.get("ActiveState", ""), type=props.get("Type", "simple") or "simple",
        user=props.get("User", ""), group=props.get("Group", ""),
        dynamic_user=props.get("DynamicUser") == "yes",
        permissions_start_only=props.get("PermissionsStartOnly") == "yes",
        kill_mode=props.get("KillMode", "control-group"),
        stop_seconds=_seconds(props.get("TimeoutStopUSec", "")),
        ambient_caps=tuple(c.upper() for c in props.get("AmbientCapabilities", "").split()),
        bounding_caps=tuple(c.upper() for c in props.get("CapabilityBoundingSet", "").split()))


def is_own_key(key: str) -> bool:
    """Does this [Service] setting say how the service runs (kept from the unit), not how it is confined?"""
    return key in UNIT_OWN_KEYS or key.startswith(OWN_KEY_PREFIXES)


def service_sections(cat_text: str, wanted: str = "Service") -> list[tuple[str, str]]:
    """(key, value) of every assignment of section WANTED in `systemctl cat` text, in order.

    Continuation lines are joined as systemd joins them; each file's header comment
    (`# /path/of/file`) starts a new file, so a section never runs across files.
    """
    out: list[tuple[str, str]] = []
    section = ""
    pending = ""
    for raw in cat_text.splitlines():
        if pending:
            raw, pending = pending.rstrip() + " " + raw.lstrip(), ""
        if raw.endswith("\\") and not raw.lstrip().startswith(("#", ";")):
            pending = raw[:-1]
            continue
        line = raw.strip()
        if line.startswith("# /") and line.endswith((".service", ".conf")):
            section = ""
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section == wanted and "=" in line:
            key, value = line.split("=", 1)
            out.append((key.strip(), value.strip()))
    return out


def split_prefix(value: str) -> tuple[str, str]:
    """'-+/bin/true x' -> ('-+', '/bin/true x'): systemd's executable prefixes."""
    i = 0
    while i < len(value) and value[i] in "-@:+!":
        i += 1
    return value[:i], value[i:].lstrip()


def exec_lines(cat_text: str) -> list[ExecLine]:
    """The unit's wrapped commands in the order systemd runs them; an empty assignment resets."""
    commands: dict[str, list[tuple[str, str]]] = {kind: [] for kind in WRAPPED}
    for key, value in service_sections(cat_text):
        if key in commands:
            if value:
                commands[key].append(split_prefix(value))
            else:
                commands[key] = []
    return [ExecLine(kind, i, prefix, command)
            for kind in WRAPPED for i, (prefix, command) in enumerate(commands[kind])]


def runs_as_unit_user(line: ExecLine, facts: UnitFacts) -> bool:
    """Would systemd run this command with User=/Group=? ('+', PermissionsStartOnly= say no)."""
    return sandboxed(line, facts) and facts.user not in ("", "root", "0")


def sandboxed(line: ExecLine, facts: UnitFacts) -> bool:
    """Does the unit's sandbox confine this command? ('+' and PermissionsStartOnly= exempt it.)"""
    return "+" not in line.prefix and not (facts.permissions_start_only and line.kind != "ExecStart")


def kept_capabilities(line: ExecLine, facts: UnitFacts) -> tuple[str, ...] | None:
    """The capabilities systemd would leave the command (None: all of capprobe's, i.e. root's)."""
    from .capabilities import CAP_NAMES
    if "+" in line.prefix:
        return None
    if runs_as_unit_user(line, facts):
        return facts.ambient_caps  # a non-root User= keeps only its ambient set
    if not facts.bounding_caps or set(CAP_NAMES) <= set(facts.bounding_caps):
        return None  # root with the full bounding set: what capprobe has
    return facts.bounding_caps


# Settings systemd does not apply to a '+' command, which the drop-in makes of capprobe:
# while it profiles, the target would run without them (gaining what the unit denies it,
# and showing behaviour the installed unit forbids). capprobe re-applies User=, Group=,
# the capability sets and NoNewPrivileges=; these it cannot.
UNCONFINED_BY_PLUS = frozenset({
    "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateNetwork", "PrivateUsers",
    "PrivateIPC", "PrivateMounts", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
    "ProtectControlGroups", "ProtectClock", "ProtectHostname", "ProtectProc", "ProcSubset",
    "ReadOnlyPaths", "InaccessiblePaths", "NoExecPaths", "ExecPaths", "TemporaryFileSystem",
    "BindPaths", "BindReadOnlyPaths", "RootDirectory", "RootImage", "MountAPIVFS",
    "SystemCallFilter", "SystemCallArchitectures", "RestrictAddressFamilies", "RestrictNamespaces",
    "RestrictRealtime", "RestrictSUIDSGID", "MemoryDenyWriteExecute", "LockPersonality",
    "RestrictFileSystems", "SELinuxContext", "AppArmorProfile", "SmackProcessLabel",
})
_OFF = {"", "no", "false", "off", "0", "default", "all"}  # "all": ProcSubset=; "default": ProtectProc=


def effective_settings(cat_text: str) -> dict[str, str]:
    """The [Service] settings as systemd reads them: the last assignment wins, '' resets."""
    settings: dict[str, str] = {}
    for key, value in service_sections(cat_text):
        settings[key] = value
    return settings


def lifted_settings(cat_text: str) -> list[str]:
    """The unit's confinement that a '+' command escapes (Key=value, in unit order)."""
    return [f"{key}={value}" for key, value in effective_settings(cat_text).items()
            if key in UNCONFINED_BY_PLUS and value.lower() not in _OFF]


def wants_no_new_privileges(cat_text: str) -> bool:
    return effective_settings(cat_text).get("NoNewPrivileges", "").lower() in ("yes", "true", "on", "1")


def refusal(facts: UnitFacts, lines: list[ExecLine]) -> str | None:
    """Why capprobe cannot wrap this unit faithfully, or None."""
    if facts.load_state != "loaded":
        return f"unknown unit {facts.name} (LoadState={facts.load_state or '?'})"
    if facts.dynamic_user:
        return f"{facts.name} has DynamicUser=yes: capprobe cannot run a command as a user systemd has not made yet"
    if not any(line.kind == "ExecStart" for line in lines):
        return f"{facts.name} has no ExecStart= to profile"
    for line in lines:
        if "@" in line.prefix:
            return f"{facts.name}: {line.kind}= with '@' (a separate argv[0]) is not supported"
    for account in (facts.user, facts.group):
        if account and not ACCOUNT_NAME.match(account):
            return f"{facts.name}: User=/Group= {account!r} is not a plain name (specifiers are not supported)"
    return None


def wrapper_command(line: ExecLine, facts: UnitFacts, python: str, no_new_privileges: bool = False) -> str:
    """The drop-in's line for LINE: capprobe (root, '+') runs the unit's own command text."""
    keep = "".join(c for c in dict.fromkeys(line.prefix) if c in "-:")  # '+', '!', '!!' become capprobe's '+'
    args = [python, "-I", "-m", "capprobe", "service", "exec"]
    if runs_as_unit_user(line, facts):
        args += ["--user", facts.user] + (["--group", facts.group] if facts.group else [])
    if no_new_privileges and sandboxed(line, facts):
        args.append("--no-new-privileges")
    caps = kept_capabilities(line, facts)
    if caps is not None:
        args += ["--keep-caps", ",".join(caps) or "none"]
    args += [facts.name, line.kind, str(line.index)]
    text = " ".join(a.replace("%", "%%") for a in args)
    return f"{line.kind}={keep}+{text} -- {line.command}"


def render_profiling_dropin(facts: UnitFacts, lines: list[ExecLine], python: str, state_dir: Path,
                            no_new_privileges: bool = False) -> str:
    out = [f"# Written by `capprobe service start {facts.stem}`: each command runs under `capprobe service exec`,",
           f"# which traces it and writes its profile into {state_dir}/.",
           f"# `capprobe service finish {facts.stem}` removes this file (a runtime drop-in: gone at reboot too).",
           "[Service]"]
    if facts.type == "forking":
        out += ["# capprobe stays in the foreground while the daemon forks: it tells systemd READY=1 once",
                "# the command's own process exited 0 (what makes a forking start succeed), and stays the",
                "# main process, so a stop reaches it and the profile gets written",
                "Type=notify", "PIDFile=", "GuessMainPID=no"]
    elif facts.type == "notify":
        out += ["# capprobe is the main process: it forwards the service's READY=1/STATUS=... to systemd"]
    if facts.kill_mode == "control-group":
        out += ["# SIGTERM to capprobe only: it stops the service as systemd would and must outlive it",
                "KillMode=mixed"]
    if facts.stop_seconds is not None and facts.stop_seconds < MIN_STOP_SECONDS:
        out += ["# time for capprobe to write the profile after the service stopped",
                f"TimeoutStopSec={MIN_STOP_SECONDS}s"]
    for kind in WRAPPED:
        mine = [line for line in lines if line.kind == kind]
        if mine:
            out.append(f"{kind}=")
            out += [wrapper_command(line, facts, python, no_new_privileges) for line in mine]
    return "\n".join(out) + "\n"


def _settings_with_comments(unit_text: str) -> list[tuple[str, str, list[str]]]:
    """(section, line, comment lines before it) for each setting of a rendered unit."""
    out, comments, section = [], [], ""
    for line in unit_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section, comments = stripped[1:-1], []
        elif stripped.startswith(("#", ";")):
            comments.append(line)
        elif "=" in stripped:
            out.append((section, line, comments))
            comments = []
        else:
            comments = []
    return out


def hardening_lines(unit_text: str, facts: UnitFacts) -> list[str]:
    """The [Service] settings (with their evidence comments) a synthesized unit adds to the
    installed unit: everything but how the service runs, which stays the unit's own."""
    # the synthesis is asked for User=root (it has no "stay root" choice): a root unit needs no
    # AmbientCapabilities=, its bounding set is what limits it
    skip = {"AmbientCapabilities"} if facts.user in ("", "root", "0") else set()
    out = []
    for section, line, comments in _settings_with_comments(unit_text):
        key = line.split("=", 1)[0].strip()
        if section == "Service" and not is_own_key(key) and key not in skip:
            out += [*comments, line]
    return out


def render_hardening_dropin(unit_text: str, facts: UnitFacts, profile_path: str) -> str:
    return "\n".join([
        f"# Hardening for {facts.name}, written by `capprobe service finish {facts.stem}` from {profile_path}.",
        "# Only sandboxing settings: how the service runs (Exec*, User=, Environment...) stays the unit's own.",
        "[Service]", *hardening_lines(unit_text, facts)]) + "\n"


def render_full_unit(unit_text: str, cat_text: str, facts: UnitFacts) -> str:
    """A standalone unit: the installed unit's own run settings plus the hardening."""
    own = [f"{key}={value}" for key, value in service_sections(cat_text) if is_own_key(key)]
    order = [f"{key}={value}" for key, value in service_sections(cat_text, "Unit") if key not in UNIT_SECTION_SKIP]
    install = [f"{key}={value}" for key, value in service_sections(cat_text, "Install")]
    head, synthesized_install = [], []
    section = ""
    for line in unit_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
        if section == "Unit" and stripped:
            head.append(line)
        elif section == "Install":
            synthesized_install.append(line)
    return "\n".join([*head, *([f"# from the installed {facts.name}"] + order if order else []), "",
                      "[Service]", f"# from the installed {facts.name} (systemctl cat): how it runs",
                      *own, *hardening_lines(unit_text, facts), "",
                      *(["[Install]", *install] if install else synthesized_install)]) + "\n"


def profile_label(result: dict) -> str:
    """'ExecStart[0]' or 'ExecReload[0] run 2': which command (and which run of it) a profile is."""
    label = f"{result['kind']}[{result['index']}]"
    return label if result.get("run", 1) == 1 else f"{label} run {result['run']}"


# ---------------------------------------------------------------- edges: systemd

def _systemctl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=timeout)


def _require_systemd() -> None:
    from .verify.systemd_host import NoSystemd, require_systemd
    try:
        require_systemd()
    except NoSystemd as e:
        raise ServiceError(str(e).replace("verify needs", "service needs")) from None
    if os.geteuid() != 0:
        raise ServiceError("service needs root (it changes units and traces them)")


def read_unit(name: str) -> tuple[UnitFacts, str]:
    """The unit's facts and its `systemctl cat` text, or a one-line ServiceError."""
    shown = _systemctl("show", name, "-p", ",".join(SHOW_PROPERTIES))
    facts = unit_facts(parse_show(shown.stdout))
    if shown.returncode != 0 or facts.load_state in ("", "not-found"):
        raise ServiceError(f"unknown unit {name}")
    cat = _systemctl("cat", name)
    if cat.returncode != 0:
        raise ServiceError(f"systemctl cat {name}: {(cat.stderr.strip().splitlines() or ['failed'])[0]}")
    return facts, cat.stdout


def state_dir(name: str) -> Path:
    return STATE_ROOT / name


def _reload() -> None:
    r = _systemctl("daemon-reload")
    if r.returncode != 0:
        raise ServiceError(f"systemctl daemon-reload failed: {r.stderr.strip()[:200]}")


def _first_line(r: subprocess.CompletedProcess) -> str:
    return ((r.stderr or r.stdout).strip().splitlines() or [f"exit {r.returncode}"])[0]


def _python_for_systemd() -> str:
    """The interpreter the drop-in runs: it must import this very capprobe without $PYTHONPATH
    (the unit's environment is not ours)."""
    import capprobe
    r = subprocess.run([sys.executable, "-I", "-c", "import capprobe, sys; sys.stdout.write(capprobe.__file__)"],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or os.path.realpath(r.stdout) != os.path.realpath(capprobe.__file__):
        raise ServiceError(f"{sys.executable} does not import this capprobe on its own (is it only on "
                           "$PYTHONPATH?): install it (pip install .) so systemd can run it")
    return sys.executable


def start(name_text: str, say=lambda msg: None, lift_sandbox: bool = False) -> Path:
    """Wrap the unit's commands in capprobe and restart it; returns the state directory."""
    _require_systemd()
    name = unit_name(name_text)
    state = state_dir(name)
    dropin_dir = RUNTIME_UNITS / f"{name}.d"
    dropin = dropin_dir / PROFILING_DROPIN
    if (state / "state.json").exists() or dropin.exists():
        raise ServiceError(f"{name} is already being profiled (capprobe service finish {name_text} first)")
    facts, cat_text = read_unit(name)
    lines = exec_lines(cat_text)
    why = refusal(facts, lines)
    if why:
        raise ServiceError(why)
    lifted = lifted_settings(cat_text)
    if lifted and not lift_sandbox:
        raise ServiceError(f"{name} confines its commands with {' '.join(lifted)}; capprobe runs them as '+' "
                           "commands, outside that confinement, while it profiles (--lift-sandbox accepts this)")
    python = _python_for_systemd()
    (state / "profiles").mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    record = {"unit": name, "facts": asdict(facts), "cat": cat_text, "was_active": facts.active_state == "active",
              "dropin": str(dropin), "made_dropin_dir": not dropin_dir.exists(),
              "commands": [asdict(line) for line in lines], "started": time.time(),
              "lifted_while_profiling": lifted}
    text = render_profiling_dropin(facts, lines, python, state, wants_no_new_privileges(cat_text))
    try:
        dropin_dir.mkdir(parents=True, exist_ok=True)
        dropin.write_text(text)
        (state / "state.json").write_text(json.dumps(record, indent=1) + "\n")
        _reload()
        r = _systemctl("restart", name)
        if r.returncode != 0:
            raise ServiceError(f"{name} did not start under capprobe ({_first_line(r)}); the unit is restored "
                               f"(profiles and errors kept in {state})", 1)
    except BaseException:
        _remove_dropin(record)
        (state / "state.json").unlink(missing_ok=True)  # the profiles and errors stay for a look
        if record["was_active"]:
            _systemctl("restart", name)
        raise
    if lifted:
        say(f"{name}: not confined by {' '.join(lifted)} until `capprobe service finish {name_text}`")
    say(f"{name}: {len(lines)} command(s) profiled from now on ({dropin}); "
        f"`capprobe service finish {name_text}` ends it")
    return state


def _remove_dropin(record: dict) -> None:
    dropin = Path(record["dropin"])
    dropin.unlink(missing_ok=True)
    if record.get("made_dropin_dir"):
        try:
            dropin.parent.rmdir()
        except OSError:
            pass  # someone else put a file there meanwhile: it stays, with the directory
    _systemctl("daemon-reload")


# ---------------------------------------------------------------- the wrapped command

def exec_command(name: str, kind: str, index: int, user: str | None, group: str | None,
                 keep_caps: str | None, command: list[str], status=lambda msg: None,
                 no_new_privileges: bool = False) -> int:
    """Run under systemd as the unit's command: trace COMMAND, write its profile and result file."""
    from .capabilities import CAP_NAMES
    from .notify import notify_systemd
    from .profile import save_profile
    from .session import RunOptions, SessionError, run_session
    state = state_dir(name)
    profiles = state / "profiles"
    if not profiles.is_dir():
        raise ServiceError(f"{name} is not being profiled ({profiles} is missing)")
    systemd_socket = os.environ.get("NOTIFY_SOCKET") if kind == "ExecStart" else None
    env = {k: v for k, v in os.environ.items() if k not in NOT_FOR_TARGET}
    kept = set() if keep_caps in (None, "none") else set(keep_caps.split(","))
    drop = [] if keep_caps is None else [c for c in CAP_NAMES if c not in kept]
    forking_ready = None
    if systemd_socket and _unit_type_was_forking(state):
        forking_ready = _ready_when_exited_ok(systemd_socket)
    opts = RunOptions(command=command, user=user, group=group, drop_caps=drop, env=env,
                      notify_forward=systemd_socket, on_started=forking_ready,
                      no_new_privileges=no_new_privileges)
    stamp = f"{kind}-{index}-{time.time_ns()}"
    result = {"kind": kind, "index": index, "command": command, "pid": os.getpid()}
    try:
        run = run_session(opts, status=status)
    except SessionError as e:
        result.update(error=str(e), exit_code=e.exit_code)
        _write_result(profiles / f"{stamp}.result.json", result)
        raise ServiceError(str(e), e.exit_code) from None
    # the unit keeps its own Environment=/EnvironmentFile=: no value (secrets) goes into the profile
    run.profile["run"]["environment"] = {}
    run.profile["run"]["service"] = {"unit": name, "command": kind, "index": index,
                                     "environment_names": sorted(env)}
    save_profile(run.profile, profiles / f"{stamp}.profile.json")
    result.update(exit_code=run.exit_code, notes=run.notes, profile=f"{stamp}.profile.json")
    _write_result(profiles / f"{stamp}.result.json", result)
    if systemd_socket:
        notify_systemd(systemd_socket, b"STATUS=capprobe: profile written")
    return run.exit_code


def _write_result(path: Path, result: dict) -> None:
    from .profile import write_atomically
    write_atomically(path, (json.dumps(result, indent=1) + "\n").encode())


def _unit_type_was_forking(state: Path) -> bool:
    try:
        return json.loads((state / "state.json").read_text())["facts"]["type"] == "forking"
    except (OSError, ValueError, KeyError):
        return False


def _ready_when_exited_ok(systemd_socket: str):
    """on_started for a forking command: READY=1 once its own process exited 0 (it has
    forked the daemon), as systemd judges a forking start. WNOWAIT: the session reaps it."""
    from .notify import notify_systemd

    def on_started(pid: int) -> None:
        def wait() -> None:
            try:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is not None and info.si_code == os.CLD_EXITED and info.si_status == 0:
                notify_systemd(systemd_socket, b"READY=1\nSTATUS=capprobe: the daemon forked; profiling")
        threading.Thread(target=wait, name="capprobe-forking-ready", daemon=True).start()
    return on_started


# ---------------------------------------------------------------- finish

@dataclass(frozen=True)
class Outputs:
    profile: Path
    unit: Path
    dropin: Path
    setup: Path
    tmpfiles: Path


def output_paths(out_dir: Path, stem: str, force: bool) -> Outputs:
    if not out_dir.is_dir():
        raise ServiceError(f"{out_dir} is not a directory")
    outputs = Outputs(out_dir / f"{stem}.profile.json", out_dir / f"{stem}.service",
                      out_dir / f"{stem}.hardening.conf", out_dir / f"{stem}.setup.sh",
                      out_dir / f"{stem}.conf")
    if not force:
        for path in (outputs.profile, outputs.unit, outputs.dropin, outputs.setup):
            if path.exists():
                raise ServiceError(f"{path} exists; use --force to replace it")
    return outputs


def load_state(name: str) -> dict:
    try:
        return json.loads((state_dir(name) / "state.json").read_text())
    except FileNotFoundError:
        raise ServiceError(f"{name} is not being profiled (no capprobe service start {name.removesuffix('.service')})") from None
    except (OSError, ValueError) as e:
        raise ServiceError(f"cannot read {state_dir(name) / 'state.json'}: {e}") from None


def collect_profiles(profiles_dir: Path, confined) -> tuple[list[dict], list[str], list[str]]:
    """The profiles the wrapped commands wrote (in the order they ran) whose command the
    hardening confines (CONFINED(kind, index)), their labels, and one line per command left out."""
    from .profile import ProfileError, load_profile
    results = []
    for path in sorted(profiles_dir.glob("*.result.json"), key=lambda p: int(p.name.split("-")[-1].split(".")[0])):
        try:
            results.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    runs: dict[tuple[str, int], int] = {}
    profiles, labels, problems = [], [], []
    for result in results:
        key = (result["kind"], result["index"])
        runs[key] = runs.get(key, 0) + 1
        result["run"] = runs[key]
        if not confined(result["kind"], result["index"]):
            problems.append(f"{profile_label(result)}: runs with full privileges ('+' or PermissionsStartOnly=), "
                            "outside the sandbox: not merged")
            continue
        if "error" in result:
            problems.append(f"{profile_label(result)}: {result['error'].removeprefix('capprobe: ')}")
            continue
        try:
            profiles.append(load_profile(profiles_dir / result["profile"]))
        except ProfileError as e:
            problems.append(f"{profile_label(result)}: {e}")
            continue
        labels.append(profile_label(result))
    return profiles, labels, problems


def _settle(name: str, duration: float, check: str | None) -> tuple[bool, str]:
    """Is the (just restarted) service up for DURATION seconds, and does CHECK pass?"""
    deadline = time.monotonic() + duration
    props: dict[str, str] = {}
    while True:
        props = parse_show(_systemctl("show", name, "-p", "ActiveState,Result,Type,ExecMainCode,ExecMainStatus").stdout)
        if props.get("Type") == "oneshot" or props.get("ActiveState") not in ("active", "activating", "reloading"):
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if props.get("Type") == "oneshot":
        ok = props.get("Result") == "success" and props.get("ExecMainStatus") in ("0", "")
    else:
        ok = props.get("ActiveState") == "active" and props.get("Result") == "success"
    detail = f"{props.get('ActiveState')} (result {props.get('Result')}, status {props.get('ExecMainStatus')})"
    if ok and check:
        c = subprocess.run(check, shell=True, capture_output=True, text=True, timeout=120)
        ok = c.returncode == 0
        detail += f", check exited {c.returncode}"
    return ok, detail


def restore(record: dict, say) -> None:
    """Remove the profiling drop-in; restart (or stop) the unit: capprobe writes the profiles as it stops."""
    name = record["unit"]
    _remove_dropin(record)
    if record.get("was_active"):
        r = _systemctl("restart", name)
        say(f"{name}: profiling stopped, original unit restarted" + ("" if r.returncode == 0 else
                                                                      f" - FAILED: {_first_line(r)}"))
    else:
        _systemctl("stop", name)
        say(f"{name}: profiling stopped (it was not running before `service start`: left stopped)")


def finish(name_text: str, out_dir: Path, force: bool = False, apply: bool = False, check: str | None = None,
           duration: float = 5.0, say=lambda msg: None) -> int:
    """Stop profiling, merge, write the outputs; with APPLY install and prove the hardening."""
    from .merge import merge_profiles
    from .profile import ProfileError, save_profile, write_atomically
    from .render.setup_script import setup_script
    from .render.tmpfiles import tmpfiles_snippet
    from .rules.base import RuleContext, UnitOptions
    from .rules.ownership import ownership_plan
    from .synthesis import synthesize
    _require_systemd()
    name = unit_name(name_text)
    record = load_state(name)
    facts = UnitFacts(**{**record["facts"], "ambient_caps": tuple(record["facts"]["ambient_caps"]),
                         "bounding_caps": tuple(record["facts"]["bounding_caps"])})
    outputs = output_paths(out_dir, facts.stem, force)
    hardening_dest = PERSISTENT_UNITS / f"{name}.d" / HARDENING_DROPIN
    if apply and hardening_dest.exists() and not force:
        raise ServiceError(f"{hardening_dest} exists; use --force to replace it")
    restore(record, say)
    _, cat_now = read_unit(name)
    restored = cat_now == record["cat"]
    state = state_dir(name)
    lines = {(c["kind"], c["index"]): ExecLine(**c) for c in record["commands"]}
    profiles, labels, problems = collect_profiles(
        state / "profiles", lambda kind, index: (kind, index) in lines and sandboxed(lines[kind, index], facts))
    for problem in problems:
        say(f"left out: {problem}")
    if not profiles:
        raise ServiceError(f"no command of {name} was profiled (nothing in {state / 'profiles'}); "
                           "state kept", 1)
    try:
        merged = merge_profiles(profiles, labels)
    except ProfileError as e:
        raise ServiceError(f"{e} (the profiles stay in {state / 'profiles'}; remove {state} to profile again)", 1) from None
    merged["service"] = {"unit": name, "type": facts.type, "user": facts.user or None, "group": facts.group or None,
                         "settings": [[k, v] for k, v in service_sections(record["cat"]) if is_own_key(k)],
                         "commands": labels, "not_profiled": problems}
    options = UnitOptions(name=facts.stem, user=facts.user or "root", group=facts.group or None)
    synthesized = synthesize(merged, options)
    dropin_text = render_hardening_dropin(synthesized.unit_text, facts, str(outputs.profile))
    full_text = render_full_unit(synthesized.unit_text, record["cat"], facts)
    save_profile(merged, outputs.profile, force=force)
    write_atomically(outputs.unit, full_text.encode(), force)
    write_atomically(outputs.dropin, dropin_text.encode(), force)
    write_atomically(outputs.setup, setup_script(merged, options).encode(), force, mode=0o755)
    plan = ownership_plan(RuleContext(merged, options))
    if plan.grants:
        write_atomically(outputs.tmpfiles, tmpfiles_snippet(plan, facts.stem).encode(), force)
    shutil.rmtree(state)
    say(f"{len(profiles)} profile(s) merged ({', '.join(labels)}): {outputs.profile}, {outputs.unit}, "
        f"{outputs.dropin}, {outputs.setup}")
    if synthesized.exposure is not None:
        say(f"exposure (systemd-analyze security): {synthesized.baseline_exposure} -> {synthesized.exposure} "
            f"{synthesized.exposure_label}")
    if not restored:
        say(f"WARNING: systemctl cat {name} differs from before `service start`: the unit changed meanwhile")
    if not apply:
        return 0 if restored else 1
    return apply_hardening(name, facts, dropin_text, full_text, hardening_dest, merged, duration, check, say,
                           record.get("was_active", True))


def apply_hardening(name: str, facts: UnitFacts, dropin_text: str, full_text: str, dest: Path, profile: dict,
                    duration: float, check: str | None, say, was_active: bool) -> int:
    """Install the hardening drop-in, restart, prove it; on failure name the directive and roll back."""
    from .profile import write_atomically
    made_dir = not dest.parent.exists()
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(dest, dropin_text.encode(), force=True)
    _reload()
    restarted = _systemctl("restart", name)
    ok, detail = _settle(name, duration, check)
    if restarted.returncode == 0 and ok:
        say(f"PASS: {name} runs hardened ({dest}): {detail}")
        if not was_active:
            _systemctl("stop", name)
        return 0
    say(f"FAIL: {name} under the hardening: {detail}" + ("" if restarted.returncode == 0 else
                                                          f"; restart: {_first_line(restarted)}"))
    _systemctl("stop", name)
    from .syscall_groups import syscall_groups
    from .verify.tighten import verify_text
    verdict = verify_text(full_text, facts.stem, duration, check, syscall_groups(), profile)
    dest.unlink()
    if made_dir:
        try:
            dest.parent.rmdir()
        except OSError:
            pass
    _reload()
    if was_active:
        _systemctl("restart", name)
    for b in verdict.blames:
        say(f"  caused by {b.directive}{' (' + b.item + ')' if b.item else ''}: {b.evidence}")
    if not verdict.blames:
        say(f"  {verdict.explanation or 'a standalone run of the hardened unit passed: the failure is not one directive'}")
    say(f"rolled back: {dest} removed, {name} restarted as it was")
    return 1
