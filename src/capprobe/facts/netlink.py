"""Decode the netlink messages a traced program SENDS into operations.

Input is strace 6.1 text (`-X verbose -yy -s 4096`).  Measured on this host, the
text is enough; no hex dumps (`-e write=all`) are needed:

* For a bound socket strace decodes rtnetlink structurally and prints names
  (`IFLA_INFO_KIND */}, "veth"`, `TCA_KIND */}, "htb"`).
* For nfnetlink it splits batches into messages and prints each `nlmsg_type` as
  `0xa /* NFNL_SUBSYS_NFTABLES */<<8|0 /* NFT_MSG_NEWTABLE */`, but leaves the
  attributes unnamed: `[{nla_len=7, nla_type=0x1}, "\\x74\\x31\\x00"]`.
* When strace does not know the socket's protocol yet (socket not bound:
  pyroute2's sockets, nft's very first message) it prints the header with
  `NLMSG_???` and the body as a raw string; `write()` on a netlink fd is always a
  raw string.

Message bodies as bytes (raw strings, write(), hex dumps) are decoded by
pyroute2's own message classes (ifinfmsg, ifaddrmsg, rtmsg, fibmsg, tcmsg,
nft_*_msg), chosen by pyroute2's own type -> class maps; the same classes name
nfnetlink's unnamed attributes, and pyroute2's constants name nfnetlink types.
The numeric `nlmsg_type` is authoritative (names only as a fallback), and
details come either from strace's names or from pyroute2.  Nothing here raises
on odd input: a body pyroute2 cannot decode gives the op without details,
undecodable text gives [], and the caller counts it.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

NETLINK_ROUTE = "NETLINK_ROUTE"
NETLINK_NETFILTER = "NETLINK_NETFILTER"
DECODED_PROTOCOLS = (NETLINK_ROUTE, NETLINK_NETFILTER)


@dataclass(frozen=True)
class NetlinkOp:
    """One netlink request the target sent."""

    protocol: str  # "NETLINK_ROUTE" | "NETLINK_NETFILTER"
    op: str  # "RTM_NEWLINK", "NFT_MSG_NEWTABLE", ...
    detail: str  # link/qdisc kind, "table 100", nft table name; "" when none
    changes_state: bool  # NEW*/DEL*/SET* (and counter resets) True, GET* False
    target: str = ""  # what the op names: interface "v0", nft "t1/c1"; "" when none


# --- protocol of a socket -------------------------------------------------------

# linux/netlink.h numbers, for `-X raw` text or protocols strace prints numerically.
_NETLINK_PROTOCOL_NUMBERS = {
    0: "NETLINK_ROUTE", 1: "NETLINK_UNUSED", 2: "NETLINK_USERSOCK",
    3: "NETLINK_FIREWALL", 4: "NETLINK_SOCK_DIAG", 5: "NETLINK_NFLOG",
    6: "NETLINK_XFRM", 7: "NETLINK_SELINUX", 8: "NETLINK_ISCSI",
    9: "NETLINK_AUDIT", 10: "NETLINK_FIB_LOOKUP", 11: "NETLINK_CONNECTOR",
    12: "NETLINK_NETFILTER", 13: "NETLINK_IP6_FW", 14: "NETLINK_DNRTMSG",
    15: "NETLINK_KOBJECT_UEVENT", 16: "NETLINK_GENERIC", 18: "NETLINK_SCSITRANSPORT",
    19: "NETLINK_ECRYPTFS", 20: "NETLINK_RDMA", 21: "NETLINK_CRYPTO", 22: "NETLINK_SMC",
}

_NUMBER = r"(?:0x[0-9a-fA-F]+|\d+)"


def _int(text: str) -> int:
    return int(text, 16) if text.lower().startswith("0x") else int(text)


def _split_top_level_args(args_text: str) -> list[str]:
    """Split `a, {b, c}, d` at commas outside brackets and strings."""
    parts, depth, start, in_str, escaped = [], 0, 0, False, False
    for i, ch in enumerate(args_text):
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(args_text[start:i].strip())
            start = i + 1
    parts.append(args_text[start:].strip())
    return parts


def netlink_protocol_from_socket_args(args_text: str) -> str | None:
    """`0x10 /* AF_NETLINK */, 0x3 /* SOCK_RAW */|..., 0 /* NETLINK_ROUTE */` -> "NETLINK_ROUTE".

    None when the socket is not AF_NETLINK or the text is not understood.
    """
    try:
        parts = _split_top_level_args(args_text)
        if len(parts) != 3:
            return None
        domain, _type, proto = parts
        if "AF_NETLINK" not in domain and domain.split()[0] not in ("0x10", "16"):
            return None
        named = re.search(r"\b(NETLINK_[A-Z0-9_]+)\b", proto)
        if named:
            return named.group(1)
        number = re.match(_NUMBER, proto)
        return _NETLINK_PROTOCOL_NUMBERS.get(_int(number.group(0))) if number else None
    except Exception:
        return None


def netlink_protocol_from_annotation(annotation: str) -> str | None:
    """`NETLINK:[ROUTE:2964]` (strace -yy fd annotation) -> "NETLINK_ROUTE".

    strace only knows the protocol once the socket has a port id (after bind or
    the first autobinding send); before that it prints `NETLINK:[8271]` (inode
    only) and this returns None: track the socket() call instead.  Accepts the
    bare annotation or the whole `3<NETLINK:[ROUTE:2964]>` argument.
    """
    try:
        match = re.search(r"NETLINK:\[([A-Z][A-Z0-9_]*):\d+\]", annotation)
        return "NETLINK_" + match.group(1) if match else None
    except Exception:
        return None


# --- message type names ---------------------------------------------------------

# linux/rtnetlink.h: families of four starting at RTM_BASE=16, NEW/DEL/GET/SET.
# Kept here rather than read from pyroute2.netlink.rtnl.RTM_VALUES: that table
# lacks kernel types probes/netlink_ops.toml names (RTM_*CHAIN, RTM_*NEXTHOP;
# pyroute2 0.7 also VLAN, TUNNEL, NEXTHOPBUCKET) and holds pyroute2-private
# numbers (RTM_NEWNETNS=500) that a traced program's message must not be named by.
_RTM_FAMILIES = {
    16: "LINK", 20: "ADDR", 24: "ROUTE", 28: "NEIGH", 32: "RULE", 36: "QDISC",
    40: "TCLASS", 44: "TFILTER", 48: "ACTION", 52: "PREFIX", 56: "MULTICAST",
    60: "ANYCAST", 64: "NEIGHTBL", 68: "NDUSEROPT", 72: "ADDRLABEL", 76: "DCB",
    80: "NETCONF", 84: "MDB", 88: "NSID", 92: "STATS", 96: "CACHEREPORT",
    100: "CHAIN", 104: "NEXTHOP", 108: "LINKPROP", 112: "VLAN",
    116: "NEXTHOPBUCKET", 120: "TUNNEL",
}
_RTM_VERBS = ("NEW", "DEL", "GET", "SET")
# Odd members of the scheme: the kernel's own names differ from the pattern.
_RTM_SPECIAL_NAMES = {62: "RTM_NEWNEIGHTBL", 64: "RTM_GETNEIGHTBL", 67: "RTM_SETNEIGHTBL"}

# nf_tables message types newer than pyroute2's table (0.7 and 0.9 stop at
# DELFLOWTABLE=24): name, and the older type whose body layout they share.
_NFT_MSG_NEWER = {
    25: ("NFT_MSG_GETRULE_RESET", 7), 26: ("NFT_MSG_DESTROYTABLE", 2),
    27: ("NFT_MSG_DESTROYCHAIN", 5), 28: ("NFT_MSG_DESTROYRULE", 8),
    29: ("NFT_MSG_DESTROYSET", 11), 30: ("NFT_MSG_DESTROYSETELEM", 14),
    31: ("NFT_MSG_DESTROYOBJ", 20), 32: ("NFT_MSG_DESTROYFLOWTABLE", 24),
    33: ("NFT_MSG_GETSETELEM_RESET", 13),
}
# nfnetlink subsystems whose message names pyroute2 has: (module, constant prefix).
_NFNL_MESSAGE_NAMES = {
    "NFNL_SUBSYS_NFTABLES": ("nftsocket", "NFT_MSG_"),
    "NFNL_SUBSYS_CTNETLINK": ("nfctsocket", "IPCTNL_MSG_CT_"),
    "NFNL_SUBSYS_IPSET": ("ipset", "IPSET_CMD_"),
}
# ipset commands that only read (linux/netfilter/ipset/ip_set.h).
_IPSET_READS = {"IPSET_CMD_PROTOCOL", "IPSET_CMD_LIST", "IPSET_CMD_SAVE", "IPSET_CMD_HEADER",
                "IPSET_CMD_TYPE", "IPSET_CMD_GET_BYNAME", "IPSET_CMD_GET_BYINDEX"}

# nlmsg_type < 16 are control messages (NOOP, ERROR, DONE, OVERRUN); the two
# nfnetlink batch delimiters carry no operation of their own.
_NLMSG_MIN_TYPE = 16
_NFNL_MSG_BATCH_BEGIN = 0x10
_NFNL_MSG_BATCH_END = 0x11


def _int_constants(module, prefix: str) -> dict[int, str]:
    """{value: name} of a pyroute2 module's integer constants named PREFIX*."""
    return {value: name for name, value in vars(module).items()
            if name.startswith(prefix) and isinstance(value, int)}


