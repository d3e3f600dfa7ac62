"""spec.pipeline: the Deployment fetches every stage and starts the runtime with --pipeline."""

from __future__ import annotations

import yaml
from pms_cases import ROOT

from paddle_operator.builders import build_deployment
from paddle_operator.spec import PaddleModelService

EXAMPLE = ROOT / "examples" / "08-ocr-pipeline" / "ppocr-pipeline.yaml"


def _svc(**spec_changes: object) -> PaddleModelService:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"].update(namespace="default", uid="u1")
    body["spec"].update(spec_changes)
    return PaddleModelService.from_body(body)


def _pod(svc: PaddleModelService) -> dict:
    return build_deployment(svc)["spec"]["template"]["spec"]


def test_each_stage_is_fetched_by_its_own_init_container_and_served_as_one_pipeline():
    pod = _pod(_svc())
    fetch = {c["name"]: c["args"] for c in pod["initContainers"]}
    assert fetch["fetch-model"][:3] == ["fetch", "--uri", "file:///opt/paddle-runtime/models/ch_PP-OCRv4_rec_infer"]
    assert fetch["fetch-det"] == ["fetch", "--uri", "file:///opt/paddle-runtime/models/ch_PP-OCRv4_det_infer",
                                  "--dest", "/models/det"]
    assert fetch["fetch-cls"] == ["fetch", "--uri", "file:///opt/paddle-runtime/models/ch_ppocr_mobile_v2_cls_infer",
                                  "--dest", "/models/cls"]
    args = pod["containers"][0]["args"]
    i = args.index("--pipeline")
    assert args[i:] == ["--pipeline", "ppocr", "--ocr-rec-model-dir", "/models/main", "--ocr-det-model-dir",
                        "/models/det", "--ocr-cls-model-dir", "/models/cls"]


def test_a_disabled_classifier_is_neither_fetched_nor_served():
    pod = _pod(_svc(pipeline={"type": "ppocr", "classifier": {"enabled": False}}))
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model", "fetch-det"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--ocr-cls-model-dir") + 1] == "none"


def test_without_a_pipeline_the_runtime_serves_the_model_alone():
    pod = _pod(_svc(pipeline=None))
    assert "--pipeline" not in pod["containers"][0]["args"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model"]
