"""Devices: PrivateDevices=yes, or exactly the real devices opened (seed 000)."""

from __future__ import annotations

from ..paths import decode_path
from .base import Directive, RuleContext
from .evidence import short_exes, show
from .registry import rule


@rule("devices")
def devices(ctx: RuleContext):
    real = ctx.needs.devices
    if not real:
        seen = sorted({show(decode_path(d["path"])) for d in ctx.profile.get("devices", [])})
        yield Directive("PrivateDevices", ("yes",), "no real device opened" +
                        (f" (only {' '.join(seen[:5])})" if seen else ""))
        return
    yield Directive("DevicePolicy", ("closed",), "only the devices listed below, plus the pseudo-devices "
                    "(/dev/null, /dev/zero, /dev/random...)")
    for d in real:
        access = d.access or "r"
        extra = f", ioctl {' '.join(d.ioctls)}" if d.ioctls else ""
        yield Directive("DeviceAllow", (d.path, access),
                        f"opened {show(d.path)} ({d.kind} {d.major}:{d.minor}) "
                        f"{access} x{d.count} by {short_exes([{'by': d.by}])}{extra}")