@functools.cache
def _nfnl_names() -> tuple[dict[int, str], dict[int, dict[int, str]]]:
    """({subsystem: NFNL_SUBSYS_* name}, {subsystem: {message: name}}) from pyroute2."""
    import importlib

    from pyroute2.netlink import nfnetlink

    # NFNL_SUBSYS_COUNT is a sentinel, and pyroute2's value is stale (the kernel's 12 is HOOK).
    subsystems = {v: n for v, n in _int_constants(nfnetlink, "NFNL_SUBSYS_").items()
                  if n != "NFNL_SUBSYS_COUNT"}
    by_name = {n: v for v, n in subsystems.items()}
    messages = {}
    for subsys_name, (module_name, prefix) in _NFNL_MESSAGE_NAMES.items():
        module = importlib.import_module(f"pyroute2.netlink.nfnetlink.{module_name}")
        messages[by_name[subsys_name]] = _int_constants(module, prefix)
    messages[by_name["NFNL_SUBSYS_NFTABLES"]].update((t, name) for t, (name, _) in _NFT_MSG_NEWER.items())
    return subsystems, messages


def _rtm_name(msg_type: int) -> str:
    if msg_type in _RTM_SPECIAL_NAMES:
        return _RTM_SPECIAL_NAMES[msg_type]
    family = _RTM_FAMILIES.get(msg_type & ~3)
    if family is None:
        return f"RTM_0x{msg_type:x}"
    return f"RTM_{_RTM_VERBS[msg_type & 3]}{family}"


