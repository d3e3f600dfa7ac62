"""Pure builders: a typed PaddleModelService in, plain child manifests (dicts) out.

Never import kopf or a Kubernetes client here (.importlinter holds that line). ``desired_children``
is the one list the reconcile applies and prunes against; the rollout code extends it.
"""

from __future__ import annotations

from typing import Any

from ..spec import PaddleModelService
from .common import CANARY, STABLE, labels, object_meta, owner_reference, selector_labels
from .configmap import build_configmap, runtime_settings
from .deployment import build_deployment
from .hpa import build_hpa
from .pdb import build_pdb, pdb_max_unavailable
from .service import build_service

__all__ = [
    "CANARY",
    "STABLE",
    "build_configmap",
    "build_deployment",
    "build_hpa",
    "build_pdb",
    "build_service",
    "desired_children",
    "labels",
    "object_meta",
    "owner_reference",
    "runtime_settings",
    "selector_labels",
]


def desired_children(svc: PaddleModelService) -> list[dict[str, Any]]:
    """Every child the resource should have now, in apply order (config before the pods that mount it).

    Children of a managed kind that are absent from this list are pruned by the reconcile.
    """
    children = [build_configmap(svc), build_deployment(svc), build_service(svc)]
    if svc.spec.autoscaled:
        children.append(build_hpa(svc))
    if pdb_max_unavailable(svc) is not None:
        children.append(build_pdb(svc))
    return children
