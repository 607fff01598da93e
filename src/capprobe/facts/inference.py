"""Infer capabilities from a profile's strace facts ("fallback 2").

When no kernel probe saw the capability checks (old kernel, no tracefs, not
root), the strace facts still show what the program asked the kernel to do:
bind port 80, open an AF_PACKET socket, TUNSETIFF, RTM_NEWLINK ...  The rules
that turn those facts into capabilities are data, in
probes/capability_inference.toml; this module only reads the profile into flat
"facts" (one dict per observation, per fact kind), matches rules against them and
formats records.

Pure: no I/O except loading the default table.  Nothing here raises on odd
profiles: missing sections simply give no facts.
"""

from __future__ import annotations

import fnmatch
import functools
import posixpath
import re
import string
from typing import Callable, Iterable, Iterator

from ..model import behaviour_fields

INFERRED = "inferred"
DENIED = "denied"
POSSIBLE = "possible"
# When several facts collapse into one record, the strongest status wins: once
# granted it is needed, whatever later attempts did.
_STATUS_STRENGTH = {INFERRED: 3, DENIED: 2, POSSIBLE: 1}

_UNCHANGED_ID = -1


@functools.cache
def _default_table() -> dict:
    from capprobe.probes import load_table

    return load_table("capability_inference")


# --- reading the profile into facts ----------------------------------------------
#
# Each reader yields flat dicts: the fields rules match on, plus "by" (exes),
# "count" and "errno" (None when the call succeeded or the fact does not say).
# "syscall" names the syscall when its error counters must stand in for a
# missing errno (see errno_from_syscall_counters in the table).


def _network(profile: dict, section: str) -> list[dict]:
    return list((profile.get("network") or {}).get(section) or [])


def _socket_facts(profile: dict) -> Iterator[dict]:
    for row in _network(profile, "sockets"):
        # Socket rows keep no errno: a refused socket() is counted like a granted one.
        yield {**row, "errno": row.get("errno"), "syscall": "socket", "errno_known": "errno" in row}


def _bind_facts(profile: dict) -> Iterator[dict]:
    for row in _network(profile, "binds"):
        yield {**row, "errno_known": True}


def _setsockopt_facts(profile: dict) -> Iterator[dict]:
    for row in _network(profile, "setsockopts"):
        yield {**row, "errno_known": True}


def _netlink_facts(profile: dict) -> Iterator[dict]:
    for row in _network(profile, "netlink"):
        yield {**row, "detail": row.get("detail") or "", "errno_known": True}


def _ioctl_facts(profile: dict) -> Iterator[dict]:
    for row in profile.get("ioctls") or []:
        yield {**row, "errno_known": True}


def _file_facts(profile: dict) -> Iterator[dict]:
    run_uid, _run_gid, _groups = _running_user(profile)
    for entry in profile.get("files") or []:
        path = entry.get("path", "")
        # The owner capprobe saw at the end of the run: chmod/utimes/xattrs of a file the
        # running user does not own need CAP_FOWNER (e.g. after a restore chowned it away).
        owner = (entry.get("stat") or {}).get("uid")
        ownership = {"owner_uid": owner,
                     "owner_is_foreign": owner is not None and run_uid is not None and owner != run_uid}
        for op, use in (entry.get("ops") or {}).items():
            yield {"path": path, "op": op, "errno": None, "count": use.get("count", 1),
                   "by": use.get("by", []), "errno_known": True, **ownership}
        for failure in entry.get("failed") or []:
            yield {"path": path, "op": failure.get("op"), "errno": failure.get("errno"),
                   "count": failure.get("count", 1), "by": failure.get("by", []), "errno_known": True,
                   **ownership}


# What an op asks of which inode (fs/namei.c): creating or removing an entry needs write
# and search on the directory (may_create/may_delete), writing or testing W_OK needs write
# on the path, reading needs read.  The access names are what the table's rules match.
_ENTRY_OPS = frozenset({"create", "mkdir", "mknod", "symlink", "link", "rename_to",
                        "rename_from", "delete", "rmdir"})
