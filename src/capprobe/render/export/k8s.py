"""k8s: a Pod whose container carries the securityContext, with the volumes its writes need.

A whole Pod rather than the securityContext alone: readOnlyRootFilesystem holds only with the
written directories mounted, and `kubectl apply --dry-run=server` or kubernetes-validate take a
Pod as it is. JSON, which kubectl reads like YAML; the evidence is in annotations.
"""

from __future__ import annotations

import json
import re

from ...needs import Needs
from .container import command_words, container_settings
from .interface import ExportOptions

# kubelet's seccomp directory is /var/lib/kubelet/seccomp; a Localhost profile is relative to it.
SECCOMP_DIRECTORY = "capprobe"


def render(needs: Needs, options: ExportOptions) -> str:
    s = container_settings(needs, options.name, options.seccomp_file)
    name = dns_label(options.name)
    context: dict = {
        "allowPrivilegeEscalation": not s.no_new_privileges,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "seccompProfile": {"type": "Localhost",
                           "localhostProfile": f"{SECCOMP_DIRECTORY}/{s.seccomp_file.rsplit('/', 1)[-1]}"},
    }
    if s.capabilities:
        # Kubernetes names capabilities without the CAP_ prefix (the runtime adds it)
        context["capabilities"]["add"] = [c.removeprefix("CAP_") for c in s.capabilities]
    if s.user is not None:
        uid, gid = (int(x) for x in s.user.split(":"))
        context["runAsUser"], context["runAsGroup"] = uid, gid
        if s.non_root:
            context["runAsNonRoot"] = True
    container: dict = {"name": name, "image": options.image}
    words = command_words(options.command)
    if words is not None:
        container["command"] = words
    container["securityContext"] = context
    volumes = []
    if s.mounts:
        container["volumeMounts"] = []
        for i, m in enumerate(s.mounts):
            volume = dns_label(m.volume or f"{name}-tmp-{i}")
            container["volumeMounts"].append({"name": volume, "mountPath": m.path})
            volumes.append({"name": volume, "emptyDir": {"medium": "Memory"}} if m.kind == "tmpfs" else
                           {"name": volume, "persistentVolumeClaim": {"claimName": volume}})
    annotations = {"capprobe/origin": options.origin} if options.origin else {}
    annotations.update({f"capprobe/why.{c.removeprefix('CAP_').lower()}": why
                        for c, why in zip(s.capabilities, s.capability_why)})
    if s.capability_caveat:
        annotations["capprobe/why.capabilities"] = s.capability_caveat
    annotations.update({"capprobe/why.user": s.user_why,
                        "capprobe/why.allow-privilege-escalation": s.no_new_privileges_why,
                        "capprobe/seccomp": f"copy {s.seccomp_file} to /var/lib/kubelet/seccomp/"
                                            f"{context['seccompProfile']['localhostProfile']} on each node"})
    left_out = list(s.left_out) + [f"device {d.split(':', 1)[0]}: a Pod names no host device (a device "
                                   "plugin provides it)" for d in s.devices]
    annotations.update({f"capprobe/left-out.{i}": why for i, why in enumerate(left_out)})
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "annotations": annotations},
           "spec": {"containers": [container], **({"volumes": volumes} if volumes else {})}}
    return json.dumps(pod, indent=1) + "\n"


def dns_label(text: str) -> str:
    """A Kubernetes object name (RFC 1123 label): lower-case letters, digits and '-', 63 at most."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].rstrip("-")
    return label or "service"
