"""The HTTP runtime as users see it: real ``paddle-runtime serve`` processes, real clients.

One server per model for the whole module (started in parallel); every check compares served
outputs with a plain ``paddle.inference`` predictor (``reference`` fixture).
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as triton

MODELS = {  # fixture -> (served name, input shape for batch 1, output name)
    "ocr_det_dir": ("ch_PP-OCRv4_det_infer", (1, 3, 96, 128), "sigmoid_0.tmp_0"),
    "ocr_rec_dir": ("ch_PP-OCRv4_rec_infer", (1, 3, 48, 320), "softmax_11.tmp_0"),
    "ocr_cls_dir": ("ch_ppocr_mobile_v2_cls_infer", (1, 3, 48, 192), "softmax_0.tmp_0"),
    "resnet50_dir": ("resnet50", (1, 3, 224, 224), "fetch_name_0"),
    "mobilenet_v3_dir": ("mobilenet-v3-small", (1, 3, 224, 224), "fetch_name_0"),
}
MAX_BODY = 16_000_000  # a JSON batch of 3 224x224 images is ~9 MB


@pytest.fixture(scope="module")
def servers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            runtime_launcher: Any) -> Iterator[dict[str, tuple[Any, Path]]]:
    logs = tmp_path_factory.mktemp("runtime-logs")
    started: dict[str, tuple[Any, Path]] = {}
    try:
        for fx in MODELS:
            d = request.getfixturevalue(fx)
            started[fx] = (runtime_launcher(d, "--max-body-bytes", str(MAX_BODY), "--batch-timeout-ms", "5",
                                         log_dir=logs, wait_ready=False), d)
        for rp, _ in started.values():
            rp.wait_ready(180)
        yield started
    finally:
        for rp, _ in started.values():
            rp.stop()


def _post(rp: Any, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict, Any]:
    c = http.client.HTTPConnection("127.0.0.1", rp.port, timeout=30)
    try:
        c.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        r = c.getresponse()
        data = r.read()
        return r.status, dict(r.getheaders()), orjson.loads(data) if data else None
    finally:
        c.close()


def _infer(client: triton.InferenceServerClient, name: str, out: str, x: np.ndarray, binary: bool) -> triton.InferResult:
    inp = triton.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return client.infer(name, [inp], outputs=[triton.InferRequestedOutput(out, binary_data=binary)])


@pytest.mark.parametrize("fx", list(MODELS))
def test_tritonclient_metadata_and_infer_json_and_binary_match_direct_predictor(
        fx: str, servers: dict, reference: Any) -> None:
    rp, model_dir = servers[fx]
    name, shape, out = MODELS[fx]
    client = triton.InferenceServerClient(rp.host_port)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    meta = client.get_model_metadata(name)
    assert meta["name"] == name and meta["inputs"][0]["name"] == "x" and meta["inputs"][0]["datatype"] == "FP32"
    assert [o["name"] for o in meta["outputs"]] == [out]
    rng = np.random.default_rng(5)
    for batch in (1, 3):
        x = rng.random((batch, *shape[1:]), dtype=np.float32)
        want = reference(model_dir, {"x": x})[out]
        for binary in (False, True):
            got = _infer(client, name, out, x, binary).as_numpy(out)
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"batch {batch} binary {binary}")


def test_concurrent_http_callers_get_their_own_rows(servers: dict, reference: Any) -> None:
    rp, model_dir = servers["mobilenet_v3_dir"]
    name, _, out = MODELS["mobilenet_v3_dir"]
    rng = np.random.default_rng(6)
    xs = [rng.random((1 + i % 2, 3, 224, 224), dtype=np.float32) for i in range(32)]
    want = [reference(model_dir, {"x": x})[out] for x in xs]

    def call(x: np.ndarray) -> np.ndarray:
        return _infer(triton.InferenceServerClient(rp.host_port), name, out, x, True).as_numpy(out)

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(call, xs))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    _, body = rp.get("/metrics")
    # Some batch had more than one row: the callers above really shared batches.
    line = next(ln for ln in body.decode().splitlines()
                if ln.startswith('paddle_runtime_batch_size_bucket{le="1.0",model="mobilenet-v3-small"}'))
    total = next(ln for ln in body.decode().splitlines()
                 if ln.startswith('paddle_runtime_batch_size_count{model="mobilenet-v3-small"}'))
    assert float(line.split()[-1]) < float(total.split()[-1])


def _tensor(shape: list[int], datatype: str = "FP32", data: Any = None, name: str = "x") -> dict:
    n = int(np.prod(shape)) if all(d >= 0 for d in shape) else 1
    return {"name": name, "datatype": datatype, "shape": shape, "data": data if data is not None else [0.5] * n}


BAD_REQUESTS = [  # (id, path, body, headers, status, words in the error)
    ("malformed-json", "/v2/models/{m}/infer", b'{"inputs": [', {}, 400, "malformed JSON"),
    ("not-an-object", "/v2/models/{m}/infer", b"[1, 2]", {}, 400, "'inputs' list"),
    ("unknown-model", "/v2/models/nope/infer", orjson.dumps({"inputs": [_tensor([1, 3, 224, 224])]}), {}, 404, "unknown model 'nope'"),
    ("unknown-version", "/v2/models/{m}/versions/9/infer", orjson.dumps({"inputs": [_tensor([1, 3, 224, 224])]}), {}, 404, "no version '9'"),
    ("unknown-input", "/v2/models/{m}/infer", orjson.dumps({"inputs": [_tensor([1, 3, 224, 224], name="y")]}), {}, 400, "unknown input 'y'"),
    ("wrong-dtype", "/v2/models/{m}/infer", orjson.dumps({"inputs": [_tensor([1, 3, 224, 224], "FP64")]}), {}, 400, "datatype FP64"),
    ("bad-datatype", "/v2/models/{m}/infer", orjson.dumps({"inputs": [_tensor([1, 3, 224, 224], "FLOAT")]}), {}, 400, "unsupported datatype"),
    ("wrong-shape", "/v2/models/{m}/infer", orjson.dumps({"inputs": [_tensor([1, 3, 224, 100])]}), {}, 400, "dimension 3 must be 224"),
    ("wrong-rank", "/v2/models/{m}/infer", orjson.dumps({"inputs": [_tensor([3, 224, 224])]}), {}, 400, "rank"),
    ("negative-shape", "/v2/models/{m}/infer", orjson.dumps({"inputs": [_tensor([-1, 3, 224, 224], data=[0.0])]}), {}, 400, "negative dimension"),
    ("length-mismatch", "/v2/models/{m}/infer", orjson.dumps({"inputs": [_tensor([1, 3, 224, 224], data=[0.0] * 10)]}), {}, 400, "has 10 values"),
    ("empty-tensor", "/v2/models/{m}/infer", orjson.dumps({"inputs": [_tensor([0, 3, 224, 224], data=[])]}), {}, 400, "empty"),
    ("not-numbers", "/v2/models/{m}/infer", orjson.dumps({"inputs": [_tensor([1, 2], data=["a", "b"])]}), {}, 400, "cannot be read as FP32"),
    ("missing-data", "/v2/models/{m}/infer", orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 224, 224]}]}), {}, 400, "neither 'data'"),
    ("binary-size-mismatch", "/v2/models/{m}/infer",
     orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 224, 224], "parameters": {"binary_data_size": 8}}]}) + b"\0" * 8,
     {"Inference-Header-Content-Length": "{hl}"}, 400, "needs 602112"),
    ("unknown-output", "/v2/models/{m}/infer", orjson.dumps({"inputs": [_tensor([1, 3, 224, 224])], "outputs": [{"name": "z"}]}), {}, 400, "unknown output 'z'"),
    ("body-too-large", "/v2/models/{m}/infer", b"0" * (MAX_BODY + 1), {}, 413, "max_body_bytes"),
    ("predict-malformed", "/predict", b"{", {}, 400, "malformed JSON"),
    ("predict-unknown-input", "/predict", orjson.dumps({"inputs": {"q": [1]}}), {}, 400, "unknown input 'q'"),
    ("unknown-route", "/v3/nothing", b"{}", {}, 404, "no route"),
    ("wrong-method", "/v2/health/ready", b"{}", {}, 405, "not allowed"),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "words"), [b[1:] for b in BAD_REQUESTS],
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_its_4xx_and_the_server_keeps_serving(servers: dict, path: str, body: bytes,
                                                             headers: dict, status: int, words: str) -> None:
    rp, _ = servers["mobilenet_v3_dir"]
    name, shape, out = MODELS["mobilenet_v3_dir"]
    if "{hl}" in headers.get("Inference-Header-Content-Length", ""):
        headers = {"Inference-Header-Content-Length": str(len(body) - 8)}
    code, _, err = _post(rp, path.format(m=name), body, headers)
    assert code == status, err
    assert set(err) == {"error"} and words in err["error"], err
    x = np.ones(shape, np.float32)
    assert _infer(triton.InferenceServerClient(rp.host_port), name, out, x, True).as_numpy(out).shape == (1, 1000)


def test_predict_health_version_and_metrics_routes(servers: dict, reference: Any) -> None:
    rp, model_dir = servers["ocr_cls_dir"]
    name, shape, out = MODELS["ocr_cls_dir"]
    x = np.random.default_rng(7).random((2, *shape[1:]), dtype=np.float32)
    code, _, body = _post(rp, "/predict", orjson.dumps({"instances": x.tolist()}))
    assert code == 200 and body["model_name"] == name
    np.testing.assert_allclose(np.asarray(body["outputs"][out], np.float32), reference(model_dir, {"x": x})[out],
                               rtol=1e-4, atol=1e-5)
    code, health = rp.get("/health")
    assert code == 200 and orjson.loads(health)["status"] == "ready"
    assert orjson.loads(rp.get("/version")[1])["model"] == name
    assert rp.get("/v2/health/live")[0] == 200
    text = rp.get("/metrics")[1].decode()
    for metric in ("paddle_runtime_requests_total", "paddle_runtime_request_duration_seconds_bucket",
                   "paddle_runtime_batch_size_bucket", "paddle_runtime_queue_depth", "paddle_runtime_inflight_requests",
                   "paddle_runtime_model_info"):
        assert metric in text, metric
    assert f'paddle_runtime_model_info{{device="cpu",model="{name}",role="main",version="1"}} 1.0' in text
    assert f'paddle_runtime_requests_total{{code="200",model="{name}",role="main",version="1"}}' in text


def test_expect_100_continue_is_answered_before_the_body(servers: dict) -> None:
    import socket

    rp, _ = servers["ocr_cls_dir"]
    name, shape, out = MODELS["ocr_cls_dir"]
    x = np.zeros(shape, np.float32)
    head = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(shape),
                                     "parameters": {"binary_data_size": x.nbytes}}]})
    body = head + x.tobytes()
    with socket.create_connection(("127.0.0.1", rp.port), timeout=10) as s:
        s.sendall((f"POST /v2/models/{name}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                   f"Inference-Header-Content-Length: {len(head)}\r\nExpect: 100-continue\r\n\r\n").encode())
        assert s.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(body)
        assert s.recv(64).startswith(b"HTTP/1.1 200 OK")
