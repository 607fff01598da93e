#!/usr/bin/env python3
"""Exact-capability score of capprobe on real Debian daemons (issue 9, "Done when").

    python3 bench/corpus.py score [--only NAME,...] [--before SRC] [--json FILE] [--keep DIR]
    python3 bench/corpus.py truth [--only NAME,...]      # re-derive the ground truth

Each daemon of CORPUS runs in the foreground on loopback, with every pid, log, state and
temp path in a fresh directory of its own (never a system directory; nginx gets all five
*_temp_path), and is always stopped at the end. Its `truth` is the minimal capability set
under which it still starts, keeps running and answers its check, established
empirically by `truth` (see CORPUS's comments and truth_search()).

`score` profiles each daemon three ways and compares `capabilities.required` to the truth:
before (capprobe at the commit given by --before, default /tmp/capprobe-before/src, a
worktree of 15b2881), after (this tree), after + `--confirm --check`. Markdown to stdout,
everything to bench/corpus-results.json. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SELF = [sys.executable, str(Path(__file__).resolve())]
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The generous superset the truth search starts from (the host's bounding set lacks
# CAP_SYS_RESOURCE); truth_search() first checks the daemon works with only these.
SEARCH_START = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
                "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
                "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_SYS_CHROOT", "CAP_SYS_NICE",
                "CAP_SYS_TIME", "CAP_SYS_ADMIN", "CAP_AUDIT_WRITE", "CAP_SYS_PTRACE")


@dataclass(frozen=True)
class Daemon:
    name: str
    command: tuple[str, ...]          # {tmp} is the daemon's own directory
    check: tuple[str, ...]            # args of `corpus.py probe`: the daemon answers
    truth: frozenset[str]             # minimal capability set (how: comment in CORPUS)
    files: dict[str, str] = field(default_factory=dict)  # conf/NAME -> text ({tmp})
    env: dict[str, str] = field(default_factory=dict)
    run_owner: str | None = None      # the package's own state dir is owned by this user
    seconds: float = 1.0              # start-up time before the check (the check retries 3 s more)


NGINX_CONF = """daemon off; master_process on; worker_processes 1; user www-data;
pid {tmp}/run/nginx.pid; error_log {tmp}/run/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {tmp}/run/access.log;
  client_body_temp_path {tmp}/run/client_body; proxy_temp_path {tmp}/run/proxy;
  fastcgi_temp_path {tmp}/run/fastcgi; uwsgi_temp_path {tmp}/run/uwsgi; scgi_temp_path {tmp}/run/scgi;
  server {{ listen 127.0.0.1:981; location / {{ return 200 "corpus\\n"; }} }}
}}
"""
CADDYFILE = """{{
  admin off
  auto_https off
  storage file_system {tmp}/run/data
}}
http://127.0.0.1:982 {{
  respond "corpus" 200
}}
"""
UNBOUND_CONF = """server:
  interface: 127.0.0.1@984
  port: 984
  do-ip6: no
  username: "unbound"
  chroot: ""
  directory: "{tmp}/run"
  pidfile: "{tmp}/run/unbound.pid"
  use-syslog: no
  num-threads: 1
  do-not-query-localhost: yes
  local-zone: "corpus.test." static
  local-data: "corpus.test. A 10.9.8.7"
remote-control:
  control-enable: no
"""
KRESD_CONF = """net.listen('127.0.0.1', 985, {{ kind = 'dns' }})
cache.open(10 * MB, 'lmdb://{tmp}/run/cache')
user('knot-resolver', 'knot-resolver')
trust_anchors.remove('.')
policy.add(policy.suffix(policy.ANSWER({{ [kres.type.A] = {{ rdata = kres.str2ip('10.9.8.7'), ttl = 300 }} }}),
                         {{ todname('corpus.test') }}))
