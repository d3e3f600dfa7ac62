"""PodDisruptionBudget derived from the SLA's availability.

Voluntary disruptions (node drains, upgrades) may take at most one pod at a time for an SLA of
99% or better, a quarter of them for looser SLAs. ``AlwaysAllow`` lets pods that are not ready be
evicted anyway, so a crash-looping pod never blocks a drain.
"""

from __future__ import annotations

from typing import Any

from ..spec import PaddleModelService
from .common import object_meta, selector_labels

STRICT_AVAILABILITY = 99.0


def pdb_max_unavailable(svc: PaddleModelService) -> int | str | None:
    """None when the spec has no availability objective (no PDB is built)."""
    sla = svc.spec.sla
    if sla is None or sla.availability_percent is None:
        return None
    return 1 if sla.availability_percent >= STRICT_AVAILABILITY else "25%"


def build_pdb(svc: PaddleModelService) -> dict[str, Any]:
    """The PodDisruptionBudget of the stable track (see :func:`pdb_max_unavailable`)."""
    max_unavailable = pdb_max_unavailable(svc)
    assert max_unavailable is not None, "build_pdb needs spec.sla.availability"
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(svc, svc.name),
        "spec": {
            # Both tracks: a canary pod counts towards availability as much as a stable one.
            "selector": {"matchLabels": selector_labels(svc)},
            "maxUnavailable": max_unavailable,
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
