"""A resolver-like program: a stable listening port plus a random UDP source port per query
(issue 9 #4). The unit restricts the listening set only. Loopback only."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from conftest import SYSTEM_PYTHON, capprobe, load, needs_root, needs_strace

pytestmark = [needs_root, needs_strace]

RESOLVER = """
import random, socket, sys
port, queries = int(sys.argv[1]), int(sys.argv[2])
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(("127.0.0.1", port))                       # answers queries on a stable port
tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("127.0.0.1", port))
tcp.listen()
for _ in range(queries):                               # a random source port per query
    query = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    while True:
        try:
            query.bind(("127.0.0.1", random.randint(1024, 65535)))
            break
        except OSError:
            continue
    query.sendto(b"q", ("127.0.0.1", port))
    server.recvfrom(16)
    query.close()
"""


def _free_low_port() -> int:
    """A port below 1024 free for both UDP and TCP on loopback (a well-known service port)."""
    for port in range(700, 1000):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
            try:
                udp.bind(("127.0.0.1", port))
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port in 700-999 on loopback")


def unit_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def test_random_source_ports_do_not_become_socket_bind_rules(tmp_path):
    port = _free_low_port()
    r = capprobe("run", "-q", "--unit", "resolver", "-o", str(tmp_path / "p.json"), "--",
                 SYSTEM_PYTHON, "-c", RESOLVER, str(port), "36")
    assert r.returncode == 0, r.stderr
    p = load(tmp_path / "p.json")
    udp_ports = {b["port"] for b in p["network"]["binds"] if b["type"] == "SOCK_DGRAM"}
    assert len(udp_ports) == 37  # the stable port and 36 source ports
    local_range = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    assert p["host"]["ip_local_port_range"] == [int(n) for n in local_range]
    unit = (tmp_path / "resolver.service").read_text()
    assert unit_values(unit, "SocketBindAllow") == [f"tcp:{port}"], unit
    assert unit_values(unit, "SocketBindDeny") == ["tcp:any"], unit
    comments = " ".join(line[2:] for line in unit.splitlines() if line.startswith("# "))
    assert "36 udp source binds" in comments and "systemd 252" in comments
