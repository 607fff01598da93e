"""File system view: ProtectSystem=strict, then open exactly what was written."""

from __future__ import annotations

import os

from ..model import ENTRY_OPS, WRITE_NEED_OPS, WRITE_TEST
from ..needs import HOME_DIRS, fan_out_groups
from ..paths import decode_path
from ..render.quoting import render_value
from .base import Directive, RuleContext
from .evidence import (API_FILESYSTEMS, TMP_DIRS, created_paths, managed_directory,
                       managed_directory_plan, managed_root, opened_managed_roots, short_exes, show, under,
                       written_files)
from .registry import rule

# Sensitive places no service should see unless it used them ("-": fine if missing).
INACCESSIBLE_CANDIDATES = ("/boot", "/etc/ssh", "/etc/sudoers.d", "/var/spool/cron")

# ProtectSystem=strict does not reach /run on systemd 252 and 257 (both measured, vm-tests/README.md)
# when ProtectKernelTunables=, ProtectControlGroups= or ProtectProc= is set. 252's
# src/core/namespace.c says why: they imply MountAPIVFS=, whose "/run" mount entry stays in the
# list even where /run is already mounted (then it mounts nothing), and the recursive read-only
# remount of "/" skips every listed path and all mounts below it, so /run, /run/lock and the rest
# stay writable. Listing /run read-only closes it: the read-only entry wins over the API one for
# the same path, and deeper entries (ReadWritePaths=, RuntimeDirectory=) are skipped by its
# remount, so they stay open. If the service writes directly in /run, /run/systemd (unit files
# systemd reads at daemon-reload) is kept read-only instead.
RUN_READ_ONLY_CANDIDATES = (b"/run", b"/run/systemd")


def expressible(path: bytes) -> bool:
    """Whether ReadWritePaths= can carry PATH: the renderer's own answer (valid UTF-8, no
    control or bidi character, canonical), so one odd name never drops the whole line."""
    return render_value("ReadWritePaths", path) is not None


def _expressible_ancestor(path: bytes) -> bytes:
    while not expressible(path) and path not in (b"/", b""):
        path = os.path.dirname(path)
    return path or b"/"


def _tmp_sockets_bound(ctx: RuleContext) -> list[tuple[bytes, dict]]:
    """(path, bind row) of the unix sockets the service bound under /tmp or /var/tmp: other
    processes connect to them."""
    binds = [(decode_path(b.get("address") or ""), b) for b in ctx.profile["network"].get("binds", [])
             if b["family"] == "AF_UNIX" and not b.get("errno")]
    return [(p, b) for p, b in binds if under(p, TMP_DIRS)]


def _shares_tmp(ctx: RuleContext) -> list[bytes]:
    """Paths under /tmp or /var/tmp the service used but did not create, or bound a socket at:
    shared with others."""
    def compute():
        created = created_paths(ctx)
        shared = []
        for f in ctx.profile["files"]:
            p = decode_path(f["path"])
            if not under(p, TMP_DIRS) or not (f["ops"] or f.get("failed")):
                continue
            if p in (b"/tmp", b"/var/tmp"):
                continue
            if not any(p == c or p.startswith(c + b"/") for c in created):
                shared.append(p)
        notify = ctx.profile["run"].get("notify_socket")
        for c in ctx.profile["network"].get("connects", []) + ctx.profile["network"].get("sends", []):
            if c.get("address") == notify:
                continue  # under systemd this is /run/systemd/notify
            if c["family"] == "AF_UNIX" and (c.get("address") or "").startswith(("/tmp/", "/var/tmp/")):
                shared.append(decode_path(c["address"]))
        return shared + [p for p, _ in _tmp_sockets_bound(ctx)]
    return ctx.memo("shares_tmp", compute)


