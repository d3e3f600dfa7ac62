"""Open Inference Protocol v2 codec (+ the binary tensor extension) and the simple ``/predict`` form.

Pure functions between HTTP bodies and numpy: decoding checks the wire format (JSON, framing,
datatypes, sizes) and nothing about the model; encoding writes binary outputs as memoryviews after
the JSON header (``Inference-Header-Content-Length``), so large tensors are never copied into JSON.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .contracts import InferResult, ModelHandle
from .errors import BadRequest, InvalidInput
from .model_dir import NUMPY_TO_OIP, OIP_TO_NUMPY
from .transport import BINARY_HEADER, JSON, Response, json_response

MODEL_ROLE_HEADER = "X-Model-Role"  # main | fallback: which model produced the answer
MODEL_VERSION_HEADER = "X-Model-Version"


@dataclass
class InferRequest:
    """A decoded OIP v2 infer request (arrays not yet checked against the model)."""

    id: str | None
    inputs: dict[str, np.ndarray]
    binary_outputs: dict[str, bool]
    """Requested output name -> send as binary; empty = all outputs, default format."""
    binary_default: bool


def _shape(name: str, raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        raise InvalidInput(f"input '{name}': shape must be a list of integers, got {raw!r}")
    if any(d < 0 for d in raw):
        raise InvalidInput(f"input '{name}': shape {raw} has a negative dimension")
    return tuple(raw)


def _bytes_input(name: str, t: dict[str, Any], shape: tuple[int, ...], count: int, binary: memoryview,
                 offset: int) -> tuple[np.ndarray, int]:
    """A BYTES tensor (object array of ``bytes``) and the new binary offset.

    Binary form: each element a 4-byte little-endian length then its bytes (what ``tritonclient``
    sends); JSON form: each element a string (UTF-8).
    """
    params = t.get("parameters") or {}
    nbytes = params.get("binary_data_size") if isinstance(params, dict) else None
    if nbytes is not None:
        if not isinstance(nbytes, int) or nbytes < 0 or offset + nbytes > len(binary):
            raise InvalidInput(f"input '{name}': binary_data_size {nbytes!r} does not fit the "
                               f"{len(binary) - offset} bytes of binary data left")
        raw, i, out = binary[offset:offset + nbytes], 0, []
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
        offset += nbytes
    else:
        try:
            flat = np.asarray(t["data"], dtype=object).reshape(-1) if isinstance(t.get("data"), list) else None
        except ValueError:  # ragged nesting
            flat = None
        if flat is None or not all(isinstance(d, str) for d in flat):
            raise InvalidInput(f"input '{name}': BYTES data must be a list of strings, or binary tensor data")
        if flat.size != count:
            raise InvalidInput(f"input '{name}' has {flat.size} values, but shape {list(shape)} needs {count}")
        out = [d.encode() for d in flat]
    arr = np.empty(count, dtype=object)
    arr[:] = out
    return arr.reshape(shape), offset


def decode_infer_request(body: bytes | bytearray, headers: dict[str, str], handle: ModelHandle) -> InferRequest:
    """Parse an OIP v2 infer body (JSON, or JSON header + binary tensors) into numpy arrays.

    This is wire-format decoding only (framing, datatypes, sizes); the arrays are checked against
    the model once, afterwards, by :func:`~.contracts.validate_inputs`.  Binary tensors are numpy
    views of ``body`` (the transport aligns them; an unaligned one is copied once).
    """
    view = memoryview(body)
    hdr = headers.get(BINARY_HEADER)
    if hdr is not None:
        try:
            json_len = int(hdr)
        except ValueError:
            raise BadRequest(f"Inference-Header-Content-Length {hdr!r} is not an integer") from None
        if not 0 <= json_len <= len(body):
            raise BadRequest(f"Inference-Header-Content-Length {json_len} is outside the {len(body)}-byte body")
        json_part, binary = view[:json_len], view[json_len:]
    else:
        json_part, binary = view, view[len(view):]
    try:
        req = orjson.loads(json_part)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON in request body: {e}") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or not req["inputs"]:
        raise BadRequest("request body must be a JSON object with a non-empty 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(req["inputs"]):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise BadRequest(f"inputs[{i}] must be an object with a string 'name'")
        name = t["name"]
        if name in inputs:
            raise InvalidInput(f"input '{name}' is given twice")
        datatype = t.get("datatype")
        if datatype not in OIP_TO_NUMPY:
            raise InvalidInput(f"input '{name}': unsupported datatype {datatype!r}; use one of {sorted(OIP_TO_NUMPY)}")
        dtype = OIP_TO_NUMPY[datatype]
        shape = _shape(name, t.get("shape"))
        count = math.prod(shape)
        if datatype == "BYTES":
            inputs[name], offset = _bytes_input(name, t, shape, count, binary, offset)
            continue
        params = t.get("parameters") or {}
        nbytes = params.get("binary_data_size") if isinstance(params, dict) else None
        if nbytes is not None:
            if not isinstance(nbytes, int) or nbytes < 0:
                raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + nbytes > len(binary):
                raise InvalidInput(f"input '{name}': binary_data_size {nbytes} runs past the end of the body "
                                   f"({len(binary) - offset} bytes left)")
            if nbytes != count * dtype.itemsize:
                raise InvalidInput(f"input '{name}': {nbytes} bytes of binary data, but shape {list(shape)} "
                                   f"{datatype} needs {count * dtype.itemsize}")
            chunk = binary[offset:offset + nbytes]
            offset += nbytes
            arr = np.frombuffer(chunk, dtype=dtype)
            if not arr.flags.aligned:
                arr = arr.copy()  # e.g. a chunked body: copy once so kernels get aligned memory
            inputs[name] = arr.reshape(shape)
        else:
            if "data" not in t:
                raise InvalidInput(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
            try:
                arr = np.asarray(t["data"], dtype=dtype)
            except (ValueError, TypeError) as e:
                raise InvalidInput(f"input '{name}': data cannot be read as {datatype}: {e}") from None
            if arr.size != count:
                raise InvalidInput(f"input '{name}' has {arr.size} values, but shape {list(shape)} needs {count}")
            inputs[name] = arr.reshape(shape)
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    binary_outputs: dict[str, bool] = {}
    for o in req.get("outputs") or []:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise BadRequest("each requested output must be an object with a string 'name'")
        out_names = {s.name for s in handle.outputs}
        if o["name"] not in out_names:
            raise InvalidInput(f"unknown output '{o['name']}'; model '{handle.name}' has outputs {sorted(out_names)}")
        p = o.get("parameters") or {}
        binary_outputs[o["name"]] = bool(p.get("binary_data", False)) if isinstance(p, dict) else False
    params = req.get("parameters") or {}
    binary_default = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    rid = req.get("id")
    return InferRequest(str(rid) if rid is not None else None, inputs, binary_outputs, binary_default)


def decode_predict_request(body: bytes | bytearray, handle: ModelHandle) -> dict[str, np.ndarray]:
    """Parse the simple form ``{"inputs": {name: nested list}}`` (or ``{"instances": [...]}`` for one input)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON in request body: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest('body must be a JSON object: {"inputs": {"<name>": [...]}}')
    specs = {s.name: s for s in handle.inputs}
    raw = doc.get("inputs")
    if raw is None and "instances" in doc:
        if len(specs) != 1:
            raise BadRequest(f"'instances' needs a single-input model; use 'inputs' with {sorted(specs)}")
        raw = {next(iter(specs)): doc["instances"]}
    if not isinstance(raw, dict) or not raw:
        raise BadRequest('body needs "inputs": {"<input name>": nested list, ...}')
    inputs: dict[str, np.ndarray] = {}
    for name, data in raw.items():
        if name not in specs:
            raise InvalidInput(f"unknown input '{name}'; model '{handle.name}' has inputs {sorted(specs)}")
        try:
            inputs[name] = np.asarray(data, dtype=specs[name].dtype)
        except (ValueError, TypeError) as e:
            raise InvalidInput(f"input '{name}' cannot be read as {specs[name].datatype}: {e}") from None
    return inputs


