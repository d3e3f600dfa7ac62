"""The ArgoCD app-of-apps in examples/argocd: layers synced in order, paths that exist."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "examples" / "argocd"


def _apps() -> dict[str, dict]:
    apps = {}
    for path in sorted((ARGOCD / "apps").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        assert doc["apiVersion"] == "argoproj.io/v1alpha1" and doc["kind"] == "Application", path
        apps[doc["metadata"]["name"]] = doc
    return apps


def _wave(app: dict) -> int:
    return int(app["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))


def test_crds_sync_before_operator_before_models():
    apps = _apps()
    assert _wave(apps["paddle-sla-crds"]) < _wave(apps["paddle-operator"]) < _wave(apps["paddle-models"])


def test_crds_come_from_the_one_source_and_are_never_pruned():
    crds = _apps()["paddle-sla-crds"]
    assert crds["spec"]["source"]["path"] == "crds"
    assert crds["spec"]["syncPolicy"]["automated"]["prune"] is False
    # Client-side apply would store the whole CRD in an annotation that exceeds the 256 KiB limit.
    assert "ServerSideApply=true" in crds["spec"]["syncPolicy"]["syncOptions"]


def test_operator_app_leaves_crds_to_the_crds_app():
    op = _apps()["paddle-operator"]
    assert op["spec"]["source"]["path"] == "charts/paddle-operator"
    assert op["spec"]["source"]["helm"]["skipCrds"] is True


def test_every_source_path_exists_in_the_repository():
    root_app = yaml.safe_load((ARGOCD / "root.yaml").read_text())
    sources = [root_app["spec"]["source"]] + [a["spec"]["source"] for a in _apps().values()]
    repos = {s["repoURL"] for s in sources}
    assert len(repos) == 1, f"all apps must point at one repository: {repos}"
    for source in sources:
        assert (ROOT / source["path"]).is_dir(), source["path"]
    assert (ROOT / root_app["spec"]["source"]["path"]) == ARGOCD / "apps"
