"""capprobe: watch a service run, learn the privileges it really uses."""

__version__ = "0.1.0"