def _rtm_changes_state(msg_type: int) -> bool:
    # The kernel's own rule (rtnetlink_rcv_msg): every kind but GET needs
    # CAP_NET_ADMIN; the kind is the low two bits because RTM_BASE is 16.
    return (msg_type & 3) != 2


def _nfnl_reads(name: str) -> bool:
    """Whether a named nfnetlink request only reads.

    nfnetlink wants CAP_NET_ADMIN for reads too; this is only about the effect.
    *_RESET and GET_CTRZERO read and zero counters or quotas: that is a change.
    """
    if name in _IPSET_READS:
        return True
    verb = name.removeprefix("NFT_MSG_").removeprefix("IPCTNL_MSG_CT_")
    return verb.startswith("GET") and not verb.endswith(("_RESET", "_CTRZERO"))


def _nfnl_name_and_state(msg_type: int) -> tuple[str, bool] | None:
    """(op name, changes_state) for an nfnetlink type; None for batch delimiters."""
    subsys, msg = msg_type >> 8, msg_type & 0xFF
    if subsys == 0:
        return None  # NFNL_MSG_BATCH_BEGIN / _END and other subsystem-less control
    subsystems, messages = _nfnl_names()
    name = messages.get(subsys, {}).get(msg)
    if name is not None:
        return name, not _nfnl_reads(name)
    # Unknown meaning: call it a change; nfnetlink wants CAP_NET_ADMIN anyway.
    named_family = _NFNL_MESSAGE_NAMES.get(subsystems.get(subsys, ""))
    if named_family:
        return f"{named_family[1]}0x{msg:x}", True
    subsys_name = subsystems.get(subsys, f"NFNL_SUBSYS_0x{subsys:x}").removeprefix("NFNL_SUBSYS_")
    return f"NFNL_{subsys_name}_MSG_0x{msg:x}", True


