"""examples/argocd/ against Argo CD's real Application schema (the pinned upstream CRD)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from e2e.cluster import Cluster

from .conftest import ROOT

ARGOCD = ROOT / "examples" / "argocd"


def test_argocd_manifests_pass_server_side_dry_run(cluster: Cluster, namespace: str, argocd_crds: None):
    files = [ARGOCD / "root.yaml", ARGOCD / "argocd-cm.yaml", *sorted((ARGOCD / "apps").glob("*.yaml"))]
    objs = [d for f in files for d in yaml.safe_load_all(Path(f).read_text()) if d]
    assert sum(o["kind"] == "Application" for o in objs) == 4
    for obj in objs:
        # They live in Argo CD's namespace; the test namespace stands in for it.
        obj["metadata"]["namespace"] = namespace
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
    out = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=doc)
    assert out.stdout.count("(server dry run)") == len(objs), out.stdout
