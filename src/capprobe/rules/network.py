"""Network: address families, bind ports and IP ranges exactly as seen."""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass

from .base import Directive, RuleContext
from .evidence import short_exes
from .registry import rule

INET = ("AF_INET", "AF_INET6")
BIND_PROTOCOL = {"SOCK_STREAM": "tcp", "SOCK_DGRAM": "udp", "SOCK_SEQPACKET": "sctp"}


def families(ctx: RuleContext) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for s in ctx.profile["network"]["sockets"]:
        out.setdefault(s["family"], []).append(s)
    return out


def _loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return address in ("localhost",)


@rule("network")
def restrict_address_families(ctx: RuleContext):
    fams = families(ctx)
    if not fams:
        yield Directive("RestrictAddressFamilies", ("none",), "no socket created")
        return
    why = "; ".join(f"{f} x{sum(s['count'] for s in rows)} by {short_exes(rows)}" for f, rows in sorted(fams.items()))
    left_open = socket_bind_left_open(ctx) if set(fams) & set(INET) else None
    yield Directive("RestrictAddressFamilies", tuple(sorted(fams)),
                    f"sockets created: {why}" + (f"; {left_open}" if left_open else ""))


@rule("network")
def private_network(ctx: RuleContext):
    fams = set(families(ctx))
    if fams <= {"AF_UNIX"}:
        yield Directive("PrivateNetwork", ("yes",), "no network socket: only " + (" ".join(sorted(fams)) or "nothing"))


# Linux's default net.ipv4.ip_local_port_range, for profiles whose host stamp lacks it.
DEFAULT_LOCAL_PORT_RANGE = (32768, 60999)
# One executable binding this many distinct ports of one protocol, none listened on, picks
# them at random (a resolver's source port per query: unbound and dnsmasq draw from 1024-65535).
RANDOMISED_PORTS_MIN = 8
# systemd implements SocketBind*= as cgroup/bind4+bind6 BPF programs (socket-bind.bpf.c).
SOCKET_BIND_SYSTEMD = ("enforced by systemd built with BPF_FRAMEWORK (e.g. 257); "
                       "Debian 12's systemd 252 is built without it and ignores this line")


@dataclass(frozen=True)
class BindPlan:
    """Which binds form the service's listening set, and what a bind filter may restrict."""

    listening: tuple[dict, ...]     # listen()ed, or a stable port bound once
    ephemeral: tuple[dict, ...]     # port 0, ports in ip_local_port_range, randomised ports
    restricted: tuple[str, ...]     # protocols ("tcp", "udp"; "" = any) the filter closes
    unrestricted_why: str           # why the other protocols get no filter ("" when none)


def _protocol(bind: dict) -> str:
    return BIND_PROTOCOL.get(bind.get("type") or "", "")


def _listened(listens: list[dict]) -> set[tuple[str, int]]:
    """(protocol, port) of every socket listen() succeeded on ("TCP:[127.0.0.1:80]")."""
    out = set()
    for row in listens:
        if row.get("errno"):
            continue
        kind, _, local = (row.get("socket") or "").partition(":")
        port = local.rstrip("]").rpartition(":")[2]
        if port.isdigit():
            out.add(({"TCP": "tcp", "TCPV6": "tcp", "SCTP": "sctp", "SCTPV6": "sctp"}.get(kind.upper(), ""),
                     int(port)))
    return out


def bind_plan(binds: list[dict], listens: list[dict], local_ports: tuple[int, int]) -> BindPlan:
    """Split successful IP binds into the listening set and source binds; pure.

    systemd's filter sees every explicit bind(), source binds included, and matches port 0
    like any other port: restricting a protocol that also makes source binds would refuse
    them (a resolver's next query, Go's IPv6 probe on port 0).
    """
    binds = [b for b in binds if b["family"] in INET and not b.get("errno")]
    listened = _listened(listens)
    spread: dict[tuple[str, str], set[int]] = {}
    for b in binds:
        if b.get("port") and (_protocol(b), b["port"]) not in listened:
            for exe in b.get("by") or [""]:
                spread.setdefault((exe, _protocol(b)), set()).add(b["port"])

    def spread_of(b: dict) -> int:
        return max(len(spread.get((exe, _protocol(b)), ())) for exe in b.get("by") or [""])

    def ephemeral_why(b: dict) -> str | None:
        port = b.get("port")
        if (_protocol(b), port) in listened:
            return None
        if not port:
            return "port 0 (the kernel picks)"
        # One port in the range, bound by an executable that binds no other, is a stable
        # service port that happens to lie there (WireGuard's 51820): only a second one
        # makes it a source port.
        if local_ports[0] <= port <= local_ports[1] and spread_of(b) >= 2:
            return f"inside ip_local_port_range {local_ports[0]}-{local_ports[1]}"
        if port >= 1024 and spread_of(b) >= RANDOMISED_PORTS_MIN:
            return f"one of {RANDOMISED_PORTS_MIN}+ distinct ports bound by one executable"
        return None

    listening, ephemeral, reasons = [], [], {}
    for b in binds:
        why = ephemeral_why(b)
        if why is None:
            listening.append(b)
        else:
            ephemeral.append(b)
            reasons.setdefault(_protocol(b) or "ip", why)
    source_protocols = {_protocol(b) for b in ephemeral}
    if not ephemeral:
        restricted = {_protocol(b) for b in listening}
    elif "" in source_protocols:
        restricted = set()  # a source bind of unknown protocol: any filter might refuse it
    else:  # close only the protocols that make no source binds ("" could only be "any")
        restricted = {_protocol(b) for b in listening} - source_protocols - {""}
    counts = Counter(_protocol(b) or "ip" for b in ephemeral)
    why = "; ".join(f"{n} {proto} source binds (e.g. {reasons[proto]})" for proto, n in sorted(counts.items()))
    return BindPlan(tuple(listening), tuple(ephemeral), tuple(sorted(restricted)), why)