def _name_and_state(protocol: str, msg_type: int) -> tuple[str, bool] | None:
    if msg_type < _NLMSG_MIN_TYPE:
        return None
    if protocol == NETLINK_ROUTE:
        return _rtm_name(msg_type), _rtm_changes_state(msg_type)
    return _nfnl_name_and_state(msg_type)


@functools.cache
def _type_number_by_name() -> dict[str, int]:
    """Reverse tables, for text printed without numbers (strace -X abbrev)."""
    names = {_rtm_name(t): t for t in range(16, 124)}
    _, messages = _nfnl_names()
    names.update({name: (subsys << 8) | msg for subsys, table in messages.items() for msg, name in table.items()})
    names.update({"NFNL_MSG_BATCH_BEGIN": _NFNL_MSG_BATCH_BEGIN, "NFNL_MSG_BATCH_END": _NFNL_MSG_BATCH_END})
    return names


# --- strace string literals -----------------------------------------------------

_SIMPLE_ESCAPES = {"n": 10, "t": 9, "r": 13, "v": 11, "f": 12, "a": 7, "b": 8,
                   '"': 34, "\\": 92, "'": 39, "?": 63}
_STRING_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _unescape_strace_string(body: str) -> bytes:
    """Bytes of a strace string literal body (between the quotes).

    strace writes printable bytes as themselves, `\\xNN` (netlink data), C
    escapes, and octal in shortest form (`\\0`, `\\20`) unless a digit follows.
    """
    out = bytearray()
    i, n = 0, len(body)
    while i < n:
        ch = body[i]
        if ch != "\\" or i + 1 >= n:
            out.extend(ch.encode("latin-1", "replace"))
            i += 1
            continue
        nxt = body[i + 1]
        if nxt == "x":
            hex_digits = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:i + 4])
            if hex_digits:
                out.append(int(hex_digits.group(0), 16))
                i += 2 + len(hex_digits.group(0))
                continue
            out.append(ord("x"))
            i += 2
        elif nxt in "01234567":
            octal = re.match(r"[0-7]{1,3}", body[i + 1:i + 4]).group(0)
            out.append(int(octal, 8) & 0xFF)
            i += 1 + len(octal)
        else:
            out.append(_SIMPLE_ESCAPES.get(nxt, ord(nxt) & 0xFF))
            i += 2
    return bytes(out)


