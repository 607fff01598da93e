"""Launcher: take the service's identity and capability sets, then exec the target.

Run by capprobe as ``python3 -m capprobe.tracing.launcher --ready FD --gate FD SPEC_JSON -- EXE ARGV...``.
It is the target's own process (the pid capprobe waits for), so the target starts the
way the unit will start it: as the service user, with the capabilities in its ambient
set, with systemd's signal dispositions and environment. No tracer is ever its parent.

SPEC_JSON: {"uid": int|null, "gid": int|null, "groups": [int], "caps": "all"|"none",
            "drop": [capability numbers to leave out], "env": {NAME: VALUE}}
("env" is the target's whole environment; without it capprobe's own is kept).

The handshake: once the identity is taken it writes b"R" on the ready pipe (or b"E"
and one line of error, then exits), then blocks on the gate pipe while capprobe arms
the capability probe and strace attaches. b"G" on the gate means exec; end of file
without it means capprobe is gone, and the target is not started untraced.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
SYS_capset = 126  # x86_64


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def permitted_mask() -> int:
    """This process's permitted capability set as a bit mask."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapPrm:"):
                return int(line.split()[1], 16)
    return 0


def _capset(mask: int, inheritable: int) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        data[i].effective = data[i].permitted = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> (32 * i)) & 0xFFFFFFFF
    _check(_libc.syscall(SYS_capset, ctypes.byref(header), data), "capset")


def apply_spec(spec: dict) -> None:
    """Change identity and capability sets of this process as SPEC says."""
    if spec.get("no_new_privileges"):
        # last of all would do too: no_new_privs limits what an execve grants, not setuid() here
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")
    caps = spec.get("caps", "all")
    drop = set(spec.get("drop", []))
    if caps == "all" and spec.get("uid") is None and not drop:
        return
    top = last_cap()
    for cap in sorted(drop):
        # out of the bounding set: the target (and what it execs) never gets it back
        _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop bounding set")
    if caps == "none":
        for cap in range(top + 1):
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop bounding set")
    if spec.get("uid") is not None:
        _check(_libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "keep capabilities")
        os.setgroups(spec.get("groups", []))
        os.setresgid(spec["gid"], spec["gid"], spec["gid"])
        os.setresuid(spec["uid"], spec["uid"], spec["uid"])
    if caps == "none":
        _capset(0, 0)
        _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient")
    elif spec.get("uid") is not None:
        full = permitted_mask()  # the bounding set may lack some (containers do)
        for cap in drop:
            full &= ~(1 << cap)
        # setuid() cleared the effective set; raising inheritable needs
        # CAP_SETPCAP effective, so restore effective first.
        _capset(full, 0)
        _capset(full, full)
        for cap in (c for c in range(top + 1) if full >> c & 1):
            _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0), "raise ambient")


def reset_signals() -> None:
    """Start the target the way systemd starts a service: every signal at its default,
    none blocked, SIGPIPE ignored (systemd's IgnoreSIGPIPE=yes). capprobe may itself have
    been started with SIGINT ignored (a background job), which exec would pass on."""
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(signum, signal.SIG_IGN if signum == signal.SIGPIPE else signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # real-time signals the C library reserves
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def wait_for_gate(fd: int) -> bool:
    """Block until capprobe has armed its probes on our pid: True, or False if it went away."""
    go = os.read(fd, 1) == b"G"
    os.close(fd)
    return go


def main(argv: list[str]) -> int:
    if len(argv) < 8 or argv[0] != "--ready" or argv[2] != "--gate" or argv[5] != "--":
        print("usage: python3 -m capprobe.tracing.launcher --ready FD --gate FD SPEC_JSON -- EXE ARGV...",
              file=sys.stderr)
        return 2
    ready, gate, spec = int(argv[1]), int(argv[3]), json.loads(argv[4])
    exe, target_argv = argv[6], argv[7:]
    try:
        apply_spec(spec)
        reset_signals()
    except OSError as e:
        os.write(ready, b"E" + f"cannot start the target as asked: {e}".encode(errors="replace"))
        return 126
    os.write(ready, b"R")
    os.close(ready)
    if not wait_for_gate(gate):
        return 125
    env = spec["env"] if "env" in spec else os.environ
    try:
        os.execve(exe, target_argv, env)
    except OSError as e:
        print(f"capprobe: cannot execute {exe}: {e.strerror}", file=sys.stderr)
        return 127 if isinstance(e, FileNotFoundError) else 126
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
