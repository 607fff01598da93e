"""CapabilityBoundingSet= and AmbientCapabilities=: exactly what the kernel said was required."""

from __future__ import annotations

from ..needs import is_kernel_method
from .base import Directive, RuleContext
from .evidence import identity_choice, show
from .ownership import ownership_alternative, ownership_plan, required_capabilities
from .registry import rule

def _evidence(ctx: RuleContext, cap: str) -> str:
    need = next((c for c in ctx.needs.capabilities if c.name == cap), None)
    rows = need.evidence if need else ()
    parts = []
    for e in rows[:3]:
        target = f" {e.targets[0]}" if e.targets else ""
        exe = (e.exe or "?").rsplit("/", 1)[-1]
        parts.append(f"{e.reason}{target} (x{e.count}, {exe})")
    difference = next((e.confirmed_difference for e in rows if e.confirmed_difference), None)
    if difference:  # capprobe confirm: a re-run without it
        parts.append(f"confirmed: without it, {difference}")
    return f"{cap}: " + "; ".join(parts) if parts else cap


@rule("capabilities")
def bounding_set(ctx: RuleContext):
    caps = ctx.profile.get("capabilities", {})
    required = required_capabilities(ctx)
    method = ctx.needs.capability_method
    left_out = sorted(set(ctx.needs.checked_not_required) - set(required))
    note = f"; checked but not required: {' '.join(left_out)}" if left_out else ""
    unneeded = sorted((caps.get("confirmation") or {}).get("optional", []))
    if unneeded:
        note += f" ({' '.join(unneeded)}: a re-run without it behaved the same, capprobe confirm)"
    dropped, paths = ownership_alternative(ctx)
    if dropped:
        note += (f"; {' '.join(dropped)} was needed only for {', '.join(show(p) for p in paths)}: "
                 "the setup script (--setup), or systemd for its *Directory= entries, gives them to the service "
                 "user instead")
    plan = ownership_plan(ctx)
    if plan.secrets_read:
        note += (f"; CAP_DAC_READ_SEARCH kept for {', '.join(show(p) for p in plan.secrets_read[:3])}: the service "
                 "user cannot read it and capprobe gives no secret away (alternative: LoadCredential=NAME:PATH, "
                 "if the program can read it from $CREDENTIALS_DIRECTORY)")
    left = [r for r in plan.refusals if r.path not in plan.secrets_read]
    if left:
        note += ("; left as they are, for the operator to decide: "
                 + ", ".join(f"{show(r.path)} ({r.why})" for r in left[:3]) + (" ..." if len(left) > 3 else ""))
    source = "as the kernel checked them" if is_kernel_method(method) else f"method: {method}"
    if not required:
        yield Directive("CapabilityBoundingSet", (), f"no capability required ({source}){note}")
    else:
        why = " | ".join(_evidence(ctx, c) for c in required)
        yield Directive("CapabilityBoundingSet", tuple(required), f"required {source}: {why}{note}")


@rule("capabilities")
def ambient(ctx: RuleContext):
    required = required_capabilities(ctx)
    kind, _ = identity_choice(ctx)
    if required and kind != "root":
        yield Directive("AmbientCapabilities", tuple(required),
                        "a non-root service gets the required capabilities only through the ambient set")