def read_write_plan(ctx: RuleContext) -> tuple[dict[bytes, list[str]], dict[str, dict[bytes, list[str]]], list[str]]:
    """(ReadWritePaths -> evidence, managed directive -> {name: evidence}, notes)."""
    def compute():
        private_tmp = not _shares_tmp(ctx)
        paths: dict[bytes, list[str]] = {}
        managed: dict[str, dict[bytes, list[str]]] = {}
        notes: list[str] = []
        # Under ProtectSystem=strict a shared /tmp is read-only too: what the service writes,
        # tests or binds there is listed (an entry, such as a socket, needs its directory).
        sockets = [] if private_tmp else [(p, {"ops": {"create": b}, "bound_socket": True})
                                          for p, b in _tmp_sockets_bound(ctx)]
        for p, f in written_files(ctx) + sockets:
            ops = set(f["ops"]) & WRITE_NEED_OPS
            if under(p, API_FILESYSTEMS):
                continue
            if private_tmp and under(p, TMP_DIRS):
                continue
            why = _need_evidence(p, f, ops)
            m = managed_directory(p, ops)
            root = managed_root(p, ops)
            if root in opened_managed_roots(ctx):
                # A *Directory= would change its owner or mode (managed_directory_plan): the unit
                # only opens it, and the setup script's tmpfiles.d lines own what it writes.
                paths.setdefault(root, []).append(f"{why} ({opened_managed_roots(ctx)[root]})")
                continue
            if m is not None:
                managed.setdefault(m[0], {}).setdefault(m[1], []).append(why)
                continue
            # Creating, deleting or renaming an entry changes its directory: the
            # directory must be writable (an atomic rename needs it, seed 001).
            target = os.path.dirname(p) if ops & ENTRY_OPS else p
            if not expressible(target):
                wider = _expressible_ancestor(target)
                notes.append(f"{show(target)} cannot be written in unit syntax; widened to {show(wider)}")
                target = wider
            paths.setdefault(target, []).append(why)
        kept = _collapse_crowded(_outermost(_merge_fan_out(paths)), notes)
        return kept, managed, notes
    return ctx.memo("rw_plan", compute)


def _need_evidence(p: bytes, f: dict, ops: set[str]) -> str:
    by = short_exes(f["ops"].values())
    if f.get("bound_socket"):
        return f"binds the socket {show(p)} by {by}: other processes connect to it"
    if ops == {WRITE_TEST}:
        return f"tested {show(p)} writable by {by}, not written in this run (it stops when the test fails)"
    return f"{','.join(sorted(ops))} {show(p)} by {by}"


def _merge_fan_out(paths: dict[bytes, list[str]]) -> dict[bytes, list[str]]:
    """Hash fan-out directories, granted as their parent (needs.fan_out_groups)."""
    merged = dict(paths)
    for parent, children in fan_out_groups(paths).items():
        evidence = [f"hash fan-out: {len(children)} subdirectories like {show(children[0])} written"]
        for child in children:
            evidence.extend(merged.pop(child))
        merged.setdefault(parent, []).extend(evidence)
    return merged


def _outermost(paths: dict[bytes, list[str]]) -> dict[bytes, list[str]]:
    """Only the outermost of nested entries, with the evidence of those inside them.

    Sorted by components, every entry below K comes right after K ("/a/b", "/a/b/c",
    "/a/b-c"; plain byte order would put "/a/b-c" between them), so one walk suffices."""
    kept: dict[bytes, list[str]] = {}
    outer: bytes | None = None
    for p in sorted(paths, key=lambda path: path.split(b"/")):
        if outer is not None and (p == outer or p.startswith(outer.rstrip(b"/") + b"/")):
            kept[outer].extend(paths[p])
        else:
            outer = p
            kept[p] = list(paths[p])
    return kept


# Past these bounds a ReadWritePaths= line stops being a reviewable list (a cache with a
# million files would make a line of megabytes): entries are granted as their directory.
MAX_ENTRIES_PER_DIRECTORY = 64
MAX_ENTRIES = 256


def _may_widen_to(directory: bytes) -> bool:
    """Collapsing never opens "/" or a top-level directory such as /etc or /usr."""
    return directory.count(b"/") >= 2 and expressible(directory)


