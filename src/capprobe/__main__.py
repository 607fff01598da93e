"""python3 -m capprobe, and the capprobe command: one entry for both."""

import sys


def entry() -> None:
    try:
        from .cli import main  # half a second of imports: a Ctrl-C then is an interrupt, not a traceback
    except KeyboardInterrupt:
        sys.exit(130)
    main()


if __name__ == "__main__":
    entry()