def _c_string(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


# --- decoding whole messages with pyroute2 -------------------------------------

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_RT_TABLE_NAMES = {0: "unspec", 253: "default", 254: "main", 255: "local"}
# Where nf_tables messages keep their table, and the object (chain, set...) they name.
_NFT_TABLE_ATTRS = ("NFTA_TABLE_NAME", "NFTA_CHAIN_TABLE", "NFTA_RULE_TABLE", "NFTA_SET_TABLE",
                    "NFTA_SET_ELEM_LIST_TABLE", "NFTA_FLOWTABLE_TABLE")
_NFT_OBJECT_ATTRS = ("NFTA_CHAIN_NAME", "NFTA_RULE_CHAIN", "NFTA_SET_NAME",
                     "NFTA_SET_ELEM_LIST_SET", "NFTA_FLOWTABLE_NAME")


def _table_detail(table: int) -> str:
    return "table " + _RT_TABLE_NAMES.get(table, str(table))


def _text(value) -> str:
    """An attribute pyroute2 decoded as a string (bytes when it was not UTF-8)."""
    if isinstance(value, bytes):
        return _c_string(value)
    return value.split("\0", 1)[0] if isinstance(value, str) else ""


# What to read from each decoded message: (detail, target, ifindex).
def _link_details(msg) -> tuple[str, str, int]:
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None
    return _text(kind), _text(msg.get_attr("IFLA_IFNAME")), msg["index"]


def _address_details(msg) -> tuple[str, str, int]:
    return "", _text(msg.get_attr("IFA_LABEL")), 0


def _traffic_control_details(msg) -> tuple[str, str, int]:
    return _text(msg.get_attr("TCA_KIND")), "", 0


def _routing_table_details(table_attr: str, msg) -> tuple[str, str, int]:
    # RTA_TABLE/FRA_TABLE (ids > 255) win over the 8-bit header field.
    table = msg.get_attr(table_attr)
    return _table_detail(table if isinstance(table, int) else msg["table"]), "", 0


def _nft_message_details(msg) -> tuple[str, str, int]:
    return *_nft_details(lambda name: _text(msg.get_attr(name))), 0


@functools.cache
def _decoders() -> dict[tuple[str, int], tuple[type, Callable]]:
    """(protocol, nlmsg_type) -> (pyroute2 class that decodes it, what to read from it).

    The classes come from pyroute2's own type -> class maps; types whose class
    holds nothing an op reports are left out (and not decoded at all).
    """
    from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nftsocket
    from pyroute2.netlink.rtnl.fibmsg import fibmsg
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.marshal import MarshalRtnl
    from pyroute2.netlink.rtnl.rtmsg import rtmsg
    from pyroute2.netlink.rtnl.tcmsg import tcmsg

    readers = {ifinfmsg: _link_details, ifaddrmsg: _address_details, tcmsg: _traffic_control_details,
               rtmsg: functools.partial(_routing_table_details, "RTA_TABLE"),
               fibmsg: functools.partial(_routing_table_details, "FRA_TABLE")}
    decoders = {(NETLINK_ROUTE, t): (cls, readers[cls]) for t, cls in MarshalRtnl.msg_map.items() if cls in readers}
    # pyroute2 0.9 keeps the nftables policy on the asyncio socket, 0.7 on NFTSocket.
    nft_policy = getattr(nftsocket, "AsyncNFTSocket", nftsocket.NFTSocket).policy
    nft_policy = {**nft_policy, **{t: nft_policy[older] for t, (_, older) in _NFT_MSG_NEWER.items()
                                   if older in nft_policy}}
    decoders.update(((NETLINK_NETFILTER, (NFNL_SUBSYS_NFTABLES << 8) | t), (cls, _nft_message_details))
                    for t, cls in nft_policy.items())
    return decoders


@functools.cache
def _attribute_numbers(cls: type) -> dict[str, int]:
    """{attribute name: number} from a pyroute2 class's nla_map declaration
    (pairs are numbered by position, triples carry their number)."""
    return {entry[-2]: entry[0] if len(entry) == 3 else number for number, entry in enumerate(cls.nla_map)}


def _nft_details(attribute: Callable[[str], str]) -> tuple[str, str]:
    """(table name, "table/object") of an nf_tables message; attribute(name) -> its text or ""."""
    def first(names: tuple[str, ...]) -> str:
        return next((text for name in names if (text := attribute(name))), "")

    table, name = first(_NFT_TABLE_ATTRS), first(_NFT_OBJECT_ATTRS)
    return table, f"{table}/{name}" if name else table


def _details_from_message(protocol: str, msg_type: int, message: bytes) -> tuple[str, str, int]:
    """(detail, target, ifindex) of one whole netlink message, header included.

    ("", "", 0) when pyroute2 has no class for the type or cannot decode the body.
    """
    decoder = _decoders().get((protocol, msg_type))
    if decoder is None:
        return "", "", 0
    cls, read = decoder
    try:
        msg = cls(message)
        msg.decode()
        return read(msg)
    except Exception:  # pyroute2 raises struct.error, KeyError, its own errors... on odd bodies
        return "", "", 0


def _is_empty_newlink_probe(protocol: str, msg_type: int, msg_len: int, ifindex: int) -> bool:
    # iproute2 opens every `ip link`/`ip` run with an RTM_NEWLINK carrying no
    # attributes and no interface (iplink_have_newlink): the kernel answers
    # ENODEV (or EPERM without the capability) and iproute2 carries on either
    # way, so it changes nothing and needs nothing.  Measured: `ip link show`.
    return protocol == NETLINK_ROUTE and msg_type == 16 and msg_len <= 32 and ifindex == 0


def _make_op(protocol: str, msg_type: int, detail: str, target: str, probe: bool) -> NetlinkOp | None:
    named = _name_and_state(protocol, msg_type)
    if named is None:
        return None
    name, changes_state = named
    if probe:
        return NetlinkOp(protocol, name, "probe", False, "")
    return NetlinkOp(protocol, name, detail, changes_state, target)


def _op_from_message(protocol: str, msg_type: int, msg_len: int, message: bytes) -> NetlinkOp | None:
    """The op of one whole message; msg_len as its header says (the bytes may be cut short)."""
    detail, target, ifindex = _details_from_message(protocol, msg_type, message)
    return _make_op(protocol, msg_type, detail, target,
                    _is_empty_newlink_probe(protocol, msg_type, msg_len, ifindex))


def decode_netlink_bytes(protocol: str, data: bytes) -> list[NetlinkOp]:
    """Operations in a buffer of whole netlink messages (write() payload, hex dump)."""
    ops, pos = [], 0
    while pos + _NLMSGHDR.size <= len(data):
        msg_len, msg_type = struct.unpack_from("=IH", data, pos)
        if msg_len < _NLMSGHDR.size:
            break
        op = _op_from_message(protocol, msg_type, msg_len, data[pos:pos + msg_len])
        if op:
            ops.append(op)
        pos += (msg_len + 3) & ~3
    return ops


def _message_bytes(msg_type: int, body: bytes) -> bytes:
    """A whole message around a raw body strace printed after the header it decoded."""
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, 0, 0, 0) + body


