"""Hot reload of a real ``paddle-runtime serve`` process under continuous client load."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from paddle_runtime.integrity import sign_model_dir
from paddle_runtime.store import switch_current

from .conftest import Client, get_json, metric_value, publish, wait_until

HMAC = b"reload-test-key"
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def seeds(export_model_dir) -> dict[int, Path]:
    """Three MobileNetV3-small exports with different random weights: same I/O contract, different answers."""
    return {s: export_model_dir("mobilenet_v3_small", seed=s, version=f"v{s}") for s in SEEDS}


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(7).random((1, 3, 224, 224), dtype=np.float32)


@pytest.fixture(scope="module")
def expected(seeds, x, reference) -> dict[int, np.ndarray]:
    return {s: next(iter(reference(d, {"x": x}).values())) for s, d in seeds.items()}


def _load(
    url: str, x: np.ndarray, stop: threading.Event, out: list, n_clients: int = 2
) -> list[threading.Thread]:
    def client() -> None:
        c = Client(url, "mobilenet-v3-small", x)
        while not stop.is_set():
            t = time.monotonic()
            status, version, role, arr = c.infer()
            out.append((t, status, version, role, arr))
        c.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(n_clients)]
    for t in threads:
        t.start()
    return threads


def test_model_replaced_five_times_under_load_loses_no_request(
    tmp_path: Path, seeds, x, expected, runtime_server
) -> None:
    key = tmp_path / "hmac.key"
    key.write_bytes(HMAC)
    dest = tmp_path / "models"
    publish(seeds[0], dest, "v0", hmac_key=HMAC)
    # The child-process check is left out here (it is what test_bad_candidates_* exercises): under
    # saturating load it runs at nice 10 and would make five reloads take minutes, not the swap.
    srv = runtime_server(
        dest,
        "--hmac-key-file",
        str(key),
        env={"PADDLE_RUNTIME_RELOAD_POLL_S": "0.5", "PADDLE_RUNTIME_RELOAD_PROBE": "false"},
    )
    label_seed = {"v0": 0}
    results: list = []
    stop = threading.Event()
    threads = _load(srv.url, x, stop, results)
    try:
        wait_until(lambda: len(results) > 20, 30, "steady traffic")
        for i in range(1, 6):
            label, seed = f"v{i}", SEEDS[i % 3]
            label_seed[label] = seed
            publish(seeds[seed], dest, label, hmac_key=HMAC)
            mark = len(results)
            # The swap is seen by clients: answers now come from the new version ...
            wait_until(
                lambda mark=mark, label=label: any(r[2] == label for r in results[mark:]),
                90,
                f"{label} served",
            )
            wait_until(lambda mark=len(results): len(results) > mark + 5, 30, "traffic after the swap")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    failed = [r for r in results if r[1] != 200]
    assert not failed, f"{len(failed)} failed requests, first: {failed[0][1:4]} {str(failed[0][4])[:300]}"
    # ... every answer matches the model of the version it names (no mixed or stale batches) ...
    for _, _, version, role, arr in results:
        assert role == "main"
        np.testing.assert_allclose(arr, expected[label_seed[version]], rtol=1e-3, atol=1e-4)
    # ... and versions only move forward: once v3 answered, v2 never answers again.
    order = [int(r[2][1:]) for r in sorted(results, key=lambda r: r[0])]
    first_seen = {v: order.index(v) for v in set(order)}
    assert sorted(first_seen, key=first_seen.get) == list(range(6))
    info = get_json(srv.url, "/version")
    assert info["version"] == "v5" and info["previous_version"] == "v4"
    assert info["reloads"] == {"success": 5, "failure": 0} and info["last_error"] is None
    assert metric_value(srv.url, "paddle_runtime_reloads_total", result="success") == 5
    assert "reloaded model mobilenet-v3-small: v4 -> v5 in" in srv.log()
    assert len(results) > 100


def _bad_version(dest: Path, good: Path, name: str) -> Path:
    d = dest / "versions" / name
    shutil.copytree(good, d)
    return d


def _flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 3] ^= 0x5A
    p.write_bytes(bytes(data))


def _failing(url: str) -> dict[str, float]:
    """The ``paddle_runtime_reload_failing`` series on /metrics: error label -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return {
        s.labels["error"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "paddle_runtime_reload_failing"
    }


def test_bad_candidates_are_refused_and_the_old_model_keeps_serving(
    tmp_path: Path, seeds, x, expected, runtime_server
) -> None:
    key = tmp_path / "hmac.key"
    key.write_bytes(HMAC)
    dest = tmp_path / "models"
    good = publish(seeds[0], dest, "v0", hmac_key=HMAC)
    # Polling off: SIGHUP is the trigger here, so each candidate is judged exactly once.
    srv = runtime_server(dest, "--hmac-key-file", str(key), "--reload-poll-s", "0")
    client = Client(srv.url, "mobilenet-v3-small", x)

    def corrupt_params(d: Path) -> None:
        _flip_byte(d / "inference.pdiparams")

    def drop_manifest(d: Path) -> None:
        (d / "MANIFEST.json").unlink()

    def wrong_key(d: Path) -> None:
        sign_model_dir(d, hmac_key=b"not the key")

    def truncate(d: Path) -> None:
        p = d / "inference.pdiparams"
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    def half_written(d: Path) -> None:
        # A copy interrupted before the manifest (written last) landed: files present, no manifest.
        (d / "MANIFEST.json").unlink()
        (d / "MANIFEST.hmac").unlink()
        p = d / "inference.pdiparams"
        p.write_bytes(p.read_bytes()[:4096])

    def garbage_signed(d: Path) -> None:
        # Signed correctly, so integrity passes: only the child-process load check can catch it.
        (d / "inference.pdiparams").write_bytes(os.urandom(1 << 20))
        (d / "inference.json").write_bytes(os.urandom(4096))
        sign_model_dir(d, hmac_key=HMAC)

    cases = [
        ("tampered", corrupt_params, "checksum"),
        ("nomanifest", drop_manifest, "unsigned"),
        ("badhmac", wrong_key, "signature"),
        ("truncated", truncate, "incomplete"),
        ("halfwritten", half_written, "unsigned"),
        ("garbage", garbage_signed, "load"),
    ]
    for n, (name, spoil, kind) in enumerate(cases, start=1):
        d = _bad_version(dest, good, name)
        spoil(d)
        switch_current(dest, d)
        srv.proc.send_signal(signal.SIGHUP)
        info = wait_until(
            lambda n=n: (i := get_json(srv.url, "/version"))["reloads"]["failure"] >= n and i,
            180,  # the child check runs at low priority: slow on a busy machine
            f"{name} refused",
        )
        assert info["last_error"].startswith(kind + ":"), (name, info["last_error"])
        assert info["version"] == "v0" and info["reloads"]["success"] == 0
        # What the operator reads: exactly one failing series, carrying the error /version shows.
        failing = _failing(srv.url)
        assert list(failing) == [" ".join(info["last_error"].split())[:200]] and info["reload_failing"], (name, failing)
        assert metric_value(srv.url, "paddle_runtime_reload_last_failure_timestamp_seconds") > 0
        status, version, role, arr = client.infer()
        assert status == 200 and version == "v0", (name, status, arr)
        np.testing.assert_allclose(arr, expected[0], rtol=1e-3, atol=1e-4)
    assert srv.proc.poll() is None  # the server survived the garbage model
    assert metric_value(srv.url, "paddle_runtime_reloads_total", result="failure") == len(cases)
    assert "refused" in srv.log()
    # Pointing current back at what serves is the cause gone: the error series goes with it (SIGHUP
    # forces a reload, so v0 is loaded again: one success).
    switch_current(dest, good)
    srv.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: not _failing(srv.url), 60, "reload_failing cleared after current is back on v0")
    assert get_json(srv.url, "/version")["reload_failing"] is False
    # After all that, a good version still goes through.
    publish(seeds[1], dest, "v1", hmac_key=HMAC)
    srv.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: client.infer()[1] == "v1", 180, "v1 served")
    status, version, _, arr = client.infer()
    np.testing.assert_allclose(arr, expected[1], rtol=1e-3, atol=1e-4)
    info = get_json(srv.url, "/version")
    assert info["previous_version"] == "v0" and info["reloads"]["success"] == 2
    client.close()


