"""A daemon that reopens its log file on SIGHUP (the reload / log-rotation convention) until SIGTERM."""

import signal
import sys
import time

path = sys.argv[1]
log = open(path, "a")


def reopen(signum, frame):
    global log
    log.close()
    log = open(path, "a")
    log.write("reopened\n")
    log.flush()


signal.signal(signal.SIGHUP, reopen)
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
log.write("started\n")
log.flush()
while True:
    time.sleep(0.1)