_DAC_NEEDS = {**{op: ("directory", "write", 0o3) for op in _ENTRY_OPS},
              "write": ("file", "write", 0o2), "truncate": ("file", "write", 0o2),
              "write_test": ("file", "write", 0o2), "read": ("file", "read", 0o4)}
# Permission on these is not the mode bits (net_ctl_permissions, sysfs attributes, /proc/PID gone).
_NOT_MODE_CHECKED = ("/proc/", "/sys/")
_OWNER_CHANGING_OPS = ("chown", "chmod")


def _mode_bits_for_root(st: dict, groups: set[int]) -> int | None:
    """rwx bits (0-7) the class root falls in (owner, group, other) grants; None without a stat."""
    try:
        mode = int(st["mode"], 8)
        if st["uid"] == 0:
            return (mode >> 6) & 7
        return (mode >> 3) & 7 if st.get("gid") in groups else mode & 7
    except (KeyError, TypeError, ValueError):
        return None


def _root_all_along(profile: dict) -> bool:
    """The run started as root and no process switched its uid away from root."""
    if _running_user(profile)[0] != 0:
        return False
    for process in profile.get("processes") or []:
        for change in process.get("identity_changes") or []:
            if change.get("call") in ("setuid", "setreuid", "setresuid") and change.get("result") == 0:
                ids = (_parse_id(a) for a in (change.get("args") or "").split(","))
                if any(i not in (None, 0, _UNCHANGED_ID) for i in ids):
                    return False
    return True


def _dac_facts(profile: dict) -> Iterator[dict]:
    """One fact per op root did on a path whose owner and mode (at the end of the run) deny root.

    Root passes generic_permission() on another user's inode only through CAP_DAC_OVERRIDE
    (CAP_DAC_READ_SEARCH for reads).  Root did a write if the path's write_uids hold the
    uid 0 (null: the uid the run started as); reads and refused ops keep no uid, so they
    count only when the whole run stayed root.
    """
    run_uid, _run_gid, groups = _running_user(profile)
    all_root = _root_all_along(profile)
    entries = {e.get("path"): e for e in profile.get("files") or []}
    for path, entry in entries.items():
        if not path or path.startswith(_NOT_MODE_CHECKED):
            continue
        write_uids = entry.get("write_uids")
        root_wrote = all_root if write_uids is None else (0 in write_uids or (None in write_uids and run_uid == 0))
        observed = [(op, use, None, root_wrote if op != "read" else all_root)
                    for op, use in (entry.get("ops") or {}).items()]
        observed += [(f.get("op"), f, f.get("errno"), all_root) for f in entry.get("failed") or []]
        for op, use, errno, by_root in observed:
            if op not in _DAC_NEEDS or not by_root:
                continue
            target_kind, access, wanted = _DAC_NEEDS[op]
            target = posixpath.dirname(path) if target_kind == "directory" else path
            st = entry.get("dir_stat" if target_kind == "directory" else "stat") or {}
            bits = _mode_bits_for_root(st, groups)
            if bits is None or bits & wanted == wanted:
                continue
            # The owner or mode seen at the end may not be the one the op met.
            target_ops = (entries.get(target) or {}).get("ops") or {}
            changed_later = [o for o in _OWNER_CHANGING_OPS
                             if (target_ops.get(o) or {}).get("first_seen", 0) > (use.get("first_seen") or 0)]
            yield {"path": path, "op": op, "access": access, "target": target,
                   "target_uid": st.get("uid"), "target_mode": st.get("mode"),
                   "errno": errno, "count": use.get("count", 1), "by": use.get("by", []),
                   "errno_known": True,
                   "uncertain": f"{target} had {' and '.join(changed_later)} after it: its owner or mode then may differ"
                   if changed_later else ""}


