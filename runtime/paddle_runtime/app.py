"""The HTTP applications: routing, the one error mapping, and the inference routes.

Routes of the inference port (:class:`InferenceApp`)::

    GET  /v2/health/live  /v2/health/ready  /v2  /v2/models/{m}[/versions/{v}]  .../ready
    POST /v2/models/{m}[/versions/{v}]/infer      JSON tensors or binary (Inference-Header-Content-Length)
    GET  /health  /version  /metrics             POST /predict  {"inputs": {name: nested list}}

The app only talks to a :class:`~.contracts.ModelHandle` (``handle``, ``None`` while the model
loads), never to Paddle.  Each request's tensors are decoded by the codec and validated against the
model once (:func:`~.contracts.validate_inputs`) before the handle sees them.  Every typed error
(errors.py) becomes its status and ``{"error": "..."}`` in :meth:`App.dispatch`
(:func:`~.transport.error_response`), the one place errors are mapped; anything else is logged and
answered 500.  The admin port (``admin.py``) is another :class:`App` on the same transport.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from . import __version__, metrics
from .codec import (
    decode_infer_request,
    decode_predict_request,
    encode_infer_response,
    encode_predict_response,
)
from .contracts import InferResult, ModelHandle, validate_inputs
from .errors import MethodNotAllowed, NotFound, RuntimeError_, Unavailable
from .settings import RuntimeSettings
from .transport import Request, Response, error_response, json_response

log = logging.getLogger("paddle_runtime.app")

Handler = Callable[[Request], Awaitable[Response]]
Hook = Callable[[Request], Awaitable[None]]


class App:
    """Exact-path routes, ``before_request`` hooks, and the one place typed errors become answers.

    Both ports use it: :class:`InferenceApp` (inference, health, metrics) and the admin app
    (``admin.py``).  A hook ``async hook(request)`` raises a typed error to refuse a request.
    """

    def __init__(self) -> None:
        self.before_request: list[Hook] = []
        self._routes: dict[tuple[str, str], Handler] = {}

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Serve ``method path`` (exact match) with ``async handler(request) -> Response``."""
        self._routes[(method, path)] = handler

    async def dispatch(self, req: Request) -> Response:
        """Answer one request; typed errors map to their status and ``{"error": ...}``, nothing raises."""
        try:
            for hook in self.before_request:
                await hook(req)
            h = self._routes.get((req.method, req.path))
            if h is not None:
                return await h(req)
            return await self.unrouted(req)
        except RuntimeError_ as e:
            return error_response(e)
        except Exception as e:  # a bug or an engine fault we did not type: never crash the server
            log.exception("unhandled error on %s %s", req.method, req.path)
            return error_response(RuntimeError_(f"internal error: {type(e).__name__}: {e}"))

    async def unrouted(self, req: Request) -> Response:
        """No exact route matched: 405 when the path exists for another method, else 404."""
        if any(p == req.path for _, p in self._routes):
            raise MethodNotAllowed(f"{req.method} is not allowed on {req.path}")
        raise NotFound(f"no route {req.method} {req.path}")