def test_start_refuses_unsigned_model_when_a_key_is_configured(tmp_path: Path, seeds, runtime_server) -> None:
    key = tmp_path / "hmac.key"
    key.write_bytes(HMAC)
    srv = runtime_server(seeds[0], "--hmac-key-file", str(key), wait_ready=False)
    assert srv.proc.wait(60) == 1
    assert "model refused: unsigned" in srv.log()


def test_a_candidate_refused_by_fetch_is_reported_by_the_runtime_until_a_fetch_succeeds(
    tmp_path: Path, seeds, x, runtime_server
) -> None:
    """The model-sync sidecar's path: ``paddle-runtime fetch`` refuses a tampered candidate before it
    reaches ``current``; the serving process reports that refusal (the series the operator reads)
    while the old version keeps answering, and drops it once a fetch succeeds."""
    import subprocess
    import sys

    import yaml

    from paddle_runtime.integrity import sign_model_dir
    from paddle_runtime.store import FETCH_FAILED

    key = tmp_path / "hmac.key"
    key.write_bytes(HMAC)
    dest = tmp_path / "models"
    publish(seeds[0], dest, "v0", hmac_key=HMAC)
    srv = runtime_server(dest, "--hmac-key-file", str(key), "--reload-poll-s", "0.3")
    client = Client(srv.url, "mobilenet-v3-small", x)
    paddle_runtime = str(Path(sys.executable).with_name("paddle-runtime"))

    def fetch(src: Path, version: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([paddle_runtime, "fetch", "--uri", str(src), "--dest", str(dest), "--version", version,
                               "--hmac-key-file", str(key)], capture_output=True, text=True, timeout=300)

    # A published candidate whose weights changed after signing.
    bad = tmp_path / "source-v9"
    shutil.copytree(seeds[1], bad)
    sign_model_dir(bad, hmac_key=HMAC, version="v9")
    _flip_byte(bad / "inference.pdiparams")
    refused = fetch(bad, "v9")
    assert refused.returncode == 5 and "checksum" in refused.stderr, refused
    assert (dest / FETCH_FAILED).is_file()
    failing = wait_until(lambda: _failing(srv.url), 30, "the refused fetch in reload_failing")
    (error,) = failing
    assert error.startswith("fetch of v9 refused: checksum:"), error
    info = get_json(srv.url, "/version")
    assert info["fetch_error"] == error and info["version"] == "v0"
    for _ in range(3):
        status, version, _, _ = client.infer()
        assert (status, version) == (200, "v0")

    # A good candidate: fetched, served, and the refusal is gone from /metrics and /version.
    good = tmp_path / "source-v1"
    shutil.copytree(seeds[1], good)
    meta = good / "model.yaml"
    meta.write_text(yaml.safe_dump({**(yaml.safe_load(meta.read_text()) or {}), "version": "v1"}))
    sign_model_dir(good, hmac_key=HMAC, version="v1")
    assert fetch(good, "v1").returncode == 0
    assert not (dest / FETCH_FAILED).exists()
    wait_until(lambda: client.infer()[1] == "v1", 180, "v1 served")
    wait_until(lambda: not _failing(srv.url), 30, "reload_failing cleared after a fetch succeeded")
    assert get_json(srv.url, "/version")["fetch_error"] is None
    client.close()
