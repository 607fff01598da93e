"""OCI seccomp: the `linux.seccomp` object of an OCI config, the file that crun, runc, podman
(`--security-opt seccomp=FILE`), docker (the same) and the kubelet (a Localhost profile) take.

Everything not allowed fails with EPERM, as systemd's SystemCallErrorNumber=EPERM in the unit:
a program sees an ordinary refusal it can report, not a SIGSYS death.
"""

from __future__ import annotations

import json

from ...needs import Needs
from .interface import ExportError, ExportOptions

EPERM = 1

# The ABIs a filter covers, as docker's default profile maps them (its archMap): the native one
# and the 32-bit ones the same kernel runs. Their calls are matched by name, per ABI.
ARCHITECTURES = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
    "ppc64le": ("SCMP_ARCH_PPC64LE",),
    "s390x": ("SCMP_ARCH_S390X", "SCMP_ARCH_S390"),
    "riscv64": ("SCMP_ARCH_RISCV64",),
}

# The runtime loads the filter, then still runs its own code until the service's execve: those
# calls pass through the filter too, and the trace of the service never shows them.
RUNTIME_SYSCALLS = (
    ("crun", ("execve",),
     ("crun 1.8 calls execve() after loading the filter (traced here; its close() of the filter's "
      "descriptor may fail harmlessly, the descriptor is close-on-exec); the service's own exec is "
      "not in a profile taken by attaching to it")),
    ("runc", ("close", "close_range", "openat", "write", "getpid", "execve", "execveat",
              "futex", "nanosleep", "sched_yield", "rt_sigreturn", "rt_sigprocmask", "sigaltstack",
              "gettid", "tgkill", "epoll_pwait", "mmap", "munmap", "madvise"),
     ("runc (libcontainer/standard_init_linux.go) opens and writes its exec fifo, closes its "
      "descriptors and execs (execveat through runc-dmz), and its Go runtime may run futex, "
      "nanosleep, signal and memory calls meanwhile; read from runc's source, not run here")),
)


def render(needs: Needs, options: ExportOptions) -> str:
    """The seccomp JSON: the calls seen allowed, the runtime's own after them, EPERM for the rest."""
    return json.dumps(seccomp_profile(needs, options), indent=1) + "\n"


def seccomp_profile(needs: Needs, options: ExportOptions) -> dict:
    if not needs.syscalls:
        raise ExportError("the profile holds no system calls: a filter from it would stop the service "
                          "at its first call")
    architectures: list[str] = []
    for arch in needs.architectures:
        if arch not in ARCHITECTURES:
            raise ExportError(f"no seccomp architecture known for {arch!r} "
                              f"(known: {', '.join(sorted(ARCHITECTURES))})")
        architectures += ARCHITECTURES[arch]
    if not architectures:
        raise ExportError("the profile does not say which architecture it was taken on")
    seen = needs.syscall_names
    rules = [{"names": list(seen), "action": "SCMP_ACT_ALLOW",
              "comment": f"made by the service when it was profiled ({options.origin})" if options.origin
              else "made by the service when it was profiled"}]
    for runtime, calls, why in RUNTIME_SYSCALLS:
        extra = [c for c in calls if c not in seen and not any(c in r["names"] for r in rules[1:])]
        if extra:
            rules.append({"names": extra, "action": "SCMP_ACT_ALLOW",
                          "comment": f"not made by the service: {why}"})
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": architectures,
        "syscalls": rules,
    }
