"""python3 -m capprobe: the same as the capprobe command."""

from .cli import main

main()
