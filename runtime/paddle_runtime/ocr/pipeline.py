"""The PP-OCR pipeline: det -> cls -> rec in process, each stage a model unit of its own.

One request is decoded and pre-processed in a thread pool (OpenCV releases the GIL), then awaits
the stages in order.  Each stage is a :class:`~paddle_runtime.unit.ModelUnit` like a single served
model (a batcher over a Paddle engine, hot reload, and a fallback router when the stage has a
fallback model), so concurrent requests share batches and a stage can fall back or be reloaded on
its own:

* det: one image per request (images of the same fitted size stack);
* cls: every crop is 3x48x192, so crops of all concurrent requests stack up to ``max_batch_size``;
* rec: by default crops go in PaddleOCR's groups (up to 6 crops of one image, padded to the
  group's widest: answers identical to PaddleOCR); with ``ocr_rec_width_step`` > 0 they are padded
  to width buckets instead, so same-bucket crops of one image and of concurrent requests stack.

:class:`PipelineHandle` is the :class:`~paddle_runtime.contracts.ModelHandle` the server sees
(readiness, liveness, drain, metadata; ``infer`` takes a BYTES ``image`` input of encoded images and
answers ``texts``, ``scores``, ``boxes``, ``image_index``), so the app's OIP v2 route serves it like
any model.  Every answer names the version and role (main or fallback) each stage answered with;
the pipeline's role is ``fallback`` when any stage's was.  Stage timings go to
``paddle_runtime_ocr_stage_duration_seconds{stage}``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from .. import metrics
from ..contracts import InferResult, Inputs
from ..errors import BadRequest, Unavailable
from ..model_dir import TensorSpec
from ..settings import RuntimeSettings
from ..unit import ModelUnit
from . import image, processing

T = TypeVar("T")
STAGES = ("det", "cls", "rec")


@dataclass
class TextLine:
    """One recognised line: text, mean character probability, box in image pixels (4 x [x, y])."""

    text: str
    score: float
    box: list[list[float]]


@dataclass
class OcrResult:
    """All lines of one image, in reading order, where the time went (milliseconds), and which model
    version and role (main or fallback) answered in each stage."""

    lines: list[TextLine]
    timings_ms: dict[str, float] = field(default_factory=dict)
    width: int = 0
    height: int = 0
    stages: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def role(self) -> str:
        """``fallback`` when any stage answered from its fallback model, else ``main``."""
        return "fallback" if any(s["role"] != "main" for s in self.stages.values()) else "main"

    def to_json(self) -> dict[str, Any]:
        """The body of ``POST /ocr``."""
        return {"results": [{"text": t.text, "score": round(t.score, 5), "box": t.box} for t in self.lines],
                "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
                "width": self.width, "height": self.height, "stages": self.stages}


def _served(results: list[InferResult]) -> dict[str, str]:
    """Version and role of a stage's answers for one image (fallback when any part came from it)."""
    role = "fallback" if any(r.role != "main" for r in results) else "main"
    versions = sorted({r.model_version for r in results})
    return {"version": "+".join(versions), "role": role}


