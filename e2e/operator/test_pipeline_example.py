"""examples/08-ocr-pipeline on the real control plane: accepted, defaulted, reconciled to Ready, with a
fallback per stage and every stage hot-reloaded through the model-sync sidecar; bad per-stage specs are
refused by the API server with the field named."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from e2e.util import wait_for

from .conftest import ROOT, OperatorProcess, get_json, wait_ready

EXAMPLE = ROOT / "examples" / "08-ocr-pipeline" / "ppocr-pipeline.yaml"
NAME = "ppocr"


def test_ocr_pipeline_example_becomes_ready_with_a_fetch_and_a_fallback_per_stage(
    cluster: Any, operator: OperatorProcess, ns: str
) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLE))
    pms = wait_ready(cluster, ns, NAME, operator)
    pipeline = pms["spec"]["pipeline"]
    # The API server filled in the classifier's defaults and each stage fallback's thresholds.
    assert pipeline["classifier"] == {
        "enabled": True, "uri": "file:///opt/paddle-runtime/models/ch_ppocr_mobile_v2_cls_infer"}
    assert pipeline["detection"]["fallback"]["recoverySteps"] == [10, 30, 60, 100]
    assert pipeline["detection"]["fallback"]["window"] == 10
    # The FALLBACK column: armed by the stages' fallbacks (the status writer reads no pods here).
    wait_for(lambda: get_json(cluster, "pms", NAME, "-n", ns)["status"].get("fallback") == "Armed", 60,
             "status.fallback Armed", dump=operator.log)
    pod = get_json(cluster, "deployment", NAME, "-n", ns)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == [
        "fetch-model", "fetch-fallback", "fetch-det", "fetch-det-fallback", "fetch-cls"]
    assert [c["name"] for c in pod["containers"]] == ["runtime", "model-sync"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--pipeline") + 1] == "ppocr"
    cm = get_json(cluster, "configmap", f"{NAME}-runtime", "-n", ns)["data"]
    stages = yaml.safe_load(cm["config.yaml"])["ocr_stages"]
    assert stages["det"]["fallback_model_dir"] == "/models/det-fallback"
    assert stages["det"]["fallback_latency_threshold_ms"] == 1500
    assert stages["rec"]["fallback_model_dir"] == "/models/fallback"

    # update: HotReload: a new detection URI changes the ConfigMap the sidecar reads, not the pod template.
    before = get_json(cluster, "deployment", NAME, "-n", ns)
    cluster.kubectl("patch", "pms", NAME, "-n", ns, "--type", "merge", "-p",
                    '{"spec":{"pipeline":{"detection":{"uri":"file:///opt/paddle-runtime/models/ch_PP-OCRv4_det_infer",'
                    '"version":"v4-mobile","fallback":null}}}}')
    def moved() -> bool:
        data = get_json(cluster, "configmap", f"{NAME}-runtime", "-n", ns)["data"]
        return data["det-uri"].endswith("/ch_PP-OCRv4_det_infer") and data["det-version"] == "v4-mobile"

    wait_for(moved, 60, "det-uri in the ConfigMap", dump=operator.log)
    after = get_json(cluster, "deployment", NAME, "-n", ns)
    # The fallback went away (one init container less), the detection source did not touch the template.
    names = [c["name"] for c in after["spec"]["template"]["spec"]["initContainers"]]
    assert names == ["fetch-model", "fetch-fallback", "fetch-det", "fetch-cls"]
    det = next(c for c in after["spec"]["template"]["spec"]["initContainers"] if c["name"] == "fetch-det")
    assert det == next(c for c in before["spec"]["template"]["spec"]["initContainers"] if c["name"] == "fetch-det")


def _with(doc: str, change: dict[str, Any]) -> str:
    body = yaml.safe_load(doc)
    spec = body["spec"]
    for path, value in change.items():
        node = spec
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return yaml.safe_dump(body)


@pytest.mark.parametrize(("change", "words"), [
    ({"pipeline.detection.fallback": {"uri": "https://paddleocr.bj.bcebos.com/PP-OCRv4/chinese/"
                                             "ch_PP-OCRv4_det_server_infer.tar"}},
     "spec.pipeline.detection.fallback.uri must differ from spec.pipeline.detection.uri"),
    ({"pipeline.classifier": {"enabled": False, "fallback": {"uri": "file:///m/cls2"}}},
     "spec.pipeline.classifier.fallback needs the classifier enabled"),
    ({"pipeline.detection.fallback.latencyThresholdMs": 4000},
     "spec.pipeline.detection.fallback.latencyThresholdMs must not exceed spec.sla.latencyP99Ms"),
    ({"pipeline.classifier": {"fallback": {"uri": "file:///m/cls2", "recoverySteps": [10, 50]}}},
     "spec.pipeline.classifier.fallback.recoverySteps must end with 100"),
    ({"pipeline.detection.signature": {}},
     "spec.pipeline.detection.signature needs hmacKeySecretRef or publicKeySecretRef"),
], ids=["same-uri", "disabled-classifier", "over-sla", "ramp", "empty-signature"])
def test_the_api_server_refuses_a_bad_stage_naming_the_field(
        cluster: Any, crd_installed: None, ns: str, change: dict[str, Any], words: str) -> None:
    out = cluster.kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-", input=_with(EXAMPLE.read_text(), change),
                          check=False)
    assert out.returncode != 0, out.stdout
    assert words in out.stderr
