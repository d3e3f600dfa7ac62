"""The model directory contract.

A model directory holds one Paddle inference model in either format:

* legacy:  ``inference.pdmodel`` + ``inference.pdiparams`` (ProgramDesc protobuf)
* PIR:     ``inference.json``    + ``inference.pdiparams`` (Paddle 3 ``paddle.jit.save`` default)

(any single ``*.pdmodel`` / ``*.json`` + matching ``*.pdiparams`` prefix is accepted too), plus an
optional ``model.yaml``::

    name: ocr-rec            # served model name (default: the directory name)
    version: "4"             # default: the versions/<v> directory name, else "1"
    max_batch_size: 8        # caps the runtime's batch size; 0 = no batch dimension, never batched
    inputs:                  # default: read from the model program itself
      - name: x
        datatype: FP32       # OIP datatype (or numpy name: float32)
        shape: [-1, 3, 48, -1]        # batch dimension first, -1 = any (default: the program's)
        warmup_shapes:                # shapes the warm-up runs at batch 1, the first also at every
          - [1, 3, 48, 320]           # batch size the batcher uses (default: -1 -> 1 / 64);
          - [1, 3, 48, 640]           # ``warmup_shape: [..]`` is the one-shape form; the setting wins.
    outputs:
      - {name: softmax_11.tmp_0, datatype: FP32, shape: [-1, -1, 6625]}

``fetch`` writes ``DEST/versions/<version>/...`` and an atomically switched ``DEST/current``
symlink; :func:`resolve_model_dir` follows ``current`` when it is there, so ``serve --model-dir DEST``
works for both a fetched tree and a plain model directory.

This module is pure: it reads files and never imports paddle's inference engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .errors import ModelLoadError
from .store import CURRENT, resolve_current

MODEL_YAML = "model.yaml"

# OIP v2 datatype <-> numpy dtype.  BYTES is not supported: Paddle inference takes numeric tensors.
OIP_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),  # variable-length byte strings (a pipeline's encoded images and texts)
}
NUMPY_TO_OIP: dict[np.dtype, str] = {v: k for k, v in OIP_TO_NUMPY.items()}

# Names seen in PIR json ("f32"), ProgramDesc ("FP32") and numpy ("float32").
_ALIASES = {
    "bool": "BOOL", "b": "BOOL", "uint8": "UINT8", "ui8": "UINT8", "u8": "UINT8", "int8": "INT8", "i8": "INT8",
    "int16": "INT16", "i16": "INT16", "int32": "INT32", "i32": "INT32", "int64": "INT64", "i64": "INT64",
    "float16": "FP16", "f16": "FP16", "fp16": "FP16", "float32": "FP32", "f32": "FP32", "fp32": "FP32",
    "float64": "FP64", "f64": "FP64", "fp64": "FP64",
}


def to_oip_datatype(name: str) -> str:
    """Normalise a dtype spelling (OIP, numpy, Paddle) to the OIP datatype name."""
    up = str(name).upper()
    if up in OIP_TO_NUMPY:
        return up
    key = str(name).lower()
    if key in _ALIASES:
        return _ALIASES[key]
    raise ModelLoadError(f"unsupported tensor datatype {name!r}")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: OIP datatype and shape with the batch dimension first (-1 = any)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    warmup_shapes: tuple[tuple[int, ...], ...] = ()

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype of :attr:`datatype`."""
        return OIP_TO_NUMPY[self.datatype]

    def metadata(self) -> dict[str, Any]:
        """The OIP model-metadata form."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def example_shape(self, batch: int = 1, which: int = 0) -> tuple[int, ...]:
        """A concrete shape for warm-up: the ``which``-th of :attr:`warmup_shapes` (the last one when
        there are fewer) with batch dim = ``batch``; without any, unknown dims = 64."""
        if self.warmup_shapes:
            ws = self.warmup_shapes[min(which, len(self.warmup_shapes) - 1)]
            return (batch, *ws[1:]) if self.shape and self.shape[0] == -1 else ws
        if not self.shape:
            return ()
        first = batch if self.shape[0] == -1 else self.shape[0]
        return (first, *(64 if d < 0 else d for d in self.shape[1:]))


@dataclass(frozen=True)
class ModelFiles:
    """A resolved model directory: the files to load and what model.yaml says about them."""

    root: Path
    """The directory given by the user (holds ``current`` when fetched)."""
    path: Path
    """The directory actually holding the model files (``current`` resolved)."""
    model_file: Path
    params_file: Path
    format: str
    """``pir`` or ``legacy``."""
    name: str
    version: str
    max_batch_size: int | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_model_dir(model_dir: str | Path) -> Path:
    """Follow ``DIR/current`` when present; return the directory that holds the model files."""
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelLoadError(f"model directory {root} does not exist")
    path = resolve_current(root)
    if not path.is_dir():
        raise ModelLoadError(f"{root / CURRENT} points to {path}, which is not a directory")
    return path


def _find_model_files(path: Path) -> tuple[Path, Path, str]:
    for stem in ("inference", "model", "__model__"):
        params = path / f"{stem}.pdiparams"
        if (path / f"{stem}.json").is_file() and params.is_file():
            return path / f"{stem}.json", params, "pir"
        if (path / f"{stem}.pdmodel").is_file() and params.is_file():
            return path / f"{stem}.pdmodel", params, "legacy"
    # Any other single prefix (e.g. exported as resnet50.json / resnet50.pdiparams).
    for params in sorted(path.glob("*.pdiparams")):
        stem = params.name[: -len(".pdiparams")]
        if (path / f"{stem}.json").is_file():
            return path / f"{stem}.json", params, "pir"
        if (path / f"{stem}.pdmodel").is_file():
            return path / f"{stem}.pdmodel", params, "legacy"
    raise ModelLoadError(
        f"{path} holds no Paddle inference model: expected inference.pdmodel or inference.json "
        "next to inference.pdiparams"
    )


def _specs(items: Any, where: str) -> tuple[TensorSpec, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ModelLoadError(f"{where} must be a list")
    out = []
    for i, it in enumerate(items):
        if not isinstance(it, dict) or "name" not in it:
            raise ModelLoadError(f"{where}[{i}] needs a name")
        dt = it.get("datatype") or it.get("dtype") or "FP32"
        shape = tuple(int(d) for d in it.get("shape", ()))
        shapes = it.get("warmup_shapes") or ([it["warmup_shape"]] if it.get("warmup_shape") else [])
        try:
            warm = tuple(tuple(int(d) for d in ws) for ws in shapes)
        except (TypeError, ValueError) as e:
            raise ModelLoadError(f"{where}[{i}].warmup_shapes must be a list of shapes (lists of integers)") from e
        out.append(TensorSpec(str(it["name"]), to_oip_datatype(dt), shape, warm))
    return tuple(out)


def with_warmup_shapes(spec: TensorSpec, shapes: list[list[int]] | tuple[tuple[int, ...], ...],
                       where: str) -> TensorSpec:
    """``spec`` with these warm-up shapes, each checked against its shape; raises :class:`ModelLoadError`."""
    out = []
    for ws in shapes:
        shape = tuple(int(d) for d in ws)
        bad = len(shape) != len(spec.shape) if spec.shape else False
        bad = bad or any(d <= 0 for d in shape) or any(
            want >= 0 and got != want for i, (got, want) in enumerate(zip(shape, spec.shape, strict=False)) if i > 0)
        if bad:
            raise ModelLoadError(f"{where}: warm-up shape {list(shape)} of input '{spec.name}' does not fit "
                                 f"its shape {list(spec.shape)} (-1 = any)")
        out.append(shape)
    return TensorSpec(spec.name, spec.datatype, spec.shape, tuple(out))


def warmup_examples(specs: tuple[TensorSpec, ...], batch: int) -> list[dict[str, np.ndarray]]:
    """One input set per warm-up shape (the most any input declares; at least one), ``batch`` rows each.

    Float inputs get values in [0, 1), others zeros: warm-up is about shapes, not answers.
    """
    n = max([len(s.warmup_shapes) for s in specs] + [1])
    rng = np.random.default_rng(0)
    out = []
    for which in range(n):
        example = {}
        for s in specs:
            shape = s.example_shape(batch, which)
            if s.dtype.kind == "f":
                example[s.name] = rng.random(shape, dtype=np.float32).astype(s.dtype)
            else:
                example[s.name] = np.zeros(shape, dtype=s.dtype)
        out.append(example)
    return out


def load_model_files(model_dir: str | Path, name: str = "") -> ModelFiles:
    """Resolve and validate a model directory, reading ``model.yaml`` when present."""
    root = Path(model_dir)
    path = resolve_model_dir(root)
    model_file, params_file, fmt = _find_model_files(path)
    meta: dict[str, Any] = {}
    yml = path / MODEL_YAML
    if yml.is_file():
        try:
            meta = yaml.safe_load(yml.read_text()) or {}
        except yaml.YAMLError as e:
            raise ModelLoadError(f"{yml} is not valid YAML: {e}") from e
        if not isinstance(meta, dict):
            raise ModelLoadError(f"{yml} must be a mapping")
    if meta.get("version") is not None:
        version = str(meta["version"])
    elif path.parent.name == "versions":
        version = path.name
    else:
        version = "1"
    served_name = name or str(meta.get("name") or root.resolve().name)
    mbs = meta.get("max_batch_size")
    return ModelFiles(
        root=root,
        path=path,
        model_file=model_file,
        params_file=params_file,
        format=fmt,
        name=served_name,
        version=version,
        max_batch_size=int(mbs) if mbs is not None else None,
        inputs=_specs(meta.get("inputs"), f"{yml}: inputs"),
        outputs=_specs(meta.get("outputs"), f"{yml}: outputs"),
        extra={k: v for k, v in meta.items() if k not in {"name", "version", "max_batch_size", "inputs", "outputs"}},
    )


# ---- reading input/output specs from the program itself ---------------------------------------------


def read_program_io(files: ModelFiles) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Feed and fetch tensors declared in the model program (names, datatypes, shapes).

    Paddle's Python inference API exposes names and input dtypes but not shapes, so the program file
    is read directly: the PIR json's ``data``/``fetch`` ops, or the ProgramDesc's feed/fetch ops.
    """
    if files.format == "pir":
        return _pir_io(files.model_file)
    return _legacy_io(files.model_file)


