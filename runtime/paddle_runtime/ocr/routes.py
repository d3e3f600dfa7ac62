"""HTTP routes of a served OCR pipeline beyond the OIP ones, added through ``App.add_route``.

``POST /ocr``, ``POST /predict`` and ``POST /v2/models/{name}/ocr``
    Body: the raw PNG or JPEG bytes.  Answer: ``{"results": [{"text", "score", "box": [[x, y] x 4]}],
    "timings_ms": {...}, "width", "height", "stages": {stage: {"version", "role"}}}``, lines in
    reading order, boxes in image pixels; ``stages`` says which model answered in each stage (``role``
    ``fallback`` when a stage's fallback model did).

``POST /v2/models/{name}/infer`` is the app's own OIP v2 route: the pipeline handle takes a BYTES
input ``image`` (encoded images: binary tensor data, or base64 strings in JSON) and answers
``texts``, ``scores``, ``boxes``, ``image_index``.  Both go through the app's request accounting
(``InferenceApp.accounted``) and its one check of inputs against the handle, so requests are counted
and timed under the pipeline's name like a single model's, and bad images are 4xx errors raised by
``image.decode``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np
import orjson

from ..app import InferenceApp
from ..codec import MODEL_ROLE_HEADER, MODEL_VERSION_HEADER
from ..contracts import InferResult
from ..errors import Unavailable
from ..transport import JSON, Request, Response
from .pipeline import PipelineHandle

Run = Callable[[dict[str, np.ndarray]], Awaitable[InferResult]]


class OcrRoutes:
    """The pipeline's image routes; ``handle`` is None while the stage models load (answers 503)."""

    def __init__(self, app: InferenceApp, name: str) -> None:
        self.app = app
        self.name = name
        self.handle: PipelineHandle | None = None
        for path in ("/ocr", "/predict", f"/v2/models/{name}/ocr"):
            app.add_route("POST", path, self.ocr)

    async def ocr(self, req: Request) -> Response:
        """Raw image bytes in, JSON lines out."""
        h = self.handle
        if h is None:
            raise Unavailable(f"pipeline {self.name} is loading")

        async def work(run: Run) -> Response:
            image = np.empty(1, dtype=object)
            image[0] = req.body
            result = await run({"image": image})
            body = result.details[0].to_json()
            return Response(200, orjson.dumps(body), JSON,
                            {MODEL_ROLE_HEADER: result.role, MODEL_VERSION_HEADER: result.model_version})

        return await self.app.accounted(h, work)
