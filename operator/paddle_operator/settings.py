"""Operator settings in one place: the kopf startup hook and the command-line knobs it reads."""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from .spec import GROUP, LABEL_MANAGED_BY, MANAGED_BY

# Watches: ask the API server to close each watch after 5 minutes (server_timeout) and give up on the
# client side a little later (client_timeout). A silently dropped connection (NAT, load balancer idle
# timeout) is then noticed within minutes instead of hanging forever, and the server, not the client,
# normally ends the stream, so no events are lost between the two.
WATCH_SERVER_TIMEOUT_S = 300
WATCH_CLIENT_TIMEOUT_S = WATCH_SERVER_TIMEOUT_S + 30
WATCH_CONNECT_TIMEOUT_S = 10
# Sync handlers run in this many threads. A reconcile is a dozen API calls that mostly wait on the
# API server (CPU per resource is milliseconds), so throughput under a burst is bounded by how many
# wait at once: 16 threads made 100 new resources queue for ~25 s on a loaded control plane.
MAX_WORKERS = int(os.environ.get("PADDLE_OPERATOR_WORKERS", "48"))
CHILD_KINDS = ("configmaps", "deployments", "services", "horizontalpodautoscalers", "poddisruptionbudgets")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Our own domain for everything kopf writes on our objects.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT_S
    settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT_S
    settings.watching.connect_timeout = WATCH_CONNECT_TIMEOUT_S
    # Child watches only stream objects we manage: server-side filtering keeps every other ConfigMap,
    # Service and Deployment in the cluster out of this process.
    for plural in CHILD_KINDS:
        settings.watching.label_selectors[plural] = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
    settings.execution.max_workers = MAX_WORKERS
    # Events are for people: the explicit kopf.info()/kopf.warn() calls, not every handler log line.
    settings.posting.level = logging.INFO
    settings.posting.loggers = False
    settings.posting.reporting_component = "paddle-sla-operator"
    # One replica, no peering: peering is not leader election, and a second replica would not help.
    settings.peering.standalone = True
    settings.peering.mandatory = False


@kopf.on.probe(id="indexed")
def indexed_count(pms_index: kopf.Index, **_: Any) -> int:
    """Exposed on the liveness endpoint: how many PaddleModelServices this process knows."""
    return len(pms_index)
