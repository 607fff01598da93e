#!/usr/bin/env python3
"""Runs INSIDE the guest (nspawn or qemu tier), as root, under the guest's real systemd (PID 1).

For each reference workload, as an operator would on a staging host:
  a. profile it with `python3 -m capprobe run` (inside the guest),
  b. synthesize the unit with `capprobe unit ... --setup`, run the setup script,
     install the unit into /etc/systemd/system, daemon-reload, start it,
  c. check the service works,
  d. check the unit denies: a probe unit is the same unit file with ExecStart=
     replaced by probe.py (Type=oneshot); a control unit runs the same probe with
     only the unit's identity (User=/DynamicUser=) and no hardening. A denial
     counts only if the control was allowed the same thing, so nothing passes
     because the guest refused it anyway,
  e. records `systemd-analyze security` exposure of the installed unit.
Prints one PASS/FAIL line per check, `N passed, N failed`, the exposure table;
writes /mnt/vmtest/results/results.json for the host; exits 0 only if all passed.
"""

import json
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

VT = Path("/mnt/vmtest")
RESULTS = VT / "results"
WORK = Path("/root/vt")                     # profiles, generated units, setup scripts
LIB = Path("/usr/local/lib/vmtest")         # scripts the services run (readable by all)
OPEN_DIR = Path("/var/vt-open")            # world-writable, outside every unit's write paths
SECRET = OPEN_DIR / "secret"               # 0600, owned by uid 4242: DAC probe
HOME_OPEN = Path("/home/vt-open")           # world-writable, under ProtectHome=
TMP_MARKER = Path("/tmp/vt-marker")         # the guest's /tmp, hidden by PrivateTmp=
HIDDEN_MARKER = Path("/var/spool/cron/vt-marker")   # in a capprobe InaccessiblePaths= candidate
PROBE_OUT = Path("/run/vt-probe")
LOCAL_EXTRA = "10.99.0.1"                  # a local address that is not localhost
CAPPROBE = [sys.executable, "-m", "capprobe"]
# The kernel capability probe (tracefs) is off by default in the guest: tracefs is the
# host kernel's, shared with everything on the host, and capprobe's probe does not
# work from inside a pid namespace (README: "tracefs in the guest"). VMTEST_CAP_PROBE=1.
# The qemu tier boots Debian's own kernel with PID 1 in the initial pid namespace: there
# capprobe runs as an operator would run it (no --no-cap-probe, config "auto") and the
# method it chose is checked against what the guest kernel offers.
CAP_PROBE = False
TIER = "nspawn"
CAP_TRACEPOINT = Path("/sys/kernel/tracing/events/capability/cap_capable")
HAS_TRACEPOINT = False
KPROBE_OK = False       # the kernel has kprobes and cap_capable
BPFTRACE = bool(shutil.which("bpftrace"))
HOST_KERNEL = ""
SLOW = 1.0   # qemu tier (software emulation): waits are multiplied by it
EMULATED_DURATION = 120   # qemu tier: --duration is an upper bound, the exerciser ends the run
methods: list[dict] = []
BOOT_OWNERS: dict[str, str] = {}   # the packages' directories as booted, before any generated unit ran
BPF_FRAMEWORK = False   # systemd built with it enforces SocketBindAllow=/Deny=
README_INSTALL = ""     # the README's install line, verbatim (vm-tests/run extracts it)

checks: list[dict] = []
exposures: list[dict] = []
notes: list[str] = []


def say(line: str) -> None:
    print(line, flush=True)


def check(workload: str, name: str, ok: bool, detail: str = "") -> bool:
    checks.append({"workload": workload, "name": name, "ok": bool(ok), "detail": detail})
    say(f"{'PASS' if ok else 'FAIL'} {workload}: {name}" + (f" -- {detail}" if detail else ""))
    return ok


def info(workload: str, text: str) -> None:
    notes.append(f"{workload}: {text}")
    say(f"INFO {workload}: {text}")


def sh(cmd, check_rc=False, timeout=120, **kw) -> subprocess.CompletedProcess:
    if isinstance(cmd, str):
        cmd = ["sh", "-c", cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check_rc and r.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} -> {r.returncode}: {r.stderr.strip()[-800:]}")
    return r


def wait_for(pred, timeout=15.0, step=0.2) -> bool:
    end = time.monotonic() + timeout * SLOW
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def http_get(url: str) -> tuple[str, str]:
    r = sh(["curl", "-s", "-m", "5", "-o", "/dev/stdout", "-w", "\n%{http_code}", url])
    body, _, code = r.stdout.rpartition("\n")
    return code.strip(), body


def dns_answer(port: int, name: str, timeout: float = 2.0) -> tuple[int, list[str]] | None:
    """One A query over UDP to 127.0.0.1:PORT: (rcode, IPv4 answers), or None without a reply."""
    qid = os.getpid() & 0xFFFF
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0\0\1\0\1"
    query = qid.to_bytes(2, "big") + b"\1\0\0\1\0\0\0\0\0\0" + question
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(query, ("127.0.0.1", port))
            reply = s.recv(512)
        except OSError:
            return None
    if len(reply) < 12 or reply[:2] != query[:2]:
        return None
    # answers: skip the echoed question; an A record's data is its last 4 bytes (name compressed)
    answers, offset = [], 12 + len(question)
    for _ in range(int.from_bytes(reply[6:8], "big")):
        offset += 2 if reply[offset] & 0xC0 else reply.index(b"\0", offset) + 1 - offset
        rtype, length = int.from_bytes(reply[offset:offset + 2], "big"), int.from_bytes(reply[offset + 8:offset + 10], "big")
        if rtype == 1 and length == 4:
            answers.append(socket.inet_ntoa(reply[offset + 10:offset + 14]))
        offset += 10 + length
    return reply[3] & 0xF, answers


def owners(paths: list[str]) -> dict[str, str]:
    """user:group mode of each path ('missing' if absent)."""
    import grp
    import pwd
    out = {}
    for path in paths:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            out[path] = "missing"
            continue
        out[path] = f"{pwd.getpwuid(st.st_uid).pw_name}:{grp.getgrgid(st.st_gid).gr_name} {oct(st.st_mode & 0o7777)}"
    return out


# ---------------------------------------------------------------- unit files

def unit_values(text: str, key: str) -> list[str] | None:
    """All words assigned to KEY (assignments accumulate; an empty one resets); None if absent."""
    found, words = False, []
    for line in text.splitlines():
        if line.startswith(key + "="):
            found = True
            value = line[len(key) + 1:]
            words = [] if value == "" else words + shlex.split(value)
    return words if found else None


def probe_unit(unit_text: str, probe_cmd: str, out: Path) -> str:
    """The unit's own sandbox, with the probe as its only (oneshot) process."""
    drop = {"ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost",
            "Type", "Restart", "RestartSec", "PIDFile", "NotifyAccess", "WatchdogSec",
            "RemainAfterExit", "StandardOutput", "StandardError", "TimeoutStartSec", "TimeoutStopSec",
            "KillMode", "KillSignal", "SuccessExitStatus"}
    lines, section = [], None
    for line in unit_text.splitlines():
        if line.startswith("["):
            section = line
            if section == "[Install]":
                break
        elif "=" in line and not line.startswith("#") and line.split("=", 1)[0] in drop:
            continue
        lines.append(line)
        if line == "[Service]":
            lines += ["Type=oneshot", f"ExecStart={probe_cmd}", f"StandardOutput=truncate:{out}",
                      "StandardError=journal", "TimeoutStartSec=60"]
    return "\n".join(lines) + "\n"


def control_unit(unit_text: str, probe_cmd: str, out: Path) -> str:
    """Only the identity of the unit (who runs it), no hardening at all."""
    keep = {"User", "Group", "SupplementaryGroups"}
    ident = [line for line in unit_text.splitlines()
             if "=" in line and not line.startswith("#") and line.split("=", 1)[0] in keep]
    if unit_values(unit_text, "DynamicUser") == ["yes"]:
        # DynamicUser= implies ProtectSystem=strict and more: the control is a plain
        # unprivileged user instead, which is what a dynamic user is without its sandbox
        ident = ["User=nobody", "Group=nogroup"]
    return "\n".join(["[Unit]", "Description=vm-tests control probe", "", "[Service]", "Type=oneshot",
                      *ident, f"ExecStart={probe_cmd}", f"StandardOutput=truncate:{out}",
                      "StandardError=journal", "TimeoutStartSec=60", ""])


PROBE_SOURCE = r'''
import errno, json, os, socket, sys
spec = json.load(open(sys.argv[1]))
res = {"uid": os.getuid()}
def attempt(name, fn):
    try:
        fn()
        res[name] = "OK"
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
    except Exception as e:
        res[name] = "EXC:" + type(e).__name__ + ":" + str(e)
def create_in(d):
    def create():
        p = os.path.join(d, "vt-probe-%d" % os.getpid())
        os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        os.unlink(p)
    return create
attempt("write", create_in(spec["open_dir"]))
attempt("run_top", create_in("/run"))
attempt("run_systemd", create_in("/run/systemd"))
attempt("home", create_in(spec["home_dir"]))
attempt("tmp", lambda: os.stat(spec["tmp_marker"]))
attempt("inaccessible", lambda: os.stat(spec["hidden_marker"]))
def open_for_write(path):
    os.close(os.open(path, os.O_WRONLY))   # nothing is written: the open is what a read-only mount refuses
attempt("tunables", lambda: open_for_write("/proc/sys/kernel/domainname"))
def cgroup():
    own = open("/proc/self/cgroup").read().strip().split("::", 1)[-1]
    open_for_write("/sys/fs/cgroup" + own + "/cgroup.procs")
attempt("cgroups", cgroup)
import ctypes, mmap
libc = ctypes.CDLL(None, use_errno=True)
def libc_call(fn, *args):
    if fn(*args) == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
attempt("clock", lambda: libc_call(libc.adjtimex, ctypes.create_string_buffer(512)))  # modes 0: only reads
attempt("resources", lambda: os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0)))  # unchanged
attempt("namespace", lambda: libc_call(libc.unshare, 0x04000000))   # CLONE_NEWUTS: this process only
attempt("proc", lambda: os.stat("/proc/1"))
attempt("wx", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close())
def fam():
    f = getattr(socket, spec["family"])
    kind = {"AF_NETLINK": socket.SOCK_RAW, "AF_PACKET": socket.SOCK_RAW}.get(spec["family"], socket.SOCK_DGRAM)
    socket.socket(f, kind, 0).close()
attempt("family", fam)
def raw():
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
attempt("cap_net_raw", raw)
def dac():
    open(spec["secret"]).close()
attempt("cap_dac", dac)
def tun():
    os.close(os.open("/dev/net/tun", os.O_RDWR))
attempt("device", tun)
def bind():
    fam = socket.AF_INET6 if spec.get("bind_family") == "AF_INET6" else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::1" if fam == socket.AF_INET6 else "127.0.0.1", spec["port"]))
    finally:
        s.close()
attempt("bind", bind)
def ipdeny():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", (spec["ip"], 9))
    finally:
        s.close()
attempt("ipdeny", ipdeny)
for line in open("/proc/self/status"):
    if line.startswith(("CapEff", "CapBnd", "CapAmb", "CapPrm")):
        k, v = line.split(":")
        res[k] = int(v.strip(), 16)
print(json.dumps(res))
'''

