"""Collector state -> the profile's JSON sections (sorted, stable, JSON-ready)."""

from __future__ import annotations

import re

from ..model import (WRITE_OPS, AcceptRow, BindRow, ListenRow, PeerRow, SocketFailureRow, SocketRow, SockoptRow,
                     behaviour_fields)
from ..paths import encode_path

_PROC_PID = re.compile(rb"^/proc/(\d+)(/|$)")


def _use(entry: list) -> dict:
    """[count, first_seen, exes] -> the JSON form every fact shares."""
    return {"count": entry[0], "first_seen": round(entry[1], 6), "by": sorted(entry[2])}


def build_sections(c) -> dict:
    traced = c.traced_pids()
    files = []
    special = {(k, d): v for (k, d), v in c.special.items()}
    for path in sorted(c.files):
        rec = c.files[path]
        item = {"path": encode_path(path),
                "ops": {op: _use(e) for op, e in sorted(rec["ops"].items())}}
        if rec["failed"]:
            item["failed"] = [dict(op=op, errno=errno, **_use(e))
                              for (op, errno), e in sorted(rec["failed"].items())]
        if rec.get("renamed_from"):
            item["renamed_from"] = sorted(rec["renamed_from"])
        if rec.get("owners"):
            item["owners"] = sorted(rec["owners"])
        if rec.get("modes"):
            item["modes"] = sorted(rec["modes"])
        if rec.get("write_uids"):  # null: the uid the run started as
            item["write_uids"] = sorted(rec["write_uids"], key=lambda u: (u is not None, u or 0))
        files.append(item)
        written = [e for op, e in rec["ops"].items() if op in WRITE_OPS]
        if written and (path.startswith(b"/proc/sys/") or path.startswith(b"/sys/")):
            _merge(special, ("write_kernel_tunable", encode_path(path)), written)
        m = _PROC_PID.match(path)
        if m and int(m.group(1)) not in traced and rec["ops"]:
            _merge(special, ("read_other_process", f"/proc/{m.group(1).decode()}"),
                   list(rec["ops"].values()))

    processes = []
    for pid in sorted(c.procs):
        p = c.procs[pid]
        if not p.recorded and pid != c.root_pid:
            continue
        processes.append({
            "pid": pid, "ppid": p.ppid,
            "exe": encode_path(p.exe) if p.exe else None,
            "execs": p.execs, "identity_changes": p.identity,
            "threads": p.threads, "first_seen": round(p.first_seen, 6),
            "exit_status": p.exit_status, "exit_signal": p.exit_signal,
        })

    devices = []
    for path in sorted(c.devices):
        d = c.devices[path]
        devices.append({"path": encode_path(path), "kind": d["kind"],
                        "major": d["major"], "minor": d["minor"],
                        "access": "".join(sorted(d["access"], key="rw".index)),
                        **_use(d["ops"])})
    ioctls = [dict(path=p, request=r, errno=e or None, **_use(v))
              for (p, r, e), v in sorted(c.ioctls.items())]

    def rows(table: dict, names: tuple) -> list:
        """The rows of TABLE, keyed in the collector by NAMES (a row type's KEY)."""
        out = []
        for key in sorted(table, key=lambda k: tuple(str(x) for x in k)):
            row = {n: (v if v != "" else None) for n, v in zip(names, key) if n}
            out.append({**row, **_use(table[key])})
        return out

    network = {
        "sockets": rows(c.sockets, SocketRow.KEY),
        "socket_failures": rows(c.socket_failures, SocketFailureRow.KEY),
        "binds": rows(c.binds, BindRow.KEY),
        "listens": rows(c.listens, ListenRow.KEY),
        "connects": rows(c.connects, PeerRow.KEY),
        "sends": rows(c.sends, PeerRow.KEY),
        "accepts": rows(c.accepts, AcceptRow.KEY),
        "setsockopts": rows(c.sockopts, SockoptRow.KEY),
        "netlink": [dict(protocol=k[0], op=k[1], detail=k[2] or None, errno=k[3] or None,
                         changes_state=bool(v[3]) if len(v) > 3 else None, **_use(v))
                    for k, v in sorted(c.netlink.items())],
        "netlink_undecoded": c.netlink_undecoded,
    }
    syscalls = {name: {"count": v[0], **({"errors": dict(sorted(v[1].items()))} if v[1] else {})}
                for name, v in sorted(c.syscalls.items())}
    return {
        "processes": processes,
        "processes_not_listed": dict(sorted(c.collapsed_processes.items())),
        "syscalls": syscalls,
        "files": files,
        "devices": devices,
        "ioctls": ioctls,
        "network": network,
        "behaviour": [dict(kind=k, detail=d, **_structured(k, d), **_use(v))
                      for (k, d), v in sorted(special.items())],
        "parser": {"lines": c.lines, "unparsed": c.unparsed,
                   "unparsed_examples": c.unparsed_examples},
    }


def _structured(kind: str, detail: str) -> dict:
    """The behaviour row's fields beside its detail text (errno, namespace type, notify messages),
    so readers take them as fields, not by parsing the text."""
    fields = behaviour_fields(kind, detail)
    out = {"call": fields["call"]}
    if fields["errno"]:
        out["errno"] = fields["errno"]
    if fields["namespace"]:
        out["namespace"] = fields["namespace"]
    if fields["messages"]:
        out["messages"] = list(fields["messages"])
    return out


def _merge(table: dict, key: tuple, entries: list) -> None:
    """Fold several [count, first, exes] entries into table[key]."""
    total = table.get(key) or [0, min(e[1] for e in entries), set()]
    for e in entries:
        total[0] += e[0]
        total[1] = min(total[1], e[1])
        total[2] = set(total[2]) | set(e[2])
    table[key] = total