def _crowded(paths: dict[bytes, list[str]]) -> dict[bytes, list[bytes]]:
    """{directory: its entries} to grant as the directory in this round, or {} when done:
    directories over MAX_ENTRIES_PER_DIRECTORY; past MAX_ENTRIES, the most crowded
    directories first; when no two entries share one, the deepest entries move up."""
    by_parent: dict[bytes, list[bytes]] = {}
    for p in paths:
        by_parent.setdefault(os.path.dirname(p), []).append(p)
    widenable = {parent: children for parent, children in by_parent.items() if _may_widen_to(parent)}
    crowded = {parent: children for parent, children in widenable.items()
               if len(children) > MAX_ENTRIES_PER_DIRECTORY}
    excess = len(paths) - MAX_ENTRIES
    if crowded or excess <= 0:
        return crowded
    for parent, children in sorted(widenable.items(), key=lambda kv: -len(kv[1])):
        if excess <= 0 or len(children) < 2:
            break
        crowded[parent] = children
        excess -= len(children) - 1
    if crowded or not widenable:
        return crowded
    deepest = max(parent.count(b"/") for parent in widenable)
    return {parent: children for parent, children in widenable.items() if parent.count(b"/") == deepest}


def _collapse_crowded(paths: dict[bytes, list[str]], notes: list[str]) -> dict[bytes, list[str]]:
    """Grant crowded directories whole (see _crowded), round after round. A round merges
    entries or moves the deepest up, never into "/" or a top-level directory, so the loop
    ends; each round is n log n."""
    collapsed: list[bytes] = []
    while crowded := _crowded(paths):
        for parent, children in crowded.items():
            evidence = [f"{len(children)} written entries in {show(parent)} like {show(children[0])}, granted "
                        "as the directory"]
            for child in children:
                evidence.extend(paths.pop(child))
            paths.setdefault(parent, []).extend(evidence)
            collapsed.append(parent)
        paths = _outermost(paths)
    if collapsed:
        notes.append(f"{len(collapsed)} directories (e.g. {show(collapsed[0])}) are granted whole: they held more "
                     f"than {MAX_ENTRIES_PER_DIRECTORY} written entries, or the list passed {MAX_ENTRIES} entries")
    if len(paths) > MAX_ENTRIES:
        notes.append(f"{len(paths)} entries, more than {MAX_ENTRIES}: too spread out to collapse without opening "
                     "a top-level directory")
    return paths


@rule("filesystem")
def protect_system(ctx: RuleContext):
    n = len(written_files(ctx))
    yield Directive("ProtectSystem", ("strict",),
                    f"the whole file system read-only (on systemd 252 and 257 /run needs the ReadOnlyPaths= below); "
                    f"the {n} written paths are opened below")


@rule("filesystem")
def read_write_paths(ctx: RuleContext):
    paths, managed, notes = read_write_plan(ctx)
    modes = managed_directory_plan(ctx)[1]
    for directive, names in sorted(managed.items()):
        for name, why in sorted(names.items()):
            yield Directive(directive, (name,), f"{why[0]}" + (f" (+{len(why) - 1} more)" if len(why) > 1 else ""))
        if directive in modes:
            yield Directive(f"{directive}Mode", (modes[directive],),
                            "the mode the existing directories have: systemd sets it on them (default 0755)")
    if paths:
        evidence = "; ".join(f"{show(p)}: {w[0]}" + (f" (+{len(w) - 1} more)" if len(w) > 1 else "")
                             for p, w in paths.items())
        for note in notes:
            evidence += f"; {note}"
        optional = optional_paths(ctx, paths)
        if optional:
            evidence += (f"; '-' on {', '.join(show(p) for p in optional[:3])}"
                         f"{' ...' if len(optional) > 3 else ''}: it may not exist yet on another host "
                         "(created during the trace, or under a home directory), and a missing path would "
                         "fail the start with 226/NAMESPACE (the setup script's tmpfiles.d lines create "
                         "the ones it manages)")
        yield Directive("ReadWritePaths", tuple("-" + p.decode() if p in optional else p for p in paths), evidence)


