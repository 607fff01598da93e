"""A workload whose every fact is known, for the backend contract (tests/test_backend_contract.py).

Run as root in a network namespace of its own: python3 contract.py --dir DIR --port PORT (PORT < 1024).
Each step is one fact, or a few, the test expects every tracer and capability-probe backend to see.
"""

import argparse
import ctypes
import fcntl
import mmap
import os
import socket
import subprocess
import termios

from pyroute2 import IPRoute

CLONE_NEWUTS = 0x04000000
NOBODY = 65534


def files(d: str) -> None:
    data = os.path.join(d, "data.txt")
    with open(data, "w") as f:  # create, write
        f.write("x")
    db = os.path.join(d, "data.db")
    os.rename(data, db)
    os.chmod(db, 0o640)
    os.chown(db, NOBODY, NOBODY)  # CAP_CHOWN
    sub = os.path.join(d, "sub")
    os.mkdir(sub)
    os.chmod(sub, 0o777)
    os.symlink("data.db", os.path.join(d, "link"))
    os.unlink(os.path.join(d, "link"))
    os.access(d, os.W_OK)  # a writability test


def network(port: int) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))  # CAP_NET_BIND_SERVICE
    server.listen()
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.sendto(b"x", ("127.0.0.1", port))
    for s in (conn, client, server, udp):
        s.close()
    with IPRoute() as ipr:  # netlink: RTM_GETLINK
        ipr.get_links()
    notify = os.environ.get("NOTIFY_SOCKET")
    if notify:
        address = "\0" + notify[1:] if notify.startswith("@") else notify
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", address)


def processes(d: str) -> None:
    subprocess.run(["/bin/true"], check=True)
    child = os.fork()
    if child == 0:  # drops to nobody, then writes: CAP_SETGID, CAP_SETUID
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        with open(os.path.join(d, "sub", "by-nobody"), "w") as f:
            f.write("x")
        os._exit(0)
    os.waitpid(child, 0)
    child = os.fork()
    if child == 0:  # a UTS namespace of its own, and a hostname there: CAP_SYS_ADMIN
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.unshare(CLONE_NEWUTS) == 0 and libc.sethostname(b"contract", 8) == 0
        os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert status == 0, "unshare/sethostname failed"


def behaviour() -> None:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close()
    os.kill(1, 0)  # a process outside the traced tree
    with open("/dev/null", "w") as null:
        try:
            fcntl.ioctl(null, termios.TCGETS, bytes(64))
        except OSError:
            pass  # ENOTTY: the ioctl is the fact


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    files(args.dir)
    network(args.port)
    processes(args.dir)
    behaviour()


if __name__ == "__main__":
    main()
