"""Devices: PrivateDevices=yes, or exactly the real devices opened (seed 000)."""

from __future__ import annotations

from ..paths import decode_path
from .base import Directive, RuleContext
from .evidence import short_exes, show
from .registry import rule

# What PrivateDevices=yes still provides (systemd.exec(5)).
PSEUDO_DEVICES = {b"/dev/null", b"/dev/zero", b"/dev/full", b"/dev/random", b"/dev/urandom",
                  b"/dev/tty", b"/dev/ptmx", b"/dev/stdin", b"/dev/stdout", b"/dev/stderr"}
PSEUDO_PREFIXES = (b"/dev/pts/", b"/dev/shm/", b"/dev/fd/", b"/dev/mqueue/", b"/dev/hugepages/")


def real_devices(ctx: RuleContext) -> list[dict]:
    return [d for d in ctx.profile.get("devices", [])
            if decode_path(d["path"]) not in PSEUDO_DEVICES and not decode_path(d["path"]).startswith(PSEUDO_PREFIXES)]


@rule("devices")
def devices(ctx: RuleContext):
    real = real_devices(ctx)
    if not real:
        seen = sorted({show(decode_path(d["path"])) for d in ctx.profile.get("devices", [])})
        yield Directive("PrivateDevices", ("yes",), "no real device opened" +
                        (f" (only {' '.join(seen[:5])})" if seen else ""))
        return
    ioctls = {}
    for i in ctx.profile.get("ioctls", []):
        ioctls.setdefault(i["path"], set()).add(i["request"])
    yield Directive("DevicePolicy", ("closed",), "only the devices listed below, plus the pseudo-devices "
                    "(/dev/null, /dev/zero, /dev/random...)")
    for d in real:
        access = d["access"] or "r"
        extra = f", ioctl {' '.join(sorted(ioctls[d['path']]))}" if d["path"] in ioctls else ""
        yield Directive("DeviceAllow", (decode_path(d["path"]), access),
                        f"opened {show(decode_path(d['path']))} ({d['kind']} {d['major']}:{d['minor']}) "
                        f"{access} x{d['count']} by {short_exes([d])}{extra}")