class InferenceApp(App):
    """The inference port: OIP v2, the simple routes, health and metrics over one :class:`ModelHandle`.

    ``handle`` is None while the model loads; the wiring hands the loaded one over with
    :meth:`attach`, together with ``version_info()``, the extra keys of ``/version``.
    """

    def __init__(self, settings: RuntimeSettings) -> None:
        super().__init__()
        self.settings = settings
        self.handle: ModelHandle | None = None
        self.shutting_down = False
        # SIGTERM seen: readiness says 503 so endpoints drop the pod; inference is still served.
        self.draining = False
        self.load_error: str | None = None
        self.version_info: Callable[[], dict[str, Any]] = dict
        self._inflight_gauges: dict[str, Any] = {}
        for method, path, h in (
            ("GET", "/v2/health/live", self.live),
            ("GET", "/v2/health/ready", self.ready_route),
            ("GET", "/v2", self.server_metadata),
            ("GET", "/health", self.health),
            ("GET", "/version", self.version),
            ("GET", "/metrics", self.metrics),
            ("POST", "/predict", self.predict),
        ):
            self.add_route(method, path, h)

    def attach(self, handle: ModelHandle, version_info: Callable[[], dict[str, Any]]) -> None:
        """Serve ``handle`` from now on; ``version_info()`` adds keys to ``/version``."""
        self.handle, self.version_info = handle, version_info

    def load_failed(self, reason: str) -> None:
        """The model will not load: liveness reports ``reason`` until the process exits."""
        self.load_error = reason

    def begin_shutdown(self) -> None:
        """Readiness turns 503 and new inference requests are refused."""
        self.shutting_down = True

    @property
    def is_ready(self) -> bool:
        """Ready for traffic: a model is loaded and ready and no shutdown has begun."""
        return not (self.shutting_down or self.draining) and self.handle is not None and self.handle.ready

    async def unrouted(self, req: Request) -> Response:
        """``/v2/models/{name}[/versions/{v}][/ready|/infer]``, else 404/405."""
        if req.path.startswith("/v2/models/"):
            return await self._model_route(req)
        return await super().unrouted(req)

    def _model(self, name: str, version: str | None) -> ModelHandle:
        h = self.handle
        if h is None:
            raise Unavailable(f"model is loading{': ' + self.load_error if self.load_error else ''}")
        if name != h.name:
            raise NotFound(f"unknown model '{name}'; this runtime serves '{h.name}'")
        if version is not None and version != h.version:
            raise NotFound(f"model '{name}' has no version '{version}' (serving version '{h.version}')")
        return h

    async def _model_route(self, req: Request) -> Response:
        parts = req.path[len("/v2/models/"):].split("/")
        name, rest = parts[0], parts[1:]
        version = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        action = "/".join(rest)
        if action == "infer":
            if req.method != "POST":
                raise MethodNotAllowed("infer takes POST")
            return await self.infer(self._model(name, version), req)
        if req.method != "GET":
            raise MethodNotAllowed(f"{req.method} is not allowed on {req.path}")
        h = self._model(name, version)
        if action == "":
            return json_response({
                "name": h.name, "versions": [h.version], "platform": h.platform,
                "inputs": [s.metadata() for s in h.inputs], "outputs": [s.metadata() for s in h.outputs],
            })
        if action == "ready":
            if self.is_ready:
                return json_response({"name": h.name, "ready": True})
            return json_response({"name": h.name, "ready": False}, 503)
        raise NotFound(f"no route {req.method} {req.path}")

    # ---- inference routes ---------------------------------------------------------------------------
    async def _run(self, h: ModelHandle, arrays: dict[str, np.ndarray]) -> InferResult:
        if self.shutting_down:
            raise Unavailable("the runtime is shutting down")
        # The one check of a request against the model; the handle never checks again.
        return await h.infer(validate_inputs(h.inputs, arrays, h.max_rows))

    async def accounted(
        self, h: ModelHandle, work: Callable[[Callable[[dict[str, np.ndarray]], Awaitable[InferResult]]],
                                             Awaitable[Response]]
    ) -> Response:
        """Per-request accounting shared by the inference routes (a pipeline's ``/ocr`` too): in-flight
        gauge, request counter by code, latency of successful requests. ``work`` gets a ``run(inputs)``
        that records which model version and role answered, so the labels name them even when encoding
        the answer fails."""
        t0 = time.perf_counter()
        gauge = self._inflight(h.name)
        gauge.inc()
        labels = [h.version, "main"]
        code = 500

        async def run(inputs: dict[str, np.ndarray]) -> InferResult:
            result = await self._run(h, inputs)
            labels[0], labels[1] = result.model_version, result.role
            return result

        try:
            resp = await work(run)
            code = 200
            return resp
        except RuntimeError_ as e:
            code = e.status
            raise
        finally:
            gauge.dec()
            metrics.count_request(h.name, labels[0], labels[1], code, time.perf_counter() - t0)

    async def infer(self, h: ModelHandle, req: Request) -> Response:
        """``POST /v2/models/{name}/infer``."""
        async def work(run: Callable[[dict[str, np.ndarray]], Awaitable[InferResult]]) -> Response:
            ireq = decode_infer_request(req.body, req.headers, h)
            return encode_infer_response(h, ireq, await run(ireq.inputs))

        return await self.accounted(h, work)

    async def predict(self, req: Request) -> Response:
        """Simple form: ``{"inputs": {name: nested list}}`` (or ``{"instances": [...]}`` for one input)."""
        h = self._model(self.handle.name if self.handle else "", None)

        async def work(run: Callable[[dict[str, np.ndarray]], Awaitable[InferResult]]) -> Response:
            return encode_predict_response(h, await run(decode_predict_request(req.body, h)))

        return await self.accounted(h, work)

    def _inflight(self, model: str) -> Any:
        g = self._inflight_gauges.get(model)
        if g is None:
            g = self._inflight_gauges[model] = metrics.INFLIGHT.labels(model)
        return g

    # ---- health / info ------------------------------------------------------------------------------
    async def live(self, req: Request) -> Response:
        """``/v2/health/live``: False once the engine is wedged or the load failed."""
        if self.handle is None:
            # Loading (possibly a long TensorRT build) is alive; a failed load is not.
            if self.load_error:
                return json_response({"live": False, "reason": self.load_error}, 503)
            return json_response({"live": True, "reason": "loading"})
        ok, reason = self.handle.live()
        return json_response({"live": ok, "reason": reason}, 200 if ok else 503)

    async def ready_route(self, req: Request) -> Response:
        """``/v2/health/ready``."""
        return json_response({"ready": self.is_ready}, 200 if self.is_ready else 503)

    async def server_metadata(self, req: Request) -> Response:
        """``/v2``: OIP server metadata."""
        return json_response({"name": "paddle-runtime", "version": __version__,
                              "extensions": ["binary_tensor_data"]})

    async def health(self, req: Request) -> Response:
        """``/health``: status, readiness, liveness and the model served."""
        h = self.handle
        live = h.live()[0] if h is not None else self.load_error is None
        status = "shutting down" if self.shutting_down else ("ready" if self.is_ready else "not ready")
        body = {"status": status, "ready": self.is_ready, "live": live,
                "model": h.name if h else None, "version": h.version if h else None}
        return json_response(body, 200 if self.is_ready else 503)

    async def version(self, req: Request) -> Response:
        """``/version``: runtime and model versions plus the wiring's extra keys."""
        h = self.handle
        info = {"runtime": __version__, "model": h.name if h else None, "model_version": h.version if h else None}
        info.update(self.version_info())
        return json_response(info)

    async def metrics(self, req: Request) -> Response:
        """``/metrics``: Prometheus text format."""
        body, ctype = metrics.render()
        return Response(200, body, ctype)
