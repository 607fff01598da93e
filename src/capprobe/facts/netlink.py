"""Decode the netlink messages a traced program SENDS into operations.

Input is strace 6.1 text (`-X verbose -yy -s 4096`).  Measured on this host, the
text is enough; no hex dumps (`-e write=all`) and no pyroute2 are needed:

* For a bound socket strace decodes rtnetlink structurally and prints names
  (`IFLA_INFO_KIND */}, "veth"`, `TCA_KIND */}, "htb"`).
* For nfnetlink it splits batches into messages and prints each `nlmsg_type` as
  `0xa /* NFNL_SUBSYS_NFTABLES */<<8|0 /* NFT_MSG_NEWTABLE */`, but leaves the
  attributes unnamed: `[{nla_len=7, nla_type=0x1}, "\\x74\\x31\\x00"]`.
* When strace does not know the socket's protocol yet (socket not bound:
  pyroute2's sockets, nft's very first message) it prints the header with
  `NLMSG_???` and the body as a raw string; `write()` on a netlink fd is always a
  raw string.  Those bytes are decoded here by a small attribute walker.

So the numeric `nlmsg_type` is authoritative (names only as a fallback), and
details come either from strace's names or from bytes.  Nothing here raises on
odd input: undecodable text gives [] and the caller counts it.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import struct
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

# linux/netfilter/nf_tables.h enum nf_tables_msg_types.
_NFT_MSG_NAMES = (
    "NEWTABLE", "GETTABLE", "DELTABLE", "NEWCHAIN", "GETCHAIN", "DELCHAIN",
    "NEWRULE", "GETRULE", "DELRULE", "NEWSET", "GETSET", "DELSET",
    "NEWSETELEM", "GETSETELEM", "DELSETELEM", "NEWGEN", "GETGEN", "TRACE",
    "NEWOBJ", "GETOBJ", "DELOBJ", "GETOBJ_RESET", "NEWFLOWTABLE",
    "GETFLOWTABLE", "DELFLOWTABLE", "GETRULE_RESET", "DESTROYTABLE",
    "DESTROYCHAIN", "DESTROYRULE", "DESTROYSET", "DESTROYSETELEM",
    "DESTROYOBJ", "DESTROYFLOWTABLE", "GETSETELEM_RESET",
)
# linux/netfilter/nfnetlink.h subsystem ids (high byte of nlmsg_type).
_NFNL_SUBSYS = {
    0: "NONE", 1: "CTNETLINK", 2: "CTNETLINK_EXP", 3: "QUEUE", 4: "ULOG",
    5: "OSF", 6: "IPSET", 7: "ACCT", 8: "CTHELPER", 9: "NFT_COMPAT",
    10: "NFTABLES", 11: "HOOK",
}
_NFNL_SUBSYS_NFTABLES = 10
# ctnetlink: these read only; everything else (NEW, DELETE, GET_CTRZERO) writes.
_CTNETLINK_NAMES = {
    0: "IPCTNL_MSG_CT_NEW", 1: "IPCTNL_MSG_CT_GET", 2: "IPCTNL_MSG_CT_DELETE",
    3: "IPCTNL_MSG_CT_GET_CTRZERO", 4: "IPCTNL_MSG_CT_GET_STATS_CPU",
    5: "IPCTNL_MSG_CT_GET_STATS", 6: "IPCTNL_MSG_CT_GET_DYING",
    7: "IPCTNL_MSG_CT_GET_UNCONFIRMED",
}
_CTNETLINK_READS = {1, 4, 5, 6, 7}
# ipset commands that only read (linux/netfilter/ipset/ip_set.h).
_IPSET_READ_COMMANDS = {1, 7, 8, 12, 13, 14, 15}  # PROTOCOL LIST SAVE HEADER TYPE GET_BYNAME GET_BYINDEX

# nlmsg_type < 16 are control messages (NOOP, ERROR, DONE, OVERRUN); the two
# nfnetlink batch delimiters carry no operation of their own.
_NLMSG_MIN_TYPE = 16
_NFNL_MSG_BATCH_BEGIN = 0x10
_NFNL_MSG_BATCH_END = 0x11


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


def _nfnl_name_and_state(msg_type: int) -> tuple[str, bool] | None:
    """(op name, changes_state) for an nfnetlink type; None for batch delimiters."""
    subsys, msg = msg_type >> 8, msg_type & 0xFF
    if subsys == 0:
        return None  # NFNL_MSG_BATCH_BEGIN / _END and other subsystem-less control
    if subsys == _NFNL_SUBSYS_NFTABLES:
        if msg < len(_NFT_MSG_NAMES):
            name = _NFT_MSG_NAMES[msg]
            # *_RESET reads and zeroes counters/quotas: that is a change.
            reads = name.startswith("GET") and not name.endswith("_RESET")
            return "NFT_MSG_" + name, not reads
        return f"NFT_MSG_0x{msg:x}", True
    if subsys == 1:
        return _CTNETLINK_NAMES.get(msg, f"IPCTNL_MSG_0x{msg:x}"), msg not in _CTNETLINK_READS
    subsys_name = _NFNL_SUBSYS.get(subsys, f"0x{subsys:x}")
    if subsys == 6:
        return f"NFNL_IPSET_CMD_0x{msg:x}", msg not in _IPSET_READ_COMMANDS
    # Unknown meaning: call it a change; nfnetlink wants CAP_NET_ADMIN anyway.
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
    names.update({"NFT_MSG_" + n: (_NFNL_SUBSYS_NFTABLES << 8) | i for i, n in enumerate(_NFT_MSG_NAMES)})
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


# --- decoding from bytes (raw strings, write(), optional hex dump) --------------

def _walk_attributes(data: bytes) -> list[tuple[int, bytes]]:
    """(type without NLA_F_NESTED/NET_BYTEORDER flags, payload) of each attribute."""
    attrs, pos = [], 0
    while pos + 4 <= len(data):
        length, attr_type = struct.unpack_from("=HH", data, pos)
        if length < 4:
            break
        attrs.append((attr_type & 0x3FFF, data[pos + 4:pos + length]))
        pos += (length + 3) & ~3
    return attrs


def _first_attr(attrs: list[tuple[int, bytes]], wanted: int) -> bytes | None:
    return next((payload for attr_type, payload in attrs if attr_type == wanted), None)


# Fixed header sizes in front of the attributes (linux/rtnetlink.h and friends).
_IFINFOMSG_LEN, _IFADDRMSG_LEN, _RTMSG_LEN, _FIB_RULE_HDR_LEN, _TCMSG_LEN = 16, 8, 12, 12, 20
_NFGENMSG_LEN = 4
_IFLA_IFNAME, _IFLA_LINKINFO, _IFLA_INFO_KIND = 3, 18, 1
_TCA_KIND = 1
_RTA_TABLE, _FRA_TABLE = 15, 15
_RT_TABLE_NAMES = {0: "unspec", 253: "default", 254: "main", 255: "local"}


def _table_detail(table: int) -> str:
    return "table " + _RT_TABLE_NAMES.get(table, str(table))


def _rtm_details_from_body(msg_type: int, body: bytes) -> tuple[str, str]:
    """(detail, target) of an rtnetlink message body (after the nlmsghdr)."""
    family = msg_type & ~3
    if family == 16 and len(body) >= _IFINFOMSG_LEN:  # LINK
        attrs = _walk_attributes(body[_IFINFOMSG_LEN:])
        ifname = _first_attr(attrs, _IFLA_IFNAME)
        linkinfo = _first_attr(attrs, _IFLA_LINKINFO)
        kind = _first_attr(_walk_attributes(linkinfo), _IFLA_INFO_KIND) if linkinfo else None
        return (_c_string(kind) if kind else "", _c_string(ifname) if ifname else "")
    if family in (36, 40, 44, 48) and len(body) >= _TCMSG_LEN:  # QDISC TCLASS TFILTER
        kind = _first_attr(_walk_attributes(body[_TCMSG_LEN:]), _TCA_KIND)
        return (_c_string(kind) if kind else "", "")
    if family == 24 and len(body) >= _RTMSG_LEN:  # ROUTE
        table = _first_attr(_walk_attributes(body[_RTMSG_LEN:]), _RTA_TABLE)
        return _table_detail(struct.unpack("=I", table[:4])[0] if table and len(table) >= 4 else body[4]), ""
    if family == 32 and len(body) >= _FIB_RULE_HDR_LEN:  # RULE
        table = _first_attr(_walk_attributes(body[_FIB_RULE_HDR_LEN:]), _FRA_TABLE)
        return _table_detail(struct.unpack("=I", table[:4])[0] if table and len(table) >= 4 else body[4]), ""
    return "", ""


def _nft_details_from_strings(attr_strings: dict[int, bytes], msg_type: int) -> tuple[str, str]:
    """(table name, "table/object") from an nft message's top-level attributes.

    Every nft object message carries its table as attribute 1 (NFTA_*_TABLE /
    NFTA_TABLE_NAME); the object's own name is attribute 3 for chains
    (NFTA_CHAIN_NAME) and attribute 2 for rules (NFTA_RULE_CHAIN), sets, objects
    and flowtables.
    """
    if msg_type >> 8 != _NFNL_SUBSYS_NFTABLES:
        return "", ""
    table = _c_string(attr_strings[1]) if 1 in attr_strings else ""
    msg = msg_type & 0xFF
    name_attr = 3 if msg in (3, 4, 5, 27) else 2
    is_table_msg = msg in (0, 1, 2, 26)
    name = "" if is_table_msg or name_attr not in attr_strings else _c_string(attr_strings[name_attr])
    return table, f"{table}/{name}" if name else table


def _details_from_body(protocol: str, msg_type: int, body: bytes) -> tuple[str, str]:
    if protocol == NETLINK_ROUTE:
        return _rtm_details_from_body(msg_type, body)
    attrs = _walk_attributes(body[_NFGENMSG_LEN:])
    first_of_each: dict[int, bytes] = {}
    for attr_type, payload in attrs:
        first_of_each.setdefault(attr_type, payload)
    return _nft_details_from_strings(first_of_each, msg_type)


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


def decode_netlink_bytes(protocol: str, data: bytes) -> list[NetlinkOp]:
    """Operations in a buffer of whole netlink messages (write() payload, hex dump)."""
    ops, pos = [], 0
    while pos + 16 <= len(data):
        msg_len, msg_type = struct.unpack_from("=IH", data, pos)
        if msg_len < 16:
            break
        body = data[pos + 16:pos + msg_len]
        detail, target = _details_from_body(protocol, msg_type, body)
        ifindex = struct.unpack_from("=i", body, 4)[0] if len(body) >= 8 else 0
        op = _make_op(protocol, msg_type, detail, target,
                      _is_empty_newlink_probe(protocol, msg_type, msg_len, ifindex))
        if op:
            ops.append(op)
        pos += (msg_len + 3) & ~3
    return ops


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
        subsys = {"NFNL_SUBSYS_" + v: k for k, v in _NFNL_SUBSYS.items()}.get(names.group(1))
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
    first_of_each: dict[int, bytes] = {}
    for match in _NLA_STRING.finditer(text):
        type_numbers = re.findall(_NUMBER, re.sub(r"/\*.*?\*/", "", match.group("type")))
        if not type_numbers:
            continue
        attr_type = _int(type_numbers[-1]) & 0x3FFF
        first_of_each.setdefault(attr_type, _unescape_strace_string(match.group("data")))
    return _nft_details_from_strings(first_of_each, msg_type)


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
        detail, target = _details_from_body(protocol, msg_type, body)
        ifindex = struct.unpack_from("=i", body, 4)[0] if len(body) >= 8 else 0
    elif protocol == NETLINK_ROUTE:
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
