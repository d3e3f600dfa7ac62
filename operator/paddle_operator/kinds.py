"""The one registry of Kubernetes kinds the operator touches: owned children and kinds it only reads.

Everything else derives from here: the REST paths (kube.py), what the reconcile prunes, which child
kinds kopf watches and filters server-side (handlers.py), and the chart's RBAC test. Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import GROUP, PLURAL, VERSION


@dataclass(frozen=True)
class Kind:
    """One Kubernetes kind: ``apiVersion``, ``kind``, REST plural, and how the operator uses it."""

    api_version: str
    kind: str
    plural: str
    # Applied (server-side apply), listed and deleted when pruned.
    owned: bool = False
    # Watched for drift and Deployment/HPA readiness. Router kinds are not: their CRDs are optional
    # (Gateway API, Istio), and a watch on an absent CRD would fail the operator.
    watched: bool = False

    @property
    def group(self) -> str:
        """The API group ("" for the core group)."""
        return self.api_version.rpartition("/")[0]

    @property
    def key(self) -> tuple[str, str]:
        """``(apiVersion, kind)``, the key children are matched by."""
        return (self.api_version, self.kind)


# Owned kinds in apply order (config before the pods that mount it).
OWNED: tuple[Kind, ...] = (
    Kind("v1", "ConfigMap", "configmaps", owned=True, watched=True),
    Kind("apps/v1", "Deployment", "deployments", owned=True, watched=True),
    Kind("v1", "Service", "services", owned=True, watched=True),
    Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", owned=True, watched=True),
    Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", owned=True, watched=True),
    Kind("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes", owned=True),
    Kind("networking.istio.io/v1", "VirtualService", "virtualservices", owned=True),
    Kind("networking.istio.io/v1", "DestinationRule", "destinationrules", owned=True),
)
# Read only: precondition checks, and the resource itself.
READ: tuple[Kind, ...] = (
    Kind("v1", "Secret", "secrets"),
    Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    Kind(f"{GROUP}/{VERSION}", "PaddleModelService", PLURAL),
)
# Watched (filtered server-side by the managed-by label) but never written: the pods of our
# Deployments, for the reason an init container failed (truth.pod_failure, handlers.pod_failures).
OBSERVED: tuple[Kind, ...] = (Kind("v1", "Pod", "pods"),)
ALL: tuple[Kind, ...] = OWNED + READ + OBSERVED
WATCHED: tuple[Kind, ...] = tuple(k for k in OWNED if k.watched)
PLURALS: dict[tuple[str, str], str] = {k.key: k.plural for k in ALL}
