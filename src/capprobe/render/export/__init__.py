"""Exports other tools take as they are: OCI seccomp, docker run flags, a compose service, a
Kubernetes Pod. Each is one module rendering `Needs` through the interface in interface.py;
the CLI picks one with ExportFormat."""

from __future__ import annotations

import os
from enum import Enum

from ...needs import needs_of
from ...paths import decode_path
from ..summary import profile_origin
from . import compose, docker, k8s, oci_seccomp
from .interface import Exporter, ExportError, ExportOptions

__all__ = ["ExportError", "ExportFormat", "ExportOptions", "Exporter", "export", "export_options"]


class ExportFormat(str, Enum):
    OCI_SECCOMP = "oci-seccomp"
    DOCKER = "docker"
    COMPOSE = "compose"
    K8S = "k8s"

    def exporter(self) -> Exporter:
        return _EXPORTERS[self]


_EXPORTERS: dict[ExportFormat, Exporter] = {
    ExportFormat.OCI_SECCOMP: oci_seccomp,
    ExportFormat.DOCKER: docker,
    ExportFormat.COMPOSE: compose,
    ExportFormat.K8S: k8s,
}


def export_options(profile: dict, name: str | None = None, seccomp_file: str | None = None,
                   image: str = "IMAGE") -> ExportOptions:
    """Options for PROFILE: the name defaults to the traced program's, the seccomp file to NAME.seccomp.json."""
    command = tuple(decode_path(a) for a in profile["run"]["command"])
    name = name or os.path.basename(os.fsdecode(command[0])) or "service"
    return ExportOptions(name=name, command=command, seccomp_file=seccomp_file or f"{name}.seccomp.json",
                         image=image, origin=profile_origin(profile))


def export(profile: dict, fmt: ExportFormat, options: ExportOptions) -> str:
    """PROFILE in format FMT: its needs, decided once, rendered by that format's exporter."""
    return fmt.exporter().render(needs_of(profile), options)
