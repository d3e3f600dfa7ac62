"""The runtime's seams in code: the :class:`Engine` protocol, the :class:`ModelHandle` protocol,
what a request carries (:class:`Inputs`, validated once) and what it returns (:class:`InferResult`).

Layering (checked by import-linter, ``.importlinter``): this module sits low, next to
``model_dir``/``errors``; the engine implements :class:`Engine`, the batcher and the fallback router
implement :class:`ModelHandle`, and the HTTP app talks to nothing else.  Like MLServer's ``MLModel``:
``load()``, ``predict()``, ``unload()`` and a ``ready`` flag, plus the metadata the server shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from .errors import InvalidInput
from .model_dir import NUMPY_TO_OIP, TensorSpec


class Engine(Protocol):
    """One loaded model: what the batcher runs, what reload swaps, what metrics describe.

    ``predict`` is thread-safe (it blocks for a free predictor) and takes inputs already validated
    against :attr:`inputs`; a failure inside Paddle raises :class:`~.errors.EngineError`.
    """

    @property
    def name(self) -> str:
        """Served model name."""
        ...

    @property
    def version(self) -> str:
        """Model version (model.yaml, the ``versions/<v>`` directory, else ``"1"``)."""
        ...

    @property
    def role(self) -> str:
        """``main``, ``fallback`` or ``probe``."""
        ...

    @property
    def device(self) -> str:
        """``cpu`` or ``<device>:<id>``."""
        ...

    @property
    def source(self) -> Path:
        """The directory the model files were loaded from (``current`` resolved)."""
        ...

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Input tensors (batch dimension first); final once :meth:`load` returned."""
        ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """Output tensors; final once :meth:`load` returned."""
        ...

    @property
    def ready(self) -> bool:
        """True between a finished :meth:`load` and :meth:`unload`."""
        ...

    @property
    def batchable(self) -> bool:
        """Whether rows of several requests may be stacked into one run."""
        ...

    @property
    def max_batch_size(self) -> int:
        """Rows the engine was warmed up for (settings capped by the model's own limit)."""
        ...

    @property
    def max_rows(self) -> int | None:
        """Most rows one run may hold: model.yaml ``max_batch_size`` (None = no limit)."""
        ...

    @property
    def workers(self) -> int:
        """Predictors in the pool: how many runs may go at once."""
        ...

    @property
    def load_seconds(self) -> float:
        """Time to create the predictors."""
        ...

    @property
    def warmup_seconds(self) -> float:
        """Time of the warm-up runs."""
        ...

    def load(self) -> None:
        """Create the predictors and warm up; raises :class:`~.errors.ModelLoadError`."""
        ...

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one (possibly batched) inference."""
        ...

    def wait_idle(self, timeout: float) -> bool:
        """Block until no ``predict`` runs; False when ``timeout`` passed first."""
        ...

    def unload(self, timeout: float = 30.0) -> None:
        """Stop taking work, wait (bounded) for running predicts, release the predictors."""
        ...


@dataclass(frozen=True)
class Inputs:
    """A request's tensors after :func:`validate_inputs`: the only form a handle accepts.

    ``rows`` is the batch dimension shared by every input (0 for a model without one).  Built once
    per request by the HTTP app, so the batcher and the fallback router never check again.
    """

    arrays: dict[str, np.ndarray]
    rows: int


class InferResult(NamedTuple):
    """What ``ModelHandle.infer`` returns: outputs plus which model version/role produced them.

    ``details`` is what a handle adds beyond the tensors (a pipeline: its per-image results with
    timings and the role of each stage), for routes of its own; the OIP codec ignores it.
    """

    outputs: dict[str, np.ndarray]
    model_version: str
    role: str
    details: Any = None


@runtime_checkable
class ModelHandle(Protocol):
    """The only model interface the HTTP app uses (a batcher, or the fallback router over two)."""

    @property
    def name(self) -> str:
        """Served model name."""
        ...

    @property
    def version(self) -> str:
        """Version now served."""
        ...

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Input tensors; requests are validated against these."""
        ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """Output tensors."""
        ...

    @property
    def max_rows(self) -> int | None:
        """Most rows one request may carry (None = no limit)."""
        ...

    @property
    def ready(self) -> bool:
        """Whether requests can be answered now."""
        ...

    @property
    def platform(self) -> str:
        """OIP model-metadata ``platform``."""
        ...

    def live(self) -> tuple[bool, str]:
        """(alive, reason): False when the engine is wedged."""
        ...

    async def infer(self, inputs: Inputs) -> InferResult:
        """Run one validated request; raises typed errors (errors.py)."""
        ...

    async def drain(self, timeout: float) -> bool:
        """Refuse new work, finish queued and running requests; False if ``timeout`` hit first."""
        ...