def _parse_id(text: str) -> int | None:
    try:
        value = int(text.strip(), 0)
    except (ValueError, AttributeError):
        return None
    # strace prints "unchanged" as -1; a raw 32-bit all-ones is the same thing.
    return _UNCHANGED_ID if value in (-1, 0xFFFFFFFF) else value


def _running_user(profile: dict) -> tuple[int | None, int | None, set[int]]:
    user = (profile.get("run") or {}).get("user") or {}
    uid, gid = user.get("uid"), user.get("gid")
    groups = set(user.get("groups") or [])
    if gid is not None:
        groups.add(gid)
    return uid, gid, groups


def _chown_facts(profile: dict) -> Iterator[dict]:
    """One fact per (file, new owner, outcome).

    The profile keeps the owners a file was given but not which chown call gave
    which, nor whether that call succeeded.  With only successes (or only
    failures) the outcome is clear; with both and several owners it is not, and
    the successes become "possible".
    """
    run_uid, _run_gid, run_groups = _running_user(profile)
    for entry in profile.get("files") or []:
        owners = entry.get("owners") or []
        if not owners:
            continue
        granted = (entry.get("ops") or {}).get("chown")
        refused = [f for f in entry.get("failed") or [] if f.get("op") == "chown"]
        ambiguous = bool(granted) and bool(refused) and len(owners) > 1
        outcomes = []
        if granted:
            outcomes.append((None, granted.get("count", 1), granted.get("by", []), ambiguous))
        for failure in refused:
            outcomes.append((failure.get("errno"), failure.get("count", 1), failure.get("by", []), ambiguous))
        for owner in owners:
            uid_text, _, gid_text = owner.partition(":")
            new_uid, new_gid = _parse_id(uid_text), _parse_id(gid_text)
            fact = {
                "path": entry.get("path", ""), "owner": owner,
                "new_uid": new_uid, "new_gid": new_gid,
                "uid_is_foreign": new_uid not in (None, _UNCHANGED_ID) and run_uid is not None and new_uid != run_uid,
                "gid_is_foreign": new_gid not in (None, _UNCHANGED_ID) and bool(run_groups) and new_gid not in run_groups,
            }
            for errno, count, by, unsure in outcomes:
                yield {**fact, "errno": errno, "count": count, "by": by, "errno_known": True,
                       "uncertain": "the profile does not say which chown call failed" if unsure else ""}


def _behaviour_facts(profile: dict) -> Iterator[dict]:
    for row in profile.get("behaviour") or []:
        # Kinds whose rows carry no errno fall back to the syscall counters. An older profile
        # has the fields only in its detail text: behaviour_fields reads them from there.
        detail = row.get("detail") or ""
        fields = {**behaviour_fields(row.get("kind") or "", detail), **row}
        yield {**fields, "detail": detail, "errno_known": fields["errno"] is not None}


# Which id a call sets, by argument position: ("uid", "r"), ...
_ID_CALLS = {
    "setuid": ("uid", None), "setreuid": ("uid", "re"), "setresuid": ("uid", "res"),
    "setgid": ("gid", None), "setregid": ("gid", "re"), "setresgid": ("gid", "res"),
}


