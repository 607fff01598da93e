"""Union several sessions' profiles into one, keeping which session saw each fact.

Rows are the same fact when their KEY (capprobe.model) is equal; the merged row sums
counts, keeps the earliest first_seen, unions executables and targets, and lists the
sessions that saw it in `seen_in`. The policy for sessions that differ is POLICY.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from .model import NESTED, SECTIONS, Row, json_key, section_items
from .needs import KERNEL_METHODS
from .profile import ProfileError, load_profile, save_profile

POLICY = ("the first profile's run (command, user, exit) stands for the merged one and the others are "
          "listed in merged.sessions; profiles taken as different users are refused (capabilities "
          "checked as one uid say nothing for another); different hosts and architectures merge, every "
          "architecture is kept; capabilities required in any session are required; sessions whose "
          "capability methods differ merge as method A+B, and a method that is not the kernel's own "
          "(inferred) makes the merged record inferred too; complete only if every session was")

_UNION_LISTS = ("by", "targets", "alternatives", "write_uids", "owners", "modes", "renamed_from", "seen_in")


class MergeError(ProfileError):
    """Profiles that cannot be merged; the message is one line."""


def merge_profiles(profiles: list[dict], labels: list[str]) -> dict:
    """One profile holding every fact of PROFILES, each row with the LABELS of the sessions
    that saw it (`seen_in`). The inputs are not changed."""
    if not profiles or len(profiles) != len(labels):
        raise MergeError("merge needs one label per profile, and at least one profile")
    users = {_run_uid(p) for p in profiles}
    if len(users) > 1:
        raise MergeError(f"the profiles were taken as different users (uids {', '.join(map(str, sorted(users, key=str)))}): "
                         "capabilities checked as one uid say nothing for another; profile each as the service user")
    sessions = [s for p, label in zip(profiles, labels) for s in _sessions(p, label)]
    names = [s["label"] for s in sessions]
    if len(set(names)) != len(names):
        raise MergeError(f"session labels must differ (got {', '.join(names)}): rename a file")
    merged = copy.deepcopy(profiles[0])
    first_sessions = _sessions(profiles[0], labels[0])
    _label(merged, first_sessions)
    for profile, label in zip(profiles[1:], labels[1:]):
        other = copy.deepcopy(profile)
        _label(other, _sessions(profile, label))
        for path, row_type in SECTIONS.items():
            _union_section(merged, other, path, row_type)
        _union_syscalls(merged, other)
        merged["processes"] = merged["processes"] + other["processes"]
        _union_capability_summary(merged.setdefault("capabilities", {}), other.get("capabilities") or {})
        _union_run_state(merged, other)
    merged["merged"] = {"policy": POLICY, "sessions": sessions}
    return merged


def _run_uid(profile: dict):
    return (profile["run"].get("user") or {}).get("uid", 0)


def _sessions(profile: dict, label: str) -> list[dict]:
    """The sessions PROFILE stands for: its own, or those of an earlier merge."""
    if profile.get("merged", {}).get("sessions"):
        return copy.deepcopy(profile["merged"]["sessions"])
    host, run = profile.get("host") or {}, profile["run"]
    return [{"label": label, "hostname": host.get("hostname"), "kernel": host.get("kernel"),
             "architecture": host.get("architecture"), "command": run["command"],
             "started": run.get("started"), "duration": run.get("duration"),
             "capability_method": (profile.get("capabilities") or {}).get("method"),
             "complete": profile.get("complete", True)}]


def _label(profile: dict, sessions: list[dict]) -> None:
    """Mark every row and syscall of PROFILE as seen in its sessions (an earlier merge's rows keep theirs)."""
    names = [s["label"] for s in sessions]
    for path, row_type in SECTIONS.items():
        for item in section_items(profile, path):
            item.setdefault("seen_in", list(names))
    for entry in (profile.get("syscalls") or {}).values():
        entry.setdefault("seen_in", list(names))
    for proc in profile["processes"]:
        proc.setdefault("session", names[0])


def _union_section(merged: dict, other: dict, path: tuple[str, ...], row_type: type[Row]) -> None:
    theirs = section_items(other, path)
    if not theirs:
        return
    parent = merged
    for name in path[:-1]:
        parent = parent.setdefault(name, {})
    mine = parent.setdefault(path[-1], [])
    _union_rows(mine, theirs, row_type)
    mine.sort(key=lambda item: tuple(str(x) for x in json_key(row_type, item)))


def _union_rows(mine: list[dict], theirs: list[dict], row_type: type[Row]) -> None:
    index = {json_key(row_type, item): item for item in mine}
    for item in theirs:
        key = json_key(row_type, item)
        if key in index:
            _union_row(index[key], item, row_type)
        else:
            mine.append(item)
            index[key] = item


def _union_row(mine: dict, theirs: dict, row_type: type[Row] | None) -> None:
    """Fold THEIRS into MINE (the same fact): counts add up, lists union, objects recurse;
    any other field keeps the first session's value."""
    for name, value in theirs.items():
        if name not in mine or mine[name] is None:
            mine[name] = value
        elif name == "count" or name == "errors_count":
            mine[name] += value
        elif name == "first_seen":
            mine[name] = min(mine[name], value)
        elif name in _UNION_LISTS and isinstance(value, list):
            mine[name] = sorted(set(mine[name]) | set(value), key=lambda v: (v is not None, str(v)))
        elif row_type is not None and (row_type, name) in NESTED:
            _union_rows(mine[name], value, NESTED[(row_type, name)])
        elif name == "ops" and isinstance(value, dict):  # a file's {op: use}
            for op, use in value.items():
                if op in mine[name]:
                    _union_row(mine[name][op], use, None)
                else:
                    mine[name][op] = use


def _union_syscalls(merged: dict, other: dict) -> None:
    mine = merged.setdefault("syscalls", {})
    for name, entry in (other.get("syscalls") or {}).items():
        if name not in mine:
            mine[name] = entry
            continue
        mine[name]["count"] += entry["count"]
        errors = mine[name].setdefault("errors", {})
        for errno, n in (entry.get("errors") or {}).items():
            errors[errno] = errors.get(errno, 0) + n
        if not errors:
            del mine[name]["errors"]
        mine[name]["seen_in"] = sorted(set(mine[name]["seen_in"]) | set(entry["seen_in"]))


def _union_capability_summary(mine: dict, theirs: dict) -> None:
    if not theirs:
        return
    required = list(mine.get("required", []))
    required += [c for c in theirs.get("required", []) if c not in required]
    mine["required"] = sorted(required)
    methods = sorted(set((mine.get("method") or "none").split("+")) | set((theirs.get("method") or "none").split("+")))
    mine["method"] = "+".join(methods)
    if not set(methods) <= set(KERNEL_METHODS):
        for use in mine.get("uses", []):
            if use.get("status") == "required":
                use["status"] = "inferred"  # a kernel record merged with guesses stays no better than them
    for count in ("lost_events", "checks", "unparsed"):
        if count in theirs:
            mine[count] = mine.get(count, 0) + theirs[count]
    if mine.get("confirmation") != theirs.get("confirmation"):
        mine.pop("confirmation", None)  # confirmed for one session's workload, not for the union


def _union_run_state(merged: dict, other: dict) -> None:
    merged["complete"] = merged.get("complete", True) and other.get("complete", True)
    incomplete = merged.get("incomplete", []) + [i for i in other.get("incomplete", [])
                                                   if i not in merged.get("incomplete", [])]
    if incomplete:
        merged["incomplete"] = incomplete
    parser = merged.setdefault("parser", {"lines": 0, "unparsed": 0})
    for name in ("lines", "unparsed"):
        parser[name] = parser.get(name, 0) + (other.get("parser") or {}).get(name, 0)
    for name, n in (other.get("processes_not_listed") or {}).items():
        table = merged.setdefault("processes_not_listed", {})
        table[name] = table.get(name, 0) + n


def session_labels(paths: list[str]) -> list[str]:
    """A label per profile file: its name without .json/.profile.json, numbered when two agree."""
    labels: list[str] = []
    for p in paths:
        base = os.path.basename(p)
        for suffix in (".json", ".profile"):
            base = base[: -len(suffix)] if base.endswith(suffix) and len(base) > len(suffix) else base
        label, n = base, 2
        while label in labels:
            label, n = f"{base}#{n}", n + 1
        labels.append(label)
    return labels


def merge_files(paths: list[Path], dest: Path, force: bool) -> str:
    """Merge the profiles at PATHS into DEST (never one of them); the summary line to print."""
    for p in paths:
        if dest.exists() and p.exists() and os.path.samefile(p, dest):
            raise MergeError(f"{dest} is one of the inputs; merge never modifies its inputs")
    if dest.exists() and not force:
        raise MergeError(f"{dest} exists; use --force to replace it")
    profiles = [load_profile(p) for p in paths]
    labels = session_labels([str(p) for p in paths])
    merged = merge_profiles(profiles, labels)
    save_profile(merged, dest, force)
    sessions = merged["merged"]["sessions"]
    hosts = sorted({s.get("hostname") or "?" for s in sessions})
    return (f"merged {len(sessions)} sessions ({', '.join(s['label'] for s in sessions)}; host {', '.join(hosts)}; "
            "capabilities by "
            f"{merged.get('capabilities', {}).get('method', 'none')}) into {dest}")