def optional_paths(ctx: RuleContext, paths) -> list[bytes]:
    """The ReadWritePaths= entries that may be missing on a fresh host."""
    created = created_paths(ctx)
    stats = {decode_path(f["path"]): f.get("stat") or {} for f in ctx.profile["files"]}
    out = []
    for p in paths:
        # /run is emptied at boot: a directory there the unit only opens may be missing at its start
        unsure = (p in created or under(p, HOME_DIRS) or stats.get(p, {}).get("missing")
                  or (p in opened_managed_roots(ctx) and under(p, (b"/run/",))))
        if unsure and expressible(p):
            out.append(p)
    return out


def _run_read_only(ctx: RuleContext) -> bytes | None:
    """The outermost of /run, /run/systemd that can be read-only: not one the service writes
    through a ReadWritePaths= entry at or above it (a deeper entry stays open anyway)."""
    paths, _, _ = read_write_plan(ctx)
    written = [p for p, _ in written_files(ctx)]

    def written_through_wider_entry(candidate: bytes) -> bool:
        covered = any(candidate == w or candidate.startswith(w.rstrip(b"/") + b"/") for w in paths)
        return covered and any(p.startswith(candidate + b"/") for p in written)
    return next((c for c in RUN_READ_ONLY_CANDIDATES if not written_through_wider_entry(c)), None)


@rule("filesystem")
def read_only_paths(ctx: RuleContext):
    target = _run_read_only(ctx)
    if target == b"/run":
        yield Directive("ReadOnlyPaths", (target,),
                        "ProtectSystem=strict leaves /run writable on systemd 252 and 257 (ProtectKernelTunables=, "
                        "ProtectControlGroups=, ProtectProc= imply MountAPIVFS=): read-only here; the paths "
                        "written below it stay open (ReadWritePaths=, RuntimeDirectory= above)")
    elif target is not None:
        yield Directive("ReadOnlyPaths", (target,),
                        f"the service writes directly in /run (opened above), not in {show(target)}: that stays "
                        f"read-only (systemd reads unit files there at daemon-reload)")


@rule("filesystem")
def protect_home(ctx: RuleContext):
    touched = [f for f in ctx.profile["files"] if under(decode_path(f["path"]), HOME_DIRS)]
    written = [f for f in touched if set(f["ops"]) & WRITE_NEED_OPS]
    if not touched:
        yield Directive("ProtectHome", ("yes",), "nothing under /home, /root or /run/user touched")
    elif written:
        yield Directive("ProtectHome", ("read-only",),
                        f"writes under a home directory ({show(decode_path(written[0]['path']))}); "
                        "those paths are in ReadWritePaths")
    else:
        yield Directive("ProtectHome", ("read-only",),
                        f"reads under a home directory (e.g. {show(decode_path(touched[0]['path']))}), no writes")


@rule("filesystem")
def private_tmp(ctx: RuleContext):
    shared = _shares_tmp(ctx)
    if shared:
        yield Directive("PrivateTmp", ("no",), f"meets other processes through /tmp: {show(shared[0])}"
                        + (f" (+{len(shared) - 1} more)" if len(shared) > 1 else "")
                        + "; ProtectSystem=strict leaves the shared /tmp read-only, so what it writes, tests "
                          "writable or binds there is in ReadWritePaths=")
    else:
        tested = [p for p, f in written_files(ctx) if p in (b"/tmp", b"/var/tmp") and WRITE_TEST in f["ops"]]
        yield Directive("PrivateTmp", ("yes",), "uses no file in /tmp or /var/tmp that it did not create"
                        + (f"; it tests {show(tested[0])} writable, and a private one is" if tested else ""))


@rule("filesystem")
def inaccessible_paths(ctx: RuleContext):
    used = [decode_path(f["path"]) for f in ctx.profile["files"]]
    hidden = [c for c in INACCESSIBLE_CANDIDATES
              if not any(p == c.encode() or p.startswith(c.encode() + b"/") for p in used)]
    if hidden:
        yield Directive("InaccessiblePaths", tuple("-" + h for h in hidden),
                        "sensitive places the service never touched")
