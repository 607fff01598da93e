"""File system view: ProtectSystem=strict, then open exactly what was written."""

from __future__ import annotations

import os
import re

from ..facts.collector import WRITE_OPS
from ..paths import decode_path
from .base import Directive, RuleContext
from .evidence import (API_FILESYSTEMS, ENTRY_OPS, HOME_DIRS, TMP_DIRS, created_paths, managed_directory,
                       short_exes, show, under, written_files)
from .registry import rule

# Sensitive places no service should see unless it used them ("-": fine if missing).
INACCESSIBLE_CANDIDATES = ("/boot", "/etc/ssh", "/etc/sudoers.d", "/var/spool/cron")


def expressible(path: bytes) -> bool:
    """Whether systemd's unit syntax can carry PATH (one line, valid UTF-8)."""
    if b"\n" in path or b"\r" in path:
        return False
    try:
        path.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _expressible_ancestor(path: bytes) -> bytes:
    while not expressible(path) and path not in (b"/", b""):
        path = os.path.dirname(path)
    return path or b"/"


def _shares_tmp(ctx: RuleContext) -> list[bytes]:
    """Paths under /tmp or /var/tmp the service used but did not create: shared with others."""
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
        return shared
    return ctx.memo("shares_tmp", compute)


def read_write_plan(ctx: RuleContext) -> tuple[dict[bytes, list[str]], dict[str, dict[bytes, list[str]]], list[str]]:
    """(ReadWritePaths -> evidence, managed directive -> {name: evidence}, notes)."""
    def compute():
        private_tmp = not _shares_tmp(ctx)
        paths: dict[bytes, list[str]] = {}
        managed: dict[str, dict[bytes, list[str]]] = {}
        notes: list[str] = []
        for p, f in written_files(ctx):
            ops = set(f["ops"]) & WRITE_OPS
            if under(p, API_FILESYSTEMS):
                continue
            if private_tmp and under(p, TMP_DIRS):
                continue
            why = f"{','.join(sorted(ops))} {show(p)} by {short_exes(f['ops'].values())}"
            m = managed_directory(p, ops)
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
        paths = _merge_fan_out(paths)
        # keep only the outermost of nested entries
        kept: dict[bytes, list[str]] = {}
        for p in sorted(paths):
            if not any(p == k or p.startswith(k.rstrip(b"/") + b"/") for k in kept):
                kept[p] = paths[p]
            else:
                outer = next(k for k in kept if p == k or p.startswith(k.rstrip(b"/") + b"/"))
                kept[outer].extend(paths[p])
        return kept, managed, notes
    return ctx.memo("rw_plan", compute)


_FAN_OUT = re.compile(rb"^[0-9a-f]{2}$")


def _merge_fan_out(paths: dict[bytes, list[str]]) -> dict[bytes, list[str]]:
    """Hash fan-out directories (restic data/3f, git objects/ab): the next run writes
    into other ones, so grant their parent instead of the few this run happened to use."""
    by_parent: dict[bytes, list[bytes]] = {}
    for p in paths:
        if _FAN_OUT.match(os.path.basename(p)):
            by_parent.setdefault(os.path.dirname(p), []).append(p)
    merged = dict(paths)
    for parent, children in by_parent.items():
        if len(children) >= 2:
            evidence = [f"hash fan-out: {len(children)} subdirectories like {show(children[0])} written"]
            for child in children:
                evidence.extend(merged.pop(child))
            merged.setdefault(parent, []).extend(evidence)
    return merged


@rule("filesystem")
def protect_system(ctx: RuleContext):
    n = len(written_files(ctx))
    yield Directive("ProtectSystem", ("strict",),
                    f"the whole file system read-only; the {n} written paths are opened below")


@rule("filesystem")
def read_write_paths(ctx: RuleContext):
    paths, managed, notes = read_write_plan(ctx)
    for directive, names in sorted(managed.items()):
        for name, why in sorted(names.items()):
            yield Directive(directive, (name,), f"{why[0]}" + (f" (+{len(why) - 1} more)" if len(why) > 1 else ""))
    if paths:
        evidence = "; ".join(f"{show(p)}: {w[0]}" + (f" (+{len(w) - 1} more)" if len(w) > 1 else "")
                             for p, w in paths.items())
        for note in notes:
            evidence += f"; {note}"
        yield Directive("ReadWritePaths", tuple(paths), evidence)


@rule("filesystem")
def protect_home(ctx: RuleContext):
    touched = [f for f in ctx.profile["files"] if under(decode_path(f["path"]), HOME_DIRS)]
    written = [f for f in touched if set(f["ops"]) & WRITE_OPS]
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
                        + (f" (+{len(shared) - 1} more)" if len(shared) > 1 else ""))
    else:
        yield Directive("PrivateTmp", ("yes",), "uses no file in /tmp or /var/tmp that it did not create")


@rule("filesystem")
def inaccessible_paths(ctx: RuleContext):
    used = [decode_path(f["path"]) for f in ctx.profile["files"]]
    hidden = [c for c in INACCESSIBLE_CANDIDATES
              if not any(p == c.encode() or p.startswith(c.encode() + b"/") for p in used)]
    if hidden:
        yield Directive("InaccessiblePaths", tuple("-" + h for h in hidden),
                        "sensitive places the service never touched")
