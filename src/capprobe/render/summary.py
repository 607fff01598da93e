"""Human summaries of a profile (pure: profile dict in, text out)."""

from __future__ import annotations

import time

from ..model import WRITE_OPS
from ..paths import display_path, printable

MAX_ROWS = 40


def command_line(run: dict) -> str:
    """The traced command for humans: each argument decoded and escaped."""
    return " ".join(display_path(arg) for arg in run["command"])


def profile_origin(profile: dict) -> str:
    """"a profile of 'CMD' taken 2026-01-02 10:00 UTC on HOST": what an output was made from."""
    run = profile["run"]
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(run.get("started", 0)))
    return printable(f"a profile of '{command_line(run)}' taken {when} UTC on {profile['host'].get('hostname')}")


def target_failure(run: dict) -> str | None:
    """Why the traced run is not a good run of the service, or None.

    A target that failed, was killed by a signal nobody sent it, or stopped before the
    --duration it was given has shown only part of its work: a unit made from that
    profile may be missing what the rest would have used."""
    if run.get("ended_by", "exit") != "exit":
        return None  # stopped on request (--duration, or the operator's SIGINT/SIGTERM)
    if run.get("exit_signal"):
        return f"the target was killed by {run['exit_signal']}"
    status = run.get("exit_status")
    if status not in (0, None):
        return f"the target failed: exit status {status}"
    wanted = run.get("requested_duration")
    if wanted is not None and run.get("duration", 0) < wanted:
        return (f"the target stopped on its own after {run.get('duration', 0):.1f} s, "
                f"before --duration {wanted:g} s ended")
    return None


def profile_warnings(profile: dict) -> list[str]:
    """What makes a unit from PROFILE unproven: a failed target, an incomplete profile."""
    out = []
    failure = target_failure(profile["run"])
    if failure:
        out.append(f"WARNING: {failure}; this profile shows a failed or partial run, and a unit made "
                   "from it may not be what the service needs")
    if profile.get("complete") is False:
        reasons = profile.get("incomplete") or ["no reason recorded"]
        out.append("WARNING: the profile is incomplete, so the unit is not proven minimal or sufficient:")
        out.extend(f"  - {reason}" for reason in reasons)
    return out


RELOAD_SIGNALS = ("SIGHUP",)
REOPEN_SIGNALS = ("SIGHUP", "SIGUSR1", "SIGUSR2")  # what logrotate's postrotate usually sends


def service_paths(profile: dict) -> list[str]:
    """What a bare run shows of the paths a package's unit exercises: reload, log rotation, shutdown.

    Each line says whether the run saw it, and how to make the next run see it."""
    run = profile["run"]
    main = run.get("main_pid")
    received = run.get("signals_received", [])
    to_main = [s for s in received if s["pid"] == main]
    reload = [s for s in to_main if s["signal"] in RELOAD_SIGNALS]
    lines = []
    if reload:
        lines.append(f"reload: seen (SIGHUP to the main process, x{len(reload)}, from pid "
                     f"{reload[0].get('from_pid')})")
    else:
        lines.append("reload: not exercised (--exercise 'kill -HUP $MAINPID', or the program's own reload "
                     "command, shows what a reload needs)")
    reopened = [f["path"] for f in profile["files"] if f["ops"].get("create", {}).get("count", 0) > 1]
    reopen_signals = sorted({s["signal"] for s in received if s["signal"] in REOPEN_SIGNALS})
    if reopen_signals and reopened:
        lines.append(f"log rotation: seen ({'/'.join(reopen_signals)} received; reopened for writing: "
                     f"{', '.join(display_path(p) for p in reopened[:3])})")
    else:
        lines.append("log rotation: not exercised (rotate the log and send the signal the package's logrotate "
                     "configuration sends, e.g. --exercise 'mv LOG LOG.1 && kill -USR1 $MAINPID')")
    ended_by = run.get("ended_by", "exit")
    if run.get("still_running"):
        lines.append(f"shutdown: not exercised (capprobe detached on {ended_by}; the target went on running)")
    elif ended_by == "exit":
        lines.append("shutdown: not exercised (the target ended on its own; --duration stops it the way "
                     "systemd does)")
    elif run.get("exit_signal") == "SIGKILL":
        lines.append(f"shutdown: seen, but the target did not stop within the grace period after {ended_by} "
                     "and was killed")
    elif run.get("exit_signal") == "SIGTERM":
        lines.append(f"shutdown: seen (it died of SIGTERM on {ended_by}, having no handler: systemd counts "
                     "that as a clean stop)")
    else:
        lines.append(f"shutdown: seen (SIGTERM on {ended_by}: it exited with status {run.get('exit_status')})")
    for exercise in run.get("exercises", []):
        if exercise.get("exit") not in (0, None):
            lines.append(f"WARNING: --exercise {exercise['command']!r} failed (exit {exercise['exit']})")
        elif exercise.get("at") is None:
            lines.append(f"WARNING: --exercise {exercise['command']!r} never ran: the target ended first")
    return lines