# --- decoding from strace's structured text -------------------------------------

_MESSAGE_START = "{nlmsg_len="
_HEADER = re.compile(
    r"\{nlmsg_len=(?P<len>\d+), nlmsg_type=(?P<type>[^,]*), nlmsg_flags=[^,]*, "
    r"nlmsg_seq=[^,]*, nlmsg_pid=[^}]*\}"
)
_TYPE_NUMERIC = re.compile(
    rf"^(?P<high>{_NUMBER})(?:\s*/\*.*?\*/)?(?:\s*<<\s*8\s*\|\s*(?P<low>{_NUMBER})(?:\s*/\*.*?\*/)?)?\s*$"
)
_TYPE_NAMES = re.compile(r"(NFNL_SUBSYS_[A-Z_]+)\s*<<\s*8\s*\|\s*([A-Z_0-9]+)|([A-Z][A-Z_0-9]+)")
_NLA_STRING = re.compile(r'\{nla_len=\d+, nla_type=(?P<type>[^}]*)\}, "(?P<data>(?:[^"\\]|\\.)*)"')
_NAMED_STRING = r'{name} \*/\}}, "((?:[^"\\]|\\.)*)"'


def _parse_type(type_text: str) -> int | None:
    """`0x10 /* RTM_NEWLINK */`, `0xa /* ... */<<8|0x3 /* ... */`, or bare names."""
    numeric = _TYPE_NUMERIC.match(type_text.strip())
    if numeric:
        high = _int(numeric.group("high"))
        return (high << 8) | _int(numeric.group("low")) if numeric.group("low") else high
    names = _TYPE_NAMES.search(type_text)
    if names and names.group(3):
        return _type_number_by_name().get(names.group(3))
    if names:
        subsys = {name: number for number, name in _nfnl_names()[0].items()}.get(names.group(1))
        msg = _type_number_by_name().get(names.group(2))
        return None if subsys is None or msg is None else (subsys << 8) | (msg & 0xFF)
    return None


