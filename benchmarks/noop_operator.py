"""The memory baseline for benchmarks/operator.py: a kopf operator that does nothing.

Same kopf, same settings that shape memory (standalone, no event posting, the same server-side
label filter on the children), watching the same resources as ours (PaddleModelServices, the
five child kinds and the pods they make) with no-op handlers: what is left of our RSS above this
one is ours.

    python -m kopf run --standalone --namespace NS benchmarks/noop_operator.py
"""

from __future__ import annotations

from typing import Any

import kopf

MANAGED = {"app.kubernetes.io/managed-by": "paddle-sla-operator"}
CHILDREN = (
    ("", "v1", "configmaps"),
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("", "v1", "pods"),  # ours indexes its pods (model fetch failures)
)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False
    settings.peering.standalone = True
    for _group, _version, plural in CHILDREN:
        settings.watching.label_selectors[plural] = "app.kubernetes.io/managed-by=paddle-sla-operator"


@kopf.on.event("serving.paddlesla.io", "v1alpha1", "paddlemodelservices")
def pms_noop(**_: Any) -> None:
    """Sees every event; does nothing."""


for group, version, plural in CHILDREN:
    kopf.on.event(group=group, version=version, plural=plural, labels=MANAGED, id=f"noop_{plural}")(pms_noop)
