"""Kernel-facing protections: each on unless the profile shows what it forbids."""

from __future__ import annotations

import re

from ..model import WRITE_OPS
from ..paths import decode_path
from .base import Directive, RuleContext
from .evidence import behaviour, identity_choice, short_exes, show, toggle_unless_seen
from .ownership import required_capabilities
from .registry import rule

_PROC_PID = re.compile(rb"^/proc/(\d+|self|thread-self)(/|$)")


@rule("kernel")
def protect_kernel_tunables(ctx: RuleContext):
    yield from toggle_unless_seen(ctx, "ProtectKernelTunables", ("write_kernel_tunable",),
                       "no write under /proc/sys or /sys")


@rule("kernel")
def protect_kernel_modules(ctx: RuleContext):
    yield from toggle_unless_seen(ctx, "ProtectKernelModules", ("kernel_module",), "no module loaded or removed")


@rule("kernel")
def protect_kernel_logs(ctx: RuleContext):
    yield from toggle_unless_seen(ctx, "ProtectKernelLogs", ("kernel_log",), "no syslog() and no /dev/kmsg or /proc/kmsg",
                       paths=(b"/dev/kmsg", b"/proc/kmsg"))


@rule("kernel")
def protect_control_groups(ctx: RuleContext):
    written = [f for f in ctx.profile["files"] if decode_path(f["path"]).startswith(b"/sys/fs/cgroup")
               and set(f["ops"]) & WRITE_OPS]
    if written:
        yield Directive("ProtectControlGroups", ("no",), f"writes {show(decode_path(written[0]['path']))}")
    else:
        yield Directive("ProtectControlGroups", ("yes",), "no write under /sys/fs/cgroup")


@rule("kernel")
def protect_clock(ctx: RuleContext):
    yield from toggle_unless_seen(ctx, "ProtectClock", ("clock",), "the clock was not set")


@rule("kernel")
def protect_hostname(ctx: RuleContext):
    yield from toggle_unless_seen(ctx, "ProtectHostname", ("hostname",), "no sethostname/setdomainname")


@rule("kernel")
def protect_proc(ctx: RuleContext):
    others = behaviour(ctx, "read_other_process")
    if others:
        yield Directive("ProtectProc", ("default",), f"reads other processes' /proc entries ({others[0]['detail']})")
    else:
        yield Directive("ProtectProc", ("invisible",), "no other process's /proc entry read")
    system = [f for f in ctx.profile["files"]
              if decode_path(f["path"]).startswith(b"/proc/") and not _PROC_PID.match(decode_path(f["path"]))
              and (f["ops"] or f.get("failed"))]
    if system:
        names = " ".join(show(decode_path(f["path"])) for f in system[:3])
        yield Directive("ProcSubset", ("all",), f"reads /proc beyond process entries: {names}"
                        + (f" (+{len(system) - 3} more)" if len(system) > 3 else ""))
    else:
        yield Directive("ProcSubset", ("pid",), "only process entries of /proc used")


@rule("kernel")
def restrict_namespaces(ctx: RuleContext):
    seen = behaviour(ctx, "namespace")
    if not seen:
        yield Directive("RestrictNamespaces", ("yes",), "no namespace created or joined")
        return
    types = ctx.needs.behaviour.namespaces
    if ctx.needs.behaviour.namespaces_any or not types:
        yield Directive("RestrictNamespaces", ("no",), f"joins namespaces of any type ({seen[0]['detail']})")
    else:
        yield Directive("RestrictNamespaces", tuple(types), "namespace types used: "
                        + ", ".join(f"{b['detail']} by {short_exes([b])}" for b in seen))


@rule("kernel")
def private_users(ctx: RuleContext):
    kind, _ = identity_choice(ctx)
    if required_capabilities(ctx):
        return  # capabilities in a user namespace do not reach host resources
    if kind == "root":
        return  # the service changes identity itself, or writes as root
    yield Directive("PrivateUsers", ("yes",), "no capability needed on host resources")


@rule("kernel")
def private_mounts(ctx: RuleContext):
    yield from toggle_unless_seen(ctx, "PrivateMounts", ("mount",), "no mount or unmount")
