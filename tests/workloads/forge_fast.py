"""A hostile target for fast mode: make capprobe record a path it never wrote.

In fast mode the kernel program prints the path a call was given; capprobe names it (and
any dirfd, cwd or fd it refers to) from /proc and the file system when it reads the record,
later than the call. Each attack does one real call on a file of its own, then at once
changes what the path, the dirfd or its cwd lead to, towards TARGET (a directory it
cannot write): if capprobe names the call from the changed state, the profile says the
target wrote in TARGET.

Run under `capprobe run --fast --user nobody --caps none`. It refuses to run as root or
with any capability (it only touches its own directory, but keep it honest).
argv[1]: its own directory (writable by it); argv[2]: at most this many seconds to wait for
the switch (strace detaching: its TracerPid goes to 0). Writes "switched" or "not switched"
to argv[1]/switch. argv[3] (optional): the attacks to run, comma-separated (default: all).
"""

import os
import sys
import time

TARGET = "/etc/cron.d"


def refuse_privilege() -> None:
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    if os.geteuid() == 0 or int(status["CapEff"].strip(), 16):
        sys.exit("forge_fast.py: refusing to run with root or capabilities")


def swapped_directory(base: str) -> None:
    """open() by a path whose directory becomes a symlink to TARGET right after."""
    d = os.path.join(base, "swap")
    os.mkdir(d)
    os.close(os.open(os.path.join(d, "forged-by-realpath"), os.O_WRONLY | os.O_CREAT, 0o600))
    os.rename(d, os.path.join(base, "swap.real"))
    os.symlink(TARGET, d)


def swapped_dirfd(base: str) -> None:
    """openat(dirfd, name) whose dirfd becomes TARGET (dup2 of a read-only fd) right after."""
    d = os.path.join(base, "dirfd")
    os.mkdir(d)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.close(os.open("forged-by-dirfd", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    target = os.open(TARGET, os.O_PATH | os.O_DIRECTORY)
    os.dup2(target, fd)


def swapped_cwd(base: str) -> None:
    """fchdir to its own directory, a relative creat, then chdir(TARGET)."""
    d = os.path.join(base, "cwd")
    os.mkdir(d)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.fchdir(fd)
    os.close(os.open("forged-by-cwd", os.O_WRONLY | os.O_CREAT, 0o600))
    os.chdir(TARGET)


def traced() -> bool:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("TracerPid:")) != 0


def swapped_fd(base: str) -> None:
    """ftruncate(fd) of its own file, then dup2 of a read-only fd of a file in TARGET onto fd."""
    fd = os.open(os.path.join(base, "truncated"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.ftruncate(fd, 0)
    victim = os.open(os.path.join(TARGET, sorted(os.listdir(TARGET))[0]), os.O_RDONLY)
    os.dup2(victim, fd)


def symlink_to_target(base: str) -> None:
    """No race: a symlink of its own that points at TARGET (symlink's second argument is the
    file it creates; the first is only text)."""
    os.symlink(TARGET, os.path.join(base, "points-at-target"))


ATTACKS = {f.__name__: f for f in (swapped_directory, swapped_dirfd, swapped_cwd, swapped_fd, symlink_to_target)}


def main() -> None:
    refuse_privilege()
    base, wait = sys.argv[1], float(sys.argv[2])
    deadline = time.monotonic() + wait
    while traced() and time.monotonic() < deadline:  # until capprobe has switched to the kernel side
        time.sleep(0.2)
    with open(os.path.join(base, "switch"), "w") as f:
        f.write("not switched" if traced() else "switched")
    time.sleep(0.5)  # the kernel program counts from the switch mark, just after strace lets go
    for name in (sys.argv[3].split(",") if len(sys.argv) > 3 else ATTACKS):
        ATTACKS[name](base)
    time.sleep(1.5)  # the records are read after HOLD; keep the fds open until then


if __name__ == "__main__":
    main()
