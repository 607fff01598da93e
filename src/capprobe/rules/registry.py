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


# The unit's order, by family; within a family, the order the rules are written in.
FAMILY_ORDER = ("identity", "process", "capabilities", "filesystem", "devices", "network", "syscalls", "kernel")


def decide(ctx: RuleContext) -> list[Directive]:
    """Run every rule; each directive remembers which rule decided it."""
    _load_rule_modules()
    out: list[Directive] = []
    ordered = sorted(RULES, key=lambda r: FAMILY_ORDER.index(r[0]) if r[0] in FAMILY_ORDER else len(FAMILY_ORDER))
    for name, fn in ordered:
        for d in fn(ctx):
            out.append(Directive(d.key, tuple(d.values), d.comment, d.section, d.hardening, name))
    return out


def _load_rule_modules() -> None:
    # Importing the modules registers their rules (FAMILY_ORDER decides the unit's order).
    from . import capabilities, devices, filesystem, identity, kernel, network, process, syscalls  # noqa: F401
