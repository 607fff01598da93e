"""systemd's syscall groups (@system-service, @privileged, ...), expanded to plain names.

The edge module for the syscall-filter rule: it runs `systemd-analyze
syscall-filter` on this host, because the systemd that will load the unit is the
one whose groups count (they change between releases: 252.39 has fchmodat2 in
@file-system, older 252s do not).  Without systemd-analyze it falls back to the
shipped table probes/syscall_groups.toml, a copy of one host's output
(regenerate with `python3 -m capprobe.syscall_groups > probes/syscall_groups.toml`).

Format of `systemd-analyze syscall-filter` (measured on systemd 252.39):

    @default                                  group header, column 0
        # System calls that are always permitted   description, indented
        arch_prctl                            member, indented
        @obsolete                             reference to another group, indented
                                              blank line ends the group
    # Ungrouped System Calls (known but not included in any of the groups except @known):
    #   arc_gettls                            trailing reports, column-0 comments:
    # Unlisted System Calls (supported by the local kernel, but not ...):
    #   cachestat                             neither is a group; both are skipped

Group members include names of every architecture (arm_fadvise64_64, osf_*):
systemd resolves them through libseccomp at load time and skips those the
native architecture lacks.  @known lists every name systemd knows (for an
allow-list it is the set of names that may be written at all).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import lru_cache

GroupTable = dict[str, list[str]]   # "@group" -> members as printed, "@other" references kept


def parse_syscall_filter_output(text: str) -> GroupTable:
    """The groups of `systemd-analyze syscall-filter` output, references not yet expanded."""
    groups: GroupTable = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
            continue
        word = line.strip()
        if not word or not line[0].isspace():
            # A blank line ends the group; a column-0 "# ..." opens a trailing report.
            current = None
            continue
        if current is None or word.startswith("#"):
            continue   # the group's description, or an entry of a trailing report
        current.append(word)
    return groups


def expand_groups(table: GroupTable) -> dict[str, frozenset[str]]:
    """Every group as the plain syscall names it allows, references followed recursively."""
    expanded: dict[str, frozenset[str]] = {}

    def expand(group: str, path: tuple[str, ...]) -> frozenset[str]:
        if group in expanded:
            return expanded[group]
        names: set[str] = set()
        for member in table.get(group, ()):
            if member.startswith("@"):
                if member not in path:   # a cycle would be a systemd bug; do not recurse forever
                    names |= expand(member, path + (member,))
            else:
                names.add(member)
        expanded[group] = frozenset(names)
        return expanded[group]

    for group in table:
        expand(group, (group,))
    return expanded


def systemd_version() -> str | None:
    """'252 (252.39-1~deb12u2)' from `systemd-analyze --version`, None without it."""
    out = _run(["systemd-analyze", "--version"])
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("systemd ").strip() or None


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _from_host() -> tuple[GroupTable, str] | None:
    text = _run(["systemd-analyze", "syscall-filter"])
    table = parse_syscall_filter_output(text or "")
    # Without these two the output is not what this parser was written for.
    if "@system-service" not in table or "@known" not in table:
        return None
    return table, f"systemd-analyze syscall-filter (systemd {systemd_version() or '?'})"


def _from_shipped_table() -> tuple[GroupTable, str]:
    from capprobe.probes import load_table
    data = load_table("syscall_groups")
    return ({g: list(m) for g, m in data["groups"].items()},
            f"probes/syscall_groups.toml (systemd {data['systemd_version']})")


@lru_cache(maxsize=1)
def _load() -> tuple[dict[str, frozenset[str]], str]:
    table, origin = _from_host() or _from_shipped_table()
    return expand_groups(table), origin


def syscall_groups() -> dict[str, frozenset[str]]:
    """{"@system-service": frozenset({"read", ...}), ...}: this host's systemd, else the shipped table."""
    return dict(_load()[0])


def syscall_groups_origin() -> str:
    """Where syscall_groups() came from, e.g. 'systemd-analyze syscall-filter (systemd 252 (...))'."""
    return _load()[1]


def render_groups_toml(table: GroupTable, version: str) -> str:
    """probes/syscall_groups.toml text for TABLE (members as printed, references kept)."""
    lines = [
        "# systemd's syscall groups, the fallback for capprobe.syscall_groups when this",
        "# host has no systemd-analyze.  Generated by `python3 -m capprobe.syscall_groups`",
        f"# from `systemd-analyze syscall-filter` of systemd {version}.",
        "# Members are as systemd prints them: \"@name\" entries are references to other",
        "# groups, expanded when loaded.  Do not edit by hand; regenerate.",
        "",
        f'systemd_version = "{version}"',
        "",
        "[groups]",
    ]
    for group, members in table.items():
        lines.append(f'"{group}" = [')
        lines.extend(f'    "{m}",' for m in members)
        lines.append("]")
    return "\n".join(lines) + "\n"


def main() -> int:
    found = _from_host()
    if found is None:
        print("systemd-analyze syscall-filter is not available here", file=sys.stderr)
        return 1
    sys.stdout.write(render_groups_toml(found[0], systemd_version() or "unknown"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
