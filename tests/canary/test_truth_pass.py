"""The truth pass at 1000 resources: one Prometheus query for all of them (counted by Prometheus
itself), a write only where a resource's truth changed, and the time one pass takes."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from paddle_operator import canary, handlers
from paddle_operator.settings import OperatorSettings
from paddle_operator.truth import PodFailure

N = 1000


class RecordingKube:
    """Records status applies and events; the pass's reads all come from the index and Prometheus."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, str, dict[str, Any]]] = []
        self.events: list[dict[str, Any]] = []

    def apply_status(self, namespace: str, name: str, status: dict[str, Any], manager: str) -> None:
        self.applied.append((namespace, name, status))

    def request(self, method: str, path: str, body: Any = None, **_: Any) -> None:
        self.events.append(body)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[str]:
    """A real Prometheus (Debian's) with nothing to scrape: the truth query answers an empty vector."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the `prometheus` binary is missing: `make system-deps` (Debian package prometheus)")
    port = _free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global: {scrape_interval: 1s}\nscrape_configs: []\n")
    with open(tmp_path / "prometheus.log", "ab") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if urllib.request.urlopen(url + "/-/ready", timeout=2).status == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
        time.sleep(0.3)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _queries_answered(url: str) -> float:
    """Prometheus's own count of instant queries it answered."""
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query"' in line
    )


def _body(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "serving.paddlesla.io/v1alpha1",
        "kind": "PaddleModelService",
        "metadata": {"name": f"m{i}", "namespace": "prod", "uid": f"u-{i}", "generation": 1},
        "spec": {"model": {"uri": "file:///models/m", "version": "v1"}, "fallback": {"uri": "file:///models/f"}},
        "status": {},
    }


def test_one_query_for_1000_resources_and_writes_only_where_the_truth_changed(
    prometheus: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = RecordingKube()
    monkeypatch.setattr(handlers, "_kube", kube)  # the API client the pass writes through
    loop = handlers.RolloutLoop(OperatorSettings(prometheus_url=prometheus))
    bodies = [_body(i) for i in range(N)]
    entries = [handlers.Indexed.of(b) for b in bodies]
    for i in range(N):
        canary.forget_truth(("prod", f"m{i}", f"u-{i}"))
    before = _queries_answered(prometheus)
    t0 = time.perf_counter()
    first = loop.truth_pass(entries)
    first_s = time.perf_counter() - t0
    assert first == {"queries": 1, "written": N, "events": 0, "skipped": 0}
    # Prometheus saw one query (its counter is updated after the answer is sent: allow it a moment).
    deadline = time.monotonic() + 5
    while _queries_answered(prometheus) - before < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _queries_answered(prometheus) - before == 1
    # What the watch then delivers into the index: the status as written.
    by_name = {b["metadata"]["name"]: b for b in bodies}
    for _, name, status in kube.applied:
        by_name[name]["status"] = status
    entries = [handlers.Indexed.of(b) for b in bodies]
    # Nothing changed: the next pass writes nothing.
    t0 = time.perf_counter()
    second = loop.truth_pass(entries)
    second_s = time.perf_counter() - t0
    assert second == {"queries": 1, "written": 0, "events": 0, "skipped": 0}
    assert len(kube.applied) == N
    # One resource's pod fails its fetch: one write and one event for it, nobody else touched.
    failing = {("prod", "m7"): [PodFailure("m7-abc", "fetch-model", "fetch failed: checksum: mismatch")]}
    third = loop.truth_pass(entries, failing)
    assert third == {"queries": 1, "written": 1, "events": 2, "skipped": 0}
    assert [name for _, name, _ in kube.applied[N:]] == ["m7"]
    print(f"\n[truth pass] {N} resources: first pass {first_s:.2f}s ({N} writes), unchanged pass {second_s:.2f}s")
    for i in range(N):
        canary.forget_truth(("prod", f"m{i}", f"u-{i}"))
