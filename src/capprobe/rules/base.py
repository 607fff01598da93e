"""The directive rule interface: small rules, each (profile) -> directives with evidence.

A rule reads the profile (through a RuleContext) and returns Directive rows. It
never formats unit-file text: values are typed (a plain word, or raw bytes for a
path or argument) and the renderer quotes them, so no rule can forget quoting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..needs import Needs, needs_of

Value = str | bytes  # str: a word from a fixed vocabulary; bytes: a path/argument from the trace


@dataclass(frozen=True)
class Directive:
    """One line of the unit, with the evidence that justifies it."""

    key: str                     # "CapabilityBoundingSet"
    values: tuple[Value, ...]    # () renders "Key=" (an empty list: nothing allowed)
    comment: str                 # why: what was seen, how often, by which executable
    section: str = "Service"
    hardening: bool = True       # False for what the service needs to run at all (ExecStart, Type...)
    rule: str = ""               # the rule that decided it (filled in by the registry)


@dataclass
class UnitOptions:
    """What the operator asked for on the command line."""

    name: str = "service"
    user: str | None = None
    group: str | None = None
    dynamic_user: bool = False
    exec_start: list[str] | None = None   # --exec "..." split like a shell would
    description: str | None = None


@dataclass
class RuleContext:
    """The profile plus derived views every rule may want (computed once)."""

    profile: dict
    options: UnitOptions
    cache: dict = field(default_factory=dict)

    @property
    def needs(self) -> Needs:
        """What the profile needs, decided once (capprobe.needs)."""
        return self.memo("needs", lambda: needs_of(self.profile))

    def memo(self, key: str, compute: Callable[[], object]):
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]


Rule = Callable[[RuleContext], Iterable[Directive]]
