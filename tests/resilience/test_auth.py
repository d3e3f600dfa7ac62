"""Endpoint security on a real server: bearer token, rate limit, body limit, TLS, the admin port."""

from __future__ import annotations

import datetime
import http.client
import json
import ssl
import time
from pathlib import Path

import numpy as np

from paddle_runtime.auth import RateLimiter
from paddle_runtime.store import switch_current

from .conftest import free_port_here, publish, wait_until

TOKEN = "inference-token-1"
ADMIN = "admin-token-2"


def _self_signed(where: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    c, k = where / "tls.crt", where / "tls.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return c, k


def _req(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    return r.status, dict(r.getheaders()), r.read()


def test_rate_limiter_refills_per_client() -> None:
    rl = RateLimiter(rate=10, burst=2)
    assert rl.acquire("a") == 0 and rl.acquire("a") == 0
    wait = rl.acquire("a")
    assert 0 < wait <= 0.1 + 1e-6
    assert rl.acquire("b") == 0  # another client has its own bucket
    time.sleep(0.12)
    assert rl.acquire("a") == 0


def test_token_rate_limit_body_limit_tls_and_admin_reload(
    tmp_path: Path, ocr_cls_dir: Path, runtime_server
) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "admin").write_text(ADMIN + "\n")
    cert, key = _self_signed(tmp_path)
    dest = tmp_path / "models"
    publish(ocr_cls_dir, dest, "c1", name="cls")
    admin_port = free_port_here()
    env = {
        # A slow refill, so the limit is hit even when a loaded machine makes each request slow.
        "PADDLE_RUNTIME_RATE_LIMIT_RPS": "0.5",
        "PADDLE_RUNTIME_RATE_LIMIT_BURST": "4",
        "PADDLE_RUNTIME_MAX_BODY_BYTES": "1000000",
        "PADDLE_RUNTIME_TLS_CERT_FILE": str(cert),
        "PADDLE_RUNTIME_TLS_KEY_FILE": str(key),
        "PADDLE_RUNTIME_RELOAD_POLL_S": "0",
    }
    srv = runtime_server(
        dest,
        "--auth-token-file",
        str(tmp_path / "token"),
        "--admin-port",
        str(admin_port),
        "--admin-token-file",
        str(tmp_path / "admin"),
        env=env,
        wait_ready=False,
    )
    ctx = ssl.create_default_context(cafile=str(cert))

    def conn(port: int = srv.port, timeout: float = 30) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=timeout)

    def ready() -> bool:
        try:
            return _req(conn(), "GET", "/v2/health/ready")[0] == 200
        except OSError:
            return False

    wait_until(ready, 90, "TLS server ready", interval=0.3)
    c = conn()
    # Probes and metrics need no token (kubelet and Prometheus carry none) ...
    assert _req(c, "GET", "/v2/health/live")[0] == 200
    assert _req(c, "GET", "/metrics")[0] == 200
    # ... inference and metadata do.
    x = np.random.default_rng(0).random((1, 3, 48, 192), dtype=np.float32)
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    ).encode()
    status, headers, data = _req(c, "POST", "/v2/models/cls/infer", body)
    assert status == 401 and "bearer token" in json.loads(data)["error"]
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    status, _, _ = _req(c, "POST", "/v2/models/cls/infer", body, {"Authorization": "Bearer wrong"})
    assert status == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    meta = json.loads(_req(c, "GET", "/v2/models/cls", headers=auth)[2])
    in_name = meta["inputs"][0]["name"]
    body = body.replace(b'"name": "x"', f'"name": "{in_name}"'.encode())
    codes = []
    for _ in range(8):  # 4 of burst, 1 used by the metadata call, +1 per 2 s
        status, headers, data = _req(c, "POST", f"/v2/models/{meta['name']}/infer", body, auth)
        codes.append(status)
        if status == 429:
            assert int(headers["Retry-After"]) >= 1
            break
    assert codes[:3] == [200] * 3 and codes[-1] == 429, codes
    # Body over max_body_bytes: 413 before it is read (and before the rate limit).
    big = b'{"inputs": [' + b" " * 1_200_000 + b"]}"
    status, _, data = _req(conn(), "POST", f"/v2/models/{meta['name']}/infer", big, auth)
    assert status == 413 and "max_body_bytes" in json.loads(data)["error"]

    # Admin port: token required, reload on demand.
    a = conn(admin_port, timeout=300)  # a reload answers when done: child check + load, slow on a busy box
    assert _req(a, "POST", "/admin/reload")[0] == 401
    assert _req(a, "POST", "/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 401
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert json.loads(_req(a, "POST", "/admin/reload", headers=admin)[2])["version"] == "c1"
    publish(ocr_cls_dir, dest, "c2", name="cls")
    status, _, data = _req(a, "POST", "/admin/reload", headers=admin)
    assert status == 200 and json.loads(data)["result"] == "success", data
    assert json.loads(_req(a, "GET", "/admin/status", headers=admin)[2])["version"] == "c2"
    # A refused candidate answers 422 with the reason.
    bad = dest / "versions" / "bad"
    bad.mkdir()
    (bad / "inference.pdmodel").write_bytes(b"\x00" * 64)
    (bad / "inference.pdiparams").write_bytes(b"\x00" * 64)
    switch_current(dest, bad)
    status, _, data = _req(a, "POST", "/admin/reload", headers=admin)
    assert status == 422 and json.loads(data)["kind"] in ("load", "crash"), data
    assert srv.proc.poll() is None


def test_admin_port_without_token_refuses_to_start(ocr_cls_dir: Path, runtime_server) -> None:
    srv = runtime_server(ocr_cls_dir, "--admin-port", str(free_port_here()), wait_ready=False)
    assert srv.proc.wait(90) != 0
    assert "admin_token_file" in srv.log()


def test_tls_cert_without_key_refuses_to_start_naming_the_missing_setting(
    tmp_path: Path, ocr_cls_dir: Path, runtime_server
) -> None:
    cert, _key = _self_signed(tmp_path)
    srv = runtime_server(ocr_cls_dir, env={"PADDLE_RUNTIME_TLS_CERT_FILE": str(cert)}, wait_ready=False)
    assert srv.proc.wait(90) == 2
    log = srv.log()
    assert "tls_key_file" in log and "PADDLE_RUNTIME_TLS_KEY_FILE" in log, log[-2000:]
