"""Shared views of the profile that several rules read (pure, memoised per context)."""

from __future__ import annotations

import grp
import os
import pwd

from ..model import ENTRY_OPS, WRITE_NEED_OPS
from ..needs import API_FILESYSTEMS, MANAGED_DIRECTORIES, TMP_DIRS, under
from ..paths import decode_path, display_path, encode_path
from .base import Directive
from .base import RuleContext

# ENTRY_OPS (model.py) of which those where owning the file alone does not do: the directory must be the service's
DIRECTORY_OPS = ENTRY_OPS - {"create", "mkdir"}


def short_exes(entries) -> str:
    """'nginx, sh' from the executables of one or more facts."""
    names: list[str] = []
    for e in entries:
        for b in e.get("by", []):
            n = display_path(b).rsplit("/", 1)[-1]
            if n not in names:
                names.append(n)
    return ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")


def written_files(ctx: RuleContext) -> list[tuple[bytes, dict]]:
    """(path, file entry) for every path the service changed successfully, or tested writable
    (write_test: not written in the run, but the service stops when the test fails)."""
    def compute():
        entries = {decode_path(f["path"]): f for f in ctx.profile["files"]}
        return [(w.path, entries[w.path]) for w in ctx.needs.written]
    return ctx.memo("written_files", compute)


def created_paths(ctx: RuleContext) -> set[bytes]:
    """Paths the service itself brought into existence (mkdir, create, rename_to)."""
    return ctx.memo("created", lambda: {w.path for w in ctx.needs.written if w.created})


def show(raw: bytes) -> str:
    """A path for a comment line: printable, one line."""
    return display_path(encode_path(raw))


def managed_directory(path: bytes, ops) -> tuple[str, bytes] | None:
    """('StateDirectory', b'nginx') when PATH lies in a directory systemd can manage."""
    for prefix, directive in MANAGED_DIRECTORIES:
        if path.startswith(prefix):
            rel = path[len(prefix):]
            name = rel.split(b"/", 1)[0]
            if name and name not in (b".", b"..") and (b"/" in rel or {"mkdir", "rmdir", "write_test"} & set(ops)):
                return directive, name
    return None


def managed_root(path: bytes, ops) -> bytes | None:
    """b'/run/nginx' for b'/run/nginx/nginx.pid': the directory systemd would manage."""
    m = managed_directory(path, ops)
    if m is None:
        return None
    prefix = next(p for p, directive in MANAGED_DIRECTORIES if directive == m[0])
    return prefix + m[1]


def behaviour(ctx: RuleContext, kind: str) -> list[dict]:
    return [b for b in ctx.profile.get("behaviour", []) if b["kind"] == kind]


def syscall_count(ctx: RuleContext, *names: str) -> int:
    sc = ctx.profile["syscalls"]
    return sum(sc.get(n, {}).get("count", 0) for n in names)


OWNERSHIP_CAPS = ("CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER")
OWNERSHIP_MAX_PATHS = 5  # more than this many files is a job for the capability, not for chown


def _private_to_owner(ctx: RuleContext) -> tuple[bytes, str] | None:
    """A file or device the service used that only its owner or group may use (from the
    modes capprobe recorded at the end of the run), or None."""
    needs = {"read": 0o004, "exec": 0o001, "write": 0o002}
    for entry in ctx.profile["files"] + ctx.profile.get("devices", []):
        st = entry.get("stat") or {}
        if "mode" not in st or st.get("uid") not in (0,):
            continue
        p = decode_path(entry["path"])
        if under(p, API_FILESYSTEMS) and not p.startswith(b"/dev/"):
            continue
        used = set(entry.get("ops", {})) if "ops" in entry and isinstance(entry["ops"], dict) else set()
        if "access" in entry:
            used |= {"read"} if "r" in entry["access"] else set()
            used |= {"write"} if "w" in entry["access"] else set()
        if managed_directory(p, used) is not None:
            continue  # systemd chowns managed directories to the dynamic user
        mode = int(st["mode"], 8)
        for op, bit in needs.items():
            if op in used and not mode & bit and not (op == "write" and p in created_paths(ctx)):
                return p, f"mode {st['mode']}, owner uid {st['uid']}"
    return None


def kernel_required_capabilities(ctx: RuleContext) -> list[str]:
    return list(ctx.needs.capability_names)


def runs_as_root(ctx: RuleContext) -> bool:
    """Whether the unit starts the service as root (no User=, no DynamicUser=)."""
    return ctx.memo("runs_as_root", lambda: identity_choice(ctx)[0] == "root")


