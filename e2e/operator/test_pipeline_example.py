"""examples/08-ocr-pipeline on the real control plane: accepted, defaulted, reconciled to Ready."""

from __future__ import annotations

from typing import Any

from .conftest import ROOT, OperatorProcess, get_json, wait_ready

EXAMPLE = ROOT / "examples" / "08-ocr-pipeline" / "ppocr-pipeline.yaml"
NAME = "ppocr"


def test_ocr_pipeline_example_becomes_ready_with_a_fetch_per_stage(
    cluster: Any, operator: OperatorProcess, ns: str
) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLE))
    pms = wait_ready(cluster, ns, NAME, operator)
    # The API server filled in the classifier's defaults.
    assert pms["spec"]["pipeline"]["classifier"] == {
        "enabled": True, "uri": "file:///opt/paddle-runtime/models/ch_ppocr_mobile_v2_cls_infer"}
    pod = get_json(cluster, "deployment", NAME, "-n", ns)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model", "fetch-det", "fetch-cls"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--pipeline") + 1] == "ppocr"


def test_the_api_server_refuses_a_pipeline_with_a_fallback(cluster: Any, crd_installed: None, ns: str) -> None:
    doc = EXAMPLE.read_text().replace("  pipeline:\n", "  fallback:\n    uri: file:///opt/other\n  pipeline:\n", 1)
    out = cluster.kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-", input=doc, check=False)
    assert out.returncode != 0
    assert "spec.fallback is not supported with spec.pipeline" in out.stderr