def _named_string(text: str, attr_name: str) -> str:
    match = re.search(_NAMED_STRING.format(name=attr_name), text)
    return _c_string(_unescape_strace_string(match.group(1))) if match else ""


def _rtm_details_from_text(msg_type: int, text: str) -> tuple[str, str]:
    family = msg_type & ~3
    if family == 16:
        return _named_string(text, "IFLA_INFO_KIND"), _named_string(text, "IFLA_IFNAME")
    if family in (36, 40, 44, 48):
        return _named_string(text, "TCA_KIND"), ""
    if family in (24, 32):
        # RTA_TABLE/FRA_TABLE (ids > 255) win over the 8-bit header field.
        attr = re.search(rf"nla_type={_NUMBER} /\* (?:RTA|FRA)_TABLE \*/\}}, ({_NUMBER})", text)
        header = re.search(rf"\b(?:rtm_table|table)=({_NUMBER})", text)
        chosen = attr or header
        return (_table_detail(_int(chosen.group(1))), "") if chosen else ("", "")
    return "", ""


def _nft_details_from_text(msg_type: int, text: str) -> tuple[str, str]:
    decoder = _decoders().get((NETLINK_NETFILTER, msg_type))
    if decoder is None:
        return "", ""
    cls, _ = decoder
    # The strings inside nested attributes match too; the first of each number
    # wins, and nft sends table and object names before anything nested.
    first_of_each: dict[int, bytes] = {}
    for match in _NLA_STRING.finditer(text):
        type_numbers = re.findall(_NUMBER, re.sub(r"/\*.*?\*/", "", match.group("type")))
        if not type_numbers:
            continue
        attr_type = _int(type_numbers[-1]) & 0x3FFF
        first_of_each.setdefault(attr_type, _unescape_strace_string(match.group("data")))
    numbers = _attribute_numbers(cls)
    return _nft_details(lambda name: _c_string(first_of_each.get(numbers.get(name), b"")))


def _decode_message_text(protocol: str, segment: str) -> NetlinkOp | None:
    """One `{nlmsg_len=..., ...}, body` segment of strace's message array."""
    header = _HEADER.match(segment)
    if not header:
        return None
    msg_type = _parse_type(header.group("type"))
    if msg_type is None:
        return None
    msg_len = int(header.group("len"))
    rest = segment[header.end():].lstrip(", ")
    if rest.startswith('"'):
        # strace did not know the protocol: the body is raw, decode its bytes.
        raw = _STRING_LITERAL.match(rest)
        body = _unescape_strace_string(raw.group(1)) if raw else b""
        return _op_from_message(protocol, msg_type, msg_len, _message_bytes(msg_type, body))
    if protocol == NETLINK_ROUTE:
        detail, target = _rtm_details_from_text(msg_type, rest)
        if not target:
            # With -yy strace resolves interface indexes: `ifi_index=4 /* if_nametoindex("v0") */`.
            by_index = re.search(r'if_nametoindex\("((?:[^"\\]|\\.)*)"\)', rest)
            target = by_index.group(1) if by_index else ""
        ifindex_match = re.search(rf"\bifi_index=(-?{_NUMBER})", rest)
        ifindex = _int(ifindex_match.group(1).lstrip("-")) if ifindex_match else 0
    else:
        detail, target = _nft_details_from_text(msg_type, rest)
        ifindex = 0
    probe = _is_empty_newlink_probe(protocol, msg_type, msg_len, ifindex)
    return _make_op(protocol, msg_type, detail, target, probe)


