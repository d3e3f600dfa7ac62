"""Measuring what requests see during a canary: who answered each request, and when the weight moved.

- :class:`Traffic` sends requests from the host to one address (the Gateway's listener, or a Service's
  ClusterIP) until stopped and records, for every request, when it was sent, which model version
  answered (the runtime's ``X-Model-Version`` header on inference answers, ``model_version`` in
  ``/version``) or what went wrong. Inference requests carry the demo's text image (binary tensors, the
  load the canary analysis judges); ``/version`` requests are cheap, so a step of a few seconds still
  gets hundreds of answers.
- :class:`Timeline` polls the resource's ``status.rollout`` and the Ready pods of each track, so the
  answers can be grouped by the step that was in force when they were sent.
- :func:`step_shares` turns both into the canary's share per step.

Failures are every request that got no 2xx answer: refused or reset connections, timeouts, 5xx.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from e2e.cluster import Cluster
from e2e.demo import text_image
from e2e.realnode.pods import MODEL

TRACK_LABEL = "serving.paddlesla.io/track"
SERVICE_LABEL = "serving.paddlesla.io/service"


@dataclass(frozen=True)
class Answer:
    """One request: when it was sent (monotonic), its kind, the version that answered, or the error."""

    t: float
    kind: str  # "infer" | "version"
    version: str | None
    error: str | None = None


def infer_request() -> tuple[bytes, dict[str, str]]:
    """The demo's text image as an OIP v2 binary-tensor request. No output is named: every output comes
    back as binary data (``binary_data_output``), whichever model answers (the canary may be another)."""
    import tritonclient.http as triton

    x = text_image()
    inp = triton.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    body, json_size = triton.InferenceServerClient.generate_request_body([inp])
    headers = {"Content-Type": "application/octet-stream"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return body, headers


@dataclass
class Traffic:
    """Requests to ``address`` until :meth:`stop`.

    ``infer_rps``: paced inference requests per second, spread over ``infer_threads``; ``version_rps``:
    paced ``/version`` requests per second, spread over ``version_threads`` (an answer takes tens of
    milliseconds on a busy machine, so one thread alone cannot keep the pace). ``fresh_connections``: a new TCP connection
    per request (what a Service's per-connection balancing needs to be measured per request);
    otherwise each thread keeps its connection alive and reconnects after an error. ``host``: the
    ``Host`` header (a Gateway routes each service by its route's hostnames).
    """

    address: str
    infer_rps: float = 6.0
    infer_threads: int = 2
    version_rps: float = 80.0
    version_threads: int = 8
    fresh_connections: bool = False
    host: str | None = None
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, answer: Answer) -> None:
        with self._lock:
            self.answers.append(answer)

    def _loop(self, kind: str, rps: float, body: bytes | None, headers: dict[str, str]) -> None:
        period = 1.0 / rps
        if self.host:
            headers = {**headers, "Host": self.host}
        conn: http.client.HTTPConnection | None = None
        next_at = time.monotonic()
        while not self._stop.is_set():
            t0 = time.monotonic()
            version = error = None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.address, timeout=30)
                if kind == "infer":
                    conn.request("POST", f"/v2/models/{MODEL}/infer", body=body, headers=headers)
                else:
                    conn.request("GET", "/version", headers={"Host": self.host} if self.host else {})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status // 100 != 2:
                    error = f"HTTP {resp.status}: {data[:200]!r}"
                elif kind == "infer":
                    version = resp.getheader("X-Model-Version")
                else:
                    version = json.loads(data).get("model_version")
                if resp.will_close or self.fresh_connections:
                    conn.close()
                    conn = None
            except Exception as exc:  # every kind of failure is a failed request
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
                if conn is not None:
                    conn.close()
                conn = None
            self._record(Answer(t0, kind, version, error))
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))
            if time.monotonic() - next_at > 5 * period:
                next_at = time.monotonic()  # fell behind (slow answers): do not burst to catch up
        if conn is not None:
            conn.close()

    def start(self) -> Traffic:
        body, headers = infer_request() if self.infer_rps > 0 else (b"", {})
        loops: list[tuple[str, float]] = []
        if self.infer_rps > 0:
            loops += [("infer", self.infer_rps / self.infer_threads)] * self.infer_threads
        if self.version_rps > 0:
            loops += [("version", self.version_rps / self.version_threads)] * self.version_threads
        for i, (kind, rps) in enumerate(loops):
            t = threading.Thread(
                target=self._loop, args=(kind, rps, body, headers), name=f"traffic-{kind}-{i}", daemon=True
            )
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)


@dataclass(frozen=True)
class Point:
    """What the timeline saw at ``t``: the rollout's phase and weight, Ready pods per track."""

    t: float
    phase: str
    weight: int
    ready: tuple[int, int]  # (stable, canary) Ready pods, not terminating


@dataclass
class Timeline:
    """Polls one resource's ``status.rollout`` and its Ready pods every ``period`` seconds."""

    cluster: Cluster
    namespace: str
    name: str
    period: float = 0.25
    points: list[Point] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _api(self, path: str) -> dict[str, Any]:
        assert self.cluster.local is not None
        return self.cluster.local.api(path)

    def _ready(self) -> tuple[int, int]:
        pods = self._api(
            f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={SERVICE_LABEL}%3D{self.name}"
        )["items"]
        counts = {"stable": 0, "canary": 0}
        for p in pods:
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (p.get("status") or {}).get("conditions") or []
            )
            track = p["metadata"].get("labels", {}).get(TRACK_LABEL)
            if ready and not p["metadata"].get("deletionTimestamp") and track in counts:
                counts[track] += 1
        return counts["stable"], counts["canary"]

    def _loop(self) -> None:
        path = f"/apis/serving.paddlesla.io/v1alpha1/namespaces/{self.namespace}/paddlemodelservices/{self.name}"
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                r = (self._api(path).get("status") or {}).get("rollout") or {}
                point = Point(t, r.get("phase", ""), int(r.get("weight") or 0), self._ready())
                last = self.points[-1] if self.points else None
                if last is None or (last.phase, last.weight, last.ready) != (point.phase, point.weight, point.ready):
                    self.points.append(point)
            except Exception:  # a missed poll is only a coarser timeline
                pass
            self._stop.wait(self.period)

    def start(self) -> Timeline:
        self._thread = threading.Thread(target=self._loop, name="timeline", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def first(self, phase: str, weight: int | None = None) -> float | None:
        """When the rollout first showed ``phase`` (and ``weight``)."""
        for p in self.points:
            if p.phase == phase and (weight is None or p.weight == weight):
                return p.t
        return None

    def describe(self, t0: float) -> str:
        return "\n".join(
            f"  +{p.t - t0:6.1f}s {p.phase or '-':11s} weight {p.weight:3d}  ready stable/canary {p.ready}"
            for p in self.points
        )


@dataclass(frozen=True)
class StepShare:
    """The canary's share of the answers sent while one step was in force."""

    weight: int
    answered: int
    canary: int
    start: float
    end: float
    pod_share: float | None = None  # canary / all Ready pods over the window (the Service router's split)

    @property
    def share(self) -> float:
        return 100.0 * self.canary / self.answered if self.answered else float("nan")

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "weight": self.weight,
            "answered": self.answered,
            "canary_share_pct": round(self.share, 2),
            "error_points": round(self.share - self.weight, 2),
            "window_s": round(self.end - self.start, 1),
        }
        if self.pod_share is not None:
            out["canary_pod_share_pct"] = round(self.pod_share, 2)
        return out


def step_windows(
    timeline: Timeline, weights: Iterable[int], settle_s: float, lead_s: float = 0.0, through_promoting: bool = True
) -> dict[int, tuple[float, float]]:
    """For each step weight: from ``settle_s`` after the weight first showed in status (the router needs
    up to that long to apply it) to ``lead_s`` before the next phase or weight showed (the operator
    applies the route before it writes status, so the router may switch that much earlier). The last
    step (100) runs through ``Promoting`` (the canary carries all traffic while stable rolls) up to
    ``Promoted``, unless ``through_promoting`` is off: with the Service router stable's pods roll to the
    canary's version during ``Promoting`` and take traffic, so a version no longer tells the track."""
    pts = timeline.points
    out = {}
    for w in weights:
        idx = next((i for i, p in enumerate(pts) if p.phase == "Progressing" and p.weight == w), None)
        if idx is None:
            continue
        start = pts[idx].t + settle_s
        end = None
        for p in pts[idx + 1 :]:
            same = p.weight == w and (
                p.phase == "Progressing" or (through_promoting and w == 100 and p.phase == "Promoting")
            )
            if not same:
                end = p.t
                break
        out[w] = (start, (end if end is not None else time.monotonic()) - lead_s)
    return out


def step_shares(
    answers: list[Answer],
    timeline: Timeline,
    weights: Iterable[int],
    canary_version: str,
    settle_s: float,
    lead_s: float = 0.0,
    through_promoting: bool = True,
) -> list[StepShare]:
    """The canary's share of the successful answers sent inside each step's window."""
    shares = []
    for w, (start, end) in step_windows(timeline, weights, settle_s, lead_s, through_promoting).items():
        inside = [a for a in answers if start <= a.t < end and a.error is None]
        canary = sum(1 for a in inside if a.version == canary_version)
        shares.append(StepShare(w, len(inside), canary, start, end, pod_share(timeline.points, start, end)))
    return shares


def pod_share(points: list[Point], start: float, end: float) -> float | None:
    """The canary's share of the Ready pods over ``[start, end)``, weighted by time."""
    state = None
    for p in points:
        if p.t <= start:
            state = p.ready
    if state is None or end <= start:
        return None
    canary_time = total_time = 0.0
    t = start
    for p in [p for p in points if start < p.t < end] + [Point(end, "", 0, (0, 0))]:
        stable, can = state
        if stable + can:
            canary_time += (p.t - t) * can / (stable + can)
            total_time += p.t - t
        t, state = p.t, p.ready
    return 100.0 * canary_time / total_time if total_time else None


ERRORING_SCRIPT = """
import sys, yaml, paddle
from paddle.static import InputSpec

paddle.seed(0)
# Sized for 48x100 images (conv: 2 x 12 x 25 features): the dense layer cannot take any other width.
# Built-in layers only: dy2static reads the source of forward(), which a `-c` class has none of.
net = paddle.nn.Sequential(paddle.nn.Conv2D(3, 2, 3, stride=4), paddle.nn.Flatten(), paddle.nn.Linear(600, 4))
net.eval()
paddle.jit.save(net, sys.argv[1] + "/inference", input_spec=[InputSpec([None, 3, None, None], "float32", "x")])
doc = {"name": sys.argv[2], "version": sys.argv[3],
       "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, -1, -1], "warmup_shape": [1, 3, 48, 100]}]}
open(sys.argv[1] + "/model.yaml", "w").write(yaml.safe_dump(doc, sort_keys=False))
"""


def erroring_model(dest: Any, version: str) -> Any:
    """A real Paddle model with the wrong input contract for the OCR load: it takes the recognition
    model's input name and any image size, warms up on 48x100, and fails in the engine (HTTP 500) on
    the 48x320 text image every request sends. Manifest written by ``paddle-runtime sign`` so the
    init container fetches it over HTTP like any model directory."""
    import subprocess
    import sys
    from pathlib import Path

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", ERRORING_SCRIPT, str(dest), MODEL, version], check=True, timeout=300)
    runtime = Path(sys.executable).with_name("paddle-runtime")
    subprocess.run([str(runtime), "sign", str(dest), "--version", version], check=True, capture_output=True, timeout=120)
    return dest