CAP_NUMBERS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_FSETID": 4,
    "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15, "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19, "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23, "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27, "CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31, "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35, "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40,
}


def cap_names(mask: int) -> list[str]:
    return sorted(n for n, b in CAP_NUMBERS.items() if mask >> b & 1)


def run_probe_unit(name: str, text: str, out: Path) -> dict | None:
    path = Path("/etc/systemd/system") / f"{name}.service"
    path.write_text(text)
    sh(["systemctl", "daemon-reload"])
    out.unlink(missing_ok=True)
    r = sh(["systemctl", "start", f"{name}.service"], timeout=90)
    try:
        return json.loads(out.read_text())
    except (OSError, ValueError):
        j = sh(["journalctl", "-q", "--no-pager", "-n", "20", "-u", f"{name}.service"]).stdout
        say(f"  probe unit {name} gave no result (systemctl start rc={r.returncode}: {r.stderr.strip()})\n{j}")
        return None
    finally:
        sh(["systemctl", "reset-failed", f"{name}.service"])


def deny_checks(wl: str, unit_name: str, unit_text: str) -> None:
    """Run the probe inside the unit's sandbox and under a control unit; compare."""
    families = unit_values(unit_text, "RestrictAddressFamilies")
    listed = set(families or [])
    runs_as_root = not (unit_values(unit_text, "User") or unit_values(unit_text, "DynamicUser") == ["yes"])
    candidates = ["AF_UNIX", "AF_NETLINK", "AF_INET6", "AF_INET"] + (["AF_PACKET"] if runs_as_root else [])
    if families == ["none"]:
        listed = set()
    unlisted = next((f for f in candidates if f not in listed), "AF_UNIX")
    allow_bind = unit_values(unit_text, "SocketBindAllow")
    allowed_ports = set()
    for item in allow_bind or []:
        m = re.search(r"(\d+)(?:-(\d+))?$", item)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            allowed_ports.update(range(lo, hi + 1))
    port = next(p for p in range(18081, 18200) if p not in allowed_ports)
    bind_family = "AF_INET" if (not families or "AF_INET" in listed) else "AF_INET6"
    spec = {"open_dir": str(OPEN_DIR), "family": unlisted, "secret": str(SECRET), "port": port,
            "bind_family": bind_family, "ip": LOCAL_EXTRA, "home_dir": str(HOME_OPEN),
            "tmp_marker": str(TMP_MARKER), "hidden_marker": str(HIDDEN_MARKER)}
    spec_path = LIB / f"probe-{wl}.json"
    spec_path.write_text(json.dumps(spec))
    cmd = f"/usr/bin/python3 {LIB}/probe.py {spec_path}"
    PROBE_OUT.mkdir(exist_ok=True)
    sandbox = run_probe_unit(f"{unit_name}-probe", probe_unit(unit_text, cmd, PROBE_OUT / f"{wl}-sandbox.json"),
                             PROBE_OUT / f"{wl}-sandbox.json")
    control = run_probe_unit(f"{unit_name}-control", control_unit(unit_text, cmd, PROBE_OUT / f"{wl}-control.json"),
                             PROBE_OUT / f"{wl}-control.json")
    if sandbox is None or control is None:
        check(wl, "deny probes ran", False, "probe or control unit produced no result (see above)")
        return
    say(f"  probe sandbox={json.dumps(sandbox, sort_keys=True)}")
    say(f"  probe control={json.dumps(control, sort_keys=True)}")

    def denial(key: str, what: str, expect: set[str], applies: bool = True, why_na: str = "") -> None:
        if not applies:
            info(wl, f"deny {what}: not applicable ({why_na})")
            return
        if control.get(key) != "OK":
            info(wl, f"deny {what}: not tested, the control (no hardening) is refused too: {control.get(key)}")
            return
        got = sandbox.get(key)
        check(wl, f"denies {what}", got in expect,
              f"sandbox {got} (expected {'/'.join(sorted(expect))}), control OK")

    denial("write", f"write outside its write paths ({OPEN_DIR}/, mode 1777)", {"EROFS"})
    # /run: ProtectSystem=strict with ProtectKernelTunables= and kin leaves it writable on systemd 252
    # unless the unit lists it read-only (issue 14)
    writable = unit_values(unit_text, "ReadWritePaths") or []
    denial("run_top", "creating a file at /run's top level", {"EROFS"},
           not {"/run", "/"} & set(writable), f"the unit opens it: ReadWritePaths={' '.join(writable)}")
    denial("run_systemd", "creating a file in /run/systemd", {"EROFS"},
           not {"/run/systemd", "/"} & set(writable), f"the unit opens it: ReadWritePaths={' '.join(writable)}")
    protect_home = (unit_values(unit_text, "ProtectHome") or ["no"])[0]
    denial("home", f"creating a file in {HOME_OPEN}/ (ProtectHome={protect_home})",
           {"EROFS"} if protect_home == "read-only" else {"ENOENT", "EACCES", "EROFS"},
           protect_home != "no", "ProtectHome= is no")
    denial("tmp", f"seeing the system's {TMP_MARKER} (PrivateTmp=yes)", {"ENOENT"},
           unit_values(unit_text, "PrivateTmp") == ["yes"], "PrivateTmp is not yes")
    hidden = unit_values(unit_text, "InaccessiblePaths") or []
    denial("inaccessible", f"reaching {HIDDEN_MARKER} (InaccessiblePaths={' '.join(hidden)})", {"EACCES", "ENOENT"},
           f"-{HIDDEN_MARKER.parent}" in hidden or str(HIDDEN_MARKER.parent) in hidden,
           f"{HIDDEN_MARKER.parent} is not in InaccessiblePaths=")
    proc_subset = unit_values(unit_text, "ProcSubset") == ["pid"]   # then /proc/sys is not there at all
    denial("tunables", "opening /proc/sys/kernel/domainname for writing (ProtectKernelTunables=yes"
           + (", ProcSubset=pid)" if proc_subset else ")"), {"EROFS", "ENOENT"} if proc_subset else {"EROFS"},
           unit_values(unit_text, "ProtectKernelTunables") == ["yes"], "ProtectKernelTunables is not yes")
    denial("cgroups", "opening its own cgroup.procs for writing (ProtectControlGroups=yes)", {"EROFS"},
           unit_values(unit_text, "ProtectControlGroups") == ["yes"], "ProtectControlGroups is not yes")
    syscall_filter = unit_values(unit_text, "SystemCallFilter") or []
    denial("clock", "adjtimex() reading the clock (SystemCallFilter=~@clock)", {"EPERM"},
           "~@clock" in syscall_filter, "@clock is not denied")
    denial("resources", "setpriority() to its own priority (SystemCallFilter=~@resources)", {"EPERM"},
           "~@resources" in syscall_filter, "@resources is not denied")
    denial("namespace", "unshare(CLONE_NEWUTS) (RestrictNamespaces=yes)", {"EPERM"},
           unit_values(unit_text, "RestrictNamespaces") == ["yes"], "RestrictNamespaces is not yes")
    denial("wx", "a writable and executable mapping (MemoryDenyWriteExecute=yes)", {"EPERM", "EACCES"},
           unit_values(unit_text, "MemoryDenyWriteExecute") == ["yes"], "MemoryDenyWriteExecute is not yes")
    denial("proc", "seeing PID 1 in /proc (ProtectProc=invisible)", {"ENOENT"},
           unit_values(unit_text, "ProtectProc") == ["invisible"] and not runs_as_root,
           "not invisible, or the unit runs as root, which sees root's processes")
    denial("family", f"socket({unlisted}) (RestrictAddressFamilies={' '.join(families or ['<absent>'])})",
           {"EAFNOSUPPORT"})
    # capabilities: the sandbox's bounding set is exactly what the unit grants
    granted = unit_values(unit_text, "CapabilityBoundingSet")
    if granted is None:
        check(wl, "drops capabilities", False, "no CapabilityBoundingSet= in the unit")
    else:
        want = sorted(c for c in granted if c.startswith("CAP_"))
        got = cap_names(sandbox.get("CapBnd", 0))
        check(wl, "bounding set is the unit's", got == want, f"CapBnd {' '.join(got) or '(empty)'}; "
              f"unit {' '.join(want) or '(empty)'}; CapEff {' '.join(cap_names(sandbox.get('CapEff', 0))) or '(empty)'}")
        # and one dropped capability refused in action (root units: the control holds them all)
        if "CAP_NET_RAW" not in want and (not families or "AF_INET" in listed):
            denial("cap_net_raw", "a raw socket (CAP_NET_RAW dropped)", {"EPERM"})
        elif not ({"CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH"} & set(want)):
            denial("cap_dac", "reading another user's 0600 file (CAP_DAC_OVERRIDE dropped)", {"EACCES"})
        else:
            info(wl, "no dropped capability with a harmless action probe")
    private_devices = unit_values(unit_text, "PrivateDevices") == ["yes"]
    denial("device", "opening /dev/net/tun (PrivateDevices=yes)", {"ENOENT"}, private_devices,
           "PrivateDevices is not yes")
    if allow_bind is not None and not BPF_FRAMEWORK:
        info(wl, f"deny binding an unlisted port: not enforceable here, this systemd is built without "
             f"BPF_FRAMEWORK, so SocketBindAllow={' '.join(allow_bind)} is ignored "
             f"(sandbox bind {sandbox.get('bind')})")
    else:
        denial("bind", f"binding an unlisted port {port} (SocketBindAllow={' '.join(allow_bind or [])})",
               {"EPERM", "EACCES"}, allow_bind is not None, "no SocketBindAllow=")
    ipdeny = unit_values(unit_text, "IPAddressDeny")
    denial("ipdeny", f"sending to {LOCAL_EXTRA} (IPAddressAllow={' '.join(unit_values(unit_text, 'IPAddressAllow') or [])}"
           f" IPAddressDeny={' '.join(ipdeny or [])})", {"EPERM"},
           bool(ipdeny) and (not families or "AF_INET" in listed), "no IPAddressDeny= (or no AF_INET)")
    for name in (f"{unit_name}-probe", f"{unit_name}-control"):
        (Path("/etc/systemd/system") / f"{name}.service").unlink(missing_ok=True)


# ---------------------------------------------------------------- the pipeline

