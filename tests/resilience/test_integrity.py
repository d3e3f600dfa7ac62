"""Manifest, HMAC and OpenSSF model-signing checks on a real PP-OCR model directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from paddle_runtime import integrity
from paddle_runtime.errors import (
    BadSignatureError,
    IncompleteModelError,
    TamperedModelError,
    UnsignedModelError,
)
from paddle_runtime.integrity import (
    load_hmac_key,
    sign_model_dir,
    verify_model_dir,
)

from .conftest import KeyPair, make_keypair


def test_signed_model_verifies_with_every_check(
    cls_model: Path, hmac_key_file: Path, keypair: KeyPair
) -> None:
    key = load_hmac_key(hmac_key_file)
    m = sign_model_dir(cls_model, hmac_key=key, private_key=keypair.private, version="v7")
    assert set(m.files) == {"inference.pdmodel", "inference.pdiparams", "inference.pdiparams.info"}
    assert m.version == "v7"
    res = verify_model_dir(cls_model, hmac_key=key, public_key=keypair.public)
    assert res.checks == ("sha256", "hmac", "model-signing")
    assert res.manifest is not None and res.manifest.digest == m.digest


def test_hmac_key_newline_is_ignored_and_env_works(hmac_key_file: Path) -> None:
    assert load_hmac_key(hmac_key_file) == b"s3cr3t-hmac-key"
    assert load_hmac_key(None, env={integrity.HMAC_KEY_ENV: "k"}) == b"k"
    assert load_hmac_key(None, env={}) is None


def test_flipped_byte_is_tampered(cls_model: Path) -> None:
    sign_model_dir(cls_model)
    p = cls_model / "inference.pdiparams"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(TamperedModelError, match="SHA-256 of inference.pdiparams"):
        verify_model_dir(cls_model)


def test_truncated_file_is_incomplete(cls_model: Path) -> None:
    sign_model_dir(cls_model)
    p = cls_model / "inference.pdiparams"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(IncompleteModelError, match="truncated"):
        verify_model_dir(cls_model)


def test_missing_file_is_incomplete(cls_model: Path) -> None:
    sign_model_dir(cls_model)
    (cls_model / "inference.pdmodel").unlink()
    with pytest.raises(IncompleteModelError, match="missing"):
        verify_model_dir(cls_model)


def test_unlisted_file_is_tampering(cls_model: Path) -> None:
    sign_model_dir(cls_model)
    (cls_model / "inference.pdmodel.bak").write_bytes(b"x")
    with pytest.raises(TamperedModelError, match="does not list"):
        verify_model_dir(cls_model)


def test_missing_manifest_refused_only_when_required(cls_model: Path, hmac_key_file: Path) -> None:
    assert verify_model_dir(cls_model).checks == ()  # unsigned model, nothing configured: accepted
    with pytest.raises(UnsignedModelError, match="no MANIFEST.json"):
        verify_model_dir(cls_model, hmac_key=load_hmac_key(hmac_key_file))
    with pytest.raises(UnsignedModelError):
        verify_model_dir(cls_model, require_manifest=True)


def test_bad_hmac_key_and_edited_manifest_are_bad_signatures(cls_model: Path, hmac_key_file: Path) -> None:
    sign_model_dir(cls_model, hmac_key=load_hmac_key(hmac_key_file))
    with pytest.raises(BadSignatureError, match="HMAC"):
        verify_model_dir(cls_model, hmac_key=b"another key")
    # An attacker who swaps a file and rewrites the manifest cannot recompute the HMAC.
    (cls_model / "inference.pdmodel").write_bytes(b"evil")
    doc = json.loads((cls_model / "MANIFEST.json").read_text())
    doc["files"]["inference.pdmodel"] = {
        "sha256": integrity.sha256_file(cls_model / "inference.pdmodel"),
        "size": 4,
    }
    (cls_model / "MANIFEST.json").write_text(json.dumps(doc))
    assert verify_model_dir(cls_model).checks == ("sha256",)  # consistent without a key ...
    with pytest.raises(BadSignatureError):
        verify_model_dir(cls_model, hmac_key=load_hmac_key(hmac_key_file))  # ... but not with it


def test_hmac_file_missing_is_unsigned(cls_model: Path, hmac_key_file: Path) -> None:
    sign_model_dir(cls_model)  # manifest only
    with pytest.raises(UnsignedModelError, match="MANIFEST.hmac"):
        verify_model_dir(cls_model, hmac_key=load_hmac_key(hmac_key_file))


def test_model_signing_wrong_key_and_missing_signature(
    cls_model: Path, tmp_path: Path, keypair: KeyPair
) -> None:
    sign_model_dir(cls_model)
    with pytest.raises(UnsignedModelError, match="model.sig"):
        verify_model_dir(cls_model, public_key=keypair.public)
    sign_model_dir(cls_model, private_key=keypair.private)
    other = make_keypair(tmp_path, "other")
    with pytest.raises(BadSignatureError, match="model-signing"):
        verify_model_dir(cls_model, public_key=other.public)


def test_model_signing_catches_manifest_rewrite(cls_model: Path, keypair: KeyPair) -> None:
    """The signature covers MANIFEST.json too, so re-hashing a swapped file does not help."""
    sign_model_dir(cls_model, private_key=keypair.private)
    (cls_model / "inference.pdiparams.info").write_bytes(b"changed")
    doc = json.loads((cls_model / "MANIFEST.json").read_text())
    doc["files"]["inference.pdiparams.info"] = {
        "sha256": integrity.sha256_file(cls_model / "inference.pdiparams.info"),
        "size": 7,
    }
    (cls_model / "MANIFEST.json").write_text(json.dumps(doc))
    with pytest.raises(BadSignatureError):
        verify_model_dir(cls_model, public_key=keypair.public)


def test_manifest_with_path_traversal_is_refused(cls_model: Path) -> None:
    (cls_model / "MANIFEST.json").write_text(
        json.dumps({"format": integrity.MANIFEST_FORMAT, "files": {"../x": {"sha256": "0", "size": 1}}})
    )
    with pytest.raises(TamperedModelError, match="unsafe path"):
        verify_model_dir(cls_model)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "paddle_runtime.cli_resilience", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_sign_and_verify_commands(cls_model: Path, hmac_key_file: Path, keypair: KeyPair) -> None:
    r = _cli(
        "sign", str(cls_model), "--hmac-key-file", str(hmac_key_file), "--private-key", str(keypair.private)
    )
    assert r.returncode == 0, r.stderr
    assert "manifest, hmac, model-signing" in r.stdout
    r = _cli(
        "verify", str(cls_model), "--hmac-key-file", str(hmac_key_file), "--public-key", str(keypair.public)
    )
    assert r.returncode == 0, r.stderr
    assert "OK (sha256, hmac, model-signing)" in r.stdout
    (cls_model / "inference.pdmodel").write_bytes(b"garbage")
    r = _cli("verify", str(cls_model), "--hmac-key-file", str(hmac_key_file))
    assert r.returncode == 5
    assert "verify failed: checksum" in r.stderr or "verify failed: incomplete" in r.stderr