def _by(entry: dict) -> str:
    names = [b.rsplit("/", 1)[-1] for b in entry.get("by", [])]
    return ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")


def one_paragraph(profile: dict, where: str) -> str:
    """A few lines for stderr at the end of a run."""
    run = profile["run"]
    files = profile["files"]
    written = sum(1 for f in files if set(f["ops"]) & WRITE_OPS)
    net = profile["network"]
    families = sorted({s["family"] for s in net["sockets"]})
    lines = [f"capprobe: {w}" for w in profile_warnings(profile)] + [
        f"capprobe: profile written to {where}",
        f"  {len(profile['processes'])} processes, {len(profile['syscalls'])} distinct syscalls, "
        f"{len(files)} paths ({written} written), socket families: {' '.join(families) or 'none'}",
    ]
    caps = profile.get("capabilities")
    if caps is not None:
        req = caps.get("required", [])
        lines.append(f"  capabilities required: {' '.join(req) if req else 'none'}")
    parser = profile["parser"]
    if parser["unparsed"]:
        lines.append(f"  {parser['unparsed']} trace lines not understood (examples in the profile)")
    lines.append(f"  target still running (capprobe detached on {run['ended_by']}), {run['duration']:.1f} s"
                 if run.get("still_running") else
                 f"  target exit status {run['exit_status']} (ended by {run['ended_by']}), {run['duration']:.1f} s")
    lines += [f"  {line}" for line in service_paths(profile)]
    return "\n".join(printable(line) for line in lines)