class OcrPipeline:
    """Chains the stage units (det, optional cls, rec) with the PP-OCR processing between them."""

    def __init__(self, settings: RuntimeSettings, stages: dict[str, ModelUnit], characters: list[str]) -> None:
        self.s = settings
        self.units = stages
        self.det, self.cls, self.rec = stages["det"], stages.get("cls"), stages["rec"]
        self.characters = characters
        self._pool = ThreadPoolExecutor(max_workers=max(2, settings.ocr_image_threads),
                                        thread_name_prefix="ocr-image")
        self._stage_hist = {st: metrics.OCR_STAGE_DURATION.labels(st)
                            for st in ("queue", "decode", "det_pre", "det", "det_post", "cls", "rec", "total")}
        self._lines_hist = metrics.OCR_LINES
        self._inflight = 0
        self._closed = False
        # Images admitted into the stages at once; the others wait in arrival order. Without it every
        # request advances a little at a time and all of them finish late together (processor sharing).
        self._admit = asyncio.Semaphore(settings.ocr_max_inflight_images)

    async def _thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _stage(self, unit: ModelUnit, x: np.ndarray, answers: list[InferResult]) -> np.ndarray:
        """Run rows of ``x`` through a stage in chunks of at most its batcher's ``max_batch_size`` rows.

        The stage's handle is its fallback router when it has one: a failing or slow stage model is
        answered by its fallback, which :attr:`InferResult.role` records (appended to ``answers``).
        """
        h = unit.handle
        limit = max(1, unit.main.max_batch_size or 1)
        name = h.inputs[0].name
        chunks = [x[i:i + limit] for i in range(0, len(x), limit)]
        results: list[InferResult] = await asyncio.gather(*(h.infer(Inputs({name: c}, len(c))) for c in chunks))
        answers.extend(results)
        out = h.outputs[0].name
        return np.concatenate([r.outputs[out] for r in results]) if len(results) > 1 else results[0].outputs[out]

    # ---- CPU work (threads) -----------------------------------------------------------------------
    def _decode_and_fit(self, data: bytes | bytearray) -> tuple[np.ndarray, processing.Fitted, np.ndarray | None, float]:
        t0 = time.perf_counter()
        img = image.decode(data, max_bytes=self.s.ocr_max_image_bytes, max_pixels=self.s.ocr_max_image_pixels)
        t1 = time.perf_counter()
        try:
            fitted = processing.fit_image(img, max_side=self.s.ocr_max_side_len)
        except ValueError:
            h, w = img.shape[:2]
            raise BadRequest(f"image of {w}x{h} pixels is too narrow to read: the short side would shrink to "
                             f"nothing when the long side is fitted to {self.s.ocr_max_side_len}") from None
        x = processing.det_input(fitted.image, limit_side_len=self.s.ocr_det_limit_side_len,
                                 limit_type=self.s.ocr_det_limit_type)
        return img, fitted, x, (t1 - t0)

    def _boxes_and_crops(self, pred: np.ndarray, fitted: processing.Fitted
                         ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray | None]:
        h, w = fitted.image.shape[:2]
        boxes = processing.db_boxes(pred, h, w, thresh=self.s.ocr_det_thresh, box_thresh=self.s.ocr_det_box_thresh,
                                    unclip_ratio=self.s.ocr_det_unclip_ratio)
        boxes = processing.sort_boxes(processing.clean_boxes(boxes, h, w))
        crops = [processing.crop(fitted.image, b) for b in boxes]
        x = np.stack([processing.cls_input(c) for c in crops]) if crops and self.cls is not None else None
        return boxes, crops, x

    def _rotate(self, crops: list[np.ndarray], probs: np.ndarray) -> list[np.ndarray]:
        import cv2

        out = []
        for c, p in zip(crops, probs, strict=True):
            label = int(np.argmax(p))
            out.append(cv2.rotate(c, cv2.ROTATE_180) if label == 1 and p[label] > self.s.ocr_cls_thresh else c)
        return out

    def _rec_groups(self, crops: list[np.ndarray]) -> list[tuple[list[int], np.ndarray]]:
        plan = processing.rec_plan(crops, step=self.s.ocr_rec_width_step)
        return [(idx, np.stack([processing.rec_input(crops[i], rw, width) for i, rw in zip(idx, rws, strict=True)]))
                for idx, rws, width in plan]

    # ---- one request ------------------------------------------------------------------------------
    async def run(self, data: bytes | bytearray) -> OcrResult:
        """OCR of one encoded image; raises typed errors (a bad image is a 4xx)."""
        if self._closed:
            raise Unavailable("the runtime is shutting down")
        self._inflight += 1
        try:
            t0 = time.perf_counter()
            async with self._admit:
                waited = time.perf_counter() - t0
                result = await self._run(data)
            result.timings_ms["queue"] = waited * 1000
            result.timings_ms["total"] += waited * 1000
            self._stage_hist["queue"].observe(waited)
            self._stage_hist["total"].observe(result.timings_ms["total"] / 1000)
            return result
        finally:
            self._inflight -= 1

    async def drain(self, timeout: float) -> bool:
        """Refuse new images, let admitted ones pass all stages, then drain the stages."""
        self._closed = True
        deadline = time.monotonic() + timeout
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        left = max(0.0, deadline - time.monotonic())
        results = await asyncio.gather(*(u.handle.drain(left) for u in self.units.values()))
        self._pool.shutdown(wait=False)
        return not self._inflight and all(results)

    async def _run(self, data: bytes | bytearray) -> OcrResult:
        t = {}
        answers: dict[str, list[InferResult]] = {st: [] for st in self.units}
        t0 = time.perf_counter()
        img, fitted, x, decode_s = await self._thread(self._decode_and_fit, image.unwrap_base64(data))
        raw_h, raw_w = img.shape[:2]
        t["decode"] = decode_s
        t1 = time.perf_counter()
        t["det_pre"] = t1 - t0 - decode_s
        lines: list[TextLine] = []
        if x is not None:
            pred = await self._stage(self.det, x, answers["det"])
            t2 = time.perf_counter()
            t["det"] = t2 - t1
            boxes, crops, cls_x = await self._thread(self._boxes_and_crops, pred, fitted)
            t3 = time.perf_counter()
            t["det_post"] = t3 - t2
            if crops:
                if self.cls is not None and cls_x is not None:
                    probs = await self._stage(self.cls, cls_x, answers["cls"])
                    crops = await self._thread(self._rotate, crops, probs)
                t4 = time.perf_counter()
                t["cls"] = t4 - t3
                groups = await self._thread(self._rec_groups, crops)
                outs = await asyncio.gather(*(self._stage(self.rec, gx, answers["rec"]) for _, gx in groups))
                decoded: dict[int, tuple[str, float]] = {}
                for (idx, _), probs in zip(groups, outs, strict=True):
                    for i, r in zip(idx, processing.ctc_decode(probs, self.characters), strict=True):
                        decoded[i] = r
                t["rec"] = time.perf_counter() - t4
                for i, b in enumerate(boxes):
                    text, score = decoded[i]
                    if score >= self.s.ocr_text_score:
                        box = processing.to_original(b, fitted, raw_h, raw_w)
                        lines.append(TextLine(text, score, box.tolist()))
        t["total"] = time.perf_counter() - t0
        for k, v in t.items():
            if k != "total":
                self._stage_hist[k].observe(v)
        self._lines_hist.observe(len(lines))
        stages = {st: _served(a) for st, a in answers.items() if a}
        return OcrResult(lines, {k: v * 1000 for k, v in t.items()}, raw_w, raw_h, stages)


