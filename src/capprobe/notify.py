"""capprobe's stand-in for systemd's notification socket.

Like /run/systemd/notify it takes datagrams from any uid (a daemon that dropped to its
own user must still reach it) and judges the sender by its pid (SO_PASSCRED), not by
file permissions. It is an abstract socket with a 128-bit random name: nothing on the
file system, nowhere near the trace.

Under systemd (`capprobe service`), capprobe is the unit's main process and the target's
messages are for systemd: the listener forwards them from capprobe's own pid, so systemd
(NotifyAccess=main) takes READY=1 and the daemon is not killed for a missed notification.
"""

from __future__ import annotations

import secrets
import socket
import struct
import threading

MAX_RECORDED = 64  # messages kept in the profile; the rest are only counted
MAX_WORDS = 16
MAX_WORD = 200
_CREDS = struct.Struct("iII")  # struct ucred: pid, uid, gid


# What capprobe passes on, as the main process, for the target: its state and liveness
# only. Everything else stays behind, by allow-list because systemd grows new assignments
# (MAINPID= and NOTIFYACCESS= would let the target take over or widen who systemd
# listens to; capprobe must stay the main process so a stop reaches it and the profile
# is written; FDSTORE= cannot work, the fds are not forwarded, only the bytes).
FORWARDED = (b"READY=1", b"RELOADING=1", b"STOPPING=1", b"STATUS=", b"ERRNO=", b"BUSERROR=",
             b"WATCHDOG=1", b"WATCHDOG=trigger", b"WATCHDOG_USEC=", b"EXTEND_TIMEOUT_USEC=",
             b"MONOTONIC_USEC=")


def forwarded_message(data: bytes) -> bytes:
    """The lines of a target's datagram that capprobe passes on to systemd."""
    return b"\n".join(line for line in data.split(b"\n") if line.startswith(FORWARDED))


def socket_address(address: str) -> str:
    """$NOTIFY_SOCKET as bind/sendto takes it: '@name' is the abstract namespace."""
    return "\0" + address[1:] if address.startswith("@") else address


def notify_systemd(address: str, data: bytes) -> None:
    """Send one sd_notify datagram from capprobe itself (best effort, as sd_notify is)."""
    if not data:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.sendto(data, socket_address(address))
        except OSError:
            pass  # systemd gone or not listening: the service's own sd_notify would fail the same way


def message_words(data: bytes) -> list[str]:
    """'READY=1\\nSTATUS=up' -> ['READY=1', 'STATUS=up'], bounded and printable."""
    words = [w.decode("utf-8", "backslashreplace")[:MAX_WORD] for w in data.split(b"\n") if w]
    return words[:MAX_WORDS]


class NotifyListener:
    """Receives sd_notify messages from members of the target's cgroup; drained so senders never block."""

    def __init__(self, accept_pid, forward_to: str | None = None) -> None:
        self._forward_to = forward_to  # systemd's $NOTIFY_SOCKET when capprobe runs as a unit's command
        self.address = f"@capprobe-notify-{secrets.token_hex(16)}"
        self._accept_pid = accept_pid
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.received: list[dict] = []
        self.dropped = 0  # past MAX_RECORDED
        self.rejected = 0  # from a process outside the target's cgroup
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="capprobe-notify", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._closed.is_set():
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_CREDS.size))
            except OSError:
                continue
            self._take(data, ancdata)

    def _take(self, data: bytes, ancdata) -> None:
        pid = next((_CREDS.unpack(d[:_CREDS.size])[0] for level, kind, d in ancdata
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
        if pid is None or not self._accept_pid(pid):
            self.rejected += 1
            return
        if self._forward_to is not None:
            notify_systemd(self._forward_to, forwarded_message(data))
        if len(self.received) < MAX_RECORDED:
            self.received.append({"pid": pid, "words": message_words(data)})
        else:
            self.dropped += 1

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self.sock.close()
