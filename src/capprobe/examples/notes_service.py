"""A small example service for `capprobe demo`.

It behaves like many real daemons, on a small scale: reads a config file, binds
a privileged TCP port on loopback, answers one HTTP request (its own health
check), keeps its state in a data directory with an atomic rename, logs to a
file, tells systemd it is ready when NOTIFY_SOCKET is set, and exits.
"""

import argparse
import os
import socket
import threading
import tomllib
import urllib.request


def notify_ready() -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect("\0" + path[1:] if path.startswith("@") else path)
        s.send(b"READY=1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    with open(args.config, "rb") as f:
        config = tomllib.load(f)
    data_dir = config["data_dir"]
    os.makedirs(data_dir, exist_ok=True)

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", args.port))
    server.listen()
    notify_ready()

    def serve_one() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")

    t = threading.Thread(target=serve_one)
    t.start()
    with urllib.request.urlopen(f"http://127.0.0.1:{args.port}/healthz", timeout=5) as r:
        status = r.status
    t.join()

    tmp = os.path.join(data_dir, "notes.db.tmp")
    with open(tmp, "w") as f:
        f.write(f"last health check: {status}\n")
    os.replace(tmp, os.path.join(data_dir, "notes.db"))
    with open(config["log_file"], "a") as log:
        log.write(f"health {status}\n")


if __name__ == "__main__":
    main()
