"""Routing and canary-aware autoscaling builders, checked against golden manifests."""

from __future__ import annotations

import pytest

from paddle_operator.builders import routing

LABELS = {"app.kubernetes.io/instance": "ocr", "serving.paddlesla.io/service": "ocr"}
BASE_SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "ocr", "namespace": "prod", "labels": dict(LABELS)},
    "spec": {
        "type": "NodePort",
        "selector": {"serving.paddlesla.io/service": "ocr"},
        "ports": [{"name": "http", "port": 8080, "targetPort": "http", "nodePort": 30080}],
    },
}
BASE_HPA = {
    "apiVersion": "autoscaling/v2",
    "kind": "HorizontalPodAutoscaler",
    "metadata": {"name": "ocr", "namespace": "prod", "labels": dict(LABELS)},
    "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ocr"},
        "minReplicas": 2,
        "maxReplicas": 10,
        "metrics": [
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "paddle_runtime_requests_per_second"},
                    "target": {"type": "AverageValue", "averageValue": "20"},
                },
            }
        ],
    },
}


def test_track_service_selects_one_track_and_stays_internal():
    svc = routing.build_track_service(BASE_SERVICE, "canary")
    assert svc == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "ocr-canary",
            "namespace": "prod",
            "labels": {**LABELS, "serving.paddlesla.io/track": "canary"},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {"serving.paddlesla.io/service": "ocr", "serving.paddlesla.io/track": "canary"},
            "ports": [{"name": "http", "port": 8080, "targetPort": "http"}],
        },
    }
    assert BASE_SERVICE["spec"]["selector"] == {"serving.paddlesla.io/service": "ocr"}, "base not mutated"


def test_httproute_golden():
    route = routing.build_httproute(
        "ocr",
        "prod",
        LABELS,
        8080,
        30,
        include_canary=True,
        parent_refs=[{"name": "public", "namespace": "gw"}],
        hostnames=["ocr.example.com"],
    )
    assert route == {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "ocr", "namespace": "prod", "labels": LABELS},
        "spec": {
            "parentRefs": [{"name": "public", "namespace": "gw"}],
            "hostnames": ["ocr.example.com"],
            "rules": [
                {
                    "backendRefs": [
                        {"name": "ocr-stable", "port": 8080, "weight": 70},
                        {"name": "ocr-canary", "port": 8080, "weight": 30},
                    ]
                }
            ],
        },
    }


def test_httproute_without_canary_has_only_stable():
    route = routing.build_httproute("ocr", "prod", LABELS, 8080, 50, include_canary=False)
    assert route["spec"] == {
        "rules": [{"backendRefs": [{"name": "ocr-stable", "port": 8080, "weight": 100}]}]
    }


def test_istio_golden():
    dr = routing.build_destination_rule("ocr", "prod", LABELS)
    assert dr["apiVersion"] == "networking.istio.io/v1" and dr["kind"] == "DestinationRule"
    assert dr["spec"] == {
        "host": "ocr.prod.svc.cluster.local",
        "subsets": [
            {"name": "stable", "labels": {"serving.paddlesla.io/track": "stable"}},
            {"name": "canary", "labels": {"serving.paddlesla.io/track": "canary"}},
        ],
    }
    vs = routing.build_virtual_service("ocr", "prod", LABELS, 8080, 10, gateways=["mesh"])
    assert vs["spec"] == {
        "hosts": ["ocr.prod.svc.cluster.local"],
        "gateways": ["mesh"],
        "http": [
            {
                "route": [
                    {
                        "destination": {
                            "host": "ocr.prod.svc.cluster.local",
                            "subset": "stable",
                            "port": {"number": 8080},
                        },
                        "weight": 90,
                    },
                    {
                        "destination": {
                            "host": "ocr.prod.svc.cluster.local",
                            "subset": "canary",
                            "port": {"number": 8080},
                        },
                        "weight": 10,
                    },
                ]
            }
        ],
    }


@pytest.mark.parametrize("weight", [-1, 101])
def test_weights_outside_0_100_are_rejected(weight):
    with pytest.raises(ValueError):
        routing.build_virtual_service("ocr", "prod", LABELS, 8080, weight)


@pytest.mark.parametrize(
    ("total", "weight", "floor", "stable", "canary"),
    [
        (4, 0, 2, 4, 0),
        (4, 10, 2, 3, 1),  # at least one canary pod once it has weight
        (4, 30, 2, 2, 2),
        (4, 60, 2, 2, 3),  # stable keeps its SLA floor: effective share 60 %
        (4, 100, 2, 2, 4),  # effective share 67 %, not 100 %: the documented approximation
        (1, 50, 0, 1, 1),  # stable never goes to zero while it is the declared stable
    ],
)
def test_replica_split(total, weight, floor, stable, canary):
    split = routing.replica_split(total, weight, floor)
    assert (split.stable, split.canary) == (stable, canary)


def test_effective_weight():
    assert routing.replica_split(4, 100, 2).effective_weight == 67
    assert routing.replica_split(10, 30, 1).effective_weight == 30


def test_hpa_bounds_follow_traffic_share():
    b = routing.hpa_bounds(2, 10, 30, floor=1)
    assert b["stable"] == routing.TrackBounds(2, 7) and b["canary"] == routing.TrackBounds(1, 3)
    assert set(routing.hpa_bounds(2, 10, 0)) == {"stable"}
    assert routing.hpa_bounds(2, 10, 0)["stable"] == routing.TrackBounds(2, 10)
    full = routing.hpa_bounds(2, 10, 100, floor=2)
    assert full["stable"] == routing.TrackBounds(2, 2) and full["canary"] == routing.TrackBounds(2, 10)


def test_track_hpa_golden():
    hpa = routing.build_track_hpa(BASE_HPA, "canary", routing.TrackBounds(1, 3))
    assert hpa["metadata"]["name"] == "ocr-canary"
    assert hpa["metadata"]["labels"]["serving.paddlesla.io/track"] == "canary"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "ocr-canary",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    assert hpa["spec"]["metrics"] == BASE_HPA["spec"]["metrics"]
    stable = routing.build_track_hpa(BASE_HPA, "stable", routing.TrackBounds(2, 7))
    assert stable["metadata"]["name"] == "ocr" and stable["spec"]["scaleTargetRef"]["name"] == "ocr"
    assert BASE_HPA["spec"]["minReplicas"] == 2, "base not mutated"
