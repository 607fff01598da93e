"""The setup script beside the unit: the service user, then the ownership plan applied
by systemd-tmpfiles, after every path was checked against what the trace saw.

No chown or chmod of its own: systemd-tmpfiles changes each path without following
symlinks. Before it runs, each path must still be the one the profile recorded
(type, device:inode, owner) or the script stops with one line and changes nothing,
so a path the service swapped since (for a symlink to a root file) is never touched.
"""

from __future__ import annotations

import shlex

from ..paths import display_path, encode_path
from ..rules.base import RuleContext
from ..rules.evidence import identity_choice, service_user
from ..rules.ownership import Grant, ownership_plan
from .tmpfiles import tmpfiles_snippet

_CHECK = r'''refuse() { echo "$NAME setup: refusing $1: $2; nothing was changed" >&2; exit 1; }
# check PATH TYPE DEV:INO OWNER SERVICE: PATH is missing (systemd-tmpfiles creates it afresh), or
# it is a TYPE that already belongs to SERVICE (nothing new is given), or it is still the very
# file the trace saw (device:inode, owner; "-": the trace saw none, so nothing else passes)
check() {
  p=$1 want=$2 inode=$3 owner=$4 service=$5
  if [ ! -e "$p" ] && [ ! -L "$p" ]; then return 0; fi
  if [ -L "$p" ]; then kind=symlink; elif [ -d "$p" ]; then kind=dir; elif [ -f "$p" ]; then kind=file; else kind=other; fi
  [ "$kind" = "$want" ] || refuse "$p" "it is a $kind now, the trace saw a $want"
  uid=$(stat -c %u -- "$p")
  [ "$uid" = "$service" ] && return 0
  [ "$inode" != - ] && [ "$(stat -c %d:%i -- "$p")" = "$inode" ] && [ "$uid" = "$owner" ] && return 0
  refuse "$p" "it is not the file the trace saw (device:inode $inode, uid $owner; now uid $uid); re-trace on this host"
}
'''


def _check_line(g: Grant) -> str:
    st = g.recorded
    if st.get("type"):
        kind, inode, owner = st["type"], f"{st['dev']}:{st['ino']}", str(st["uid"])
    else:
        kind, inode, owner = ("dir" if g.kind == "d" else "file"), "-", "-"
    service = f'"$(id -u {shlex.quote(g.user)} 2>/dev/null || echo none)"' if g.user != "-" else "none"
    return f"check {shlex.quote(g.path.decode())} {kind} {inode} {owner} {service}"


def tmpfiles_commands(grants, conf: str) -> list[str]:
    """How the script applies CONF; rules.ownership replays this order to drop lines it would refuse."""
    files = [g for g in grants if g.kind != "d"]
    # files before the directories around them: while a directory is still root's, giving
    # a file in it away is a transition systemd-tmpfiles accepts; afterwards it would refuse
    first = ["systemd-tmpfiles --create " + " ".join(f"--prefix={shlex.quote(g.path.decode())}" for g in files)
             + f" {conf}"] if files else []
    return first + [f"systemd-tmpfiles --create {conf}"]


def setup_script(profile: dict, options) -> str:
    """A POSIX shell script that prepares the host for the unit; running it twice changes nothing more."""
    ctx = RuleContext(profile, options)
    plan = ownership_plan(ctx)
    grants = plan.grants
    conf = f"/etc/tmpfiles.d/{options.name}.conf"
    lines = ["#!/bin/sh", f"# Set-up for {options.name}.service, written by capprobe.",
             "# Review it, then run it as root before starting the unit.", "set -eu",
             f"NAME={shlex.quote(options.name)}"]
    if plan.refusals:
        lines += ["", "# Left as they are, for the operator to decide (the unit keeps a capability or says so):"]
        lines += [f"#   {display_path(encode_path(r.path))}: {r.why}" for r in plan.refusals]
    if grants:
        lines += ["", _CHECK.rstrip("\n"),
                  "command -v systemd-tmpfiles >/dev/null 2>&1 || { echo \"$NAME setup: systemd-tmpfiles not found "
                  "(this script prepares a systemd host)\" >&2; exit 1; }", ""]
        lines += [_check_line(g) for g in grants]
    if identity_choice(ctx)[0] == "user":
        user, group = (shlex.quote(n) for n in service_user(ctx))
        lines += ["", f"getent group {group} >/dev/null || groupadd --system {group}",
                  f"getent passwd {user} >/dev/null || useradd --system --gid {group} "
                  f"--no-create-home --shell /usr/sbin/nologin {user}"]
    if grants:
        lines += ["", f"# {len(grants)} path(s) given by {conf} (also beside the unit), applied without following symlinks",
                  "umask 022", "install -d /etc/tmpfiles.d", f"cat > {conf}.new <<'CAPPROBE_TMPFILES'",
                  tmpfiles_snippet(plan, options.name).rstrip("\n"), "CAPPROBE_TMPFILES",
                  f"mv -f {conf}.new {conf}"]
        lines += tmpfiles_commands(grants, conf)
    lines += ["", "if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi", ""]
    return "\n".join(lines)