"""
CHRONY_CONF = """port 987
bindaddress 127.0.0.1
allow 127.0.0.1
local stratum 10
cmdport 0
pidfile {tmp}/run/chronyd.pid
driftfile {tmp}/run/drift
"""

# truth: established by `corpus.py truth` (truth_search(), 2026-11-30, kernel 6.18, as root
# under `setpriv --inh-caps=-all --bounding-set=-all,+...`): from SEARCH_START (19 caps, works)
# each capability dropped in turn and kept out if the daemon still started, answered its
# check and kept running; the result works, and dropping any one member of it fails (the
# comment quotes how). 1-minimal for this configuration, not a global search; every daemon
# also fails with no capability at all. Steps: bench/corpus-results.json "truth_search".
CORPUS = (
    # nginx master as root, workers as www-data, on 127.0.0.1:981. Without CHOWN: "[emerg]
    # chown(.../client_body, 33) failed"; NET_BIND_SERVICE: bind() EACCES; SETGID/SETUID: the
    # master starts but no worker answers.
    Daemon("nginx", ("/usr/sbin/nginx", "-e", "{tmp}/run/error.log", "-p", "{tmp}/run",
                     "-c", "{tmp}/conf/nginx.conf"),
           ("http", "981"), frozenset({"CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_NET_BIND_SERVICE"}),
           {"nginx.conf": NGINX_CONF}),
    # caddy as root (no user switch), http only, admin API off, on 127.0.0.1:982. Without
    # NET_BIND_SERVICE: "listen tcp :982: bind: permission denied"; nothing else needed.
    Daemon("caddy", ("/usr/bin/caddy", "run", "--config", "{tmp}/conf/Caddyfile", "--adapter", "caddyfile"),
           ("http", "982"), frozenset({"CAP_NET_BIND_SERVICE"}), {"Caddyfile": CADDYFILE},
           env={"HOME": "{tmp}/run", "XDG_CONFIG_HOME": "{tmp}/run/config", "XDG_DATA_HOME": "{tmp}/run/data"}),
    # dnsmasq, DNS only (no DHCP), drops to dnsmasq:nogroup, on 127.0.0.1:983. Without
    # NET_BIND_SERVICE: "failed to create listening socket", exit 2; SETGID/SETUID: "FAILED to
    # start up", exit 5. CHOWN (fchown of its pid file to dnsmasq; the file stays root's) and
    # SETPCAP (its capset) are not needed.
    Daemon("dnsmasq", ("/usr/sbin/dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                       "--no-hosts", "--port=983", "--listen-address=127.0.0.1", "--bind-interfaces",
                       "--pid-file={tmp}/run/dnsmasq.pid", "--user=dnsmasq", "--group=nogroup",
                       "--address=/corpus.test/10.9.8.7", "--log-facility=-"),
           ("dns", "983", "corpus.test"), frozenset({"CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE"})),
    # unbound, local data only (never queries out), no chroot, drops to unbound, on 127.0.0.1:984.
    # Without NET_BIND_SERVICE: "could not open ports"; SETGID/SETUID: "unable to set group/user
    # id"; CHOWN (of its pid file) not needed.
    Daemon("unbound", ("/usr/sbin/unbound", "-d", "-c", "{tmp}/conf/unbound.conf"),
           ("dns", "984", "corpus.test"), frozenset({"CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE"}),
           {"unbound.conf": UNBOUND_CONF}, seconds=3.0),  # ~4 s to its first answer under strace
    # kresd (Knot Resolver 5), a policy answer only, drops to knot-resolver, on 127.0.0.1:985;
    # its run directory belongs to knot-resolver as /var/cache/knot-resolver does. Without
    # DAC_OVERRIDE: "rundir ...: Permission denied" (root, before dropping, writes into
    # knot-resolver's 0755 directory); NET_BIND_SERVICE: "net.listen() failed to bind";
    # SETGID/SETUID: user() "Operation not permitted".
    Daemon("kresd", ("/usr/sbin/kresd", "-n", "-c", "{tmp}/conf/kresd.conf", "{tmp}/run"),
           ("dns", "985", "corpus.test"),
           frozenset({"CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE", "CAP_DAC_OVERRIDE"}),
           {"kresd.conf": KRESD_CONF}, run_owner="knot-resolver"),
    # openvpn, `--dev null` (no tun, no network change), drops to nobody, UDP 127.0.0.1:986.
    # Without NET_BIND_SERVICE, SETGID or SETUID it exits 1 at start ("Closing TUN/TAP interface").
    Daemon("openvpn", ("/usr/sbin/openvpn", "--dev", "null", "--proto", "udp", "--local", "127.0.0.1",
                       "--lport", "986", "--user", "nobody", "--group", "nogroup",
                       "--writepid", "{tmp}/run/openvpn.pid", "--verb", "3"),
           ("udp-bound", "986"), frozenset({"CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE"})),
    # chronyd -x (never touches the clock), NTP server on 127.0.0.1:987, drops to _chrony.
    # Without NET_BIND_SERVICE: "cap_set_proc() failed" (it keeps that one across setuid);
    # SETGID: "setgroups() failed"; SETUID: "setuid(102) failed". SETPCAP not needed.
    Daemon("chrony", ("/usr/sbin/chronyd", "-d", "-x", "-u", "_chrony", "-f", "{tmp}/conf/chrony.conf"),
           ("ntp", "987"), frozenset({"CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE"}),
           {"chrony.conf": CHRONY_CONF}),
)


# ---------------------------------------------------------------- checks (corpus.py probe ...)

def probe(kind: str, port: int, name: str = "", deadline: float = 5.0) -> bool:
    """Does the daemon on 127.0.0.1:PORT answer? Retried until DEADLINE (start-up)."""
    end = time.monotonic() + deadline
    while True:
        try:
            if _probe_once(kind, port, name):
                return True
        except OSError:
            pass
        if time.monotonic() > end:
            return False
        time.sleep(0.3)


def _probe_once(kind: str, port: int, name: str) -> bool:
    if kind == "http":
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            return s.recv(64).split(b" ")[1:2] == [b"200"]
    if kind == "udp-bound":
        out = subprocess.run(["ss", "-Hunl", f"sport = :{port}"], capture_output=True, text=True).stdout
        return bool(out.strip())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        if kind == "dns":
            qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
            s.sendto(struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + qname + b"\0\1\0\1", ("127.0.0.1", port))
            reply = s.recv(512)
            return reply[:2] == b"\x42\x42" and reply[3] & 0x0F == 0 and struct.unpack(">H", reply[6:8])[0] > 0
        if kind == "ntp":
            s.sendto(b"\x23" + b"\0" * 47, ("127.0.0.1", port))  # v4, client
            reply = s.recv(512)
            return len(reply) >= 48 and reply[0] & 7 == 4         # server
    raise ValueError(kind)


def check_command(d: Daemon) -> str:
    return " ".join([*SELF, "probe", *d.check])


# ---------------------------------------------------------------- the daemon's directory

def render(text: str, tmp: Path) -> str:
    return text.format(tmp=tmp)


def prepare(d: Daemon, tmp: Path) -> None:
    """conf/ with the daemon's files, a fresh empty run/ (the state every run starts from)."""
    (tmp / "conf").mkdir(parents=True, exist_ok=True)
    for name, text in d.files.items():
        (tmp / "conf" / name).write_text(render(text, tmp))
    reset(d, tmp)


