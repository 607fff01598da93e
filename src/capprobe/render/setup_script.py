"""The setup script beside the unit: user, directories and ownership (seed 000's manual steps)."""

from __future__ import annotations

import os
import shlex


from ..rules.base import RuleContext
from ..rules.evidence import identity_choice, ownership_alternative
from ..rules.identity import primary_group
from ..rules.filesystem import read_write_plan


def _q(raw: bytes) -> str:
    return shlex.quote(os.fsdecode(raw))


def setup_script(profile: dict, options, result) -> str:
    """A POSIX shell script that prepares the host for the unit; safe to run twice."""
    ctx = RuleContext(profile, options)
    kind, _ = identity_choice(ctx)
    lines = ["#!/bin/sh", f"# Set-up for {options.name}.service, written by capprobe.",
             "# Review it, then run it as root before starting the unit.", "set -eu", ""]
    user = group = None
    if kind == "user":
        user = options.user or profile["run"]["user"].get("name")
        group = options.group or primary_group(user) or user  # the same Group= the unit has
        lines += [f"getent group {shlex.quote(group)} >/dev/null || groupadd --system {shlex.quote(group)}",
                  f"getent passwd {shlex.quote(user)} >/dev/null || useradd --system --gid {shlex.quote(group)} "
                  f"--no-create-home --shell /usr/sbin/nologin {shlex.quote(user)}", ""]
    paths, _managed, _notes = read_write_plan(ctx)
    chowned: set[bytes] = set()
    for p in paths:
        if not p.startswith((b"/tmp/", b"/var/tmp/", b"/run/", b"/proc/", b"/sys/", b"/dev/")) and \
                p not in (b"/", b"/etc", b"/usr", b"/var", b"/opt"):
            lines.append(f"[ -e {_q(p)} ] || mkdir -p {_q(p)}")
            if user:
                lines.append(f"chown {shlex.quote(user)}:{shlex.quote(group)} {_q(p)}")
                lines.append(f"chmod u+rwX {_q(p)}")
                chowned.add(p)
    dropped, owned = ownership_alternative(ctx)
    if dropped and user:
        lines += ["", f"# instead of {' '.join(dropped)}: the service user owns what it needed them for"]
        for p in owned:
            if p in chowned:
                continue  # already given to the service user above
            else:
                lines.append(f"chown {shlex.quote(user)}:{shlex.quote(group)} {_q(p)}")
    lines += ["", "if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi", ""]
    return "\n".join(lines)


