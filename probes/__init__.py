"""Probe definitions as data: read with load_table()."""

import tomllib
from importlib import resources


def load_table(name: str) -> dict:
    """Load probes/NAME.toml (shipped inside the package as capprobe.probes)."""
    with resources.files(__name__).joinpath(name + ".toml").open("rb") as f:
        return tomllib.load(f)
