"""The exporter interface: a format renders a `Needs` into the text its consumer takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ...needs import Needs


class ExportError(Exception):
    """A profile cannot be exported in this format; the message is one line for the user."""


@dataclass(frozen=True)
class ExportOptions:
    """What an export needs beside the Needs: names the operator chose, and the traced command."""

    name: str                         # the service's name: container, volumes, seccomp file
    command: tuple[bytes, ...]        # the traced command line, exact bytes
    seccomp_file: str                 # where the oci-seccomp export is kept (docker, compose, k8s name it)
    image: str = "IMAGE"              # the container image: capprobe profiles a program, not an image
    origin: str = ""                  # one line: which profile, of what, when (for comments)


class Exporter(Protocol):
    """One output format. RENDER is pure: Needs in, text out; no decision of its own."""

    def render(self, needs: Needs, options: ExportOptions) -> str: ...