def accounts() -> dict[str, set[str]]:
    return {kind: {line.split(":", 1)[0] for line in Path(f"/etc/{kind}").read_text().splitlines() if line}
            for kind in ("passwd", "group")}


class Workload:
    name = ""
    unit = ""
    identity: list[str] = []      # options for `capprobe unit`: --user X / --dynamic-user
    run_user: str | None = None   # `capprobe run --user`
    duration: float | None = None
    run_options: list[str] = []   # more `capprobe run` options (e.g. --exercise)
    nspawn_only = ""              # why the qemu tier skips it (INFO line)
    package_paths: list[str] = []  # the package's own directories: the generated unit must not re-own them

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None: ...
    def exercise(self) -> bool | None: ...   # while being profiled; True: did all it does
    def between(self) -> None: ...           # after profiling, before the unit starts
    def works(self) -> None: ...             # checks on the running (or finished) unit
    def finish(self) -> None: ...

    def profile(self) -> dict | None:
        d = WORK / self.name
        d.mkdir(parents=True, exist_ok=True)
        prof = d / f"{self.name}.profile.json"
        cmd = [*CAPPROBE, "run", "--force", "-o", str(prof), "--unit", self.unit]
        if self.run_user:
            cmd += ["--user", self.run_user]
        if not CAP_PROBE:
            cmd += ["--no-cap-probe"]
        if self.duration:
            # under emulation strace slows Python startup ~7x (pyroute2's import alone: 17 s):
            # the duration is only an upper bound there and the run ends once exercised
            duration = self.duration if SLOW == 1 else EMULATED_DURATION
            cmd += ["--duration", f"{duration:g}", "--grace", "3"]
        cmd += [*self.run_options, "--", *self.command()]
        say(f"  $ {shlex.join(cmd)}")
        t0 = time.monotonic()
        log = open(d / "capprobe-run.log", "w")
        p = self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=d)
        try:
            done = self.exercise()
            if done and SLOW != 1 and self.duration and p.poll() is None:
                time.sleep(1)
                p.terminate()   # capprobe passes SIGTERM on to the target, as --duration does
                say(f"  (exercised after {time.monotonic() - t0:.1f} s: SIGTERM to capprobe)")
        except Exception as e:  # the exerciser only makes the profile richer
            info(self.name, f"exercise during profiling failed: {e}")
        try:
            rc = p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        log.close()
        text = (d / "capprobe-run.log").read_text()
        for line in text.splitlines():
            say(f"  | {line}")
        ok = prof.exists() and (d / f"{self.unit}.service").exists()
        check(self.name, "capprobe run wrote profile and unit", ok,
              f"exit {rc} in {time.monotonic() - t0:.1f} s")
        if not ok:
            return None
        data = json.loads(prof.read_text())
        caps = data.get("capabilities", {})
        method = caps.get("method")
        why = caps.get("why_no_kernel_probe") or caps.get("why") or ""
        if method in ("tracefs", "bpftrace"):
            why = f"{caps.get('checks', '?')} kernel checks seen, {caps.get('lost_events', '?')} lost"
        info(self.name, f"capabilities {method}{' (' + why + ')' if why else ''}: "
             f"{' '.join(caps.get('required', [])) or 'none'}")
        methods.append({"workload": self.name, "method": method, "why": why,
                        "required": caps.get("required", [])})
        if TIER == "qemu":
            # the guest's own kernel: capprobe must use the tracepoint when the kernel has it,
            # else bpftrace's kprobe on cap_capable when bpftrace is installed, else infer and
            # say why
            expect = "tracefs" if HAS_TRACEPOINT else "bpftrace" if (BPFTRACE and KPROBE_OK) else "inferred"
            if expect == "inferred":
                ok = method == "inferred" and "cap_capable" in (caps.get("why_no_kernel_probe") or "")
            else:
                ok = method == expect and caps.get("lost_events", 0) == 0
            check(self.name, f"capprobe's capability method is {expect} on this kernel", ok,
                  f"method {method}: {why}")
        return data

    def install(self, prof_path: Path) -> str | None:
        d = WORK / self.name
        dest = Path("/etc/systemd/system") / f"{self.unit}.service"
        setup = d / "setup.sh"
        cmd = [*CAPPROBE, "unit", str(prof_path), *self.identity, "--name", self.unit, "-o", str(dest),
               "--setup", str(setup), "--force"]
        r = sh(cmd)
        for line in (r.stdout + r.stderr).splitlines():
            say(f"  | {line}")
        if not check(self.name, "capprobe unit --setup", r.returncode == 0 and dest.exists() and setup.exists(),
                     f"exit {r.returncode}"):
            return None
        before = accounts()
        r = sh(["sh", str(setup)])
        if not check(self.name, "setup script runs", r.returncode == 0, (r.stdout + r.stderr).strip()[-300:]):
            return None
        text = dest.read_text()
        named = {"passwd": set(unit_values(text, "User") or []), "group": set(unit_values(text, "Group") or [])}
        added = {kind: sorted(names - before[kind]) for kind, names in accounts().items()}
        stray = [f"{kind} {n}" for kind, names in added.items() for n in names if n not in named[kind]]
        check(self.name, "setup script adds only the unit's own user/group", not stray,
              f"added {', '.join(stray)}; the unit has User={' '.join(named['passwd'])} "
              f"Group={' '.join(named['group'])}" if stray
              else f"added {', '.join(f'{k} {n}' for k, ns in added.items() for n in ns) or 'nothing'}")
        shutil.copy2(dest, RESULTS / f"{self.unit}.service")
        shutil.copy2(setup, RESULTS / f"{self.unit}.setup.sh")
        shutil.copy2(prof_path, RESULTS / f"{self.unit}.profile.json")
        sh(["systemctl", "daemon-reload"])
        return dest.read_text()

    def start(self) -> bool:
        r = sh(["systemctl", "start", f"{self.unit}.service"], timeout=90)
        return check(self.name, f"systemctl start {self.unit}", r.returncode == 0, r.stderr.strip()[-300:])

    def oneshot_succeeded(self, what: str, timeout: float) -> bool:
        """Wait for a oneshot unit to finish; check it ended with success and status 0."""
        wait_for(lambda: sh(["systemctl", "is-active", f"{self.unit}.service"]).stdout.strip()
                 not in ("active", "activating", "deactivating"), timeout)
        r = sh(["systemctl", "show", "-p", "Result,ExecMainStatus", f"{self.unit}.service"])
        props = dict(line.split("=", 1) for line in r.stdout.split())
        ok = props.get("Result") == "success" and props.get("ExecMainStatus") == "0"
        if not check(self.name, what, ok,
                     f"Result={props.get('Result')} ExecMainStatus={props.get('ExecMainStatus')}"):
            say(self.journal())
        return ok

    def answers(self) -> tuple[bool, str]:   # daemons with a lifecycle check: does it answer now?
        raise NotImplementedError

    def lifecycle(self, record=check) -> bool:
        """Issue 9: the generated unit of a daemon answers, survives a reload, stops cleanly."""
        unit = f"{self.unit}.service"
        ok, detail = False, ""
        if wait_for(lambda: self.answers()[0], 10):
            ok, detail = True, self.answers()[1]
        else:
            detail = self.answers()[1]
        if not record(self.name, "answers under the unit", ok, detail):
            say(self.journal())
            return False   # reload and stop are checked on a unit that came up
        text = (Path("/etc/systemd/system") / unit).read_text()
        reload = unit_values(text, "ExecReload")
        record(self.name, "the unit has ExecReload= (from the profiled --exercise reload)", bool(reload),
              " ".join(reload or ["absent"]))
        pid = sh(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout.strip()
        r = sh(["systemctl", "reload", unit], timeout=60)
        time.sleep(1 * SLOW)
        state = sh(["systemctl", "is-active", unit]).stdout.strip()
        pid_after = sh(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout.strip()
        ok = wait_for(lambda: self.answers()[0], 10)
        if not record(self.name, "survives systemctl reload (still active, same main pid, answering)",
                     r.returncode == 0 and state == "active" and pid == pid_after and ok,
                     f"reload exit {r.returncode} {r.stderr.strip()[-200:]}; {state}; MainPID {pid} -> {pid_after}; "
                     f"{self.answers()[1]}"):
            say(self.journal())
        r = sh(["systemctl", "stop", unit], timeout=90)
        props = dict(line.split("=", 1) for line in
                     sh(["systemctl", "show", "-p", "Result,ActiveState,ExecMainStatus", unit]).stdout.split())
        if not record(self.name, "systemctl stop ends it cleanly (Result=success, inactive)",
                      r.returncode == 0 and props.get("Result") == "success" and props.get("ActiveState") == "inactive",
                      " ".join(f"{k}={v}" for k, v in sorted(props.items()))):
            say(self.journal())
        return True

    def package_unit_still_works(self, service: str) -> None:
        """Issue 9: the generated units re-owned nothing of the package's; the package's unit still works."""
        paths = self.package_paths
        before, after = {p: BOOT_OWNERS[p] for p in paths}, owners(paths)
        check(self.name, f"owners as booted, after the generated units ran ({', '.join(paths)})", after == before,
              "; ".join(f"{p} {before[p]}" + (f" -> {after[p]}" if after[p] != before[p] else "") for p in paths))
        r = sh(["systemctl", "start", service], timeout=90)
        ok = r.returncode == 0 and wait_for(lambda: self.answers()[0], 10)
        if not check(self.name, f"the package's own {service} starts and answers afterwards", ok,
                     f"start exit {r.returncode} {r.stderr.strip()[-200:]}; {self.answers()[1]}"):
            say(sh(["journalctl", "-q", "--no-pager", "-n", "25", "-o", "cat", "-u", service]).stdout)
        sh(["systemctl", "stop", service], timeout=90)

    def journal(self) -> str:
        return sh(["journalctl", "-q", "--no-pager", "-n", "25", "-o", "cat", "-u", f"{self.unit}.service"]).stdout

    def exposure(self) -> None:
        r = sh(["systemd-analyze", "security", "--no-pager", f"{self.unit}.service"])
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", r.stdout + r.stderr)
        value = f"{m.group(1)} {m.group(2)}" if m else "?"
        exposures.append({"workload": self.name, "unit": f"{self.unit}.service", "exposure": value})
        check(self.name, "systemd-analyze security scored the installed unit", m is not None, value)

    def run(self) -> None:
        say(f"=== {self.name}")
        if TIER == "qemu" and self.nspawn_only:
            info(self.name, f"nspawn tier only: {self.nspawn_only}")
            return
        t0 = time.monotonic()
        try:
            self.prepare()
            data = self.profile()
            if data is None:
                return
            self.between()
            text = self.install(WORK / self.name / f"{self.name}.profile.json")
            if text is None:
                return
            if self.start():
                self.works()
            else:
                say(self.journal())
            deny_checks(self.name, self.unit, text)
            self.exposure()
        except Exception as e:
            check(self.name, "ran to the end", False, f"{type(e).__name__}: {e}")
            traceback.print_exc(file=sys.stdout)
        finally:
            sh(["systemctl", "stop", f"{self.unit}.service"])
            try:
                self.finish()
            except Exception as e:
                info(self.name, f"clean-up: {e}")
            say(f"  ({self.name}: {time.monotonic() - t0:.1f} s)")


UNTIMED = "not yet run under emulation (added with issues 9 and 13; its waits are not measured under TCG)"


RELOAD = ["--exercise", "kill -HUP $MAINPID"]   # a reload while profiled: the unit gets ExecReload=


class Nginx(Workload):
    name, unit, duration = "nginx", "vt-nginx", 5

    def command(self):
        return ["/usr/sbin/nginx", "-g", "daemon off;"]

    def exercise(self):
        if wait_for(lambda: port_open(80) or self.proc.poll() is not None, 10) and self.proc.poll() is None:
            for _ in range(3):
                http_get("http://127.0.0.1/")
            return True

    def answers(self):
        code, _ = http_get("http://127.0.0.1/")
        return code == "200", f"HTTP {code}"

    def works(self):
        wait_for(lambda: port_open(80), 10)
        ok, detail = self.answers()
        if not check(self.name, "serves HTTP 200 under the unit", ok, detail):
            say(self.journal())


class NginxReload(Nginx):
    """Issue 9: nginx profiled with a reload (its master stays root, workers drop to www-data);
    the unit answers, survives a reload, stops cleanly; the package's nginx.service still works."""
    nspawn_only = UNTIMED
    name, unit = "nginx-reload", "vt-nginx-reload"
    run_options = RELOAD
    package_paths = ["/var/lib/nginx", "/var/log/nginx", "/run"]

    def works(self):
        self.lifecycle()
        self.package_unit_still_works("nginx.service")


class Dnsmasq(Workload):
    """dnsmasq: starts as root, drops to dnsmasq, writes its pid file in /run/dnsmasq (dnsmasq's,
    from the package's tmpfiles.d); answers DNS on 127.0.0.1:5354 from a local record."""
    nspawn_only = UNTIMED
    name, unit, duration = "dnsmasq", "vt-dnsmasq", 5
    run_options = RELOAD
    port, record, address = 5354, "vt.test", "192.0.2.1"
    package_paths = ["/run/dnsmasq", "/var/lib/misc"]

    def prepare(self):
        # the package's unit (below) answers the same record on port 53
        Path("/etc/dnsmasq.d/vt.conf").write_text(
            f"listen-address=127.0.0.1\nbind-interfaces\nno-resolv\naddress=/{self.record}/{self.address}\n")

    def command(self):
        return ["/usr/sbin/dnsmasq", "-k", "--conf-file=/dev/null", f"--port={self.port}",
                "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                f"--address=/{self.record}/{self.address}", "--pid-file=/run/dnsmasq/dnsmasq.pid", "--user=dnsmasq"]

    def exercise(self):
        if wait_for(lambda: self.answers(self.port)[0] or self.proc.poll() is not None, 10):
            time.sleep(1 * SLOW)   # capprobe's --exercise reload comes 1 s after the start
            return self.proc.poll() is None

    def between(self):
        # the generated unit's setup script must make the pid directory itself (its tmpfiles.d line)
        shutil.rmtree("/run/dnsmasq")

    def answers(self, port: int | None = None):
        reply = dns_answer(port or self.port, self.record)
        return (reply is not None and reply[1] == [self.address],
                f"{self.record} -> {reply[1] if reply else 'no reply'} on port {port or self.port}")

    def works(self):
        pidfile = Path("/run/dnsmasq/dnsmasq.pid")
        wait_for(lambda: self.answers()[0] and pidfile.exists(), 10)
        pid = sh(["systemctl", "show", "-p", "MainPID", "--value", f"{self.unit}.service"]).stdout.strip()
        written = pidfile.read_text().strip() if pidfile.exists() else "missing"
        check(self.name, "wrote its pid file as dnsmasq under the unit",
              written == pid and owners([str(pidfile)])[str(pidfile)].startswith("dnsmasq:"),
              f"{pidfile}: {written} ({owners([str(pidfile)])[str(pidfile)]}), MainPID {pid}")
        if not self.lifecycle() and "pidfile" in self.journal() and "Permission denied" in self.journal():
            self.diagnose_dac_override()
        self.package_unit_still_works("dnsmasq.service")

    def diagnose_dac_override(self):
        """Diagnostic only (never counted): root creates the pid file in dnsmasq's 0755 directory
        before it drops, which needs CAP_DAC_OVERRIDE; the kernel probe records it, the inferred
        profile of this tier does not. And ExecReload='s kill runs as root in the same bounding set,
        while the main process is dnsmasq's: signalling another uid needs CAP_KILL (the --exercise
        reload ran outside the sandbox). With both added, does everything else hold?"""
        dropin = Path("/etc/systemd/system") / f"{self.unit}.service.d" / "vt-diagnostic.conf"
        dropin.parent.mkdir(exist_ok=True)
        dropin.write_text("[Service]\nCapabilityBoundingSet=CAP_DAC_OVERRIDE CAP_KILL\n")   # adds to the unit's set
        try:
            sh(["systemctl", "daemon-reload"])
            sh(["systemctl", "reset-failed", f"{self.unit}.service"])
            sh(["systemctl", "start", f"{self.unit}.service"], timeout=90)
            self.lifecycle(lambda wl, name, good, detail="": info(
                wl, f"[diagnostic, unit + CAP_DAC_OVERRIDE CAP_KILL] {'ok' if good else 'NOT ok'}: {name} -- {detail}") or good)
        finally:
            shutil.rmtree(dropin.parent)
            sh(["systemctl", "daemon-reload"])

    def package_unit_still_works(self, service):
        self.port_saved, self.port = self.port, 53
        try:
            super().package_unit_still_works(service)
        finally:
            self.port = self.port_saved

    def finish(self):
        Path("/etc/dnsmasq.d/vt.conf").unlink(missing_ok=True)


class Caddy(Workload):
    name, unit, duration, run_user = "caddy", "vt-caddy", 5, "caddy"
    identity = ["--user", "caddy"]

    def prepare(self):
        Path("/etc/caddy/Caddyfile").write_text(':80 {\n\trespond "ok"\n}\n')

    def command(self):
        return ["/usr/bin/caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]

    def exercise(self):
        if wait_for(lambda: port_open(80) or self.proc.poll() is not None, 10) and self.proc.poll() is None:
            for _ in range(3):
                http_get("http://127.0.0.1/")
            return True

    def works(self):
        wait_for(lambda: port_open(80), 10)
        code, body = http_get("http://127.0.0.1/")
        if not check(self.name, "answers HTTP 200 \"ok\" under the unit", code == "200" and body == "ok",
                     f"HTTP {code} {body[:40]!r}"):
            say(self.journal())


DNESS_SCRIPT = '''#!/usr/bin/python3
"""dness-like: read a config, look up the current address over HTTP, report (oneshot)."""
import configparser, sys, urllib.request
cfg = configparser.ConfigParser()
with open(sys.argv[1]) as f:
    cfg.read_file(f)
url = cfg["dness"]["ip_url"]
with urllib.request.urlopen(url, timeout=5) as r:
    ip = r.read().decode().strip()
print(f"dness-like: {cfg['dness']['domain']} -> {ip}: up to date")
'''


class Dness(Workload):
    name, unit, run_user = "dness", "vt-dness", "nobody"
    identity = ["--dynamic-user"]
    server = None

    def prepare(self):
        (LIB / "dness-like").write_text(DNESS_SCRIPT)
        os.chmod(LIB / "dness-like", 0o755)
        Path("/etc/dness-like.conf").write_text(
            "[dness]\nip_url = http://127.0.0.1:8053/ip\ndomain = home.example.org\n")
        www = Path("/srv/dness-www")
        www.mkdir(parents=True, exist_ok=True)
        (www / "ip").write_text("203.0.113.7\n")
        self.log = open("/root/vt/http-server.log", "w")
        self.server = subprocess.Popen([sys.executable, "-m", "http.server", "8053", "--bind", "127.0.0.1",
                                        "--directory", str(www)], stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_for(lambda: port_open(8053), 10):
            raise RuntimeError("local http.server did not come up")

    def command(self):
        return [str(LIB / "dness-like"), "/etc/dness-like.conf"]

    def gets(self) -> int:
        self.log.flush()
        return Path("/root/vt/http-server.log").read_text().count('"GET /ip ')

    def start(self):
        self.before = self.gets()
        return super().start()

    def works(self):
        self.oneshot_succeeded("oneshot succeeded under the unit", timeout=30)
        got = self.gets() - self.before
        check(self.name, "it fetched its address from the local server", got >= 1, f"{got} GET /ip")

    def finish(self):
        if self.server:
            self.server.terminate()
            self.server.wait()


class Restic(Workload):
    name, unit, run_user = "restic", "vt-restic", "nobody"
    identity = ["--user", "nobody"]
    base = ["/usr/bin/restic", "-r", "/var/lib/vt-restic/repo", "--password-file", "/etc/vt-restic.pass",
            "--cache-dir", "/var/lib/vt-restic/cache"]

    def prepare(self):
        data = Path("/srv/vt-data")
        (data / "sub").mkdir(parents=True, exist_ok=True)
        for i in range(5):
            (data / f"file{i}.txt").write_text(f"payload {i}\n" * 100)
        (data / "sub" / "deep.bin").write_bytes(os.urandom(200_000))
        Path("/var/lib/vt-restic").mkdir(parents=True, exist_ok=True)
        shutil.chown("/var/lib/vt-restic", "nobody", "nogroup")
        pw = Path("/etc/vt-restic.pass")
        pw.write_text("correct horse battery staple\n")
        shutil.chown(pw, "nobody", "nogroup")
        os.chmod(pw, 0o400)
        sh(["runuser", "-u", "nobody", "--", *self.base, "init"], check_rc=True)

    def command(self):
        return [*self.base, "backup", "/srv/vt-data"]

    def snapshots(self) -> int:
        r = sh(["runuser", "-u", "nobody", "--", *self.base, "snapshots", "--json"])
        try:
            return len(json.loads(r.stdout) or [])
        except ValueError:
            return -1

    def between(self):
        # new data, so the unit's backup writes new pack files, not only a snapshot
        (Path("/srv/vt-data") / "new.bin").write_bytes(os.urandom(300_000))
        self.before = self.snapshots()

    def works(self):
        self.oneshot_succeeded("backup succeeded under the unit", timeout=60)
        after = self.snapshots()
        check(self.name, "a new snapshot is listed", after == self.before + 1,
              f"snapshots {self.before} -> {after}")


class ResticRestore(Workload):
    """restic restore as nobody of files owned by someone else: ownership and modes come back."""
    name, unit, run_user = "restic-restore", "vt-restic-restore", "nobody"
    identity = ["--user", "nobody"]
    repo = "/var/lib/vt-restore/repo"
    target = Path("/srv/vt-restore")
    base = ["/usr/bin/restic", "-r", repo, "--password-file", "/etc/vt-restic.pass",
            "--cache-dir", "/var/lib/vt-restore/cache"]

    def prepare(self):
        owned = Path("/srv/vt-owned")
        owned.mkdir(parents=True, exist_ok=True)
        for name, mode in (("config", 0o640), ("notes", 0o644)):
            f = owned / name
            f.write_text(f"{name}\n" * 50)
            os.chown(f, 4242, 4242)
            os.chmod(f, mode)
        os.chmod(owned / "config", 0o644)  # readable by nobody for the backup; 0640 comes back below
        Path("/var/lib/vt-restore").mkdir(parents=True, exist_ok=True)
        shutil.chown("/var/lib/vt-restore", "nobody", "nogroup")
        pw = Path("/etc/vt-restic.pass")
        if not pw.exists():
            pw.write_text("correct horse battery staple\n")
        shutil.chown(pw, "nobody", "nogroup")
        os.chmod(pw, 0o400)
        sh(["runuser", "-u", "nobody", "--", *self.base, "init"], check_rc=True)
        sh(["runuser", "-u", "nobody", "--", *self.base, "backup", str(owned)], check_rc=True)
        self.reset_target()

    def reset_target(self):
        shutil.rmtree(self.target, ignore_errors=True)
        self.target.mkdir(parents=True)
        shutil.chown(self.target, "nobody", "nogroup")

    def command(self):
        return [*self.base, "restore", "latest", "--target", str(self.target)]

    def between(self):
        self.reset_target()

    def works(self):
        self.oneshot_succeeded("restore succeeded under the unit", timeout=60)
        restored = self.target / "srv" / "vt-owned" / "notes"
        st = restored.stat() if restored.exists() else None
        check(self.name, "the restored file has its owner back (uid 4242)", st is not None and st.st_uid == 4242,
              f"{restored}: " + (f"uid {st.st_uid} mode {st.st_mode & 0o7777:04o}" if st else "missing"))


class Arctic(Workload):
    name, unit, duration = "arctic", "vt-arctic", 5
    args = ["--data", "/var/lib/arctic", "--token-dir", "/var/lib/arctic-token", "--hold", "30"]

    def prepare(self):
        if not Path("/dev/net/tun").exists():
            raise RuntimeError("/dev/net/tun missing in the guest")
        shutil.copy2(VT / "workloads" / "arctic_like.py", LIB / "arctic_like.py")
        for d in ("/var/lib/arctic", "/var/lib/arctic-token"):
            Path(d).mkdir(parents=True, exist_ok=True)

    def command(self):
        return ["/usr/bin/python3", str(LIB / "arctic_like.py"), *self.args]

    def exercise(self):
        # the token is the last thing the agent writes before it holds
        token = Path("/var/lib/arctic-token/recovery.token")
        return wait_for(lambda: token.exists() or self.proc.poll() is not None, 30) and token.exists()

    def cleanup_net(self):
        sh("ip rule del priority 1000 fwmark 1 table 100; ip route flush table 100; "
           "nft delete table inet arctic")

    def between(self):
        # what the profiling run left behind would make the unit's run fail with EEXIST
        self.cleanup_net()
        for f in ("/var/lib/arctic-token/recovery.token", "/var/lib/arctic/peer.key"):
            Path(f).unlink(missing_ok=True)

    def works(self):
        ok = self.net_checks(check)
        journal = self.journal()
        if not ok and "/dev/net/tun" in journal and "Permission denied" in journal:
            # Diagnostic only (never counted): the guest's /dev/net/tun is 0600 root (nspawn
            # copies this host's node); udev makes it 0666 on a stock host. Does the same
            # unit work there? This separates the identity decision from everything else.
            mode = os.stat("/dev/net/tun").st_mode & 0o777
            info(self.name, f"the unit runs as {self.identity_of()} and /dev/net/tun is "
                 f"{oct(mode)} root here: the service cannot open it (journal: PermissionError)")
            os.chmod("/dev/net/tun", 0o666)
            try:
                sh(["systemctl", "stop", f"{self.unit}.service"])
                self.between()
                sh(["systemctl", "start", f"{self.unit}.service"])
                diag = lambda wl, name, good, detail="": info(
                    wl, f"[diagnostic, /dev/net/tun 0666 as udev sets it] {'ok' if good else 'NOT ok'}: {name}")
                self.net_checks(diag)
            finally:
                os.chmod("/dev/net/tun", mode)

    def identity_of(self) -> str:
        text = (Path("/etc/systemd/system") / f"{self.unit}.service").read_text()
        if unit_values(text, "DynamicUser") == ["yes"]:
            return "DynamicUser=yes"
        return f"User={' '.join(unit_values(text, 'User') or ['root'])}"

    def net_checks(self, record) -> bool:
        token = Path("/var/lib/arctic-token/recovery.token")
        results = [record(self.name, "token file written under the unit", wait_for(token.exists, 15), str(token))]
        r = sh(["ip", "-d", "link", "show", "arc0"])
        out = (r.stdout + r.stderr).strip()
        results.append(record(self.name, "TUN device arc0 exists", r.returncode == 0 and "tun" in r.stdout,
                              out.splitlines()[0] if out else ""))
        r = sh(["ip", "rule", "show"])
        results.append(record(self.name, "ip rule fwmark 0x1 lookup 100 exists", "fwmark 0x1 lookup 100" in r.stdout,
                              " | ".join(r.stdout.strip().splitlines())))
        r = sh(["ip", "route", "show", "table", "100"])
        results.append(record(self.name, "route 10.77.0.0/24 in table 100", "10.77.0.0/24" in r.stdout,
                              r.stdout.strip()))
        r = sh(["nft", "list", "table", "inet", "arctic"])
        results.append(record(self.name, "nft table inet arctic exists", r.returncode == 0,
                              (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr).strip() else ""))
        r = sh(["ss", "-Hltnu"])
        ports = set(re.findall(r":(\d+)\s", r.stdout))
        results.append(record(self.name, "listens on 8080, 61000 and UDP 51840", {"8080", "61000", "51840"} <= ports,
                              " ".join(sorted(ports))))
        return all(results)

    def finish(self):
        self.cleanup_net()


class WriteTest(Workload):
    """Issue 13: tests/workloads/write_tests.py tests a permission at start and never uses it;
    the generated unit must still pass that test under systemd (it exits 1 when it fails)."""
    nspawn_only = UNTIMED
    duration = 3

    def prepare(self):
        shutil.copy2(VT / "workloads" / "write_tests.py", LIB / "write_tests.py")
        os.chmod(LIB / "write_tests.py", 0o755)

    def exercise(self):
        log = WORK / self.name / "capprobe-run.log"
        return wait_for(lambda: "ready" in log.read_text() or self.proc.poll() is not None, 30) \
            and self.proc.poll() is None

    def works(self):
        time.sleep(2 * SLOW)   # the test comes first thing: a failed one has ended the unit by now
        state = sh(["systemctl", "is-active", f"{self.unit}.service"]).stdout.strip()
        if not check(self.name, "passes its writability test and stays up under the unit", state == "active", state):
            say(self.journal())
        r = sh(["systemctl", "stop", f"{self.unit}.service"], timeout=60)
        props = sh(["systemctl", "show", "-p", "Result", "--value", f"{self.unit}.service"]).stdout.strip()
        check(self.name, "systemctl stop ends it cleanly", r.returncode == 0 and props == "success", f"Result={props}")


class WriteTestRundir(WriteTest):
    """Root tests vt-wt's 0750 directory with access(W_OK), then drops to vt-wt; nothing is written."""
    name, unit = "write-rundir", "vt-write-rundir"
    directory = Path("/var/lib/vt-wt")

    def prepare(self):
        super().prepare()
        if sh(["id", "vt-wt"]).returncode != 0:
            sh(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "vt-wt"], check_rc=True)
        self.directory.mkdir(mode=0o750, exist_ok=True)
        shutil.chown(self.directory, "vt-wt", "vt-wt")

    def command(self):
        return ["/usr/bin/python3", str(LIB / "write_tests.py"), "rundir", str(self.directory), "--drop", "vt-wt"]

    def works(self):
        before = owners([str(self.directory)])
        super().works()
        check(self.name, f"{self.directory} still vt-wt's and empty (tested, never written)",
              owners([str(self.directory)]) == before and not os.listdir(self.directory),
              f"{owners([str(self.directory)])[str(self.directory)]}, {len(os.listdir(self.directory))} entries")


class WriteTestTmp(WriteTest):
    """access("/tmp", W_OK) and nothing shared in /tmp: the unit must not leave /tmp read-only."""
    name, unit = "write-tmp", "vt-write-tmp"

    def command(self):
        return ["/usr/bin/python3", str(LIB / "write_tests.py"), "tmp"]


class Kresd(Workload):
    """knot-resolver's kresd as knot-resolver, given its rundir /var/lib/knot-resolver: it tests
    access(rundir, W_OK) at start and writes nothing there (cache and control socket elsewhere)."""
    nspawn_only = UNTIMED
    name, unit, duration, run_user = "kresd", "vt-kresd", 3, "knot-resolver"
    rundir, port, base = "/var/lib/knot-resolver", 5399, Path("/srv/vt-kr")

    def prepare(self):
        cache = self.base / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        shutil.chown(cache, "knot-resolver", "knot-resolver")
        (self.base / "kresd.conf").write_text(
            f"net.listen('127.0.0.1', {self.port}, {{ kind = 'dns' }})\n"
            f"worker.control_path = '{cache}/control/'\ncache.open(10 * MB, 'lmdb://{cache}')\n")
        os.chmod(self.base, 0o755)
        self.before = owners([self.rundir]), sorted(os.listdir(self.rundir))

    def command(self):
        return ["/usr/sbin/kresd", "-n", "-c", str(self.base / "kresd.conf"), self.rundir]

    def exercise(self):
        return wait_for(lambda: dns_answer(self.port, "vt.test") is not None or self.proc.poll() is not None, 30) \
            and self.proc.poll() is None

    def works(self):
        # no upstream here: any DNS reply (SERVFAIL included) shows it is up and serving
        wait_for(lambda: dns_answer(self.port, "vt.test") is not None, 15)
        reply = dns_answer(self.port, "vt.test")
        state = sh(["systemctl", "is-active", f"{self.unit}.service"]).stdout.strip()
        if not check(self.name, "passes its rundir test, stays up and answers DNS under the unit",
                     state == "active" and reply is not None,
                     f"{state}; reply {'rcode ' + str(reply[0]) if reply else 'none'} on port {self.port}"):
            say(self.journal())
        r = sh(["systemctl", "stop", f"{self.unit}.service"], timeout=60)
        props = sh(["systemctl", "show", "-p", "Result", "--value", f"{self.unit}.service"]).stdout.strip()
        check(self.name, "systemctl stop ends it cleanly", r.returncode == 0 and props == "success", f"Result={props}")
        after = owners([self.rundir]), sorted(os.listdir(self.rundir))
        check(self.name, f"{self.rundir} keeps its owner and contents", after == self.before,
              f"{self.before} -> {after}")


BREAKME_SCRIPT = """#!/usr/bin/python3
# A oneshot that needs exactly: its data directory writable, CAP_NET_BIND_SERVICE, bind().
import socket, sys
with open("/srv/vt-break/data/state", "w") as f:
    f.write("ok\\n")
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 81))
s.close()
"""


class Tighten(Workload):
    """verify and tighten under the real systemd: break the unit three ways on purpose;
    verify must name the directive, tighten must repair exactly that and nothing else."""
    name, unit = "tighten", "vt-breakme"

    def prepare(self):
        (LIB / "breakme").write_text(BREAKME_SCRIPT)
        os.chmod(LIB / "breakme", 0o755)
        Path("/srv/vt-break/data").mkdir(parents=True, exist_ok=True)

    def command(self):
        return [str(LIB / "breakme")]

    def run(self) -> None:
        say(f"=== {self.name}")
        t0 = time.monotonic()
        try:
            self.prepare()
            if self.profile() is None:
                return
            good = (WORK / self.name / f"{self.unit}.service").read_text()
            # a root unit that does not write /run: its deny checks include /run's top level
            deny_checks(self.name, self.unit, good)
            self.verify_case("the generated unit", good, expect=None)
            data_dir = "/srv/vt-break/data"
            cases = [
                ("drop a needed capability", _set_key(good, "CapabilityBoundingSet", ""),
                 ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE")),
                ("remove the written directory from ReadWritePaths", _drop_key(good, "ReadWritePaths"),
                 ("ReadWritePaths", data_dir)),
                ("remove a needed syscall", _add_after(good, "SystemCallErrorNumber", "SystemCallFilter=~bind"),
                 ("SystemCallFilter", "bind")),
            ]
            for label, broken, expect in cases:
                self.verify_case(label, broken, expect)
                self.tighten_case(label, good, broken, expect)
        except Exception as e:
            check(self.name, "ran to the end", False, f"{type(e).__name__}: {e}")
            traceback.print_exc(file=sys.stdout)
        finally:
            say(f"  ({self.name}: {time.monotonic() - t0:.1f} s)")

    def verify_case(self, label, text, expect):
        path = WORK / self.name / "case.service"
        path.write_text(text)
        r = sh([*CAPPROBE, "verify", str(path), "--duration", f"{2 * SLOW:g}"], timeout=300)
        for line in (r.stdout + r.stderr).splitlines():
            say(f"  | {line}")
        if expect is None:
            check(self.name, f"verify passes {label}", r.returncode == 0 and "PASS" in r.stdout, f"exit {r.returncode}")
        else:
            named = f"caused by {expect[0]} ({expect[1]})" in r.stdout
            check(self.name, f"verify names {expect[0]} ({expect[1]}) after: {label}",
                  r.returncode == 1 and named, f"exit {r.returncode}")

    def tighten_case(self, label, good, broken, expect):
        path = WORK / self.name / "broken.service"
        path.write_text(broken)
        out = WORK / self.name / "tightened.service"
        r = sh([*CAPPROBE, "tighten", "--unit", str(path), "--duration", f"{2 * SLOW:g}", "-o", str(out), "--force"], timeout=600)
        for line in (r.stdout + r.stderr).splitlines():
            say(f"  | {line}")
        if label == "drop a needed capability":
            shutil.copy2(path, RESULTS / "tighten-example.broken.service")
            (RESULTS / "tighten-example.txt").write_text(r.stdout + r.stderr)
        relaxed = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("capprobe: relaxed ")]
        ok = (r.returncode == 0 and len(relaxed) == 1 and f"relaxed {expect[0]} += {expect[1]} " in relaxed[0])
        check(self.name, f"tighten repairs exactly {expect[0]} += {expect[1]} after: {label}", ok,
              f"exit {r.returncode}, relaxations: {len(relaxed)}")
        if ok:
            # nothing else changed: the repaired unit's settings equal the broken one's plus that item
            b = _settings(broken)
            t = _settings(out.read_text())
            extra = [kv for kv in t if kv not in b]
            gone = [kv for kv in b if kv not in t]
            check(self.name, f"tighten changed nothing else after: {label}",
                  len(extra) == 1 and expect[1] in extra[0][1] and
                  all(k in (expect[0], "AmbientCapabilities") or "bind" in v for k, v in gone),
                  f"added {extra}, changed {gone}")


def _settings(text: str) -> list[tuple[str, str]]:
    return [tuple(x.strip() for x in line.split("=", 1)) for line in text.splitlines()
            if line and not line.startswith(("#", "[")) and "=" in line]


def _set_key(text: str, key: str, value: str) -> str:
    return "\n".join(f"{key}={value}" if line.startswith(key + "=") else line for line in text.splitlines()) + "\n"


def _drop_key(text: str, key: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith(key + "=")) + "\n"


def _add_after(text: str, key: str, new: str) -> str:
    out = []
    for line in text.splitlines():
        out.append(line)
        if line.startswith(key + "="):
            out.append(new)
    return "\n".join(out) + "\n"


class ReadmeInstall(Workload):
    """The README's install line, verbatim, on this stock Debian 12 guest. It has no network:
    apt gets an empty source list (its packages are in the rootfs), pip finds capprobe's
    dependencies in the payload's wheelhouse (PIP_NO_INDEX, PIP_FIND_LINKS: the text stays as written)."""
    name = "readme"

    def run(self) -> None:
        say(f"=== {self.name}")
        if TIER == "qemu":
            info(self.name, "the README's install line is checked in the nspawn tier (the same Debian userland)")
            return
        t0 = time.monotonic()
        source = WORK / "source"
        shutil.rmtree(source, ignore_errors=True)
        shutil.copytree(VT / "source", source)
        Path("/etc/apt/sources.list").write_text("")
        for extra in Path("/etc/apt/sources.list.d").glob("*"):
            extra.unlink()
        env = dict(os.environ, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(VT / "wheelhouse"),
                   PIP_DISABLE_PIP_VERSION_CHECK="1")
        env.pop("PYTHONPATH", None)   # the runner's points at the payload's capprobe: the install must stand alone
        say(f"  $ {README_INSTALL}")
        r = sh(["sh", "-c", README_INSTALL], cwd=source, env=env, timeout=600)
        out = r.stdout + r.stderr
        for line in out.splitlines()[-12:]:
            say(f"  | {line}")
        check(self.name, "the README's install line runs as written on stock Debian 12", r.returncode == 0,
              f"exit {r.returncode} in {time.monotonic() - t0:.1f} s: {README_INSTALL}")
        check(self.name, "the demo it ends with finds CAP_NET_BIND_SERVICE", "CAP_NET_BIND_SERVICE" in r.stdout,
              "in its output" if "CAP_NET_BIND_SERVICE" in r.stdout else out.strip()[-300:])
        say(f"  ({self.name}: {time.monotonic() - t0:.1f} s)")


class Poller:
    """GETs URL every 0.1 s in a thread while the service is profiled, finished and hardened:
    the longest stretch without an answer is the restarts' gap."""

    def __init__(self, url: str) -> None:
        import threading
        import urllib.error
        import urllib.request
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()

        def poll():
            while not self._stop.is_set():
                t = time.monotonic()
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        ok = r.status < 500
                except urllib.error.HTTPError as e:
                    ok = e.code < 500
                except Exception:
                    ok = False
                self.samples.append((t, ok))
                self._stop.wait(0.1)
        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()

    def stop(self) -> tuple[int, int, list[float]]:
        """(requests, unanswered, each gap: the time from a failed request to the next answer)"""
        self._stop.set()
        self._thread.join(5)
        gaps, down_since = [], None
        for t, ok in self.samples:
            if not ok and down_since is None:
                down_since = t
            elif ok and down_since is not None:
                gaps.append(t - down_since)
                down_since = None
        if down_since is not None:
            gaps.append(float("inf"))   # not answering when the test ended
        return len(self.samples), sum(not ok for _, ok in self.samples), gaps


class InstalledService(Workload):
    """Issue 11: `capprobe service start NAME` / `service finish NAME --apply` on the installed
    (package's) unit, in place: it keeps answering, and the unit is restored byte for byte."""
    # measured in the qemu tier (TCG): nginx's `service start` failed with "start-pre operation timed
    # out" (90 s: ExecStartPre= and ExecStart= each start capprobe, strace and bpftrace under
    # emulation); caddy started (READY=1 forwarded) but its profiled `systemctl reload` failed
    # (not diagnosed; most likely the same timeout)
    nspawn_only = "under software emulation capprobe's start-up exceeds systemd's 90 s start timeout"
    unit = ""                    # the installed unit
    url = ""                     # polled throughout; "" for a oneshot
    main_comm = ""               # the hardened service's main process
    expect_commands: list[str] = []   # the merged profile's sessions
    # seconds without an answer, at most once per restart (start, finish, --apply): nginx's stop
    # is a graceful SIGQUIT, then capprobe writes the profile or starts twice (ExecStartPre=, ExecStart=);
    # measured 0.2-2.4 s with other test suites running
    max_outage, restarts = 6.0, 3
    long_running = True          # a daemon: its main process is capprobe while profiled
    start_args: tuple = ()       # `service start NAME ...`

    def before_profiling(self) -> None:
        """Checks made while the package's unit runs, before `service start`."""

    def snapshot(self) -> dict:
        """`systemctl cat` and every drop-in directory of the unit, byte for byte."""
        snap: dict = {"systemctl cat": sh(["systemctl", "cat", self.unit]).stdout}
        for base in ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system"):
            d = Path(base) / f"{self.unit}.d"
            snap[str(d)] = {f.name: f.read_bytes() for f in sorted(d.iterdir())} if d.is_dir() else None
        return snap

    def restored(self, before: dict, when: str) -> None:
        after = self.snapshot()
        diff = [k for k in before if before[k] != after.get(k)]
        check(self.name, f"{self.unit} byte for byte as before `service start` ({when})", not diff,
              f"differs: {', '.join(diff)}" if diff else f"systemctl cat ({len(before['systemctl cat'])} bytes) "
              f"and {len(before) - 1} drop-in directories equal")

    def capprobe(self, *args, timeout=300) -> subprocess.CompletedProcess:
        cmd = [*CAPPROBE, "service", *args]
        say(f"  $ {shlex.join(cmd)}")
        t0 = time.monotonic()
        r = sh(cmd, timeout=timeout)
        for line in (r.stdout + r.stderr).splitlines():
            say(f"  | {line}")
        say(f"  (exit {r.returncode} after {time.monotonic() - t0:.1f} s)")
        return r

    def main_process(self) -> str:
        pid = sh(["systemctl", "show", "-p", "MainPID", "--value", self.unit]).stdout.strip()
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return f"(MainPID {pid})"

    def answers(self) -> tuple[bool, str]:
        code, body = http_get(self.url)
        return code.isdigit() and code != "000" and int(code) < 500, f"HTTP {code}"

    def while_profiled(self) -> None:
        """Exercise the service under capprobe: requests and a reload (ExecReload= is profiled too)."""
        for _ in range(3):
            http_get(self.url)
        r = sh(["systemctl", "reload", self.unit], timeout=120)
        time.sleep(1)
        ok = r.returncode == 0 and wait_for(lambda: self.answers()[0], 10)
        check(self.name, "systemctl reload under capprobe, still answering", ok,
              f"reload exit {r.returncode} {r.stderr.strip()[-200:]}; {self.answers()[1]}")

    def finish_args(self) -> list[str]:
        return ["--check", f"curl -sf -o /dev/null {self.url}"]

    def run(self) -> None:
        say(f"=== {self.name}")
        if TIER == "qemu" and self.nspawn_only:
            info(self.name, f"nspawn tier only: {self.nspawn_only}")
            return
        t0 = time.monotonic()
        out = WORK / self.name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        poller = None
        try:
            self.prepare()
            before = self.snapshot()
            r = sh(["systemctl", "start", self.unit], timeout=90)
            if not check(self.name, f"the package's {self.unit} starts", r.returncode == 0, r.stderr.strip()[-200:]):
                return
            if self.url:
                wait_for(lambda: self.answers()[0], 10)
                poller = Poller(self.url)
            self.before_profiling()
            r = self.capprobe("start", self.unit.removesuffix(".service"), *self.start_args)
            dropin = Path("/run/systemd/system") / f"{self.unit}.d" / "zz-capprobe.conf"
            if not check(self.name, "capprobe service start", r.returncode == 0 and dropin.exists(),
                         f"exit {r.returncode}; runtime drop-in {'present' if dropin.exists() else 'absent'}"):
                say(self.journal())
                return
            shutil.copy2(dropin, RESULTS / f"{self.name}.profiling-dropin.conf")
            props = dict(line.split("=", 1) for line in sh(
                ["systemctl", "show", "-p", "ActiveState,SubState,Result,NRestarts", self.unit]).stdout.split())
            if self.long_running:
                main = self.main_process()
                check(self.name, "runs under capprobe (main process), active",
                      "capprobe service exec" in main and props.get("ActiveState") == "active",
                      f"{' '.join(f'{k}={v}' for k, v in sorted(props.items()))}; main: {main[:120]}")
            self.while_profiled()
            r = self.capprobe("finish", self.unit.removesuffix(".service"), "--apply", "-o", str(out),
                              *self.finish_args())
            self.after_finish(r, out, before)
        except Exception as e:
            check(self.name, "ran to the end", False, f"{type(e).__name__}: {e}")
            traceback.print_exc(file=sys.stdout)
        finally:
            if poller is not None:
                n, failed, gaps = poller.stop()
                check(self.name, "answered HTTP throughout (start, profiling, reload, finish, --apply), "
                      f"but for at most {self.restarts} gaps of {self.max_outage:g} s: the restarts",
                      len(gaps) <= self.restarts and max(gaps, default=0) <= self.max_outage * SLOW,
                      f"{n} requests, {failed} unanswered, gaps {' '.join(f'{g:.2f}' for g in gaps) or 'none'} s")
            sh(["systemctl", "stop", self.unit], timeout=90)
            self.clean()
            say(f"  ({self.name}: {time.monotonic() - t0:.1f} s)")

    def after_finish(self, r, out: Path, before: dict) -> None:
        stem = self.unit.removesuffix(".service")
        files = [out / f"{stem}{ext}" for ext in (".profile.json", ".service", ".hardening.conf", ".setup.sh")]
        check(self.name, "capprobe service finish --apply: PASS, exit 0", r.returncode == 0 and "PASS:" in r.stderr,
              f"exit {r.returncode}")
        check(self.name, "finish wrote profile, unit, hardening drop-in, setup script", all(f.exists() for f in files),
              " ".join(f.name for f in files if not f.exists()) or "all four")
        check(self.name, "finish found the unit restored (no WARNING)", "WARNING: systemctl cat" not in r.stderr)
        for f in files:
            if f.exists():
                shutil.copy2(f, RESULTS / f"{self.name}.{f.name}")
        if files[0].exists():
            merged = json.loads(files[0].read_text())
            labels = [s.get("label") if isinstance(s, dict) else s for s in merged.get("merged", {}).get("sessions", [])]
            check(self.name, f"the profile merges {', '.join(self.expect_commands)}",
                  all(c in json.dumps(labels) for c in self.expect_commands), f"sessions {labels}")
        hardened = Path("/etc/systemd/system") / f"{self.unit}.d" / "zz-capprobe-hardening.conf"
        props = dict(line.split("=", 1) for line in sh(
            ["systemctl", "show", "-p", "ProtectSystem,ActiveState,Result", self.unit]).stdout.split())
        main = self.main_process()
        check(self.name, "runs hardened by the drop-in, its own main process again",
              hardened.exists() and props.get("ProtectSystem") == "strict" and
              (self.main_comm in main if self.main_comm else True) and "capprobe" not in main,
              f"{' '.join(f'{k}={v}' for k, v in sorted(props.items()))}; main: {main[:80]}")
        self.hardened_works()
        self.remove_hardening()
        self.restored(before, "after finish, the hardening drop-in taken out")

    def hardened_works(self) -> None:
        ok = wait_for(lambda: self.answers()[0], 10)
        check(self.name, "answers under the hardened unit", ok, self.answers()[1])

    def remove_hardening(self) -> None:
        d = Path("/etc/systemd/system") / f"{self.unit}.d"
        (d / "zz-capprobe-hardening.conf").unlink(missing_ok=True)
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
        sh(["systemctl", "daemon-reload"])

    def clean(self) -> None:
        """Whatever a failed run left: the profiling drop-in, the state, the hardening."""
        Path(f"/run/systemd/system/{self.unit}.d/zz-capprobe.conf").unlink(missing_ok=True)
        shutil.rmtree(f"/var/lib/capprobe/service/{self.unit}", ignore_errors=True)
        self.remove_hardening()

    def journal(self) -> str:
        return sh(["journalctl", "-q", "--no-pager", "-n", "30", "-o", "cat", "-u", self.unit]).stdout


class ServiceNginx(InstalledService):
    """Debian's nginx.service: Type=forking, PIDFile=, ExecStartPre= (nginx -t), ExecReload=, ExecStop=."""
    name, unit, url, main_comm = "service-nginx", "nginx.service", "http://127.0.0.1/", "nginx"
    expect_commands = ["ExecStartPre[0]", "ExecStart[0]", "ExecReload[0]"]


class ServiceCaddy(InstalledService):
    """Debian's caddy.service: Type=notify, User=caddy, AmbientCapabilities=, ExecReload= (caddy reload)."""
    name, unit, url, main_comm = "service-caddy", "caddy.service", "http://127.0.0.1/", "caddy"
    expect_commands = ["ExecStart[0]", "ExecReload[0]"]
    start_args = ("--lift-sandbox",)  # its PrivateTmp= and ProtectSystem= do not hold for a '+' command

    def prepare(self):
        Path("/etc/caddy/Caddyfile").write_text(':80 {\n\trespond "ok"\n}\n')

    def before_profiling(self):
        dropin = Path(f"/run/systemd/system/{self.unit}.d/zz-capprobe.conf")
        r = sh([*CAPPROBE, "service", "start", "caddy"])
        check(self.name, "`service start` refuses a sandboxed unit without --lift-sandbox: one line, exit 2",
              r.returncode == 2 and r.stderr.count("\n") == 1 and "PrivateTmp=true" in r.stderr
              and "ProtectSystem=full" in r.stderr and not dropin.exists() and self.answers()[0],
              f"exit {r.returncode}: {r.stderr.strip()[:200]}")

    def while_profiled(self):
        # the READY=1 went through capprobe to systemd: started, and not killed since
        time.sleep(2)
        props = dict(line.split("=", 1) for line in sh(
            ["systemctl", "show", "-p", "ActiveState,SubState,NRestarts,StatusText", self.unit]).stdout.splitlines()
            if "=" in line)
        check(self.name, "Type=notify under capprobe: READY=1 reached systemd (active/running, no restart)",
              props.get("SubState") == "running" and props.get("NRestarts") == "0",
              f"{props}")
        super().while_profiled()


ONESHOT_UNIT = """\
[Unit]
Description=vm-tests oneshot for capprobe service (issue 11)

[Service]
Type=oneshot
RemainAfterExit=yes
User=vt-one
Group=vt-one
EnvironmentFile=/etc/default/vt-oneshot
NoNewPrivileges=yes
ExecStartPre=/bin/sh -c 'test -r /etc/vt-oneshot/where'
ExecStart=/usr/local/lib/vmtest/vt-oneshot.sh
StateDirectory=vt-oneshot
"""

ONESHOT_SCRIPT = """#!/bin/sh
# writes $VT_MESSAGE (from the unit's EnvironmentFile=) into the directory named in /etc/vt-oneshot/where
set -e
where=$(cat /etc/vt-oneshot/where)
echo "$VT_MESSAGE" > "$where/out"
# the shell's own no_new_privs (the unit sets NoNewPrivileges=; capprobe must keep it while it profiles)
while read -r key value; do
    if [ "$key" = NoNewPrivs: ]; then echo "$value" > "$where/nnp"; fi
done < /proc/self/status
"""


class ServiceOneshot(InstalledService):
    """A Type=oneshot unit with User=, EnvironmentFile= and ExecStartPre=. Round 1: profiled,
    hardened, PASS. Round 2: the service writes elsewhere after profiling: --apply must fail,
    name the directive and roll back."""
    name, unit, long_running = "service-oneshot", "vt-oneshot.service", False
    expect_commands = ["ExecStartPre[0]", "ExecStart[0]"]

    def prepare(self):
        sh(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "vt-one"])
        Path("/etc/systemd/system/vt-oneshot.service").write_text(ONESHOT_UNIT)
        script = LIB / "vt-oneshot.sh"
        script.write_text(ONESHOT_SCRIPT)
        os.chmod(script, 0o755)
        Path("/etc/default/vt-oneshot").write_text("VT_MESSAGE=hello-from-the-environment-file\n")
        Path("/etc/vt-oneshot").mkdir(exist_ok=True)
        Path("/etc/vt-oneshot/where").write_text("/var/lib/vt-oneshot\n")
        Path("/srv/vt-oneshot").mkdir(parents=True, exist_ok=True)
        shutil.chown("/srv/vt-oneshot", "vt-one", "vt-one")
        sh(["systemctl", "daemon-reload"])

    def out(self, where="/var/lib/vt-oneshot") -> str:
        try:
            return Path(where, "out").read_text().strip()
        except OSError as e:
            return f"({e.strerror})"

    def succeeded(self) -> tuple[bool, str]:
        props = dict(line.split("=", 1) for line in sh(
            ["systemctl", "show", "-p", "Result,ExecMainStatus,ActiveState", self.unit]).stdout.split())
        return (props.get("Result") == "success" and props.get("ExecMainStatus") == "0",
                " ".join(f"{k}={v}" for k, v in sorted(props.items())))

    def while_profiled(self):
        ok, detail = self.succeeded()
        check(self.name, "the oneshot ran under capprobe as vt-one with its EnvironmentFile=",
              ok and self.out() == "hello-from-the-environment-file" and
              Path("/var/lib/vt-oneshot/out").stat().st_uid == pwd.getpwnam("vt-one").pw_uid,
              f"{detail}; out: {self.out()!r}")
        nnp = Path("/var/lib/vt-oneshot/nnp")
        seen = nnp.read_text().strip() if nnp.exists() else "(no file)"
        check(self.name, "NoNewPrivileges=yes holds for the command capprobe runs ('+' would lift it)",
              seen == "1", f"NoNewPrivs of the profiled command: {seen}")
        Path("/var/lib/vt-oneshot/out").unlink(missing_ok=True)   # the hardened run writes it again
        self.error_lines()

    def error_lines(self) -> None:
        """One line on stderr, exit 2, nothing changed: the operator's mistakes."""
        taken = WORK / self.name / "taken"
        taken.mkdir(parents=True, exist_ok=True)
        (taken / "vt-oneshot.service").write_text("the operator's own file\n")
        dropin = Path(f"/run/systemd/system/{self.unit}.d/zz-capprobe.conf")
        for args, expect in ((["start", "vt-oneshot"], "already being profiled"),
                             (["start", "vt-no-such-unit"], "unknown unit"),
                             (["finish", "nginx"], "is not being profiled"),
                             (["finish", "vt-oneshot", "-o", str(taken)], "exists; use --force")):
            r = sh([*CAPPROBE, "service", *args])
            check(self.name, f"`service {' '.join(args[:2])}`: one line, exit 2 ({expect})",
                  r.returncode == 2 and r.stderr.count("\n") == 1 and expect in r.stderr and dropin.exists()
                  and (taken / "vt-oneshot.service").read_text() == "the operator's own file\n",
                  f"exit {r.returncode}: {r.stderr.strip()[:160]}")

    def main_process(self) -> str:
        return "(oneshot: exited)"

    def finish_args(self) -> list[str]:
        return []   # a oneshot's own result is the check

    def after_finish(self, r, out, before):
        super().after_finish(r, out, before)
        self.rollback_round(before)

    def hardened_works(self):
        ok, detail = self.succeeded()
        check(self.name, "the oneshot succeeds under the hardened unit", ok and self.out() ==
              "hello-from-the-environment-file", f"{detail}; out: {self.out()!r}")

    def rollback_round(self, before: dict) -> None:
        out = WORK / self.name / "round2"
        out.mkdir(parents=True, exist_ok=True)
        r = self.capprobe("start", "vt-oneshot")
        if not check(self.name, "round 2: capprobe service start", r.returncode == 0, f"exit {r.returncode}"):
            return
        Path("/etc/vt-oneshot/where").write_text("/srv/vt-oneshot\n")   # a write the profile never saw
        r = self.capprobe("finish", "vt-oneshot", "--apply", "-o", str(out))
        (RESULTS / f"{self.name}.rollback.txt").write_text(r.stdout + r.stderr)
        named = re.search(r"caused by (ReadWritePaths|ProtectSystem)\b.*srv", r.stderr)
        check(self.name, "round 2: --apply fails, names the directive, rolls back",
              r.returncode == 1 and named is not None and "rolled back" in r.stderr,
              f"exit {r.returncode}; {named.group(0)[:100] if named else 'no directive named'}")
        ok, detail = self.succeeded()
        check(self.name, "round 2: after the roll-back the original unit runs again (wrote /srv/vt-oneshot/out)",
              ok and self.out("/srv/vt-oneshot") == "hello-from-the-environment-file", f"{detail}")
        self.restored(before, "after a rolled-back --apply")

    def clean(self):
        super().clean()
        Path("/etc/vt-oneshot/where").write_text("/var/lib/vt-oneshot\n")


WORKLOADS = {w.name: w for w in (Nginx, Caddy, Dness, Restic, ResticRestore, Arctic, NginxReload, Dnsmasq,
                                   WriteTestRundir, WriteTestTmp, Kresd, Tighten, ServiceNginx, ServiceCaddy,
                                   ServiceOneshot, ReadmeInstall)}


def environment() -> None:
    """Facts about the guest worth recording, and what every workload shares."""
    for d in (WORK, LIB, PROBE_OUT):
        d.mkdir(parents=True, exist_ok=True)
    BOOT_OWNERS.update(owners([path for w in WORKLOADS.values() for path in w.package_paths]))
    os.chmod(LIB, 0o755)
    (LIB / "probe.py").write_text(PROBE_SOURCE)
    # `capprobe service start` writes a drop-in that runs `python3 -I -m capprobe`: systemd's
    # environment has no PYTHONPATH, so the guest's Python finds the payload's capprobe this way
    site = sh(["python3", "-I", "-c", "import site; print(site.getsitepackages()[0])"], check_rc=True).stdout.strip()
    Path(site).mkdir(parents=True, exist_ok=True)
    (Path(site) / "vmtest-capprobe.pth").write_text(f"{VT / 'lib'}\n")
    for d in (OPEN_DIR, HOME_OPEN):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o1777)
    TMP_MARKER.write_text("the guest's /tmp\n")
    HIDDEN_MARKER.parent.mkdir(parents=True, exist_ok=True)
    HIDDEN_MARKER.write_text("behind InaccessiblePaths=\n")
    os.chmod(HIDDEN_MARKER, 0o644)
    SECRET.write_text("secret\n")
    os.chown(SECRET, 4242, 4242)
    os.chmod(SECRET, 0o600)
    sh(["ip", "addr", "add", f"{LOCAL_EXTRA}/32", "dev", "lo"])
    global BPF_FRAMEWORK
    pid1 = Path("/proc/1/comm").read_text().strip()
    version = sh(["systemctl", "--version"]).stdout
    ver = version.splitlines()[0]
    BPF_FRAMEWORK = "+BPF_FRAMEWORK" in version
    global HAS_TRACEPOINT
    if TIER == "qemu" and not Path("/sys/kernel/tracing/instances").is_dir():
        sh(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"])
    tracing = "mounted" if Path("/sys/kernel/tracing/instances").is_dir() else "not mounted"
    HAS_TRACEPOINT = CAP_TRACEPOINT.is_dir()
    kprobe = "n/a"
    if TIER == "qemu":
        # what capprobe's bpftrace fallback needs on a kernel without the tracepoint
        try:
            funcs = Path("/sys/kernel/tracing/available_filter_functions").read_text()
            kprobe = "possible" if (Path("/sys/kernel/tracing/kprobe_events").exists()
                                    and re.search(r"^cap_capable\b", funcs, re.M)) else "not possible"
        except OSError as e:
            kprobe = f"unknown ({e.strerror})"
    global KPROBE_OK
    KPROBE_OK = kprobe == "possible"
    try:
        initial_ns = os.stat("/proc/self/ns/pid").st_ino == 0xEFFFFFFC
    except OSError:
        initial_ns = False
    say(f"guest ({TIER}): PID 1 is {pid1} ({ver}); kernel {os.uname().release}; /sys/kernel/tracing {tracing}; "
        f"capability:cap_capable tracepoint "
        f"{('present' if HAS_TRACEPOINT else 'absent') if tracing == 'mounted' else 'unknown'}; "
        f"pid namespace {'initial' if initial_ns else 'a child (container)'}; "
        f"kprobe on cap_capable {kprobe}; bpftrace {'installed' if BPFTRACE else 'not installed'}; "
        f"/dev/net/tun {oct(os.stat('/dev/net/tun').st_mode & 0o777) if Path('/dev/net/tun').exists() else 'MISSING'}; "
        f"BPF_FRAMEWORK {'yes' if BPF_FRAMEWORK else 'no'}; capprobe kernel capability probe "
        f"{'on (capprobe decides)' if CAP_PROBE else 'off (--no-cap-probe)'}")
    check("guest", "PID 1 is systemd", pid1 == "systemd", pid1)
    if TIER == "qemu":
        check("guest", "own kernel, initial pid namespace", initial_ns and os.uname().release != HOST_KERNEL,
              f"kernel {os.uname().release} (host {HOST_KERNEL}), pid namespace {'initial' if initial_ns else 'child'}")
    import click
    say(f"guest: python {sys.version.split()[0]}, click {click.__version__}")


def main() -> int:
    t0 = time.monotonic()
    RESULTS.mkdir(exist_ok=True)
    global CAP_PROBE, TIER, HOST_KERNEL, SLOW, README_INSTALL
    try:
        config = json.loads((VT / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    wanted = config.get("workloads") or list(WORKLOADS)
    CAP_PROBE = bool(config.get("cap_probe"))   # "auto" (qemu tier) is on: capprobe decides
    TIER = config.get("tier") or "nspawn"
    HOST_KERNEL = config.get("host_kernel", "")
    SLOW = float(config.get("slow", 1))
    README_INSTALL = config.get("readme_install", "")
    try:
        environment()
        unknown = [w for w in wanted if w not in WORKLOADS]
        if unknown:
            check("guest", "known workloads", False, f"unknown: {' '.join(unknown)}; "
                  f"known: {' '.join(WORKLOADS)}")
        for name in wanted:
            if name in WORKLOADS:
                WORKLOADS[name]().run()
    except Exception as e:
        check("guest", "payload ran to the end", False, f"{type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stdout)
    finally:
        passed = sum(c["ok"] for c in checks)
        failed = len(checks) - passed
        (RESULTS / "results.json").write_text(json.dumps(
            {"checks": checks, "exposure": exposures, "notes": notes, "methods": methods, "tier": TIER,
             "seconds": round(time.monotonic() - t0, 1)}, indent=1))
        say("")
        say(f"{'workload':<10} {'unit':<26} exposure")
        for row in exposures:
            say(f"{row['workload']:<10} {row['unit']:<26} {row['exposure']}")
        say(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
