"""compose: a service snippet for docker compose / podman-compose.

Written as JSON, which is YAML too (YAML 1.2 is a superset of JSON): compose files take it as
it is, and capprobe needs no YAML library to write it. JSON has no comments, so the evidence
travels in the service's labels (`capprobe.why.*`).
"""

from __future__ import annotations

import json

from ...needs import Needs
from .container import command_words, container_settings
from .interface import ExportOptions


def render(needs: Needs, options: ExportOptions) -> str:
    s = container_settings(needs, options.name, options.seccomp_file)
    service: dict = {"image": options.image}
    words = command_words(options.command)
    if words is not None:
        service["command"] = words
    if s.user is not None:
        service["user"] = s.user
    service["cap_drop"] = ["ALL"]
    if s.capabilities:
        service["cap_add"] = list(s.capabilities)
    service["read_only"] = True
    tmpfs = [m.path for m in s.mounts if m.kind == "tmpfs"]
    volumes = [m for m in s.mounts if m.kind == "volume"]
    if tmpfs:
        service["tmpfs"] = tmpfs
    if volumes:
        service["volumes"] = [f"{m.volume}:{m.path}" for m in volumes]
    if s.devices:
        service["devices"] = list(s.devices)
    if s.no_network:
        service["network_mode"] = "none"
    service["security_opt"] = (["no-new-privileges:true"] if s.no_new_privileges else []) + \
        [f"seccomp={s.seccomp_file}"]
    labels = {"capprobe.origin": options.origin} if options.origin else {}
    labels.update({f"capprobe.why.cap_add.{c}": why for c, why in zip(s.capabilities, s.capability_why)})
    if s.capability_caveat:
        labels["capprobe.why.cap_add"] = s.capability_caveat
    labels.update({"capprobe.why.user": s.user_why, "capprobe.why.network": s.network_why,
                   "capprobe.why.no_new_privileges": s.no_new_privileges_why})
    labels.update({f"capprobe.left_out.{i}": why for i, why in enumerate(s.left_out)})
    service["labels"] = labels
    document: dict = {"services": {options.name: service}}
    if volumes:
        document["volumes"] = {m.volume: {} for m in volumes}
    return json.dumps(document, indent=1) + "\n"
