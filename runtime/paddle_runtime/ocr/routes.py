"""HTTP routes of a served OCR pipeline, added to the server through ``App.add_route``.

``POST /ocr``, ``POST /predict`` and ``POST /v2/models/{name}/ocr``
    Body: the raw PNG or JPEG bytes.  Answer: ``{"results": [{"text", "score", "box": [[x, y] x 4]}],
    "timings_ms": {...}, "width", "height"}``, lines in reading order, boxes in image pixels.

``POST /v2/models/{name}/infer`` (Open Inference Protocol v2)
    One BYTES input ``image`` of shape ``[N]``: each element an encoded image, sent as binary tensor
    data (4-byte little-endian length + bytes per element, what ``tritonclient`` sends with
    ``binary_data=True``) or, in JSON, as base64 strings.  Outputs for all N images together, one
    row per text line: ``texts`` (BYTES, UTF-8), ``scores`` (FP32), ``boxes`` (FP32 [M, 4, 2]) and
    ``image_index`` (INT32: which input image the line belongs to); binary when asked for.

Bad images are 4xx errors raised by ``image.decode`` and mapped by ``App.dispatch``.  Requests are
counted and timed under the pipeline's name in the same metrics as single models.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson

from .. import metrics
from ..app import InferenceApp
from ..codec import BINARY_HEADER, MODEL_ROLE_HEADER, MODEL_VERSION_HEADER
from ..errors import BadRequest, InvalidInput, RuntimeError_, Unavailable
from ..transport import JSON, Request, Response
from .pipeline import OcrResult, PipelineHandle

OUTPUTS = ("texts", "scores", "boxes", "image_index")


def _bytes_elements(raw: memoryview, count: int, name: str) -> list[bytes]:
    """Split OIP binary BYTES data (length-prefixed elements) into ``count`` byte strings."""
    out, i = [], 0
    for k in range(count):
        if i + 4 > len(raw):
            raise InvalidInput(f"input '{name}': binary BYTES data ends before element {k} of {count}")
        (n,) = struct.unpack_from("<I", raw, i)
        i += 4
        if i + n > len(raw):
            raise InvalidInput(f"input '{name}': element {k} claims {n} bytes, {len(raw) - i} are left")
        out.append(bytes(raw[i:i + n]))
        i += n
    if i != len(raw):
        raise InvalidInput(f"input '{name}': {len(raw) - i} bytes follow the {count} BYTES element(s)")
    return out


def decode_image_request(body: bytes | bytearray, headers: dict[str, str]) -> tuple[str | None, list[bytes], dict[str, bool], bool]:
    """(id, images, requested outputs -> binary, binary default) of an OIP v2 infer request."""
    view = memoryview(body)
    hdr = headers.get(BINARY_HEADER)
    if hdr is not None:
        try:
            json_len = int(hdr)
        except ValueError:
            raise BadRequest(f"Inference-Header-Content-Length {hdr!r} is not an integer") from None
        if not 0 <= json_len <= len(body):
            raise BadRequest(f"Inference-Header-Content-Length {json_len} is outside the {len(body)}-byte body")
        head, binary = view[:json_len], view[json_len:]
    else:
        head, binary = view, view[len(view):]
    try:
        req = orjson.loads(head)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON in request body: {e}") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or len(req["inputs"]) != 1:
        raise BadRequest("request body must be a JSON object whose 'inputs' list holds one input, 'image'")
    t = req["inputs"][0]
    if not isinstance(t, dict) or t.get("name") != "image":
        raise InvalidInput("the OCR pipeline has one input, 'image' (BYTES: encoded PNG/JPEG images)")
    if t.get("datatype") != "BYTES":
        raise InvalidInput(f"input 'image' has datatype {t.get('datatype')!r}; it must be BYTES (encoded images)")
    shape = t.get("shape")
    if (not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape)
            or any(d != 1 for d in shape[1:])):
        raise InvalidInput(f"input 'image': shape must be [N] (or [N, 1]), got {shape!r}")
    count = shape[0]
    if count == 0:
        raise InvalidInput("input 'image' holds no image (shape [0])")
    params = t.get("parameters") or {}
    nbytes = params.get("binary_data_size") if isinstance(params, dict) else None
    if nbytes is not None:
        if not isinstance(nbytes, int) or nbytes < 0 or nbytes != len(binary):
            raise InvalidInput(f"input 'image': binary_data_size {nbytes!r} does not match the {len(binary)} "
                               "bytes after the JSON header")
        images = _bytes_elements(binary, count, "image")
    else:
        if len(binary):
            raise InvalidInput(f"{len(binary)} bytes of binary data are not claimed by any input")
        data = t.get("data")
        if not isinstance(data, list) or len(data) != count or not all(isinstance(d, str) for d in data):
            raise InvalidInput(f"input 'image': 'data' must be a list of {count} base64 string(s), or send "
                               "binary tensor data")
        try:
            images = [base64.b64decode(d, validate=True) for d in data]
        except (binascii.Error, ValueError) as e:
            raise InvalidInput(f"input 'image': data is not valid base64: {e}") from None
    binary_outputs: dict[str, bool] = {}
    for o in req.get("outputs") or []:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise BadRequest("each requested output must be an object with a string 'name'")
        if o["name"] not in OUTPUTS:
            raise InvalidInput(f"unknown output '{o['name']}'; the OCR pipeline has outputs {list(OUTPUTS)}")
        p = o.get("parameters") or {}
        binary_outputs[o["name"]] = bool(p.get("binary_data", False)) if isinstance(p, dict) else False
    rp = req.get("parameters") or {}
    binary_default = bool(rp.get("binary_data_output", False)) if isinstance(rp, dict) else False
    rid = req.get("id")
    return (str(rid) if rid is not None else None), images, binary_outputs, binary_default


def _tensor(name: str, value: Any) -> tuple[str, list[int], bytes, Any]:
    """(datatype, shape, binary form, JSON data) of one output."""
    if name == "texts":
        enc = [s.encode() for s in value]
        return "BYTES", [len(enc)], b"".join(struct.pack("<I", len(e)) + e for e in enc), list(value)
    a = np.ascontiguousarray(value)
    dt = {np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32"}[a.dtype]
    return dt, list(a.shape), a.tobytes(), a.reshape(-1).tolist()


def encode_infer_response(handle: PipelineHandle, rid: str | None, results: list[OcrResult],
                          wanted: dict[str, bool], binary_default: bool) -> Response:
    """OIP v2 response with the four outputs (binary after the JSON header where asked)."""
    lines = [(k, line) for k, r in enumerate(results) for line in r.lines]
    values = {
        "texts": [line.text for _, line in lines],
        "scores": np.array([line.score for _, line in lines], dtype=np.float32),
        "boxes": np.array([line.box for _, line in lines], dtype=np.float32).reshape(-1, 4, 2),
        "image_index": np.array([k for k, _ in lines], dtype=np.int32),
    }
    wanted = wanted or dict.fromkeys(OUTPUTS, binary_default)
    outs: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    for name, binary in wanted.items():
        dt, shape, raw, data = _tensor(name, values[name])
        entry: dict[str, Any] = {"name": name, "datatype": dt, "shape": shape}
        if binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = data
        outs.append(entry)
    body: dict[str, Any] = {"model_name": handle.name, "model_version": handle.version, "outputs": outs,
                            "parameters": {"model_role": "main",
                                           "timings_ms": orjson.dumps([r.timings_ms for r in results]).decode()}}
    if rid is not None:
        body["id"] = rid
    head = orjson.dumps(body)
    who = {MODEL_ROLE_HEADER: "main", MODEL_VERSION_HEADER: handle.version}
    if not chunks:
        return Response(200, head, JSON, who)
    return Response(200, head, "application/octet-stream", {"Inference-Header-Content-Length": str(len(head)), **who},
                    chunks)


class OcrRoutes:
    """The pipeline's routes; ``handle`` is None while the stage models load (answers 503)."""

    def __init__(self, app: InferenceApp, name: str) -> None:
        self.app = app
        self.name = name
        self.handle: PipelineHandle | None = None
        for path in ("/ocr", "/predict", f"/v2/models/{name}/ocr"):
            app.add_route("POST", path, self.ocr)
        app.add_route("POST", f"/v2/models/{name}/infer", self.infer)

    def _ready(self) -> PipelineHandle:
        h = self.handle
        if h is None:
            raise Unavailable(f"pipeline {self.name} is loading")
        if self.app.shutting_down:
            raise Unavailable("the runtime is shutting down")
        return h

    async def _accounted(self, h: PipelineHandle, work: Callable[[], Awaitable[Response]]) -> Response:
        t0 = time.perf_counter()
        gauge = metrics.INFLIGHT.labels(h.name)
        gauge.inc()
        code = 500
        try:
            resp = await work()
            code = 200
            return resp
        except RuntimeError_ as e:
            code = e.status
            raise
        finally:
            gauge.dec()
            metrics.REQUESTS.labels(h.name, h.version, "main", str(code)).inc()
            if code == 200:
                metrics.observe_success(h.name, h.version, "main", time.perf_counter() - t0)

    async def ocr(self, req: Request) -> Response:
        """Raw image bytes in, JSON lines out."""
        h = self._ready()

        async def work() -> Response:
            result = await h.pipeline.run(req.body)
            return Response(200, orjson.dumps(result.to_json()), JSON,
                            {MODEL_ROLE_HEADER: "main", MODEL_VERSION_HEADER: h.version})

        return await self._accounted(h, work)

    async def infer(self, req: Request) -> Response:
        """OIP v2 infer with a BYTES ``image`` input."""
        h = self._ready()

        async def work() -> Response:
            rid, images, wanted, binary_default = decode_image_request(req.body, req.headers)
            results = await asyncio.gather(*(h.pipeline.run(img) for img in images))
            return encode_infer_response(h, rid, list(results), wanted, binary_default)

        return await self._accounted(h, work)
