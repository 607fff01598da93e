"""The tmpfiles.d snippet beside the unit: the ownership plan as d/f/z lines.

systemd-tmpfiles changes a path through an O_PATH|O_NOFOLLOW descriptor and refuses
unsafe symlink transitions on the way (tmpfiles.d(5)), so a path the service swapped
for a symlink is never followed: the ecosystem's answer to "chown follows links".
Every path here passed validate.PLAIN_PATH, so none needs quoting.
"""

from __future__ import annotations

from ..rules.ownership import OwnershipPlan


def tmpfiles_snippet(plan: OwnershipPlan, name: str) -> str:
    """/etc/tmpfiles.d/NAME.conf: one line per grant, each after its reason."""
    lines = [f"# tmpfiles.d(5) lines for {name}.service, written by capprobe: who owns what the service writes.",
             "# Type Path Mode User Group Age"]
    for g in plan.grants:
        why = "".join(c if c.isprintable() else "?" for c in g.why)
        lines += [f"# {why}", f"{g.kind} {g.path.decode()} {g.mode} {g.user} {g.group} -"]
    return "\n".join(lines) + "\n"
