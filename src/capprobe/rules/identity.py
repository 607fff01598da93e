"""Who the service runs as: User=/Group=, or DynamicUser=."""

from __future__ import annotations

from .base import Directive, RuleContext
from .evidence import identity_choice, service_user
from .registry import rule


@rule("identity")
def identity(ctx: RuleContext):
    kind, why = identity_choice(ctx)
    if kind == "dynamic":
        yield Directive("DynamicUser", ("yes",), f"a fresh unprivileged user per start: {why}")
    elif kind == "user":
        user, group = service_user(ctx)
        yield Directive("User", (user.encode(),), f"not root: {why}")
        yield Directive("Group", (group.encode(),), "the service user's group")
    else:
        yield from ()  # root: no line; the comment of CapabilityBoundingSet says what root keeps