def encode_infer_response(handle: ModelHandle, req: InferRequest, result: InferResult) -> Response:
    """OIP v2 response; binary outputs follow the JSON header (Inference-Header-Content-Length)."""
    wanted = req.binary_outputs or {n: req.binary_default for n in result.outputs}
    outs: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    for name, binary in wanted.items():
        a = np.ascontiguousarray(result.outputs[name])
        entry: dict[str, Any] = {"name": name, "datatype": NUMPY_TO_OIP.get(a.dtype, "FP32"), "shape": list(a.shape)}
        if a.dtype == object:  # BYTES: str or bytes elements
            elems = [x.encode() if isinstance(x, str) else bytes(x) for x in a.reshape(-1)]
            if binary:
                raw = b"".join(struct.pack("<I", len(e)) + e for e in elems)
                entry["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                entry["data"] = [e.decode("utf-8", "replace") for e in elems]
        elif binary:
            entry["parameters"] = {"binary_data_size": a.nbytes}
            chunks.append(memoryview(a.data).cast("B"))
        else:
            entry["data"] = a.reshape(-1)
        outs.append(entry)
    body: dict[str, Any] = {"model_name": handle.name, "model_version": result.model_version, "outputs": outs,
                            "parameters": {"model_role": result.role}}
    if req.id is not None:
        body["id"] = req.id
    head = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    # Which model answered (main or fallback), also for clients that never parse the body.
    who = {MODEL_ROLE_HEADER: result.role, MODEL_VERSION_HEADER: result.model_version}
    if not chunks:
        return Response(200, head, JSON, who)
    return Response(200, head, "application/octet-stream", {"Inference-Header-Content-Length": str(len(head)), **who},
                    chunks)


def encode_predict_response(handle: ModelHandle, result: InferResult) -> Response:
    """The simple form's answer: outputs by name, plus which model version and role answered."""
    version, role = result.model_version, result.role
    return json_response({"model_name": handle.name, "model_version": version, "model_role": role,
                          "outputs": {n: np.ascontiguousarray(a) for n, a in result.outputs.items()}},
                         headers={MODEL_ROLE_HEADER: role, MODEL_VERSION_HEADER: version})