def _decode_message_array_text(protocol: str, args_text: str) -> list[NetlinkOp]:
    # Every sent message, batched or not, in any iovec, starts with its header;
    # sent requests never embed another header (only received errors echo one).
    ops = []
    starts = [m.start() for m in re.finditer(re.escape(_MESSAGE_START), args_text)]
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else len(args_text)
        op = _decode_message_text(protocol, args_text[start:end])
        if op:
            ops.append(op)
    return ops


_SEND_SYSCALLS = {"sendto", "sendmsg", "sendmmsg", "send"}
_WRITE_SYSCALLS = {"write", "writev", "pwrite64", "pwritev", "pwritev2"}


def decode_netlink_send(protocol: str, syscall: str, args_text: str, dump: bytes | None = None) -> list[NetlinkOp]:
    """Operations in one send on a netlink socket, in the order they were sent.

    protocol: the socket's protocol as strace names it ("NETLINK_ROUTE",
    "NETLINK_NETFILTER"; others give []).  syscall: "sendto", "sendmsg", "write"...
    args_text: what strace printed between the syscall's parentheses.  dump: the
    payload bytes if the caller has them (hex dump); they win over the text.
    nfnetlink batches come back as their member messages, without the
    BATCH_BEGIN/END delimiters.  Never raises; undecodable input gives [].
    """
    try:
        if protocol not in DECODED_PROTOCOLS:
            return []
        if dump is not None:
            return decode_netlink_bytes(protocol, dump)
        if syscall in _WRITE_SYSCALLS:
            # strace never decodes write() payloads as netlink: a plain string
            # (for writev one per iovec; the kernel joins them into one datagram).
            fd_and_rest = args_text.split(",", 1)
            payload = b"".join(_unescape_strace_string(m.group(1))
                               for m in _STRING_LITERAL.finditer(fd_and_rest[1] if len(fd_and_rest) > 1 else ""))
            return decode_netlink_bytes(protocol, payload)
        if syscall in _SEND_SYSCALLS:
            return _decode_message_array_text(protocol, args_text)
        return []
    except Exception:
        return []


# --- capabilities ---------------------------------------------------------------

@functools.cache
def _default_ops_table() -> dict:
    from capprobe.probes import load_table

    return load_table("netlink_ops")


def _rule_for(op: NetlinkOp, rules: list[dict]) -> dict | None:
    for rule in rules:
        if rule.get("protocol", op.protocol) != op.protocol:
            continue
        if not any(fnmatch.fnmatchcase(op.op, pattern) for pattern in rule.get("ops", ["*"])):
            continue
        if "details" in rule and op.detail not in rule["details"]:
            continue
        if "changes_state" in rule and rule["changes_state"] != op.changes_state:
            continue
        return rule
    return None


def capabilities_implied(ops, table: dict | None = None) -> list[tuple[str, str]]:
    """[(capability, reason)] the operations need, first-seen order, no repeats.

    Uses probes/netlink_ops.toml unless `table` is given (same shape).  This is
    the fallback when no kernel probe saw the capability check itself.
    """
    rules = (table if table is not None else _default_ops_table()).get("rule", [])
    implied: list[tuple[str, str]] = []
    for op in ops:
        rule = _rule_for(op, rules)
        if not rule or not rule.get("capability"):
            continue
        what = " ".join(part for part in (op.op, op.detail) if part)
        pair = (rule["capability"], f"{rule['description']} ({what})")
        if pair not in implied:
            implied.append(pair)
    return implied
