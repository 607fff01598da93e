"""A hostile target: look for capprobe's trace channel and write forged strace lines into it.

Run under `capprobe run --user nobody --caps none`. It tries what such a target can reach:
its own fds, the pipes and FIFOs of the processes around it (its parent, grandparent and
their children: capprobe and strace, whichever is which) through /proc/PID/fd and
through pidfd_getfd(), the FIFOs
and sockets under /tmp/capprobe-run-* (where the FIFO used to be), $NOTIFY_SOCKET and
every abstract socket named capprobe-*, and its own stdout/stderr. It writes only to
pipes, FIFOs, sockets and files without a name (never to a named file), and only near itself: run with more
privilege it would otherwise scribble into unrelated processes.

Writes {"attempts": N, "opened": [...]} as JSON to argv[1]: "opened" lists the pipes and
FIFOs outside its own process that it managed to open for writing, and the unnamed files
(the trace spool is one: O_TMPFILE, no link on any file system).
"""

import ctypes
import glob
import json
import os
import socket
import stat
import sys
import time

TARGET = "/etc/sudoers.d"
SYS_pidfd_open, SYS_pidfd_getfd = 434, 438  # x86_64
libc = ctypes.CDLL(None, use_errno=True)


def forged_lines() -> bytes:
    me, now = os.getpid(), time.time()
    lines = []
    for pid in {me, os.getppid(), 1}:
        lines += [
            f'{pid} {now:.6f} openat(AT_FDCWD</>, "{TARGET}/capprobe-forged", O_WRONLY|O_CREAT|O_TRUNC, 0644)'
            f' = 3<{TARGET}/capprobe-forged>',
            f'{pid} {now:.6f} mkdir("{TARGET}/forged-dir", 0755) = 0',
            f'{pid} {now:.6f} ioctl(3</dev/net/tun<char 10:200>>, TUNSETIFF, 0x1) = 0',
        ]
    return ("\n" + "\n".join(lines) + "\n").encode()


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
    except (OSError, StopIteration, ValueError):
        return None


def neighbours() -> set[int]:
    """Parent, grandparent, and every child of either (the tracer is one of them)."""
    near = {p for p in (os.getppid(), parent_of(os.getppid())) if p and p > 1}
    children = set()
    for status in glob.glob("/proc/[0-9]*/status"):
        pid = int(status.split("/")[2])
        if parent_of(pid) in near:
            children.add(pid)
    return (near | children) - {os.getpid()}


def effective_capabilities() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))


def main(result_path: str) -> None:
    if os.geteuid() == 0 or effective_capabilities():
        # With privilege the same attempts reach unrelated processes' pipes (seen once:
        # forged lines in another shell's output). The attack is a powerless target's.
        sys.exit("forge_trace: refusing to run with root or any capability (use --caps none)")
    payload = forged_lines()
    attempts = 0
    opened = []

    def write_fd(fd: int) -> None:
        nonlocal attempts
        attempts += 1
        try:
            st = os.fstat(fd)
            if (stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode)
                    or (stat.S_ISREG(st.st_mode) and st.st_nlink == 0)):
                os.write(fd, payload)
        except OSError:
            pass

    def open_and_write(path: str, owner: int | None) -> None:
        nonlocal attempts
        attempts += 1
        try:
            st = os.stat(path)
            # a pipe re-opened through /proc is a FIFO, the spool a regular file with no name;
            # leave every other file alone
            if not (stat.S_ISFIFO(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink == 0)):
                return
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
        except OSError:
            return
        try:
            opened.append({"path": path, "owner": owner})
            os.write(fd, payload)
        except OSError:
            pass
        finally:
            os.close(fd)

    # 1. what it inherited
    for name in os.listdir("/proc/self/fd"):
        write_fd(int(name))
    # 2. the fds of capprobe, strace and their other children: pipes re-open through /proc
    for pid in sorted(neighbours()):
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            attempts += 1
            continue
        for name in names:
            open_and_write(f"/proc/{pid}/fd/{name}", pid)
    # 3. the same fds stolen with pidfd_getfd() (the check ptrace attach makes, too)
    for pid in sorted(neighbours()):
        attempts += 1
        pidfd = libc.syscall(SYS_pidfd_open, pid, 0)
        if pidfd >= 0:
            for target_fd in range(64):
                attempts += 1
                stolen = libc.syscall(SYS_pidfd_getfd, pidfd, target_fd, 0)
                if stolen >= 0:
                    opened.append({"path": f"pidfd_getfd({pid}, {target_fd})", "owner": pid})
                    write_fd(stolen)
                    os.close(stolen)
            os.close(pidfd)
    # 4. where the FIFO used to be
    for path in glob.glob("/tmp/capprobe-run-*/*"):
        open_and_write(path, None)
        attempts += 1
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(payload, path)
        except OSError:
            pass
    # 5. datagrams into $NOTIFY_SOCKET, its directory, and every capprobe-looking abstract socket
    notify = os.environ.get("NOTIFY_SOCKET", "")
    names = {notify}
    if notify.startswith("/"):
        names |= set(glob.glob(os.path.join(os.path.dirname(notify), "*")))
    try:
        with open("/proc/net/unix") as f:
            names |= {line.split()[-1] for line in f if "capprobe" in line}
    except OSError:
        pass
    for name in filter(None, names):
        attempts += 1
        address = "\0" + name[1:] if name.startswith("@") else name
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(payload, address)
        except OSError:
            pass
    # 6. its own output: capprobe must never read the target's stdout/stderr as trace
    for stream in (sys.stdout, sys.stderr):
        attempts += 1
        stream.write(payload.decode())
        stream.flush()
    with open(result_path, "w") as f:
        json.dump({"attempts": attempts, "opened": opened}, f)


if __name__ == "__main__":
    main(sys.argv[1])