def _needs_privilege_and_apply(call: str, ids: list[int], state: dict, succeeded: bool) -> bool:
    """Whether the kernel demands CAP_SETUID/CAP_SETGID for this change; updates `state`.

    state[kind] is [real, effective, saved].  Kernel rules (kernel/sys.c): without
    the capability, setuid(x) needs x in {real, saved}; setreuid's real must be in
    {real, effective} and its effective in {real, effective, saved}; setresuid's
    three in {real, effective, saved}.  -1 leaves an id unchanged.
    """
    kind, layout = _ID_CALLS[call]
    real, effective, saved = state[kind]
    if layout is None:
        (new,) = ids[:1] or [_UNCHANGED_ID]
        needs = new not in (real, saved)
        if succeeded and new != _UNCHANGED_ID:
            # A privileged caller sets all three; we only get here privileged if
            # effective id 0 (root) or the change needed the capability.
            state[kind] = [new, new, new] if needs or effective == 0 else [real, new, saved]
        return needs
    if layout == "re":
        new_real, new_effective = (ids + [_UNCHANGED_ID] * 2)[:2]
        needs = (new_real != _UNCHANGED_ID and new_real not in (real, effective)) or \
                (new_effective != _UNCHANGED_ID and new_effective not in (real, effective, saved))
        if succeeded:
            next_real = real if new_real == _UNCHANGED_ID else new_real
            next_effective = effective if new_effective == _UNCHANGED_ID else new_effective
            changes_saved = new_real != _UNCHANGED_ID or (new_effective != _UNCHANGED_ID and new_effective != real)
            state[kind] = [next_real, next_effective, next_effective if changes_saved else saved]
        return needs
    wanted = (ids + [_UNCHANGED_ID] * 3)[:3]
    needs = any(new != _UNCHANGED_ID and new not in (real, effective, saved) for new in wanted)
    if succeeded:
        state[kind] = [old if new == _UNCHANGED_ID else new for old, new in zip(state[kind], wanted)]
    return needs


def _exe_at(process: dict, when: float | None) -> str:
    """The program a process was running at `when` (it may have exec'd since)."""
    exe = process.get("exe") or ""
    if when is None:
        return exe
    earlier = [e for e in process.get("execs") or [] if e.get("time") is not None and e["time"] <= when]
    return earlier[-1].get("path", exe) if earlier else exe


def _identity_facts(profile: dict) -> Iterator[dict]:
    """Replay each process's identity changes from the ids it started with.

    A process starts with its parent's ids at the moment it appeared; the first
    process with the running user's.
    """
    run_uid, run_gid, _groups = _running_user(profile)
    processes = {p.get("pid"): p for p in profile.get("processes") or []}

    def ids_at(pid, when: float | None, depth: int = 0) -> dict:
        process = processes.get(pid)
        if process is None or depth > 64:
            return {"uid": [run_uid] * 3, "gid": [run_gid] * 3}
        state = ids_at(process.get("ppid"), process.get("first_seen"), depth + 1)
        for change in process.get("identity_changes") or []:
            if when is not None and (change.get("time") or 0) > when:
                break
            if change.get("call") in _ID_CALLS and change.get("result") == 0:
                ids = [_parse_id(a) for a in (change.get("args") or "").split(",")]
                _needs_privilege_and_apply(change["call"], [i for i in ids if i is not None], state, True)
        return state

    for process in processes.values():
        state = ids_at(process.get("ppid"), process.get("first_seen"))
        for change in process.get("identity_changes") or []:
            call = change.get("call")
            if call not in _ID_CALLS and call != "setgroups":
                continue  # capset, setfsuid: not judged (setfsuid returns the old id, not 0)
            args = change.get("args") or ""
            succeeded = change.get("result") == 0
            before = ""
            if call == "setgroups":
                needs = True  # may_setgroups(): CAP_SETGID, whatever the list
            else:
                kind = _ID_CALLS[call][0]
                before = "/".join(str(i) for i in state[kind])
                ids = [i for i in (_parse_id(a) for a in args.split(",")) if i is not None]
                needs = _needs_privilege_and_apply(call, ids, state, succeeded)
            errno = None if succeeded else (change.get("errno") or "EUNKNOWN")
            yield {"call": call, "args": args, "before": before, "needs_privilege": needs,
                   "errno": errno, "count": 1, "by": [_exe_at(process, change.get("time"))],
                   "errno_known": True}