def validate_inputs(specs: tuple[TensorSpec, ...], arrays: Mapping[str, np.ndarray],
                    max_rows: int | None = None) -> Inputs:
    """Check names, dtypes and shapes against the model, once per request.

    Raises :class:`~.errors.InvalidInput` naming the offending input.
    """
    known = {s.name: s for s in specs}
    for n in arrays:
        if n not in known:
            raise InvalidInput(f"unknown input '{n}'; the model's inputs are {sorted(known)}")
    missing = [n for n in known if n not in arrays]
    if missing:
        raise InvalidInput(f"missing input(s) {missing}")
    rows: int | None = None
    for s in specs:
        a = arrays[s.name]
        if a.dtype != s.dtype:
            got = NUMPY_TO_OIP.get(a.dtype, a.dtype.name)
            raise InvalidInput(f"input '{s.name}' has datatype {got}, the model expects {s.datatype}")
        if a.size == 0:
            raise InvalidInput(f"input '{s.name}' is empty (shape {list(a.shape)})")
        if s.shape:
            if a.ndim != len(s.shape):
                raise InvalidInput(f"input '{s.name}' has shape {list(a.shape)}; the model expects rank "
                                   f"{len(s.shape)} {list(s.shape)}")
            for i, (got_d, want) in enumerate(zip(a.shape, s.shape, strict=True)):
                if want >= 0 and got_d != want:
                    raise InvalidInput(f"input '{s.name}' has shape {list(a.shape)}; dimension {i} must be {want} "
                                       f"(model shape {list(s.shape)})")
        if a.ndim:
            if rows is None:
                rows = a.shape[0]
            elif a.shape[0] != rows:
                raise InvalidInput(f"inputs disagree on the batch dimension ({rows} vs {a.shape[0]} for '{s.name}')")
    if max_rows is not None and rows is not None and rows > max_rows:
        raise InvalidInput(f"batch of {rows} rows is over the model's max_batch_size {max_rows}")
    return Inputs(dict(arrays), rows or 0)


def _contract(specs: tuple[TensorSpec, ...]) -> dict[str, tuple[str, tuple[int, ...]]]:
    # Batch dimension excluded: it is the one dimension allowed to differ.
    return {s.name: (s.datatype, tuple(s.shape[1:])) for s in specs}


def contract_difference(
    old_in: tuple[TensorSpec, ...],
    new_in: tuple[TensorSpec, ...],
    old_out: tuple[TensorSpec, ...] | None = None,
    new_out: tuple[TensorSpec, ...] | None = None,
) -> str | None:
    """A sentence saying how two models' I/O contracts differ, or None when they match."""
    pairs = [("inputs", old_in, new_in)]
    if old_out is not None and new_out is not None:
        pairs.append(("outputs", old_out, new_out))
    for what, a, b in pairs:
        ca, cb = _contract(a), _contract(b)
        if ca != cb:
            diff = sorted(set(ca.items()) ^ set(cb.items()))
            return f"{what} differ: served {sorted(ca.items())}, candidate {sorted(cb.items())} (changed: {diff[:4]})"
    return None