def reset_command(d: Daemon, tmp: Path) -> str:
    run = tmp / "run"
    own = f" && chown {d.run_owner}: {run}" if d.run_owner else ""
    return f"rm -rf {run} && mkdir -m 0755 {run}{own}"


def reset(d: Daemon, tmp: Path) -> None:
    subprocess.run(["/bin/sh", "-c", reset_command(d, tmp)], check=True)


def argv(d: Daemon, tmp: Path) -> list[str]:
    return [render(a, tmp) for a in d.command]


def environment(d: Daemon, tmp: Path) -> dict[str, str]:
    """What systemd (and capprobe) give a root service, plus the daemon's own variables."""
    return {"PATH": SERVICE_PATH, "LANG": "C.UTF-8", **{k: render(v, tmp) for k, v in d.env.items()}}


# ---------------------------------------------------------------- ground truth

def setpriv_prefix(caps: frozenset[str] | None) -> list[str]:
    if caps is None:
        return []
    bounding = ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}" for c in sorted(caps))])
    return ["setpriv", "--inh-caps=-all", f"--bounding-set={bounding}", "--"]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the daemon's process group, SIGKILL after 5 s: never left running."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            time.sleep(0.2)  # workers of the group leave after the master
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def works(d: Daemon, tmp: Path, caps: frozenset[str] | None) -> tuple[bool, str]:
    """Start D as root with bounding set CAPS (None: untouched): does it start, answer, keep running?"""
    reset(d, tmp)
    log = tmp / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*setpriv_prefix(caps), *argv(d, tmp)], env=environment(d, tmp), cwd=tmp,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        time.sleep(d.seconds)
        if proc.poll() is not None:
            return False, f"exited with {proc.returncode}: {_last_line(log)}"
        if not probe(*_probe_args(d.check), deadline=3.0):
            return False, f"no answer to {' '.join(d.check)}: {_last_line(log)}"
        if proc.poll() is not None:
            return False, f"exited with {proc.returncode} after answering: {_last_line(log)}"
        return True, "started, answered, kept running"
    finally:
        stop(proc)


