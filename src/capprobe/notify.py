"""capprobe's stand-in for systemd's notification socket.

Like /run/systemd/notify it takes datagrams from any uid (a daemon that dropped to its
own user must still reach it) and judges the sender by its pid (SO_PASSCRED), not by
file permissions. It is an abstract socket with a 128-bit random name: nothing on the
file system, nowhere near the trace.
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


def message_words(data: bytes) -> list[str]:
    """'READY=1\\nSTATUS=up' -> ['READY=1', 'STATUS=up'], bounded and printable."""
    words = [w.decode("utf-8", "backslashreplace")[:MAX_WORD] for w in data.split(b"\n") if w]
    return words[:MAX_WORDS]


class NotifyListener:
    """Receives sd_notify messages from members of the target's cgroup; drained so senders never block."""

    def __init__(self, accept_pid) -> None:
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
        elif len(self.received) < MAX_RECORDED:
            self.received.append({"pid": pid, "words": message_words(data)})
        else:
            self.dropped += 1

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self.sock.close()
