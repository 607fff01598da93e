"""Shared views of the profile that several rules read (pure, memoised per context)."""

from __future__ import annotations

import os

from ..facts.collector import WRITE_OPS
from ..paths import decode_path, display_path, encode_path
from .base import Directive
from .base import RuleContext

# ops that change a directory's entries: they need the directory itself writable
ENTRY_OPS = frozenset({"create", "delete", "rmdir", "rename_from", "rename_to", "link",
                       "symlink", "mkdir", "mknod"})
API_FILESYSTEMS = (b"/proc/", b"/sys/", b"/dev/")
MANAGED_DIRECTORIES = (
    (b"/var/lib/", "StateDirectory"),
    (b"/var/log/", "LogsDirectory"),
    (b"/run/", "RuntimeDirectory"),
    (b"/var/cache/", "CacheDirectory"),
)
TMP_DIRS = (b"/tmp/", b"/var/tmp/")
HOME_DIRS = (b"/home/", b"/root/", b"/run/user/")


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
    """(path, file entry) for every path the service changed successfully."""
    def compute():
        out = []
        for f in ctx.profile["files"]:
            if set(f["ops"]) & WRITE_OPS:
                out.append((decode_path(f["path"]), f))
        return out
    return ctx.memo("written_files", compute)


def created_paths(ctx: RuleContext) -> set[bytes]:
    """Paths the service itself brought into existence (mkdir, create, rename_to)."""
    return ctx.memo("created", lambda: {p for p, f in written_files(ctx)
                                        if {"mkdir", "create", "rename_to", "symlink", "link", "mknod"} & set(f["ops"])})


def show(raw: bytes) -> str:
    """A path for a comment line: printable, one line."""
    return display_path(encode_path(raw))


def managed_directory(path: bytes, ops) -> tuple[str, bytes] | None:
    """('StateDirectory', b'nginx') when PATH lies in a directory systemd can manage."""
    for prefix, directive in MANAGED_DIRECTORIES:
        if path.startswith(prefix):
            rel = path[len(prefix):]
            name = rel.split(b"/", 1)[0]
            if name and name not in (b".", b"..") and (b"/" in rel or {"mkdir", "rmdir"} & set(ops)):
                return directive, name
    return None


def under(path: bytes, prefixes) -> bool:
    return any(path.startswith(p) or path + b"/" == p for p in prefixes)


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
    return list(ctx.profile.get("capabilities", {}).get("required", []))


def ownership_alternative(ctx: RuleContext) -> tuple[list[str], list[bytes]]:
    """(capabilities to drop, paths to chown) when file-permission capabilities were needed
    only on a few paths: giving those paths to the service user beats the privilege."""
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
        for u in ctx.profile["capabilities"].get("uses", []):
            if u["status"] == "required" and u["capability"] in caps:
                if not u.get("targets"):
                    return [], []  # a use we cannot pin to a path: keep the capability
                for t in u["targets"]:
                    if "chown" in ops_by_path.get(t, set()):
                        # the service gave the file away itself (a restore): owning it
                        # afterwards is the job, the privilege cannot be traded for ownership
                        return [], []
                    raw = decode_path(t)
                    # creating an entry needs the directory; the file may not exist yet
                    paths.add(os.path.dirname(raw) if ops_by_path.get(t, set()) & ENTRY_OPS else raw)
        if not paths or len(paths) > OWNERSHIP_MAX_PATHS:
            return [], []
        return caps, sorted(paths)
    return ctx.memo("ownership", compute)


def required_capabilities(ctx: RuleContext) -> list[str]:
    """The kernel's required set, less what the setup script makes unnecessary."""
    dropped, _ = ownership_alternative(ctx)
    return [c for c in kernel_required_capabilities(ctx) if c not in dropped]


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
        run_user = ctx.profile["run"].get("user", {})
        if run_user.get("uid") not in (None, 0):
            return "user", f"the profile was taken as {run_user.get('name') or run_user['uid']}"
        switches = [c for p in ctx.profile["processes"] for c in p.get("identity_changes", [])
                    if c["call"] in ("setuid", "setresuid", "setreuid", "setgid", "setresgid", "setgroups")]
        if switches:
            return "root", "the service switches identity itself (setuid/setgid seen); it must start as root"
        private = _private_to_owner(ctx)
        if private:
            path, why = private
            return "root", (f"it opens {show(path)} ({why}), which an unprivileged user could not; "
                            "pass --user NAME (and --setup) to give such files to the service user")
        outside = [p for p, f in written_files(ctx) if managed_directory(p, f["ops"]) is None
                   and not under(p, API_FILESYSTEMS) and not (under(p, TMP_DIRS) and p in created_paths(ctx))]
        if outside:
            return "root", ("it writes outside systemd-managed directories "
                            f"({show(outside[0])}{' and more' if len(outside) > 1 else ''}); "
                            "pass --user NAME (and run the setup script) or --dynamic-user")
        return "dynamic", "it keeps no state outside systemd-managed directories"
    return ctx.memo("identity", compute)


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