def _bind_plan(ctx: RuleContext) -> BindPlan:
    net = ctx.profile["network"]
    local_ports = tuple(ctx.profile.get("host", {}).get("ip_local_port_range") or DEFAULT_LOCAL_PORT_RANGE)
    return ctx.memo("bind_plan", lambda: bind_plan(net["binds"], net.get("listens", []), local_ports))


@rule("network")
def socket_bind(ctx: RuleContext):
    """SocketBindAllow= for the listening set, SocketBindDeny= for the protocols it uses.

    Source binds (port 0, ephemeral or randomised ports) are not a listening set: the next
    start binds other ports, so their protocol is left unfiltered, and the comment says so.
    """
    fams = set(families(ctx))
    if not fams & set(INET):
        return
    plan = _bind_plan(ctx)
    if not plan.listening and not plan.ephemeral:
        yield Directive("SocketBindDeny", ("any",), f"IP sockets, but no bind() seen; {SOCKET_BIND_SYSTEMD}")
        return
    if not plan.restricted:
        return  # no stable listening set: restrict_address_families' comment says why
    allow = []
    for b in plan.listening:
        proto = _protocol(b)
        if proto not in plan.restricted:
            continue
        item = f"{proto}:{b['port']}" if proto else str(b["port"])
        if item not in allow:
            allow.append(item)
    why = "; ".join(f"{b['family']} {b.get('type') or ''} {b.get('address')}:{b['port']} by {short_exes([b])}"
                    for b in plan.listening if _protocol(b) in plan.restricted)
    left_open = f"; not restricted: {plan.unrestricted_why}" if plan.unrestricted_why else ""
    for item in allow:  # systemd reads one rule per SocketBindAllow= line
        yield Directive("SocketBindAllow", (item,),
                        f"listening binds: {why}{left_open}; {SOCKET_BIND_SYSTEMD}"
                        if item == allow[0] else "see above")
    if not plan.ephemeral:
        yield Directive("SocketBindDeny", ("any",), "no other port may be bound")
        return
    for proto in plan.restricted:  # other protocols make source binds: leave them open
        yield Directive("SocketBindDeny", (f"{proto}:any",), f"no other {proto} port may be bound")


def socket_bind_left_open(ctx: RuleContext) -> str | None:
    """Why no SocketBind filter is written although the service binds IP ports, or None."""
    plan = _bind_plan(ctx)
    if plan.restricted or not plan.ephemeral:
        return None
    what = ("its listening ports share a protocol with source binds" if plan.listening
            else "no stable listening set")
    return (f"no SocketBindAllow=/SocketBindDeny=: {what}, {plan.unrestricted_why}; "
            "a bind filter would refuse the ports the next start picks")


@rule("network")
def ip_address_filter(ctx: RuleContext):
    fams = set(families(ctx))
    net = ctx.profile["network"]
    if not fams & set(INET):
        yield Directive("IPAddressDeny", ("any",), "no IP socket created")
        return
    addresses = ([b.get("address") for b in net["binds"] if b["family"] in INET]
                 + [c.get("address") for c in net["connects"] if c["family"] in INET]
                 + [s.get("address") for s in net.get("sends", []) if s["family"] in INET]
                 + [a.get("peer") for a in net.get("accepts", [])])
    if addresses and all(_loopback(a) for a in addresses):
        yield Directive("IPAddressDeny", ("any",), f"all {len(addresses)} IP endpoints seen were loopback")
        yield Directive("IPAddressAllow", ("localhost",), "loopback only")
