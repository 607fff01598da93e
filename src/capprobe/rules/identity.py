"""Who the service runs as: User=/Group=, or DynamicUser=."""

from __future__ import annotations

import grp
import pwd

from .base import Directive, RuleContext
from .evidence import identity_choice
from .registry import rule


def primary_group(user: str) -> str | None:
    try:
        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        return None


@rule("identity")
def identity(ctx: RuleContext):
    kind, why = identity_choice(ctx)
    if kind == "dynamic":
        yield Directive("DynamicUser", ("yes",), f"a fresh unprivileged user per start: {why}")
    elif kind == "user":
        user = ctx.options.user or ctx.profile["run"]["user"].get("name") or str(ctx.profile["run"]["user"]["uid"])
        group = ctx.options.group or primary_group(user) or user
        yield Directive("User", (user.encode(),), f"not root: {why}")
        yield Directive("Group", (group.encode(),), "the service user's group")
    else:
        yield from ()  # root: no line; the comment of CapabilityBoundingSet says what root keeps