def _probe_args(check: tuple[str, ...]) -> tuple:
    return (check[0], int(check[1]), *check[2:])


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"


def truth_search(d: Daemon, tmp: Path, say) -> dict:
    """Greedy one-at-a-time minimisation from SEARCH_START, then each member re-dropped alone.

    Establishes: the daemon works with every capability and with SEARCH_START; the result S
    works; S minus any one member fails (with what broke). 1-minimal, not a global search.
    """
    steps = []

    def attempt(caps: frozenset[str] | None, why: str) -> bool:
        ok, detail = works(d, tmp, caps)
        steps.append({"caps": None if caps is None else sorted(caps), "why": why, "ok": ok, "detail": detail})
        say(f"  {d.name}: {why}: {'ok' if ok else 'FAILS'} ({detail})")
        return ok

    if not attempt(None, "every capability"):
        return {"error": "does not work even with every capability", "steps": steps}
    current = frozenset(SEARCH_START)
    if not attempt(current, "search start set"):
        return {"error": "does not work with the search start set", "steps": steps}
    attempt(frozenset(), "no capability")
    for cap in SEARCH_START:
        if attempt(current - {cap}, f"without {cap}"):
            current -= {cap}
    works_final = attempt(current, "the result")
    needed = {cap: next(s["detail"] for s in reversed(steps) if s["why"] == f"re-drop {cap}")
              for cap in sorted(current) if not attempt(current - {cap}, f"re-drop {cap}")}
    return {"minimal": sorted(current), "works": works_final, "each_needed": needed,
            "one_minimal": works_final and set(needed) == set(current), "steps": steps}


# ---------------------------------------------------------------- capprobe runs

@dataclass(frozen=True)
class Variant:
    name: str
    source: str | None   # PYTHONPATH for an older capprobe; None: this tree
    modern: bool         # knows --env (older ones pass capprobe's own environment on)
    confirm: bool = False


def capprobe_run(d: Daemon, tmp: Path, v: Variant, out: Path) -> dict:
    reset(d, tmp)
    duration = d.seconds + 4  # the check (the last exercise, 1 s in) retries for 5 s
    args = [sys.executable, "-m", "capprobe", "run", "-q", "--no-unit", "--force", "--duration", str(duration),
            "--grace", "3", "-o", str(out)]
    env = {**os.environ}
    if v.modern:
        args += [f"--env={k}={val}" for k, val in environment(d, tmp).items() if k not in ("PATH", "LANG")]
    else:
        env.update(environment(d, tmp))
    if v.source:
        env["PYTHONPATH"] = v.source
    if v.confirm:
        args += ["--confirm", "--check", check_command(d), "--reset", reset_command(d, tmp)]
    started = time.monotonic()
    done = subprocess.run([*args, "--", *argv(d, tmp)], env=env, cwd=tmp, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    seconds = round(time.monotonic() - started, 1)
    if not out.exists():
        return {"error": (done.stderr.strip().splitlines() or ["no profile"])[-1][:300], "seconds": seconds}
    profile = json.loads(out.read_text())
    caps = profile.get("capabilities") or {}
    row = {"required": sorted(caps.get("required", [])), "method": caps.get("method"),
           "exit": profile["run"].get("exit_status"), "ended_by": profile["run"].get("ended_by"),
           "seconds": seconds}
    if "confirmation" in caps:
        c = caps["confirmation"]
        row["confirmation"] = {k: c.get(k) for k in ("reruns", "seconds", "optional", "required", "inconclusive")}
    elif v.confirm:
        row["confirm_note"] = [line for line in done.stderr.splitlines() if "confirm" in line][-3:]
    return row


def compare(truth: frozenset[str], row: dict) -> dict:
    if "required" not in row:
        return {"exact": False, "error": row.get("error")}
    got = set(row["required"])
    return {"exact": got == truth, "extra": sorted(got - truth), "missing": sorted(truth - got)}


def cell(row: dict, verdict: dict) -> str:
    if "required" not in row:
        return f"error: {row.get('error')}"
    words = "; ".join(filter(None, [verdict["extra"] and "+" + " +".join(c.removeprefix("CAP_") for c in verdict["extra"]),
                                    verdict["missing"] and "-" + " -".join(c.removeprefix("CAP_") for c in verdict["missing"])]))
    # an exact set from a run in which the daemon failed is still worth saying
    failed = f" (target exit {row['exit']})" if row.get("exit") else ""
    return (words or "exact") + failed


def short(caps) -> str:
    return " ".join(c.removeprefix("CAP_") for c in sorted(caps)) or "(none)"


def markdown(rows: list[dict], variants: list[Variant]) -> str:
    head = ["daemon", "truth", *(v.name for v in variants)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["daemon"], short(r["truth"]),
                                        *(cell(r[v.name], r[v.name + "_verdict"]) for v in variants)]) + " |")
    exact = " · ".join(f"{v.name}: {score(rows, v)}/{len(rows)}" for v in variants)
    exact_ran = " · ".join(f"{v.name}: {score(rows, v, ran=True)}/{len(rows)}" for v in variants)
    return "\n".join(lines) + (f"\n\nExact capability sets: {exact}\n"
                               f"Exact, and the daemon ran until stopped (exit 0): {exact_ran}\n")


