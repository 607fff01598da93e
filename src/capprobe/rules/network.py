"""Network: address families, bind ports and IP ranges exactly as seen."""

from __future__ import annotations

import ipaddress

from ..needs import INET, BindPlan, bind_protocol
from .base import Directive, RuleContext
from .evidence import short_exes
from .registry import rule


def families(ctx: RuleContext) -> set[str]:
    return set(ctx.needs.family_names)


def _loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return address in ("localhost",)


@rule("network")
def restrict_address_families(ctx: RuleContext):
    fams = ctx.needs.families
    if not fams:
        yield Directive("RestrictAddressFamilies", ("none",), "no socket created")
        return
    why = "; ".join(f"{f.family} x{f.count} by {short_exes([{'by': f.by}])}" for f in fams)
    left_open = socket_bind_left_open(ctx) if families(ctx) & set(INET) else None
    yield Directive("RestrictAddressFamilies", tuple(f.family for f in fams),
                    f"sockets created: {why}" + (f"; {left_open}" if left_open else ""))


@rule("network")
def private_network(ctx: RuleContext):
    if not ctx.needs.network:
        fams = ctx.needs.family_names
        yield Directive("PrivateNetwork", ("yes",), "no network socket: only " + (" ".join(fams) or "nothing"))


# systemd implements SocketBind*= as cgroup/bind4+bind6 BPF programs (socket-bind.bpf.c).
SOCKET_BIND_SYSTEMD = ("enforced by systemd built with BPF_FRAMEWORK (e.g. 257); "
                       "Debian 12's systemd 252 is built without it and ignores this line")


def _bind_plan(ctx: RuleContext) -> BindPlan:
    return ctx.needs.binds


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
        proto = bind_protocol(b)
        if proto not in plan.restricted:
            continue
        item = f"{proto}:{b['port']}" if proto else str(b["port"])
        if item not in allow:
            allow.append(item)
    why = "; ".join(f"{b['family']} {b.get('type') or ''} {b.get('address')}:{b['port']} by {short_exes([b])}"
                    for b in plan.listening if bind_protocol(b) in plan.restricted)
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