def identity_choice(ctx: RuleContext) -> tuple[str, str]:
    """('user'|'dynamic'|'root', why) — decided once, read by several rules."""
    def compute():
        o = ctx.options
        if o.dynamic_user:
            return "dynamic", "--dynamic-user"
        if o.user:
            return "user", f"--user {o.user}"
        identity = ctx.needs.identity
        if not identity.runs_as_root:
            return "user", f"the profile was taken as {identity.user or identity.uid}"
        if identity.changes_identity:
            return "root", "the service switches identity itself (setuid/setgid seen); it must start as root"
        private = _private_to_owner(ctx)
        if private:
            path, why = private
            return "root", (f"it opens {show(path)} ({why}), which an unprivileged user could not; "
                            "pass --user NAME (and --setup) to give such files to the service user")
        owner = _sole_owner(ctx)
        if owner is not None:
            paths = list(_owners_of_needs(ctx))
            return "user", (f"{show(paths[0])}{' and more' if len(paths) > 1 else ''} belongs to {_user_name(owner)}, "
                            "who must be able to write it (systemd would not create it for a dynamic user)")
        outside = [p for p, f in _needs_outside_tmp(ctx) if managed_directory(p, f["ops"]) is None]
        if outside:
            return "root", ("it writes (or tests writable) outside systemd-managed directories "
                            f"({show(outside[0])}{' and more' if len(outside) > 1 else ''}); "
                            "pass --user NAME (and run the setup script) or --dynamic-user")
        return "dynamic", "it keeps no state outside systemd-managed directories"
    return ctx.memo("identity", compute)


def _needs_outside_tmp(ctx: RuleContext) -> list[tuple[bytes, dict]]:
    """Written or tested paths, less the kernel's and those any user may write (/tmp itself,
    what the service created under it)."""
    created = created_paths(ctx)
    return [(p, f) for p, f in written_files(ctx) if not under(p, API_FILESYSTEMS)
            and not (under(p, TMP_DIRS) and (p in created or p in (b"/tmp", b"/var/tmp")))]


def _sole_owner(ctx: RuleContext) -> int | None:
    """The one user, not root, who owns everything of _owners_of_needs, or None."""
    owners = set(_owners_of_needs(ctx).values())
    return owners.pop() if len(owners) == 1 and not owners & {None, 0} else None


def _owners_of_needs(ctx: RuleContext) -> dict[bytes, int | None]:
    """{path: owner uid} for what the service wrote or tested that systemd would not create for a
    dynamic user: paths outside its managed directories (None: owner unknown), and managed
    directories that already belong to a user (Debian's /var/lib/NAME, owned by NAME).
    The owner is of the path, or of its directory when entries change there."""
    def compute():
        stats = recorded_stats(ctx)
        owners: dict[bytes, int | None] = {}
        for p, f in _needs_outside_tmp(ctx):
            ops = set(f["ops"]) & WRITE_NEED_OPS
            root = managed_root(p, ops)
            if root is not None:
                uid = stats.get(root, {}).get("uid")
                if uid not in (None, 0):
                    owners[root] = uid
                continue
            target = os.path.dirname(p) if ops & ENTRY_OPS else p
            owners[p] = stats.get(target, {}).get("uid")
        return owners
    return ctx.memo("owners_of_needs", compute)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def toggle_unless_seen(ctx, key: str, kinds: tuple[str, ...], on_reason: str, paths: tuple[bytes, ...] = ()):
    """KEY=yes with ON_REASON, or KEY=no naming the behaviour (or path use) that forbids it."""
    seen = [b for k in kinds for b in behaviour(ctx, k)]
    touched = [f for f in ctx.profile["files"] if paths and decode_path(f["path"]).startswith(paths)
               and (f["ops"] or f.get("failed"))]
    if seen:
        yield Directive(key, ("no",), f"{seen[0]['kind']}: {seen[0]['detail']} by {short_exes(seen)}")
    elif touched:
        yield Directive(key, ("no",), f"used {show(decode_path(touched[0]['path']))} by {short_exes(touched[0]['ops'].values() or [{}])}")
    else:
        yield Directive(key, ("yes",), on_reason)


def recorded_stats(ctx: RuleContext) -> dict[bytes, dict]:
    """Path -> its stat at the end of the trace (the directories of renames and deletes too)."""
    def compute():
        stats: dict[bytes, dict] = {}
        for e in ctx.profile["files"]:
            if e.get("dir_stat"):
                stats.setdefault(os.path.dirname(decode_path(e["path"])), e["dir_stat"])
        for e in ctx.profile["files"] + ctx.profile.get("devices", []):
            stats[decode_path(e["path"])] = e.get("stat") or {}
        return stats
    return ctx.memo("stats", compute)