def score(rows: list[dict], v: Variant, ran: bool = False) -> int:
    return sum(r[v.name + "_verdict"]["exact"] and (not ran or r[v.name].get("exit") == 0) for r in rows)


# ---------------------------------------------------------------- main

def selected(only: str | None) -> list[Daemon]:
    names = set(only.split(",")) if only else None
    unknown = (names or set()) - {d.name for d in CORPUS}
    if unknown:
        sys.exit(f"corpus.py: unknown daemon(s): {', '.join(sorted(unknown))}")
    return [d for d in CORPUS if names is None or d.name in names]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("score", "truth"):
        s = sub.add_parser(name)
        s.add_argument("--only")
        s.add_argument("--json", type=Path, default=HERE / "corpus-results.json")
    sub.choices["score"].add_argument("--before", default="/tmp/capprobe-before/src")
    sub.choices["score"].add_argument("--keep", type=Path, help="copy the profiles into this directory")
    pr = sub.add_parser("probe")
    pr.add_argument("kind", choices=("http", "dns", "ntp", "udp-bound"))
    pr.add_argument("port", type=int)
    pr.add_argument("name", nargs="?", default="")
    a = p.parse_args()
    if a.cmd == "probe":
        return 0 if probe(a.kind, a.port, a.name) else 1
    if os.geteuid() != 0:
        sys.exit("corpus.py: needs root (the daemons start as root)")
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    base = Path(tempfile.mkdtemp(prefix="capprobe-corpus-"))
    base.chmod(0o755)  # the daemons' own users reach their run/ directory
    started = time.monotonic()
    results: dict = {"host": os.uname().release, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        if a.cmd == "truth":
            for d in selected(a.only):
                tmp = base / d.name
                prepare(d, tmp)
                results[d.name] = truth_search(d, tmp, say)
                r = results[d.name]
                say(f"{d.name}: minimal {short(r.get('minimal', []))}; table says {short(d.truth)}")
        else:
            variants = [Variant("before", a.before, modern=False), Variant("after", None, modern=True),
                        Variant("after+confirm", None, modern=True, confirm=True)]
            rows = []
            for d in selected(a.only):
                tmp = base / d.name
                prepare(d, tmp)
                row: dict = {"daemon": d.name, "truth": sorted(d.truth), "command": argv(d, tmp),
                             "check": check_command(d)}
                for v in variants:
                    row[v.name] = capprobe_run(d, tmp, v, tmp / f"{v.name}.profile.json")
                    if a.keep and (tmp / f"{v.name}.profile.json").exists():
                        a.keep.mkdir(parents=True, exist_ok=True)
                        shutil.copy(tmp / f"{v.name}.profile.json", a.keep / f"{d.name}.{v.name}.profile.json")
                    row[v.name + "_verdict"] = compare(d.truth, row[v.name])
                    say(f"{d.name} {v.name}: {cell(row[v.name], row[v.name + '_verdict'])} ({row[v.name]['seconds']} s)")
                rows.append(row)
            results["daemons"] = rows
            results["score"] = {v.name: score(rows, v) for v in variants}
            results["score_exact_and_ran"] = {v.name: score(rows, v, ran=True) for v in variants}
            print(markdown(rows, variants))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - started, 1)
    # one file for both: `truth` fills in truth_search, `score` the rest; each keeps the other's
    kept = json.loads(a.json.read_text()) if a.json.exists() else {}
    if a.cmd == "truth":
        merged = {**kept, "truth_search": {**kept.get("truth_search", {}), **results}}
    else:
        merged = {**results, "truth_search": kept.get("truth_search", {})}
    a.json.write_text(json.dumps(merged, indent=1) + "\n")
    say(f"{a.cmd}: {results['seconds']} s; written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
