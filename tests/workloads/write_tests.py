"""A daemon that tests a permission at start without exercising it (issue 13).

    write_tests.py rundir DIR [--drop USER]   access(DIR, W_OK), exit 1 when it fails, then (as
                                              root) drop to USER; DIR is never written
    write_tests.py tmp [--connect SOCKET]     connect to SOCKET (a unix socket another process
                                              made under /tmp), then access("/tmp", W_OK), exit 1
                                              when it fails, the way a VPN checks its temp directory

Either way it then waits for SIGTERM, as a daemon does, and exits 0.
"""

from __future__ import annotations

import argparse
import os
import pwd
import signal
import socket
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    rundir = sub.add_parser("rundir")
    rundir.add_argument("directory")
    rundir.add_argument("--drop", metavar="USER")
    tmp = sub.add_parser("tmp")
    tmp.add_argument("--connect", metavar="SOCKET")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.mode == "rundir":
        if not os.access(args.directory, os.W_OK):
            print(f"rundir {args.directory}: not writable", file=sys.stderr)
            return 1
        if args.drop:
            pw = pwd.getpwnam(args.drop)
            os.setgroups([])
            os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
            os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
    else:
        if args.connect:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
                peer.connect(args.connect)
        if not os.access("/tmp", os.W_OK):
            print("Temporary directory fails with '/tmp': not writable", file=sys.stderr)
            return 1
    print("ready", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