def render_summary(profile: dict) -> str:
    """The whole profile, grouped and sorted, counts included."""
    host, run = profile["host"], profile["run"]
    out: list[str] = profile_warnings(profile)
    out.append(f"Profile of: {command_line(run)}")
    out.append(f"  host {host.get('hostname')} · {host.get('distribution')} · kernel {host.get('kernel')} "
               f"· {host.get('strace')} · capprobe {host.get('capprobe')}")
    user = run.get("user", {})
    out.append(f"  as {user.get('name') or user.get('uid')} · {run['duration']:.1f} s · "
               f"exit {run['exit_status']} · ended by {run['ended_by']}")
    out += [f"  {line}" for line in service_paths(profile)]

    caps = profile.get("capabilities")
    if caps is not None:
        out.append("")
        out.append(f"Capabilities (method: {caps.get('method')})")
        out.append(f"  required: {' '.join(caps.get('required', [])) or 'none'}")
        if caps.get("lost_events"):
            out.append(f"  WARNING: {caps['lost_events']} capability events lost (ring buffer overrun)")
        # advisory checks are noise by nature: one line per capability and call site
        grouped: dict[tuple, dict] = {}
        for rec in caps.get("uses", []):
            if rec.get("status") == "advisory":
                key = (rec["capability"], rec.get("call_site"))
                g = grouped.setdefault(key, {**rec, "count": 0})
                g["count"] += rec["count"]
        detailed = [r for r in caps.get("uses", []) if r.get("status") != "advisory"]
        order = {"required": 0, "inferred": 0, "superseded": 1, "optional": 2, "denied": 2, "possible": 3}
        for rec in sorted(detailed, key=lambda r: order.get(r.get("status"), 9))[:MAX_ROWS]:
            target = f" {rec['targets'][0]}" if rec.get("targets") else ""
            alt = f" (or {' / '.join(a for a in rec['alternatives'] if a != rec['capability'])})" \
                if rec.get("alternatives") else ""
            out.append(f"  {rec['capability']:<22} {rec['status']:<10} x{rec['count']:<5} "
                       f"{rec.get('reason', '')}{target}{alt} [{(rec.get('exe') or '?').rsplit('/', 1)[-1]}]")
        for (cap, site), rec in sorted(grouped.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            out.append(f"  {cap:<22} {'not required':<10} x{rec['count']:<5} {rec.get('reason', '')} "
                       f"({rec.get('why_not_required', site)})")

    out.append("")
    out.append(f"Processes ({len(profile['processes'])})")
    for p in profile["processes"][:MAX_ROWS]:
        exe = display_path(p["exe"]) if p.get("exe") else "?"
        ids = f" identity changes: {len(p['identity_changes'])}" if p["identity_changes"] else ""
        out.append(f"  {p['pid']:>7} parent {p['ppid'] or '-':>7}  {exe}{ids}")
    for exe, n in profile.get("processes_not_listed", {}).items():
        out.append(f"  ... and {n} more running {display_path(exe)}")

    files = profile["files"]
    written = [f for f in files if set(f["ops"]) & WRITE_OPS]
    out.append("")
    out.append(f"Files written or changed ({len(written)} of {len(files)} paths seen)")
    for f in written[:MAX_ROWS]:
        ops = ",".join(op for op in f["ops"] if op in WRITE_OPS)
        exes = sorted({b for use in f["ops"].values() for b in use.get("by", [])})
        out.append(f"  {display_path(f['path'])}  [{ops}]  by {_by({'by': exes})}")
    failed = [(f, x) for f in files for x in f.get("failed", [])]
    if failed:
        out.append("")
        out.append(f"Failed accesses ({len(failed)})")
        for f, x in failed[:MAX_ROWS]:
            out.append(f"  {display_path(f['path'])}  {x['op']} {x['errno']} x{x['count']}  by {_by(x)}")

    if profile.get("devices"):
        out.append("")
        out.append("Devices")
        for d in profile["devices"]:
            out.append(f"  {display_path(d['path'])} ({d['kind']} {d['major']}:{d['minor']}) {d['access']}")

    net = profile["network"]
    out.append("")
    out.append("Network")
    for s in net["sockets"]:
        out.append(f"  socket {s['family']} {s['type']} {s.get('protocol') or ''} x{s['count']}  by {_by(s)}")
    for b in net["binds"]:
        port = f":{b['port']}" if b.get("port") is not None else ""
        out.append(f"  bind {b['family']} {b.get('type') or ''} {b.get('address') or ''}{port}"
                   f"{' ' + b['errno'] if b.get('errno') else ''}  by {_by(b)}")
    for c in net["connects"]:
        port = f":{c['port']}" if c.get("port") is not None else ""
        out.append(f"  connect {c['family']} {c.get('address') or ''}{port}"
                   f"{' ' + c['errno'] if c.get('errno') else ''}  by {_by(c)}")
    for o in net["setsockopts"]:
        out.append(f"  setsockopt {o['level']} {o['option']} x{o['count']}")
    for n in net.get("netlink", []):
        out.append(f"  netlink {n['protocol']} {n['op']} {n.get('detail') or ''} x{n['count']}")

    if profile.get("behaviour"):
        out.append("")
        out.append("Behaviour that decides hardening")
        for b in profile["behaviour"]:
            out.append(f"  {b['kind']:<22} {b['detail']}  x{b['count']}  by {_by(b)}")

    out.append("")
    sc = profile["syscalls"]
    out.append(f"Syscalls ({len(sc)} distinct, {sum(v['count'] for v in sc.values())} calls)")
    top = sorted(sc.items(), key=lambda kv: -kv[1]["count"])
    out.append("  " + ", ".join(f"{name} {v['count']}" for name, v in top[:MAX_ROWS]))
    parser = profile["parser"]
    out.append(f"Trace lines: {parser['lines']}, not understood: {parser['unparsed']}")
    return "\n".join(printable(line) for line in out)
