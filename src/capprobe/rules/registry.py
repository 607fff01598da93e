"""The registry: every directive rule, in the order its lines appear in the unit."""

from __future__ import annotations

from .base import Directive, Rule, RuleContext

RULES: list[tuple[str, Rule]] = []


def rule(name: str):
    """Register a rule function under NAME (decorator)."""
    def register(fn: Rule) -> Rule:
        RULES.append((name, fn))
        return fn
    return register


def decide(ctx: RuleContext) -> list[Directive]:
    """Run every rule; each directive remembers which rule decided it."""
    _load_rule_modules()
    out: list[Directive] = []
    for name, fn in RULES:
        for d in fn(ctx):
            out.append(Directive(d.key, tuple(d.values), d.comment, d.section, d.hardening, name))
    return out


def _load_rule_modules() -> None:
    # Importing the modules registers their rules; the order here is the unit's order.
    from . import identity, process, capabilities, filesystem, devices, network, syscalls, kernel  # noqa: F401
