"""Metadata shared by every child: labels, owner reference, object header. Pure."""

from __future__ import annotations

from typing import Any

from ..spec import (
    API_VERSION,
    APP_NAME,
    KIND,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_SERVICE,
    LABEL_TRACK,
    MANAGED_BY,
    PaddleModelService,
)

STABLE = "stable"
CANARY = "canary"


def selector_labels(svc: PaddleModelService, track: str | None = None) -> dict[str, str]:
    """Labels that select a service's pods (both tracks unless one is given). Never changes after creation."""
    labels = {LABEL_SERVICE: svc.name}
    if track is not None:
        labels[LABEL_TRACK] = track
    return labels


def labels(svc: PaddleModelService, track: str | None = None) -> dict[str, str]:
    """Recommended labels plus ours; ``track`` only on objects that belong to one track."""
    out = {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: svc.name,
        LABEL_MANAGED_BY: MANAGED_BY,
    }
    out.update(selector_labels(svc, track))
    return out


def owner_reference(svc: PaddleModelService) -> dict[str, Any]:
    """Controller owner reference: children are garbage-collected with the resource."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": svc.name,
        "uid": svc.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(svc: PaddleModelService, name: str, track: str | None = None) -> dict[str, Any]:
    """Metadata of a child: name, namespace, labels, controller owner reference."""
    return {
        "name": name,
        "namespace": svc.namespace,
        "labels": labels(svc, track),
        "ownerReferences": [owner_reference(svc)],
    }
