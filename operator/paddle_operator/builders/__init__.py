"""Pure builders: a typed PaddleModelService in, plain child manifests (dicts) out.

Never import kopf or a Kubernetes client here (.importlinter holds that line). Which children a
resource has is decided by ``plan.build_children``.
"""

from __future__ import annotations

from .common import CANARY, STABLE, labels, object_meta, owner_reference, selector_labels
from .configmap import build_configmap, runtime_settings
from .deployment import build_deployment
from .hpa import build_hpa
from .pdb import build_pdb
from .service import build_service

__all__ = [
    "CANARY",
    "STABLE",
    "build_configmap",
    "build_deployment",
    "build_hpa",
    "build_pdb",
    "build_service",
    "labels",
    "object_meta",
    "owner_reference",
    "runtime_settings",
    "selector_labels",
]

