"""Run real nft / ip under strace (capprobe's flags) inside a throwaway netns and
decode what they sent.  Needs root, strace, ip and nft."""

import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest

from capprobe.facts.netlink import (
    NetlinkOp,
    decode_netlink_send,
    netlink_protocol_from_annotation,
    netlink_protocol_from_socket_args,
)
from capprobe.tracing.strace import STRACE_FLAGS

pytestmark = pytest.mark.root

_LINE = re.compile(r"^(\d+)\s+[\d.]+\s+\[\s*\d+\]\s+(\w+)\((.*)\) = (.*)$")

if os.geteuid() != 0:
    pytest.skip("needs root: network namespaces and netlink configuration", allow_module_level=True)
for _tool in ("strace", "ip", "nft"):
    if shutil.which(_tool) is None:
        pytest.skip(f"{_tool} is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def netns():
    name = "cptest" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def traced_netlink_ops(netns: str, tmp_path, command: list[str]) -> tuple[list[NetlinkOp], str, int]:
    """(ops sent on netlink sockets, raw trace, exit code) of COMMAND run in NETNS."""
    out = tmp_path / "trace.txt"
    done = subprocess.run(["ip", "netns", "exec", netns, "strace", *STRACE_FLAGS, "-o", str(out), *command],
                          capture_output=True, text=True, timeout=60)
    trace = out.read_text()
    ops: list[NetlinkOp] = []
    fd_protocol: dict[tuple[str, str], str] = {}
    # Until a socket is bound strace shows its inode, `NETLINK:[8271]`; pyroute2
    # dup()s its socket, so the inode is what ties the send to its socket().
    inode_protocol: dict[str, str] = {}
    for line in trace.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        pid, syscall, args, retval = match.groups()
        if syscall == "socket":
            protocol = netlink_protocol_from_socket_args(args)
            if protocol:
                fd_protocol[(pid, retval.split("<", 1)[0])] = protocol
                inode_protocol[retval.split("<", 1)[-1]] = protocol
        elif syscall in ("sendto", "sendmsg", "write") and "NETLINK:" in args.split(",", 1)[0]:
            fd_text = args.split(",", 1)[0]
            protocol = (fd_protocol.get((pid, fd_text.split("<", 1)[0]))
                        or inode_protocol.get(fd_text.split("<", 1)[-1])
                        or netlink_protocol_from_annotation(fd_text))
            ops.extend(decode_netlink_send(protocol, syscall, args))
    return ops, trace, done.returncode


def test_nft_add_table(netns, tmp_path):
    ops, trace, code = traced_netlink_ops(netns, tmp_path, ["nft", "add", "table", "inet", "capprobe_t"])
    assert code == 0, trace[-2000:]
    assert NetlinkOp("NETLINK_NETFILTER", "NFT_MSG_NEWTABLE", "capprobe_t", True, "capprobe_t") in ops
    assert all(op.protocol == "NETLINK_NETFILTER" for op in ops)


def test_ip_tuntap_add_is_an_ioctl_not_netlink(netns, tmp_path):
    # Measured: iproute2 creates TUN/TAP with ioctl(TUNSETIFF) on /dev/net/tun;
    # its only RTM_NEWLINK is the attribute-less feature probe.
    ops, trace, code = traced_netlink_ops(netns, tmp_path, ["ip", "tuntap", "add", "dev", "cpt0", "mode", "tun"])
    assert code == 0, trace[-2000:]
    assert "TUNSETIFF" in trace
    assert not any(op.changes_state for op in ops)


def test_ip_link_add_type_tun_sends_newlink_kind_tun(netns, tmp_path):
    # The kernel refuses TUN creation over rtnetlink (EOPNOTSUPP), but the
    # request itself is what a program asking for it looks like.
    ops, trace, _ = traced_netlink_ops(netns, tmp_path, ["ip", "link", "add", "cpt1", "type", "tun"])
    assert NetlinkOp("NETLINK_ROUTE", "RTM_NEWLINK", "tun", True, "cpt1") in ops, trace[-2000:]


_PYROUTE2_THEN_RAW_WRITE = """
import os, socket, struct
from pyroute2 import IPRoute
try:
    IPRoute().link("add", ifname="cpd0", kind="dummy")
except Exception:
    pass  # a kernel without the dummy driver refuses; the request was sent all the same
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
body = bytes(16) + struct.pack("=HH", 9, 3) + b"cpd1\\0" + bytes(3)  # ifinfomsg + IFLA_IFNAME
os.write(sock.fileno(), struct.pack("=IHHII", 16 + len(body), 17, 5, 1, 0) + body)  # RTM_DELLINK
"""


def test_raw_bodies_from_pyroute2_and_write_are_decoded(netns, tmp_path):
    # Both reach the decoder as raw bytes (strace cannot name an unbound
    # socket's protocol and never decodes write()): pyroute2's classes decode them.
    ops, trace, _ = traced_netlink_ops(netns, tmp_path, [sys.executable, "-c", _PYROUTE2_THEN_RAW_WRITE])
    assert "NLMSG_???" in trace
    assert NetlinkOp("NETLINK_ROUTE", "RTM_NEWLINK", "dummy", True, "cpd0") in ops, trace[-3000:]
    assert NetlinkOp("NETLINK_ROUTE", "RTM_DELLINK", "", True, "cpd1") in ops
