"""Every examples/NN-*/ manifest is accepted by the real API server (schema, CEL rules, defaults)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from e2e.cluster import Cluster

from .conftest import ROOT

EXAMPLES = sorted(p for p in (ROOT / "examples").glob("[0-9][0-9]-*") if p.is_dir())


def test_the_examples_issue_six_asks_for_exist():
    topics = {p.name.split("-", 1)[1] for p in EXAMPLES}
    assert {"minimal", "gpu-tensorrt", "hot-reload", "fallback", "signed-model", "autoscaling"} <= topics
    for example in EXAMPLES:
        assert (example / "README.md").is_file(), f"{example.name} has no README"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_server_side_dry_run(cluster: Cluster, namespace: str, crds: str, example: Path):
    manifests = sorted(example.glob("*.yaml"))
    assert manifests, f"{example} holds no manifest"
    objs = [o for m in manifests for o in yaml.safe_load_all(m.read_text()) if o]
    assert any(o["kind"] == "PaddleModelService" for o in objs), f"{example.name} has no PaddleModelService"
    out = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(example))
    assert out.stdout.count("(server dry run)") == len(objs), out.stdout