def _pir_io(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    try:
        prog = json.loads(path.read_bytes())
        ops = prog["program"]["regions"][0]["blocks"][0]["ops"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ModelLoadError(f"{path} is not a PIR program json: {e}") from e
    inputs: list[TensorSpec] = []
    outputs: list[tuple[int, TensorSpec]] = []
    for op in ops:
        kind = str(op.get("#", ""))
        if kind.endswith(".data"):
            attrs = {a.get("N"): a.get("AT", {}).get("D") for a in op.get("A", []) if isinstance(a, dict)}
            inputs.append(TensorSpec(str(attrs["name"]), to_oip_datatype(attrs.get("dtype", "float32")),
                                     tuple(int(d) for d in attrs.get("shape") or ())))
        elif kind.endswith(".fetch"):
            attrs = {a.get("N"): a.get("AT", {}).get("D") for a in op.get("A", []) if isinstance(a, dict)}
            tt = (op.get("O") or [{}])[0].get("TT", {}).get("D", [])
            dt = tt[0].get("#", "0.t_f32").split("t_")[-1] if tt else "f32"
            shape = tuple(int(d) for d in tt[1]) if len(tt) > 1 else ()
            outputs.append((int(attrs.get("col", len(outputs))), TensorSpec(str(attrs["name"]), to_oip_datatype(dt), shape)))
    outputs.sort(key=lambda t: t[0])
    return tuple(inputs), tuple(s for _, s in outputs)


def _legacy_io(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    from paddle.base.proto import framework_pb2 as pb  # protobuf classes only; no engine needed

    framework_pb2: Any = pb  # generated protobuf module: no static attributes for mypy
    prog = framework_pb2.ProgramDesc()
    try:
        prog.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf raises its own DecodeError
        raise ModelLoadError(f"{path} is not a Paddle ProgramDesc: {e}") from e
    block = prog.blocks[0]
    var = {v.name: v for v in block.vars}

    def spec(name: str) -> TensorSpec:
        t = var[name].type
        tensor = t.dense_tensor.tensor if t.HasField("dense_tensor") else t.lod_tensor.tensor
        dt = framework_pb2.VarType.Type.Name(tensor.data_type)
        return TensorSpec(name, to_oip_datatype(dt), tuple(int(d) for d in tensor.dims))

    feeds, fetches = [], []
    for op in block.ops:
        col = next((a.i for a in op.attrs if a.name == "col"), 0)
        if op.type == "feed":
            feeds.append((col, spec(op.outputs[0].arguments[0])))
        elif op.type == "fetch":
            fetches.append((col, spec(op.inputs[0].arguments[0])))
    feeds.sort(key=lambda t: t[0])
    fetches.sort(key=lambda t: t[0])
    return tuple(s for _, s in feeds), tuple(s for _, s in fetches)
