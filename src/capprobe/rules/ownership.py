"""Who must own what before the unit starts: one plan that the setup script, its tmpfiles.d
snippet and the unit's capability lines all read.

Each Grant becomes one tmpfiles.d line (systemd-tmpfiles changes ownership without
following symlinks). Paths the allow-list refuses (validate.ownership_refusal) are
left as they are and named for the operator; a secret the service only reads keeps
CAP_DAC_READ_SEARCH rather than being handed over. Nothing is given that the service
makes itself in a directory of its own, or whose owner it sets itself (chown: a restore),
and no line is written that systemd-tmpfiles would refuse as an unsafe path transition.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
from dataclasses import dataclass

from ..model import WRITE_NEED_OPS, WRITE_OPS
from ..paths import decode_path
from ..validate import ownership_refusal
from .base import RuleContext
from .evidence import (API_FILESYSTEMS, DIRECTORY_OPS, OWNERSHIP_CAPS, OWNERSHIP_MAX_PATHS, TMP_DIRS, created_paths,
                       opened_managed_roots, foreign_writer, identity_choice, kernel_required_capabilities,
                       managed_directory, managed_root, recorded_stats, service_user, show, under, written_files)

MAX_GRANTS = 200  # past this many paths, ownership is a decision for the operator, not a list


@dataclass(frozen=True)
class Grant:
    """One tmpfiles.d line: d (directory, created if missing), f (file, created if missing),
    z (adjust an existing path); "-" leaves the mode or owner as it is."""

    kind: str
    path: bytes
    mode: str
    user: str
    group: str
    why: str
    recorded: dict  # the profile's stat of PATH at the end of the trace ({} when none)


@dataclass(frozen=True)
class Refusal:
    path: bytes
    why: str


@dataclass(frozen=True)
class OwnershipPlan:
    grants: tuple[Grant, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    secrets_read: tuple[bytes, ...] = ()  # not readable by the service user, and not given away


@functools.cache
def _user_ids(name: str) -> tuple[int | None, set[int]]:
    """(uid, gids) of NAME on this host; (None, set()) when the setup script has yet to create it."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None, set()
    return pw.pw_uid, {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}


def _can_read(st: dict, uid: int | None, gids: set[int], directory: bool) -> bool:
    mode = int(st["mode"], 8)
    need = 0o5 if directory else 0o4
    if uid is not None and st.get("uid") == uid:
        return mode >> 6 & need == need
    if st.get("gid") in gids:
        return mode >> 3 & need == need
    return mode & need == need


def _write_targets(ctx: RuleContext) -> list[tuple[str, bytes, str, dict]]:
    """(tmpfiles kind, path, why, file entry) for what the service writes outside systemd's
    managed directories: the file itself when that suffices, its directory when entries change."""
    created = created_paths(ctx)
    out = []
    for p, f in written_files(ctx):
        ops = set(f["ops"]) & WRITE_NEED_OPS  # a directory tested writable is owned like one written
        if under(p, API_FILESYSTEMS) or under(p, TMP_DIRS):
            continue
        if managed_directory(p, ops) is not None and managed_root(p, ops) not in opened_managed_roots(ctx):
            continue  # StateDirectory= and friends: systemd gives it to the unit's user
        why = f"{','.join(sorted(ops))} by the service"
        if "mkdir" in ops:
            out.append(("d", p, why, f))
        elif ops & DIRECTORY_OPS:
            # renames, deletes and links change the directory: the file alone does not suffice
            out.append(("d", os.path.dirname(p), f"{why} ({show(p)})", f))
        elif (recorded_stats(ctx).get(p) or {}).get("type") == "dir":
            out.append(("z", p, why, f))
        else:
            out.append(("f" if p in created else "z", p, why, f))
    return out


