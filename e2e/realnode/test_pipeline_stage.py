"""An OCR pipeline on the real node: one stage hot-reloaded in the running pod (``update: HotReload``).

The operator (Helm-installed, as the chart ships it) reconciles a ``spec.pipeline`` resource onto the
real kubelet; a new ``spec.pipeline.detection.uri`` reaches the running pod through the ConfigMap,
the model-sync sidecar fetches it, and the runtime swaps the detection stage alone while clients
keep posting images to ``/ocr`` through the Service. Figures go to stdout (``-s``) and into
``benchmarks/results/realnode.json``.
"""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.demo import http_get
from e2e.realnode.pods import Served, operated, record, serve_dir, signed_copy
from e2e.util import wait_for

pytestmark = pytest.mark.realnode

BUNDLED = "file:///opt/paddle-runtime/models"
TEXT = "PaddleSLA 2026"
NAME = "ocr"


@pytest.fixture(scope="module")
def served(cluster: Cluster, real_node: str) -> Iterator[Served]:
    with operated(cluster, "rn-pipeline") as s:
        yield s


def _png() -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (360, 80), "white")
    ImageDraw.Draw(img).text((16, 18), TEXT, fill="black", font=ImageFont.load_default(size=36))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _stages(address: str) -> dict[str, Any] | None:
    code, body = http_get(f"http://{address}/version", timeout=5)
    return json.loads(body)["stages"] if code == 200 else None


class OcrLoad:
    """Clients posting the image to ``/ocr`` until stopped; anything but 200 with the same text as the
    first answer is a failure."""

    def __init__(self, address: str, threads: int = 2) -> None:
        self.host, port = address.split(":")
        self.port = int(port)
        self.answers: list[tuple[float, int, str]] = []  # (time, status, det version or error)
        self.expected: list[str] | None = None
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _loop(self) -> None:
        image = _png()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        while not self._stop.is_set():
            try:
                conn.request("POST", "/ocr", body=image)
                r = conn.getresponse()
                body = json.loads(r.read())
                texts = [x["text"] for x in body["results"]] if r.status == 200 else None
                if self.expected is None and texts:
                    self.expected = texts  # the first answer's text; every later one must equal it
                ok = bool(texts) and texts == self.expected
                self.answers.append((time.monotonic(), r.status if ok else -r.status,
                                     body["stages"]["det"]["version"] if ok else str(body)[:200]))
            except Exception as exc:  # every kind of failure is a lost request
                self.answers.append((time.monotonic(), 0, f"{type(exc).__name__}: {exc}"[:200]))
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                time.sleep(0.05)
        conn.close()

    def start(self) -> OcrLoad:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        for t in self._threads:
            t.join(90)
        failed = [a for a in self.answers if a[1] != 200]
        return {"requests": len(self.answers), "failed": len(failed), "errors": sorted({a[2] for a in failed})[:5],
                "text": self.expected}


def test_one_stage_hot_reloaded_in_the_running_pipeline_pod_with_no_restart_and_no_failed_request(
    served: Served, cluster: Cluster, tmp_path: Path
) -> None:
    assert cluster.local is not None and cluster.local.net is not None
    s = served
    s.apply({
        "apiVersion": "serving.paddlesla.io/v1alpha1",
        "kind": "PaddleModelService",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"uri": f"{BUNDLED}/ch_PP-OCRv4_rec_infer", "name": NAME, "version": "v4", "update": "HotReload"},
            "pipeline": {"type": "ppocr", "detection": {"version": "v4"}},
            # Three stages plus, during the reload, a second detector and the child-process check.
            "inference": {"device": "cpu", "cpuThreads": 1, "maxBatchSize": 4,
                          "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "4Gi"}}},
        },
    })
    s.wait_ready(NAME)
    (pod,) = s.ready_pods(NAME)
    uid = pod["metadata"]["uid"]
    address = s.address(NAME)
    before = _stages(address)
    assert before is not None and before["det"]["version"] == "v4", before
    signed_copy(tmp_path / "det-v4d", None, "v4d", model="ch_PP-OCRv4_det_infer")
    base = serve_dir(tmp_path, cluster.local.net.host_ip)
    url = next(base)
    load = OcrLoad(address).start()
    try:
        wait_for(lambda: len(load.answers) >= 2, 120, "answers before the change", dump=s.dump)
        t0 = time.monotonic()
        s.patch(NAME, {"spec": {"pipeline": {"detection": {"uri": f"{url}/det-v4d/", "version": "v4d"}}}})
        # ConfigMap volume refresh (kubelet sync, about a minute) + the sidecar's 15 s poll + fetch + swap.
        after = wait_for(lambda: (st := _stages(address)) and st["det"]["version"] == "v4d" and st, 420,
                         "the pod to serve det v4d", dump=s.dump, interval=1)
        swap_s = time.monotonic() - t0
        wait_for(lambda: sum(1 for a in load.answers if a[2] == "v4d") >= 4, 120, "answers from det v4d", dump=s.dump)
        first = next((t for t, code, v in load.answers if code == 200 and v == "v4d"), None)
    finally:
        summary = load.stop()
        base.close()
    (pod_after,) = s.pods(NAME)
    restarts = {c["name"]: c["restartCount"] for c in pod_after["status"]["containerStatuses"]}
    record("pipeline_stage_hot_reload", {
        "det_version_before": before["det"]["version"], "det_version_after": after["det"]["version"],
        "rec_version": after["rec"]["version"], "spec_change_to_served_s": round(swap_s, 1),
        "first_answer_from_new_det_s": round(first - t0, 1) if first else None,
        "same_uid": pod_after["metadata"]["uid"] == uid, "restart_counts": restarts,
        "reloads": {st: after[st]["reloads"] for st in after}, "load": summary,
    })
    assert pod_after["metadata"]["uid"] == uid
    assert set(restarts.values()) == {0}, restarts
    assert summary["failed"] == 0, summary
    assert summary["text"] and "2026" in " ".join(summary["text"]), summary
    # Only the detection stage was reloaded.
    assert after["det"]["reloads"]["success"] == 1 and after["det"]["previous_version"] == "v4"
    assert after["rec"]["reloads"] == {"success": 0, "failure": 0} and after["rec"]["version"] == "v4"
