"""Helpers for the pod-behaviour tests on the real node: the operator installed with Helm, a
PaddleModelService applied and awaited, ``kubectl exec``, a bounded load generator, a model server
on the host end of the node link, and the figures file the note quotes."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.cluster import Cluster
from e2e.demo import condition, rapidocr_root
from e2e.util import dump_namespace, service_address, wait_for

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "realnode.json"
BUNDLED_REC = "file:///opt/paddle-runtime/models/ch_PP-OCRv4_rec_infer"
MODEL = "ppocr-rec"
LABEL = "serving.paddlesla.io/service"


def record(behaviour: str, figures: dict[str, Any]) -> None:
    """Print the figures (pytest -s) and merge them into benchmarks/results/realnode.json."""
    print(f"\n[realnode figures] {behaviour}: {json.dumps(figures, sort_keys=True)}", flush=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[behaviour] = {**figures, "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def pms(name: str, *, model: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """A small CPU PaddleModelService for the bundled PP-OCRv4 rec model (no autoscaling)."""
    base: dict[str, Any] = {
        "model": {"uri": BUNDLED_REC, "name": MODEL, "version": "v4", **(model or {})},
        "inference": {
            "device": "cpu",
            "cpuThreads": 1,
            "maxBatchSize": 4,
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
        },
        "replicas": 1,
    }
    base.update(spec)
    return {
        "apiVersion": "serving.paddlesla.io/v1alpha1",
        "kind": "PaddleModelService",
        "metadata": {"name": name},
        "spec": base,
    }


@dataclass
class Served:
    """One test namespace watched by the Helm-installed operator."""

    cluster: Cluster
    ns: str
    op_ns: str

    def dump(self) -> str:
        logs = self.cluster.kubectl(
            "logs", "-n", self.op_ns, "deploy/paddle-operator", "--tail=60", check=False
        ).stdout
        return dump_namespace(self.cluster, self.ns)() + "\n---- operator log ----\n" + logs

    def apply(self, obj: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "-n", self.ns, "-f", "-", input=json.dumps(obj))

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.cluster.kubectl("patch", "pms", name, "-n", self.ns, "--type=merge", "-p", json.dumps(patch))

    def get(self, *args: str) -> dict[str, Any]:
        return self.cluster.get(*args, "-n", self.ns)

    def pods(self, name: str) -> list[dict[str, Any]]:
        return self.get("pods", "-l", f"{LABEL}={name}")["items"]

    def ready_pods(self, name: str) -> list[dict[str, Any]]:
        return [
            p
            for p in self.pods(name)
            if condition(p, "Ready").get("status") == "True" and not p["metadata"].get("deletionTimestamp")
        ]

    def wait_ready(self, name: str, timeout: float = 600, replicas: int = 1) -> dict[str, Any]:
        """Until the resource says Ready=True for its current generation with ``replicas`` Ready pods."""

        def ready() -> dict[str, Any] | None:
            obj = self.get("pms", name)
            gen = obj["metadata"]["generation"]
            ok = (
                condition(obj, "Ready").get("status") == "True"
                and obj.get("status", {}).get("observedGeneration") == gen
                and len(self.ready_pods(name)) == replicas
            )
            return obj if ok else None

        return wait_for(
            ready, timeout, f"{self.ns}/{name} Ready with {replicas} pod(s)", dump=self.dump, interval=2
        )

    def address(self, name: str) -> str:
        return service_address(self.cluster, self.ns, name)

    def exec(
        self, pod: str, *cmd: str, container: str = "runtime", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("exec", "-n", self.ns, pod, "-c", container, "--", *cmd, check=check)


def watched_namespaces(
    cluster: Cluster, names: list[str], op_ns: str, timeout: float = 300, values: tuple[str, ...] = ()
) -> None:
    """Restricted namespaces on the real node, and the operator installed with Helm watching them
    (``values``: more ``--set`` pairs for the chart)."""
    from e2e.demo import install_operator, restricted_namespace

    for ns in names:
        restricted_namespace(cluster, ns)
    install_operator(cluster, op_ns, ",".join(names), timeout, values)


@contextlib.contextmanager
def operated(cluster: Cluster, prefix: str) -> Iterator[Served]:
    """A fresh namespace ``<prefix>-xxxx`` watched by its own Helm-installed operator in
    ``<prefix>-op-xxxx``; both go afterwards."""
    import uuid

    suffix = uuid.uuid4().hex[:4]
    ns, op_ns = f"{prefix}-{suffix}", f"{prefix}-op-{suffix}"
    try:
        watched_namespaces(cluster, [ns], op_ns)
        yield Served(cluster, ns, op_ns)
    finally:
        cluster.helm("uninstall", "paddle-operator", "--namespace", op_ns, check=False)
        for n in (ns, op_ns):
            cluster.kubectl("delete", "namespace", n, "--wait=false", "--ignore-not-found", check=False)


# ---- load -------------------------------------------------------------------------------------------


@dataclass
class Load:
    """``threads`` clients sending the demo's text image in a loop to one address until ``stop``.

    Each client keeps its own connection (tritonclient, binary tensors) and reconnects after an
    error; every request that does not return a result counts as a failure, with its error kept.
    """

    address: str
    threads: int = 2
    # A new connection per request, so kube-proxy spreads requests over every ready pod of the
    # Service (a kept connection stays on the pod it first reached, e.g. never on a later canary).
    fresh_connection: bool = False
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _client(self) -> Any:
        import tritonclient.http as triton

        return triton.InferenceServerClient(self.address, network_timeout=30, connection_timeout=10)

    def _loop(self) -> None:
        import tritonclient.http as triton

        from e2e.demo import text_image

        x = text_image()
        client = None
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                if client is None:
                    client = self._client()
                inp = triton.InferInput("x", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=True)
                client.infer(MODEL, [inp])
                with self._lock:
                    self.latencies_ms.append((time.perf_counter() - t0) * 1000)
                if self.fresh_connection:
                    client.close()
                    client = None
            except Exception as exc:  # every kind of failure is a lost request
                with self._lock:
                    self.failures.append((time.time(), f"{type(exc).__name__}: {str(exc)[:200]}"))
                if client is not None:
                    try:
                        client.close()
                    except Exception:
                        pass
                client = None
                time.sleep(0.05)

    def start(self) -> Load:
        for i in range(self.threads):
            t = threading.Thread(target=self._loop, name=f"load-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        for t in self._workers:
            t.join(60)
        lat = sorted(self.latencies_ms)
        return {
            "requests": len(lat) + len(self.failures),
            "failed": len(self.failures),
            "p50_ms": round(lat[len(lat) // 2], 1) if lat else None,
            "errors": sorted({e for _, e in self.failures})[:5],
        }

    @property
    def ok(self) -> int:
        with self._lock:
            return len(self.latencies_ms)


# ---- a model server the pods can reach ----------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_dir(root: Path, host: str) -> Iterator[str]:
    """Serve ``root`` over HTTP on ``host`` (the host end of the node link, the only host address
    the pods reach) on a free port; yields the base URL."""
    handler = functools.partial(_Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def signed_copy(dest: Path, key_file: Path | None, version: str, model: str = "ch_PP-OCRv4_rec_infer") -> Path:
    """One of the rapidocr wheel's models (default the PP-OCRv4 rec) copied to ``dest`` and signed with
    ``paddle-runtime sign`` (manifest only without ``key_file``)."""
    import sys

    shutil.copytree(rapidocr_root() / "models" / model, dest)
    runtime = Path(sys.executable).with_name("paddle-runtime")
    keys = ["--hmac-key-file", str(key_file)] if key_file is not None else []
    subprocess.run(
        [str(runtime), "sign", str(dest), *keys, "--version", version],
        check=True,
        capture_output=True,
        text=True,
    )
    return dest