def _owner_for(ctx: RuleContext, f: dict) -> tuple[str, str] | None:
    """Who must own what entry F names: the service user, or the user a root-started daemon
    switched to before writing it; None when root wrote it for a root unit."""
    kind, _ = identity_choice(ctx)
    if kind == "user":
        return service_user(ctx)
    uid = foreign_writer(ctx, f) if kind == "root" else None
    if uid is None:
        return None
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return str(uid), str(uid)
    return pw.pw_name, _group_name(pw.pw_gid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _uid_of(user: str) -> int | str:
    """USER's uid on this host, or its name when the setup script has yet to create it."""
    uid = _user_ids(user)[0]
    return user if uid is None else uid


def _owned_by(owner: int | str | None) -> str:
    return "missing" if owner is None else f"{_user_name(owner) if isinstance(owner, int) else owner}'s"


def _owner_before(path: bytes, stats: dict[bytes, dict]) -> int | None:
    """PATH's owner as the trace left it; this host's for a directory the trace did not record
    (the setup script runs here); None for a path that does not exist."""
    st = stats.get(path) or {}
    if "uid" in st or st.get("missing"):
        return st.get("uid")
    try:
        return os.lstat(path).st_uid
    except OSError:
        return None


def _unsafe_transition(path: bytes, last: bool, owner) -> str | None:
    """Why systemd-tmpfiles stops on the way to PATH when OWNER(p) is p's owner, or None.
    It opens a path from / one entry at a time and refuses an entry below a directory of an
    unprivileged user that is not that user's too (chase() with CHASE_SAFE): up to the parent
    for d and f lines, the path itself too for z lines."""
    parts = path.split(b"/")[1:]
    walk = [b"/" + b"/".join(parts[:i + 1]) for i in range(len(parts) if last else len(parts) - 1)]
    for above, below in zip([b"/", *walk], walk):
        a, b = owner(above), owner(below)
        if a not in (None, 0) and a != b:
            return (f"systemd-tmpfiles would refuse its line: {show(below)} ({_owned_by(b)}) lies in "
                    f"{show(above)} ({_owned_by(a)}), an unsafe path transition")
    return None


def _tmpfiles_refusals(grants: dict[bytes, Grant], stats: dict[bytes, dict]) -> dict[bytes, str]:
    """Path -> why, for each grant whose line systemd-tmpfiles would refuse when the setup script
    runs: first the lines for files and existing directories (its --prefix pass) while the
    directories around them are as traced, then every line, parents first (tmpfiles' order),
    then all again as a second run finds the host."""
    after = {p: _uid_of(g.user) for p, g in grants.items() if g.user != "-"}
    first = [g.path for g in grants.values() if g.kind != "d"]
    prefix_pass = [p for p in sorted(grants) if any(p == f or p.startswith(f + b"/") for f in first)]
    refused: dict[bytes, str] = {}
    done: set[bytes] = set()
    for p in prefix_pass + sorted(grants):
        why = _unsafe_transition(p, grants[p].kind == "z",
                                 lambda q: after[q] if q in done and q in after else _owner_before(q, stats))
        if why:
            refused.setdefault(p, why)
        else:
            done.add(p)
    for p in sorted(grants):
        why = _unsafe_transition(p, grants[p].kind == "z", lambda q: after.get(q, _owner_before(q, stats)))
        if why:
            refused.setdefault(p, why)
    return refused


def ownership_plan(ctx: RuleContext) -> OwnershipPlan:
    def compute():
        stats = recorded_stats(ctx)
        created = created_paths(ctx)
        ops_of = {decode_path(f["path"]): set(f["ops"]) for f in ctx.profile["files"]}
        grants: dict[bytes, Grant] = {}
        refusals: dict[bytes, Refusal] = {}

        def consider(kind: str, path: bytes, mode: str, user: str, group: str, why: str):
            st = stats.get(path) or {}
            owned = st.get("uid") is not None and user != "-" and _user_ids(user)[0] == st.get("uid")
            names = {ctx.options.name, user, service_user(ctx)[0] if identity_choice(ctx)[0] == "user" else ""}
            refused = ownership_refusal(path, names, path in created, owned)
            if refused:
                refusals.setdefault(path, Refusal(path, refused))
            elif path not in grants or kind == "d":
                grants[path] = Grant(kind, path, mode, user, group, why, st)

        def in_users_directory(path: bytes, user: str) -> bool:
            """Whether PATH's directory is USER's when the service works in it: one the plan gives
            or USER owns, or one the service itself makes in such a directory."""
            parent = os.path.dirname(path)
            while parent in created and parent not in grants and parent != b"/":
                parent = os.path.dirname(parent)
            g = grants.get(parent)
            owner = _uid_of(g.user) if g and g.user != "-" else _owner_before(parent, stats)
            return owner == _uid_of(user)

        # parents before the entries in them: whether a directory is given decides about its entries
        for kind, path, why, f in sorted(_write_targets(ctx), key=lambda t: t[1]):
            owner = _owner_for(ctx, f)
            if owner is None:
                continue
            user, group = owner
            st = stats.get(path) or {}
            ops = ops_of.get(path, set())
            in_own = in_users_directory(path, user)
            if "chown" in ops:
                # the service gives it its owner itself (a restore): handing it over would undo that
                if not in_own:
                    refusals.setdefault(path, Refusal(path, "the service sets its owner itself (chown); its "
                                                            "directory is not the service user's"))
                continue
            # O_CREAT alone does not tell a new file from an old one; mkdir, or an owner that is
            # no one else's, does
            if in_own and path in created and ("mkdir" in ops or st.get("uid") in (None, _uid_of(user))):
                continue  # the owner's from the moment it exists: nothing to give
            if st.get("uid") is not None and _user_ids(user)[0] == st["uid"]:
                # already the owner's (Debian's /var/lib/NAME): the line changes nothing here and
                # creates the same on a fresh host
                group = _group_name(st["gid"])
            mode = "-" if kind == "z" else st.get("mode") or ("0755" if kind == "d" else "0600")
            consider(kind, path, mode, user, group, why if foreign_writer(ctx, f) is None
                     else f"{why} as {user}, after the daemon left root")

        for root in sorted(opened_managed_roots(ctx)):
            st = stats.get(root) or {}
            if st.get("uid") not in (None, 0) and st.get("type") == "dir":
                # already a user's (Debian's /run/NAME): the same on a fresh host, and never
                # re-owned by a *Directory=
                user = _user_name(st["uid"])
                consider("d", root, st["mode"], user, _group_name(st["gid"]),
                         f"the daemon's own directory, {user}'s: no *Directory= re-owns it")

        secrets: list[bytes] = []
        if identity_choice(ctx)[0] == "user":
            user, group = service_user(ctx)
            uid, gids = _user_ids(user)
            for entry in ctx.profile["files"]:
                p = decode_path(entry["path"])
                st = stats.get(p) or {}
                if set(entry["ops"]) & WRITE_OPS or not {"read", "exec"} & set(entry["ops"]) \
                        or "mode" not in st or under(p, API_FILESYSTEMS) or p in grants:
                    continue
                directory = st.get("type") == "dir"
                if _can_read(st, uid, gids, directory):
                    continue
                wanted = 0o050 if directory or "exec" in entry["ops"] else 0o040
                mode = f"{int(st['mode'], 8) | wanted:04o}"
                before = len(refusals)
                consider("z", p, mode, "-", group, "read by the service: group read instead of a capability")
                if len(refusals) > before:
                    secrets.append(p)
        kept = dict(sorted(grants.items())[:MAX_GRANTS])
        for p in sorted(grants)[MAX_GRANTS:]:
            refusals[p] = Refusal(p, f"more than {MAX_GRANTS} paths: give their directory by hand")
        # a line systemd-tmpfiles refuses would stop the script half-way: such a path stays as it
        # is (and one refused line can make another unsafe, hence until none is left)
        while unsafe := _tmpfiles_refusals(kept, stats):
            for p, why in unsafe.items():
                refusals[p] = Refusal(p, why)
                if kept.pop(p).user == "-":
                    secrets.append(p)  # not made group-readable after all: the capability stays
        return OwnershipPlan(tuple(kept.values()), tuple(refusals[p] for p in sorted(refusals)),
                             tuple(sorted(secrets)))
    return ctx.memo("ownership_plan", compute)


def ownership_alternative(ctx: RuleContext) -> tuple[list[str], list[bytes]]:
    """(capabilities to drop, paths the plan gives the service user instead) when
    file-permission capabilities were needed only on a few paths it may own."""
    def compute():
        kind, _ = identity_choice(ctx)
        if kind != "user":
            return [], []
        caps = [c for c in kernel_required_capabilities(ctx) if c in OWNERSHIP_CAPS]
        if not caps:
            return [], []
        ops_by_path = {f["path"]: set(f["ops"]) | {x["op"] for x in f.get("failed", [])}
                       for f in ctx.profile["files"]}
        paths: set[bytes] = set()
        given_by_systemd: set[bytes] = set()  # *Directory= roots: systemd makes them the user's
        for u in ctx.profile["capabilities"].get("uses", []):
            if u["status"] == "required" and u["capability"] in caps:
                if not u.get("targets"):
                    return [], []  # a use we cannot pin to a path: keep the capability
                for t in u["targets"]:
                    ops = ops_by_path.get(t, set())
                    if "chown" in ops:
                        # the service gave the file away itself (a restore): owning it
                        # afterwards is the job, the privilege cannot be traded for ownership
                        return [], []
                    raw = decode_path(t)
                    root = managed_root(raw, ops)
                    if root is not None and root not in opened_managed_roots(ctx):
                        # e.g. root testing or writing Debian's /var/lib/NAME before the unit runs as NAME
                        given_by_systemd.add(root)
                        continue
                    # the setup creates a new file or directory for the service; renames and
                    # deletes change the directory, so that is what it must own then
                    paths.add(os.path.dirname(raw) if ops & DIRECTORY_OPS else raw)
        granted = {g.path for g in ownership_plan(ctx).grants}
        if not paths | given_by_systemd or len(paths) > OWNERSHIP_MAX_PATHS or not paths <= granted:
            return [], []  # the allow-list keeps one of them as it is: the capability stays
        return caps, sorted(paths | given_by_systemd)
    return ctx.memo("ownership", compute)


def required_capabilities(ctx: RuleContext) -> list[str]:
    """The kernel's required set, less what the setup script makes unnecessary, plus
    CAP_DAC_READ_SEARCH for a secret the service user cannot read and is not given."""
    dropped, _ = ownership_alternative(ctx)
    required = [c for c in kernel_required_capabilities(ctx) if c not in dropped]
    if ownership_plan(ctx).secrets_read and not set(required) & {"CAP_DAC_READ_SEARCH", "CAP_DAC_OVERRIDE"}:
        required.append("CAP_DAC_READ_SEARCH")
    return required
