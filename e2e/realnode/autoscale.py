"""Helpers for the autoscaling tests on the real node: an open-loop load generator, per-pod request
counts read from the pods themselves, and a watcher that timestamps what the HPA and the pods do.

The load is open loop (requests leave on a fixed schedule whatever the latency, so the offered QPS
is what the test sets) and every request opens its own connection: kube-proxy balances connections,
so long-lived keep-alive clients would never reach a pod that appears after they connected. Latency
is measured from each request's scheduled time (no coordinated omission when the clients fall behind).
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from e2e.cluster import Cluster
from e2e.cluster.adapter import Adapter
from e2e.demo import condition, text_image
from e2e.realnode.pods import LABEL, MODEL, Served
from e2e.util import dump_namespace

# Columns of the demo's (1, 3, 48, 320) text image sent per request. The recognition model takes any
# width; a quarter of it is a quarter of the compute, so a pod serves several requests per second even
# when this shared 2-core machine is busy, and the HPA's QPS target (1 at least) can be exceeded.
LOAD_WIDTH = 80


def _request_body() -> tuple[bytes, int]:
    """The demo's text image (its first ``LOAD_WIDTH`` columns) as an OIP v2 binary-tensor request."""
    import tritonclient.http as triton

    x = text_image()[..., :LOAD_WIDTH].copy()
    inp = triton.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    body, json_size = triton.InferenceServerClient.generate_request_body([inp])
    return body, json_size or 0


