"""Network: address families, bind ports and IP ranges exactly as seen."""

from __future__ import annotations

import ipaddress

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
    yield Directive("RestrictAddressFamilies", tuple(sorted(fams)), f"sockets created: {why}")


@rule("network")
def private_network(ctx: RuleContext):
    fams = set(families(ctx))
    if fams <= {"AF_UNIX"}:
        yield Directive("PrivateNetwork", ("yes",), "no network socket: only " + (" ".join(sorted(fams)) or "nothing"))


@rule("network")
def socket_bind(ctx: RuleContext):
    fams = set(families(ctx))
    if not fams & set(INET):
        return
    binds = [b for b in ctx.profile["network"]["binds"] if b["family"] in INET and not b.get("errno")]
    if any(b.get("port") == 0 for b in binds):
        return  # an explicit ephemeral bind: port numbers are not known in advance
    allow = []
    for b in binds:
        proto = BIND_PROTOCOL.get(b.get("type") or "")
        item = f"{proto}:{b['port']}" if proto else str(b["port"])
        if item not in allow:
            allow.append(item)
    if allow:
        why = "; ".join(f"{b['family']} {b.get('type') or ''} {b.get('address')}:{b['port']} by {short_exes([b])}"
                        for b in binds)
        for item in allow:  # systemd reads one rule per SocketBindAllow= line
            yield Directive("SocketBindAllow", (item,), f"binds seen: {why}" if item == allow[0] else "see above")
        yield Directive("SocketBindDeny", ("any",), "no other port may be bound")
    else:
        yield Directive("SocketBindDeny", ("any",), "IP sockets, but no bind() seen")


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