class PipelineHandle:
    """The :class:`~paddle_runtime.contracts.ModelHandle` of a served pipeline (what /v2 and probes see)."""

    platform = "paddle_runtime_pipeline"
    inputs = (TensorSpec("image", "BYTES", (-1,)),)
    outputs = (TensorSpec("texts", "BYTES", (-1,)), TensorSpec("scores", "FP32", (-1,)),
               TensorSpec("boxes", "FP32", (-1, 4, 2)), TensorSpec("image_index", "INT32", (-1,)))
    max_rows = None

    def __init__(self, name: str, pipeline: OcrPipeline) -> None:
        self._name = name
        self.pipeline = pipeline

    @property
    def name(self) -> str:
        """The served name (``/v2/models/{name}``)."""
        return self._name

    @property
    def version(self) -> str:
        """The main stage versions together, e.g. ``det1-cls1-rec1``."""
        return "-".join(f"{st}{u.handle.version}" for st, u in self.pipeline.units.items())

    @property
    def ready(self) -> bool:
        """Every stage can answer (a stage with a fallback: either of its models)."""
        return all(u.handle.ready for u in self.pipeline.units.values())

    def live(self) -> tuple[bool, str]:
        """Not live when any stage is wedged."""
        for st, u in self.pipeline.units.items():
            ok, reason = u.handle.live()
            if not ok:
                return False, f"stage {st} ({u.handle.name}): {reason}"
        return True, "ok"

    async def infer(self, inputs: Inputs) -> InferResult:
        """OCR of each encoded image of the BYTES input ``image``; one output row per text line."""
        images = [bytes(b) for b in inputs.arrays["image"].reshape(-1)]
        results = await asyncio.gather(*(self.pipeline.run(img) for img in images))
        return self.result(list(results))

    def result(self, results: list[OcrResult]) -> InferResult:
        """The tensors of one or more images' results, with the versions and role that answered.

        ``details`` keeps the :class:`OcrResult` objects (timings, stages) for the ``/ocr`` route.
        """
        lines = [(k, line) for k, r in enumerate(results) for line in r.lines]
        outputs = {
            "texts": np.array([line.text for _, line in lines], dtype=object),
            "scores": np.array([line.score for _, line in lines], dtype=np.float32),
            "boxes": np.array([line.box for _, line in lines], dtype=np.float32).reshape(-1, 4, 2),
            "image_index": np.array([k for k, _ in lines], dtype=np.int32),
        }
        role = "fallback" if any(r.role != "main" for r in results) else "main"
        served: dict[str, set[str]] = {}
        for r in results:
            for st, info in r.stages.items():
                served.setdefault(st, set()).add(info["version"])
        version = "-".join(f"{st}{'+'.join(sorted(v))}" for st, v in served.items()) or self.version
        return InferResult(outputs, version, role, results)

    async def drain(self, timeout: float) -> bool:
        """Finish admitted images, then drain the stages."""
        return await self.pipeline.drain(timeout)
