"""``paddle-runtime fetch --uri s3://...`` against moto's S3-compatible HTTP server.

moto's ``ThreadedMotoServer`` is a real HTTP server on 127.0.0.1 speaking the S3 REST protocol (SigV4,
ListObjectsV2, GetObject, HeadObject); the fetch runs as the ``paddle-runtime`` console script in a
subprocess, so boto3 in the fetch goes over the network exactly as against MinIO or Ceph. Credentials
reach it the documented way: the ``AWS_*`` environment. moto checks them (and IAM bucket policies)
once ``/moto-api/reset-auth`` switches its authentication on, which ``test_s3_auth_failures`` does.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tarfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from paddle_runtime.fetch import EXIT_CODES
from paddle_runtime.integrity import load_hmac_key, sign_model_dir
from paddle_runtime.store import resolve_current

from .conftest import KeyPair, free_port_here
from .test_fetch import _same_tree

boto3 = pytest.importorskip("boto3", reason="s3:// tests need boto3 (in the dev extra)")
moto_server = pytest.importorskip("moto.server", reason="s3:// tests need moto[server] (in the dev extra)")

BUCKET = "models"
ADMIN = {"aws_access_key_id": "testing-admin", "aws_secret_access_key": "testing-admin-secret"}
PAPERWORK = ("MANIFEST.json", "MANIFEST.hmac", "model.sig")


@dataclass
class S3Server:
    endpoint: str

    def client(self, service: str = "s3", **creds: str):
        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1", **(creds or ADMIN))

    def moto_api(self, path: str, body: bytes = b"") -> bytes:
        req = urllib.request.Request(
            self.endpoint + path, data=body, method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    def upload_dir(self, src: Path, bucket: str, prefix: str) -> list[str]:
        s3 = self.client()
        keys = []
        for p in sorted(x for x in src.rglob("*") if x.is_file()):
            key = f"{prefix.rstrip('/')}/{p.relative_to(src).as_posix()}"
            s3.put_object(Bucket=bucket, Key=key, Body=p.read_bytes())
            keys.append(key)
        return keys


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        srv.stop()


@pytest.fixture
def s3(s3_server: S3Server) -> Iterator[S3Server]:
    """The server with an empty ``models`` bucket; everything (buckets, IAM, auth mode) reset afterwards."""
    s3_server.client().create_bucket(Bucket=BUCKET)
    try:
        yield s3_server
    finally:
        s3_server.moto_api("/moto-api/reset-auth", b"inf")
        s3_server.moto_api("/moto-api/reset")


def _env(tmp_path: Path, creds: dict[str, str] | None = ADMIN, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PADDLE_RUNTIME_"))}
    # Nothing from this machine's ~/.aws or an instance metadata service: only what the test passes.
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_DEFAULT_REGION="us-east-1",
    )
    if creds:
        env["AWS_ACCESS_KEY_ID"] = creds["aws_access_key_id"]
        env["AWS_SECRET_ACCESS_KEY"] = creds["aws_secret_access_key"]
    env.update(extra)
    return env


def _fetch(uri: str, dest: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("paddle-runtime")  # the console script, as in the init container
    return subprocess.run(
        [str(exe), "fetch", "--uri", uri, "--dest", str(dest), "--backoff-s", "0.01", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _versions(dest: Path) -> list[str]:
    return sorted(p.name for p in (dest / "versions").iterdir())


def test_s3_signed_directory_fetch_verifies_and_switches_current(
    s3: S3Server, cls_model: Path, tmp_path: Path, hmac_key_file: Path, keypair: KeyPair
) -> None:
    key = load_hmac_key(hmac_key_file)
    sign_model_dir(cls_model, hmac_key=key, private_key=keypair.private, version="s1")
    keys = s3.upload_dir(cls_model, BUCKET, "ocr/cls")
    assert {k.rsplit("/", 1)[1] for k in keys} >= set(PAPERWORK)
    # A neighbouring prefix that merely starts with the same letters must not leak into the model.
    s3.client().put_object(Bucket=BUCKET, Key="ocr/cls-old/inference.pdiparams", Body=b"old")
    dest = tmp_path / "dest"
    verify = ("--hmac-key-file", str(hmac_key_file), "--public-key", str(keypair.public))
    r = _fetch(f"s3://{BUCKET}/ocr/cls", dest, "--s3-endpoint", s3.endpoint, *verify, env=_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "version s1; checks: sha256, hmac, model-signing" in r.stdout
    assert os.readlink(dest / "current") == "versions/s1"
    assert _same_tree(cls_model, resolve_current(dest))

    # A new version published under the same prefix; the endpoint this time from the environment.
    (cls_model / "inference.pdiparams.info").write_bytes(b"retrained")
    sign_model_dir(cls_model, hmac_key=key, private_key=keypair.private, version="s2")
    s3.upload_dir(cls_model, BUCKET, "ocr/cls")
    env = _env(tmp_path, PADDLE_RUNTIME_S3_ENDPOINT=s3.endpoint)
    r = _fetch(f"s3://{BUCKET}/ocr/cls/", dest, *verify, env=env)
    assert r.returncode == 0, r.stderr
    assert resolve_current(dest).name == "s2" and _same_tree(cls_model, resolve_current(dest))
    assert _versions(dest) == ["s1", "s2"]
    # An init container restart: same content, nothing new written.
    r = _fetch(f"s3://{BUCKET}/ocr/cls", dest, *verify, env=env)
    assert r.returncode == 0, r.stderr
    assert _versions(dest) == ["s1", "s2"] and resolve_current(dest).name == "s2"


def test_s3_archive_object(s3: S3Server, cls_model: Path, tmp_path: Path, hmac_key_file: Path) -> None:
    key = load_hmac_key(hmac_key_file)
    sign_model_dir(cls_model, hmac_key=key, version="a1")
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(cls_model, arcname="cls")
    s3.client().upload_file(str(archive), BUCKET, "releases/cls-a1.tar.gz")
    dest = tmp_path / "dest"
    r = _fetch(
        f"s3://{BUCKET}/releases/cls-a1.tar.gz",
        dest,
        "--s3-endpoint",
        s3.endpoint,
        "--hmac-key-file",
        str(hmac_key_file),
        env=_env(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    assert resolve_current(dest).name == "a1" and _same_tree(cls_model, resolve_current(dest))
    assert not list((dest / "versions").glob("*.archive"))


def test_s3_missing_prefix_key_or_bucket_is_not_found(s3: S3Server, cls_model: Path, tmp_path: Path) -> None:
    sign_model_dir(cls_model, version="n1")
    s3.upload_dir(cls_model, BUCKET, "ocr/cls")
    dest = tmp_path / "dest"
    ep = ("--s3-endpoint", s3.endpoint)
    not_found = EXIT_CODES["not found"]
    assert not_found == 3

    r = _fetch(f"s3://{BUCKET}/ocr/det", dest, *ep, env=_env(tmp_path))
    assert r.returncode == not_found, r.stderr
    assert f"fetch failed: not found: s3://{BUCKET}/ocr/det: no objects under this prefix" in r.stderr

    r = _fetch(f"s3://{BUCKET}/ocr/cls-v9.tar.gz", dest, *ep, env=_env(tmp_path))
    assert r.returncode == not_found, r.stderr
    assert f"fetch failed: not found: s3://{BUCKET}/ocr/cls-v9.tar.gz: 404" in r.stderr

    r = _fetch("s3://no-such-bucket/ocr/cls", dest, *ep, env=_env(tmp_path))
    assert r.returncode == not_found, r.stderr
    assert "fetch failed: not found: s3://no-such-bucket/ocr/cls: NoSuchBucket" in r.stderr

    assert not (dest / "current").exists() and _versions(dest) == []


def test_s3_auth_failures(s3: S3Server, cls_model: Path, tmp_path: Path) -> None:
    """moto enforces credentials and IAM policies once its auth is on: a real 403 from the server."""
    sign_model_dir(cls_model, version="p1")
    s3.upload_dir(cls_model, BUCKET, "ocr/cls")
    s3.client().create_bucket(Bucket="secret-models")
    s3.upload_dir(cls_model, "secret-models", "ocr/cls")
    iam = s3.client("iam")
    iam.create_user(UserName="model-reader")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{BUCKET}"},
            {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": f"arn:aws:s3:::{BUCKET}/*"},
        ],
    }
    iam.put_user_policy(UserName="model-reader", PolicyName="read-models", PolicyDocument=json.dumps(policy))
    ak = iam.create_access_key(UserName="model-reader")["AccessKey"]
    reader = {"aws_access_key_id": ak["AccessKeyId"], "aws_secret_access_key": ak["SecretAccessKey"]}
    s3.moto_api("/moto-api/reset-auth", b"0")  # from now on every request is authenticated and authorised

    ep = ("--s3-endpoint", s3.endpoint)
    auth = EXIT_CODES["auth"]
    assert auth == 4
    dest = tmp_path / "dest"
    r = _fetch(f"s3://{BUCKET}/ocr/cls", dest, *ep, env=_env(tmp_path, reader))
    assert r.returncode == 0, r.stderr
    assert resolve_current(dest).name == "p1"

    bogus = {"aws_access_key_id": "AKIAIOSFODNN7EXAMPLE", "aws_secret_access_key": "nope"}
    r = _fetch(f"s3://{BUCKET}/ocr/cls", tmp_path / "d1", *ep, env=_env(tmp_path, bogus))
    assert r.returncode == auth and "fetch failed: auth:" in r.stderr and "InvalidAccessKeyId" in r.stderr

    wrong_secret = {**reader, "aws_secret_access_key": "not-the-secret"}
    r = _fetch(f"s3://{BUCKET}/ocr/cls", tmp_path / "d2", *ep, env=_env(tmp_path, wrong_secret))
    assert r.returncode == auth and "SignatureDoesNotMatch" in r.stderr, r.stderr

    r = _fetch("s3://secret-models/ocr/cls", tmp_path / "d3", *ep, env=_env(tmp_path, reader))
    assert r.returncode == auth and "fetch failed: auth:" in r.stderr and "AccessDenied" in r.stderr, r.stderr

    # No credentials anywhere: botocore refuses before sending anything.
    r = _fetch(f"s3://{BUCKET}/ocr/cls", tmp_path / "d4", *ep, env=_env(tmp_path, None))
    assert r.returncode == auth and "no S3 credentials" in r.stderr, r.stderr

    for d in ("d1", "d2", "d3", "d4"):
        assert not (tmp_path / d / "current").exists()
    assert resolve_current(dest).name == "p1"


def test_s3_tampered_object_is_refused_and_current_kept(
    s3: S3Server, cls_model: Path, tmp_path: Path, hmac_key_file: Path
) -> None:
    key = load_hmac_key(hmac_key_file)
    sign_model_dir(cls_model, hmac_key=key, version="good")
    s3.upload_dir(cls_model, BUCKET, "ocr/cls")
    dest = tmp_path / "dest"
    args = ("--s3-endpoint", s3.endpoint, "--hmac-key-file", str(hmac_key_file))
    assert _fetch(f"s3://{BUCKET}/ocr/cls", dest, *args, env=_env(tmp_path)).returncode == 0

    # v2 is published, then one object is overwritten in the bucket: same size, other bytes.
    (cls_model / "inference.pdiparams.info").write_bytes(b"v2")
    sign_model_dir(cls_model, hmac_key=key, version="v2")
    s3.upload_dir(cls_model, BUCKET, "ocr/cls")
    good = (cls_model / "inference.pdiparams").read_bytes()
    s3.client().put_object(Bucket=BUCKET, Key="ocr/cls/inference.pdiparams", Body=good[:-4] + b"XXXX")
    r = _fetch(f"s3://{BUCKET}/ocr/cls", dest, *args, env=_env(tmp_path))
    assert r.returncode == EXIT_CODES["checksum"] == 5, r.stderr
    assert "fetch failed: checksum:" in r.stderr and "inference.pdiparams" in r.stderr
    assert resolve_current(dest).name == "good" and _versions(dest) == ["good"]

    # The object is put back, but the manifest is edited in the bucket: its HMAC no longer matches.
    s3.client().put_object(Bucket=BUCKET, Key="ocr/cls/inference.pdiparams", Body=good)
    manifest = (cls_model / "MANIFEST.json").read_bytes()
    forged = manifest.replace(b'"v2"', b'"v3"')
    assert forged != manifest
    s3.client().put_object(Bucket=BUCKET, Key="ocr/cls/MANIFEST.json", Body=forged)
    r = _fetch(f"s3://{BUCKET}/ocr/cls", dest, *args, env=_env(tmp_path))
    assert r.returncode == EXIT_CODES["signature"] == 6, r.stderr
    assert "fetch failed: signature:" in r.stderr
    assert resolve_current(dest).name == "good" and _versions(dest) == ["good"]

    # With the real manifest back, the same bucket content is accepted.
    s3.client().put_object(Bucket=BUCKET, Key="ocr/cls/MANIFEST.json", Body=manifest)
    r = _fetch(f"s3://{BUCKET}/ocr/cls", dest, *args, env=_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert resolve_current(dest).name == "v2" and _versions(dest) == ["good", "v2"]


def test_s3_object_key_escaping_the_destination_is_refused(
    s3: S3Server, cls_model: Path, tmp_path: Path
) -> None:
    """``prefix//abs/path`` is a legal S3 key; joined naively it would write outside the staging dir."""
    sign_model_dir(cls_model, version="k1")
    s3.upload_dir(cls_model, BUCKET, "ocr/cls")
    outside = tmp_path / "escaped" / "payload"
    evil_key = f"ocr/cls/{outside}"  # outside is absolute, so the key holds "cls//tmp/..."
    s3.client().put_object(Bucket=BUCKET, Key=evil_key, Body=b"owned")
    listed = [o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET, Prefix="ocr/cls/")["Contents"]]
    assert evil_key in listed  # the server kept the double slash, so the attack reaches fetch
    dest = tmp_path / "dest"
    r = _fetch(f"s3://{BUCKET}/ocr/cls", dest, "--s3-endpoint", s3.endpoint, env=_env(tmp_path))
    assert r.returncode == EXIT_CODES["checksum"], r.stderr
    assert "unsafe object key" in r.stderr
    assert not outside.exists() and not (dest / "current").exists() and _versions(dest) == []


def test_s3_endpoint_down_is_unavailable(tmp_path: Path) -> None:
    r = _fetch(
        "s3://models/ocr/cls",
        tmp_path / "dest",
        "--s3-endpoint",
        f"http://127.0.0.1:{free_port_here()}",  # nothing listens there,
        "--retries",
        "1",
        "--timeout-s",
        "2",
        env=_env(tmp_path),
    )
    assert r.returncode == EXIT_CODES["unavailable"] == 8, r.stderr
    assert "fetch failed: unavailable: s3://models/ocr/cls" in r.stderr


def test_s3_malformed_endpoint_is_a_config_error(tmp_path: Path) -> None:
    r = _fetch(
        "s3://models/ocr/cls",
        tmp_path / "dest",
        "--s3-endpoint",
        "http://127.0.0.1:9000 /minio",
        env=_env(tmp_path),
    )
    assert r.returncode == EXIT_CODES["config"] == 2, r.stderr
    assert "fetch failed: config:" in r.stderr and "not a valid URI" in r.stderr
    r = _fetch("s3:///ocr/cls", tmp_path / "dest", env=_env(tmp_path))
    assert r.returncode == 2 and "no bucket name" in r.stderr, r.stderr
