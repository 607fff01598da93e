"""An arctic-like agent (seed 000) for tests: what the real agent does, on a small scale.

Creates a TUN device, adds an ip rule and a route over netlink, commits an
nftables table over netlink, sets IP_TRANSPARENT, binds TCP 8080 and 61000 and
UDP 51840, writes a database and peer.key under its data dir and a recovery
token under a second dir. Run it inside a network namespace.

--v2 CACHE_DIR is the next version of the agent, for `capprobe diff`: it also opens a
packet socket (one more capability, CAP_NET_RAW, and one more address family, AF_PACKET)
and writes a peers cache in CACHE_DIR (one more place written).
"""

import argparse
import fcntl
import os
import socket
import sqlite3
import struct
import time

from pyroute2 import IPRoute
from pyroute2.nftables.main import NFTables

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
IP_TRANSPARENT = 19


def create_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--token-dir", required=True)
    ap.add_argument("--hold", type=float, default=0.0)
    ap.add_argument("--v2", metavar="CACHE_DIR", help="the next version: a packet socket, a peers cache in CACHE_DIR")
    args = ap.parse_args()

    tun = create_tun("arc0")
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")
        ipr.rule("add", table=100, priority=1000, fwmark=1)
        ipr.route("add", dst="10.77.0.0/24", oif=lo, table=100)
    nft = NFTables(nfgen_family=1)  # NFPROTO_INET
    nft.table("add", name="arctic")
    nft.close()

    sockets = []
    for port in (8080, 61000):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        s.bind(("0.0.0.0", port))
        s.listen()
        sockets.append(s)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 51840))
    sockets.append(u)
    if args.v2:
        sockets.append(socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)))  # ETH_P_ALL
        with open(os.path.join(args.v2, "peers.cache"), "w") as f:
            f.write("node-a\n")

    db = sqlite3.connect(os.path.join(args.data, "arctic.db"))
    db.execute("create table if not exists peers (name text)")
    db.execute("insert into peers values ('node-a')")
    db.commit()
    db.close()
    tmp = os.path.join(args.data, "peer.key.tmp")
    with open(tmp, "w") as f:
        f.write("secret\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, os.path.join(args.data, "peer.key"))
    with open(os.path.join(args.token_dir, "recovery.token"), "w") as f:
        f.write("token\n")

    time.sleep(args.hold)
    for s in sockets:
        s.close()
    os.close(tun)


if __name__ == "__main__":
    main()