@dataclass
class Sample:
    """One request: when it was due, how long after that it finished, and its error if it failed."""

    due: float  # time.monotonic()
    ms: float
    error: str = ""
    at: float = 0.0  # time.time() when it finished (to match failures with other logs)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class PacedLoad:
    """``rate`` requests per second to ``address`` on a fixed schedule, by up to ``workers`` clients."""

    address: str
    rate: float
    workers: int = 16
    samples: list[Sample] = field(default_factory=list)
    started: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next: int = 0
    _threads: list[threading.Thread] = field(default_factory=list)

    def _ticket(self) -> float:
        with self._lock:
            n = self._next
            self._next += 1
        return self.started + n / self.rate

    def _send(self, body: bytes, json_size: int) -> None:
        host, port = self.address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request(
                "POST",
                f"/v2/models/{MODEL}/infer",
                body=body,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Inference-Header-Content-Length": str(json_size),
                    "Connection": "close",
                },
            )
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
        finally:
            conn.close()

    def _loop(self, body: bytes, json_size: int) -> None:
        while not self._stop.is_set():
            due = self._ticket()
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            error = ""
            try:
                self._send(body, json_size)
            except Exception as exc:  # every kind of failure is a lost request
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
            with self._lock:
                self.samples.append(Sample(due, (time.monotonic() - due) * 1000, error, time.time()))

    def start(self) -> PacedLoad:
        body, json_size = _request_body()
        self.started = time.monotonic()
        for i in range(self.workers):
            t = threading.Thread(target=self._loop, args=(body, json_size), name=f"paced-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> float:
        """Stop sending; returns the monotonic time the load stopped."""
        self._stop.set()
        stopped = time.monotonic()
        for t in self._threads:
            t.join(60)
        return stopped

    def stats(self, start: float | None = None, end: float | None = None) -> dict[str, Any]:
        """Requests due in ``[start, end)``: count, failures, achieved rate, p50 / p99 latency."""
        with self._lock:
            rows = [
                s for s in self.samples if (start is None or s.due >= start) and (end is None or s.due < end)
            ]
        ok = [s.ms for s in rows if not s.error]
        span = (max(s.due for s in rows) - min(s.due for s in rows)) if len(rows) > 1 else 0.0
        p50, p99 = percentile(ok, 50), percentile(ok, 99)
        return {
            "requests": len(rows),
            "failed": len(rows) - len(ok),
            "qps": round(len(rows) / span, 2) if span else None,
            "p50_ms": round(p50, 1) if p50 is not None else None,
            "p99_ms": round(p99, 1) if p99 is not None else None,
            "errors": sorted({s.error for s in rows if s.error})[:5],
            "failed_at": [time.strftime("%H:%M:%S", time.localtime(s.at)) for s in rows if s.error][:10],
        }


def pod_requests(pod_ip: str) -> float:
    """The pod's own count of inference requests (``paddle_runtime_requests_total``, all labels)."""
    # Generous: on a busy shared machine a loaded pod can take seconds to answer.
    with urllib.request.urlopen(f"http://{pod_ip}:8080/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("paddle_runtime_requests_total{")
    )


@dataclass
class Snapshot:
    """What the watcher saw at one moment."""

    t: float
    hpas: dict[str, dict[str, Any]]  # name -> {min, max, current, desired}
    ready: dict[str, str]  # Ready pod name -> IP
    counts: dict[str, float]  # Ready pod name -> requests it served so far
    rollout: dict[str, Any]  # the resource's status.rollout (phase, step, weight)


@dataclass
class Watch:
    """Polls the HPAs and the Ready pods of one resource every ``period`` seconds (API server, no kubectl)."""

    cluster: Cluster
    namespace: str
    service: str
    period: float = 1.0
    history: list[Snapshot] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _snapshot(self) -> Snapshot:
        local = self.cluster.local
        assert local is not None
        t = time.monotonic()  # when the look began: the pods' answers below can take seconds under load
        ns, sel = self.namespace, urllib.request.quote(f"{LABEL}={self.service}")
        hpas = {}
        for h in local.api(
            f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers?labelSelector={sel}"
        )["items"]:
            st = h.get("status", {})
            hpas[h["metadata"]["name"]] = {
                "min": h["spec"].get("minReplicas"),
                "max": h["spec"]["maxReplicas"],
                "current": st.get("currentReplicas"),
                "desired": st.get("desiredReplicas"),
            }
        ready = {
            p["metadata"]["name"]: p["status"]["podIP"]
            for p in local.api(f"/api/v1/namespaces/{ns}/pods?labelSelector={sel}")["items"]
            if condition(p, "Ready").get("status") == "True" and not p["metadata"].get("deletionTimestamp")
        }
        counts = {}
        for name, ip in ready.items():
            try:
                counts[name] = pod_requests(ip)
            except OSError:
                pass
        pms = local.api(
            f"/apis/serving.paddlesla.io/v1alpha1/namespaces/{ns}/paddlemodelservices/{self.service}"
        )
        return Snapshot(t, hpas, ready, counts, (pms.get("status") or {}).get("rollout") or {})

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.history.append(self._snapshot())
            except Exception:  # a slow API answer is not fatal; the next poll retries
                pass
            self._stop.wait(self.period)

    def start(self) -> Watch:
        self._thread = threading.Thread(target=self._loop, name=f"watch-{self.service}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    @property
    def last(self) -> Snapshot | None:
        return self.history[-1] if self.history else None

    def first(self, since: float, pred: Callable[[Snapshot], bool]) -> Snapshot | None:
        """The first snapshot at or after ``since`` for which ``pred`` holds."""
        return next((s for s in list(self.history) if s.t >= since and pred(s)), None)


def autoscale_dump(served: Served, adapter: Adapter, metric: str | None = None) -> Callable[[], str]:
    """A ``dump`` for failed waits: HPAs, pods, EndpointSlices and events of the namespace, the
    adapter's answer for it and its log, and the operator's log."""
    kinds = (
        "paddlemodelservices",
        "horizontalpodautoscalers",
        "deployments",
        "pods",
        "endpointslices",
        "events",
    )

    def dump() -> str:
        ns = dump_namespace(served.cluster, served.ns, kinds=kinds)()
        logs = served.cluster.kubectl(
            "logs", "-n", served.op_ns, "deploy/paddle-operator", "--tail=150", check=False
        ).stdout
        return f"{ns}\n---- adapter ----\n{adapter.dump(served.ns, metric)}\n---- operator log ----\n{logs}"

    return dump


def hpa_status(served: Served, name: str) -> str:
    """The HPA's conditions and current metrics as one JSON line (for assertion messages)."""
    h = served.get("hpa", name)
    st = h.get("status", {})
    return json.dumps({"conditions": st.get("conditions"), "currentMetrics": st.get("currentMetrics")})
