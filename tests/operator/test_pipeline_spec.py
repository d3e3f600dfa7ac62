"""spec.pipeline: the Deployment fetches every stage and starts the runtime with --pipeline."""

from __future__ import annotations

import yaml
from pms_cases import ROOT

from paddle_operator.builders import build_configmap, build_deployment
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
    pod = _pod(_svc(model={"uri": "file:///opt/paddle-runtime/models/ch_PP-OCRv4_rec_infer"}, fallback=None,
                    pipeline={"type": "ppocr"}))
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
    assert [c["name"] for c in pod["containers"]] == ["runtime"]  # update: Rollout, no model-sync sidecar


def test_a_disabled_classifier_is_neither_fetched_nor_served():
    pod = _pod(_svc(fallback=None, pipeline={"type": "ppocr", "classifier": {"enabled": False}}))
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model", "fetch-det"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--ocr-cls-model-dir") + 1] == "none"
    assert "cls-uri" not in build_configmap(_svc(pipeline={"type": "ppocr", "classifier": {"enabled": False}}))["data"]


def test_without_a_pipeline_the_runtime_serves_the_model_alone():
    svc = _svc(pipeline=None)
    pod = _pod(svc)
    assert "--pipeline" not in pod["containers"][0]["args"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model", "fetch-fallback"]
    assert _config(svc)["fallback_model_dir"] == "/models/fallback" and "ocr_stages" not in _config(svc)


def _config(svc: PaddleModelService) -> dict:
    return yaml.safe_load(build_configmap(svc)["data"]["config.yaml"])


def test_each_stage_fallback_is_fetched_beside_its_stage_and_configured_under_ocr_stages():
    svc = _svc()
    fetch = {c["name"]: c["args"] for c in _pod(svc)["initContainers"]}
    assert list(fetch) == ["fetch-model", "fetch-fallback", "fetch-det", "fetch-det-fallback", "fetch-cls"]
    assert fetch["fetch-det-fallback"] == ["fetch", "--uri", "file:///opt/paddle-runtime/models/ch_PP-OCRv4_det_infer",
                                           "--dest", "/models/det-fallback"]
    config = _config(svc)
    # A pipeline's fallbacks are per stage: none at the top level, where every stage would inherit it.
    assert "fallback_model_dir" not in config
    det, rec = config["ocr_stages"]["det"], config["ocr_stages"]["rec"]
    assert det["fallback_model_dir"] == "/models/det-fallback" and det["fallback_latency_threshold_ms"] == 1500
    assert rec["fallback_model_dir"] == "/models/fallback" and rec["fallback_latency_threshold_ms"] == 500
    assert "cls" not in config["ocr_stages"]


def test_a_stage_threshold_defaults_to_80_percent_of_the_sla_like_a_model_fallback():
    svc = _svc(pipeline={"type": "ppocr", "classifier": {"fallback": {"uri": "file:///m/cls2"}}})
    assert _config(svc)["ocr_stages"]["cls"]["fallback_latency_threshold_ms"] == 2400  # 80 % of 3000 ms


def test_a_stage_signature_mounts_its_own_key_for_fetch_sync_and_runtime():
    svc = _svc(pipeline={"type": "ppocr", "detection": {"signature": {"hmacKeySecretRef": {"name": "det-key"}}}},
               model={"uri": "file:///m/rec", "update": "HotReload",
                      "signature": {"hmacKeySecretRef": {"name": "rec-key"}}})
    pod = _pod(svc)
    fetch = {c["name"]: c["args"] for c in pod["initContainers"]}
    det_key, rec_key = "/var/run/secrets/paddle-runtime/det-hmac/hmac.key", "/var/run/secrets/paddle-runtime/hmac/hmac.key"
    assert fetch["fetch-det"][-2:] == ["--hmac-key-file", det_key]
    assert fetch["fetch-cls"][-2:] == ["--hmac-key-file", rec_key]  # no signature of its own: spec.model's
    assert fetch["fetch-model"][-2:] == ["--hmac-key-file", rec_key]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["det-hmac-key"]["secret"]["secretName"] == "det-key"
    runtime, sync = pod["containers"]
    assert {"name": "det-hmac-key", "mountPath": "/var/run/secrets/paddle-runtime/det-hmac", "readOnly": True} in \
        runtime["volumeMounts"]
    assert f"--dest /models/det ${{ver:+--version \"$ver\"}} --hmac-key-file {det_key}" in sync["args"][0]
    # The runtime checks the stage with its own key at load and at every reload.
    assert _config(svc)["ocr_stages"]["det"] == {"hmac_key_file": det_key}
    assert {"name": "PADDLE_RUNTIME_HMAC_KEY_FILE", "value": rec_key} in runtime["env"]


def test_hot_reload_takes_every_stage_uri_from_the_configmap_so_a_change_reaches_the_running_pod():
    svc = _svc()
    cm = build_configmap(svc)["data"]
    assert cm["det-uri"].endswith("ch_PP-OCRv4_det_server_infer.tar") and cm["det-version"] == "v4-server"
    pod = _pod(svc)
    det = next(c for c in pod["initContainers"] if c["name"] == "fetch-det")
    assert det["args"][:3] == ["fetch", "--uri", "$(MODEL_URI)"]
    assert {"name": "MODEL_URI", "valueFrom": {"configMapKeyRef": {"name": "ppocr-runtime", "key": "det-uri"}}} in det["env"]
    sync = pod["containers"][1]
    assert sync["name"] == "model-sync"
    for key, dest in (("model-uri", "/models/main"), ("det-uri", "/models/det"), ("cls-uri", "/models/cls")):
        assert f"/etc/paddle-runtime/{key}" in sync["args"][0] and f"--dest {dest} " in sync["args"][0]
    # A changed stage URI changes the ConfigMap only, not the pod template (no rollout).
    pipeline = yaml.safe_load(EXAMPLE.read_text())["spec"]["pipeline"]
    pipeline["detection"].update(uri="file:///m/det-v5", version="v5")
    moved = _svc(pipeline=pipeline)
    assert build_deployment(moved)["spec"]["template"] == build_deployment(svc)["spec"]["template"]
    assert build_configmap(moved)["data"]["det-uri"] == "file:///m/det-v5"


def test_the_fallback_column_is_armed_by_a_stage_fallback_alone():
    from paddle_operator.truth import truth_status

    svc = _svc(fallback=None, pipeline={"type": "ppocr", "detection": {"fallback": {"uri": "file:///m/det2"}}})
    assert svc.spec.fallback_armed
    assert not _svc(fallback=None, pipeline={"type": "ppocr"}).spec.fallback_armed
    assert truth_status(svc, {"stable": {}}, {})["fallback"] == "Armed"