_FACT_READERS: dict[str, Callable[[dict], Iterable[dict]]] = {
    "socket": _socket_facts,
    "bind": _bind_facts,
    "setsockopt": _setsockopt_facts,
    "netlink": _netlink_facts,
    "ioctl": _ioctl_facts,
    "file": _file_facts,
    "chown": _chown_facts,
    "behaviour": _behaviour_facts,
    "identity": _identity_facts,
    "dac": _dac_facts,
}


# --- matching --------------------------------------------------------------------


def _value_matches(value, wanted) -> bool:
    if isinstance(wanted, str) and isinstance(value, str):
        return fnmatch.fnmatchcase(value, wanted)
    return value == wanted


def _condition_holds(value, condition) -> bool:
    if isinstance(condition, list):
        return any(_value_matches(value, wanted) for wanted in condition)
    if isinstance(condition, dict):
        if "below" in condition and not (isinstance(value, int) and value < condition["below"]):
            return False
        if "at_least" in condition and not (isinstance(value, int) and value >= condition["at_least"]):
            return False
        if "not" in condition and any(_value_matches(value, wanted) for wanted in condition["not"]):
            return False
        return True
    return _value_matches(value, condition)


def _fact_matches(fact: dict, match: dict) -> bool:
    for field, condition in match.items():
        value = fact.get(field)
        if field == "errno" and value is None:
            value = ""  # the table spells "no error" as ""
        if not _condition_holds(value, condition):
            return False
    return True


def _kernel_version(profile: dict) -> tuple[int, ...] | None:
    release = ((profile.get("host") or {}).get("kernel") or "")
    numbers = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    return tuple(int(n) for n in numbers.groups() if n is not None) if numbers else None


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split("."))


def _kernel_condition(rule: dict, kernel: tuple[int, ...] | None) -> bool | None:
    """True/False when the rule's kernel condition holds or not; None when unknown."""
    if "kernel_below" not in rule and "kernel_at_least" not in rule:
        return True
    if kernel is None:
        return None
    if "kernel_below" in rule and not kernel < _version(rule["kernel_below"]):
        return False
    if "kernel_at_least" in rule and not kernel >= _version(rule["kernel_at_least"]):
        return False
    return True


def _refused_fraction(profile: dict, syscall: str, denied_errnos: set[str]) -> tuple[int, int]:
    """(refused, total) calls of `syscall` by its error counters."""
    counters = (profile.get("syscalls") or {}).get(syscall) or {}
    refused = sum(n for errno, n in (counters.get("errors") or {}).items() if errno in denied_errnos)
    return refused, counters.get("count", 0)


def _status(fact: dict, rule: dict, profile: dict, table: dict) -> tuple[str, str]:
    """(status, note) of one fact under one rule; note explains an uncertain status."""
    denied_errnos = set(rule.get("denied_errnos") or table.get("denied_errnos") or ["EPERM", "EACCES"])
    ok_status = rule.get("status", INFERRED)
    errno = fact.get("errno")
    if errno in denied_errnos:
        return DENIED, ""
    if errno is not None:
        return POSSIBLE, f"the call failed with {errno}, maybe before the check"
    if fact.get("uncertain"):
        return POSSIBLE, fact["uncertain"]
    syscall = fact.get("syscall")
    if not fact.get("errno_known") and syscall in (table.get("errno_from_syscall_counters") or []):
        refused, total = _refused_fraction(profile, syscall, denied_errnos)
        if refused and refused >= total:
            return DENIED, ""
        if refused:
            return POSSIBLE, f"{refused} of {total} {syscall}() calls were refused; the profile does not say which"
    return ok_status, ""


def _behaviour_present(profile: dict, patterns: list[dict]) -> bool:
    for row in profile.get("behaviour") or []:
        for pattern in patterns:
            if fnmatch.fnmatchcase(row.get("kind", ""), pattern.get("kind", "*")) and \
               fnmatch.fnmatchcase(row.get("detail", ""), pattern.get("detail", "*")):
                return True
    return False


class _Fields(dict):
    """Template fields: a missing one prints as "?" instead of raising."""

    def __missing__(self, key):
        return "?"