def primary_group(user: str) -> str | None:
    try:
        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        return None


def service_user(ctx: RuleContext) -> tuple[str, str]:
    """(User=, Group=) of a unit with a named user: the options', else the traced user's, else
    the one user who owns what the service wrote or tested writable."""
    run_user = ctx.profile["run"]["user"]
    owner = _sole_owner(ctx)
    if ctx.options.user or run_user.get("uid") not in (None, 0) or owner is None:
        user = ctx.options.user or run_user.get("name") or str(run_user["uid"])
    else:  # a root profile of a service whose directories one user owns (identity_choice)
        user = _user_name(owner)
    return user, ctx.options.group or primary_group(user) or user


def foreign_writer(ctx: RuleContext, entry: dict) -> int | None:
    """The uid a root-started daemon had switched to when it wrote ENTRY (it must own what it
    writes there, not root), or None when the unit's own identity wrote it."""
    if identity_choice(ctx)[0] != "root":
        return None
    start = ctx.profile["run"].get("user", {}).get("uid", 0)
    others = [u for u in entry.get("write_uids", []) if u not in (None, start, 0)]
    return others[0] if others else None


DEFAULT_DIRECTORY_MODE = "0755"  # systemd's *DirectoryMode= when the unit sets none


def _owner_text(uid: int, gid: int) -> str:
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return f"{_user_name(uid)}:{group}"


def _unit_owner(ctx: RuleContext) -> tuple[tuple[int, int] | None, str]:
    """((uid, gid) or None when the setup script has yet to create them, "user:group") that a
    *Directory= of this unit gives its directory: root's for a root unit, else User='s and Group='s."""
    if identity_choice(ctx)[0] == "root":
        return (0, 0), "root:root"
    user, group = service_user(ctx)
    try:
        return (pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid), f"{user}:{group}"
    except KeyError:
        return None, f"{user}:{group}"


def managed_directory_plan(ctx: RuleContext) -> tuple[dict[bytes, str], dict[str, str]]:
    """({root: why} of the directories systemd could manage (/var/lib/NAME...) that the unit only
    opens with ReadWritePaths=, {directive: mode} for the *DirectoryMode= lines).

    A *Directory= makes an existing directory the unit's user's and group's (recursively, unless
    the top is already theirs) and sets *DirectoryMode= on it (default 0755; systemd 252
    setup_exec_directory). So it is written only for a directory that is missing, that the
    service made itself, or that it would leave exactly as it is; one mode per directive, the one
    all such directories agree on. Also opened only: where a root-started daemon wrote as its own
    user (it must stay that user's). With DynamicUser= systemd manages private directories itself."""
    def compute():
        if identity_choice(ctx)[0] == "dynamic":
            return {}, {}
        stats = recorded_stats(ctx)
        created = created_paths(ctx)
        opened: dict[bytes, str] = {}
        existing: dict[bytes, tuple[str, dict]] = {}
        for p, f in written_files(ctx):
            m = managed_directory(p, f["ops"])
            if m is None:
                continue
            root = managed_root(p, f["ops"])
            writer = foreign_writer(ctx, f)
            if writer is not None:
                opened.setdefault(root, f"written by uid {writer} after leaving root ({m[0]}= would make it root's)")
            st = stats.get(root) or {}
            if st.get("type") == "dir" and "uid" in st and root not in created:
                existing[root] = (m[0], st)
        owner, owner_text = _unit_owner(ctx)
        modes: dict[str, str] = {}
        for directive in {d for d, _ in existing.values()}:
            agreed = {st["mode"] for d, st in existing.values() if d == directive and (st["uid"], st["gid"]) == owner}
            modes[directive] = agreed.pop() if len(agreed) == 1 else DEFAULT_DIRECTORY_MODE
        for root, (directive, st) in sorted(existing.items()):
            if (st["uid"], st["gid"]) != owner:
                opened.setdefault(root, f"existing {show(root)} is {_owner_text(st['uid'], st['gid'])}; {directive}= "
                                        f"would re-own it to {owner_text}")
            elif st["mode"] != modes[directive]:
                opened.setdefault(root, f"existing {show(root)} has mode {st['mode']}; {directive}= would change it to "
                                        f"{modes[directive]} (the mode of the others)")
        return opened, {d: m for d, m in modes.items() if m != DEFAULT_DIRECTORY_MODE}
    return ctx.memo("managed_directory_plan", compute)


def opened_managed_roots(ctx: RuleContext) -> dict[bytes, str]:
    """{root: why} of the directories systemd could manage that the unit must only open."""
    return managed_directory_plan(ctx)[0]