def _fill(template: str, fields: dict) -> str:
    try:
        return string.Formatter().vformat(template, (), _Fields(
            {k: ("" if v is None else v) for k, v in fields.items()}))
    except (ValueError, IndexError):
        return template


def _capabilities_for(fact: dict, rule: dict) -> list[tuple[str, str]]:
    """[(capability, implied_reason)] a matching fact stands for."""
    if rule.get("capabilities_from") == "netlink_ops":
        from capprobe.facts.netlink import NetlinkOp, capabilities_implied

        op = NetlinkOp(fact.get("protocol") or "", fact.get("op") or "", fact.get("detail") or "",
                       bool(fact.get("changes_state")))
        return capabilities_implied([op])
    capability = rule.get("capability")
    return [(capability, "")] if capability else []


# --- public API ------------------------------------------------------------------


def infer_capabilities(profile: dict, table: dict | None = None) -> list[dict]:
    """Capability records inferred from a capprobe/profile/v1 profile's strace facts.

    table: probes/capability_inference.toml (the default) or a dict of that shape.
    Each record: capability, status ("inferred" | "denied" | "possible"), method
    ("inferred"), rule (id), reason, exe, count, evidence.  Records are unique by
    (capability, rule, exe, reason); merged facts add their counts and keep the
    strongest status (inferred > denied > possible).  Order: first seen.
    """
    table = table if table is not None else _default_table()
    kernel = _kernel_version(profile)
    records: dict[tuple, dict] = {}
    fact_cache: dict[str, list[dict]] = {}
    for rule in table.get("rule") or []:
        reader = _FACT_READERS.get(rule.get("fact", ""))
        if reader is None:
            continue
        kernel_holds = _kernel_condition(rule, kernel)
        if kernel_holds is False:
            continue
        if rule["fact"] not in fact_cache:
            fact_cache[rule["fact"]] = list(reader(profile))
        uncertain_by_behaviour = _behaviour_present(profile, rule.get("uncertain_if_behaviour") or [])
        for fact in fact_cache[rule["fact"]]:
            if not _fact_matches(fact, rule.get("match") or {}):
                continue
            status, note = _status(fact, rule, profile, table)
            if status == INFERRED and kernel_holds is None:
                status, note = POSSIBLE, "the kernel version is unknown"
            if status == INFERRED and uncertain_by_behaviour:
                status, note = POSSIBLE, "a user namespace was also created, which grants it inside"
            outcome = fact.get("errno") or "ok"
            # Empty fields (a netlink op without detail) would leave double spaces.
            evidence = " ".join(_fill((table.get("evidence") or {}).get(rule["fact"], "{kind}"),
                                      {**fact, "outcome": outcome}).split())
            for capability, implied_reason in _capabilities_for(fact, rule):
                reason = _fill(rule.get("reason", "{implied_reason}"), {**fact, "implied_reason": implied_reason})
                if note:
                    reason = f"{reason} [{note}]"
                for exe in fact.get("by") or [""]:
                    key = (capability, rule.get("id", ""), exe, reason)
                    record = records.get(key)
                    if record is None:
                        records[key] = {
                            "capability": capability, "status": status, "method": "inferred",
                            "rule": rule.get("id", ""), "reason": reason, "exe": exe,
                            "count": fact.get("count", 1), "evidence": evidence,
                        }
                        continue
                    record["count"] += fact.get("count", 1)
                    if _STATUS_STRENGTH[status] > _STATUS_STRENGTH[record["status"]]:
                        record["status"], record["evidence"] = status, evidence
    return list(records.values())


def inferred_required_set(records: Iterable[dict]) -> list[str]:
    """Sorted capabilities the records show as needed (status "inferred" only).

    "possible" is a guess and "denied" shows the program ran without it, so
    neither makes a capability required.
    """
    return sorted({r["capability"] for r in records if r.get("status") == INFERRED})
