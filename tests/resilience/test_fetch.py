"""``paddle-runtime fetch`` against real files and a real local HTTP server with injected faults."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from paddle_runtime.errors import (
    BadSignatureError,
    SourceAuthError,
    SourceNotFoundError,
    SourceUnavailableError,
    TamperedModelError,
    UnsignedModelError,
)
from paddle_runtime.fetch import EXIT_CODES, FetchOptions, fetch
from paddle_runtime.integrity import (
    load_hmac_key,
    sign_model_dir,
)
from paddle_runtime.store import resolve_current

from .conftest import KeyPair

FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5.0}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "paddle_runtime.cli_resilience", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _same_tree(a: Path, b: Path) -> bool:
    fa = {p.relative_to(a): p.read_bytes() for p in a.rglob("*") if p.is_file()}
    fb = {p.relative_to(b): p.read_bytes() for p in b.rglob("*") if p.is_file()}
    return fa == fb


def test_local_fetch_writes_version_and_switches_current(
    cls_model: Path, tmp_path: Path, hmac_key_file: Path
) -> None:
    key = load_hmac_key(hmac_key_file)
    sign_model_dir(cls_model, hmac_key=key, version="v1")
    dest = tmp_path / "dest"
    r = fetch(str(cls_model), dest, FetchOptions(hmac_key=key))
    assert r.version == "v1" and r.changed and r.checks == ("sha256", "hmac")
    assert os.readlink(dest / "current") == "versions/v1"  # relative: survives a different mount path
    assert _same_tree(cls_model, resolve_current(dest))
    # An init container that restarts finds the same content and changes nothing.
    again = fetch(str(cls_model), dest, FetchOptions(hmac_key=key))
    assert again.version == "v1" and not again.changed
    assert [p.name for p in (dest / "versions").iterdir()] == ["v1"]


def test_new_version_switches_and_old_versions_are_pruned(cls_model: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    for i in range(5):
        (cls_model / "inference.pdiparams.info").write_bytes(f"build {i}".encode())
        sign_model_dir(cls_model, version=f"v{i}")
        fetch(str(cls_model), dest, FetchOptions(keep_versions=2))
        assert resolve_current(dest).name == f"v{i}"
    assert sorted(p.name for p in (dest / "versions").iterdir()) == ["v3", "v4"]


def test_same_label_different_content_gets_a_distinct_directory(cls_model: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    sign_model_dir(cls_model, version="v1")
    fetch(str(cls_model), dest)
    (cls_model / "inference.pdiparams.info").write_bytes(b"rebuilt")
    sign_model_dir(cls_model, version="v1")
    r = fetch(str(cls_model), dest)
    assert r.version.startswith("v1-") and resolve_current(dest).name == r.version


def test_tampered_local_source_is_refused_and_current_kept(
    cls_model: Path, tmp_path: Path, hmac_key_file: Path
) -> None:
    key = load_hmac_key(hmac_key_file)
    dest = tmp_path / "dest"
    sign_model_dir(cls_model, hmac_key=key, version="good")
    fetch(str(cls_model), dest, FetchOptions(hmac_key=key))
    sign_model_dir(cls_model, hmac_key=key, version="bad")
    with open(cls_model / "inference.pdiparams", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(TamperedModelError):
        fetch(str(cls_model), dest, FetchOptions(hmac_key=key))
    assert resolve_current(dest).name == "good"
    # No staging directory is left behind.
    assert sorted(p.name for p in (dest / "versions").iterdir()) == ["good"]


def test_unsigned_source_refused_when_key_configured(
    cls_model: Path, tmp_path: Path, keypair: KeyPair
) -> None:
    with pytest.raises(UnsignedModelError):
        fetch(str(cls_model), tmp_path / "dest", FetchOptions(public_key=str(keypair.public)))
    assert not (tmp_path / "dest" / "current").exists()


def test_tar_archive_source(cls_model: Path, tmp_path: Path, keypair: KeyPair) -> None:
    sign_model_dir(cls_model, private_key=keypair.private, version="arch")
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(cls_model, arcname="ch_cls")
    r = fetch(str(archive), tmp_path / "dest", FetchOptions(public_key=str(keypair.public)))
    assert r.version == "arch" and r.checks == ("sha256", "model-signing")
    assert _same_tree(cls_model, r.path)


def test_http_directory_with_flaky_first_response_retries(
    cls_model: Path, tmp_path: Path, http_dir, hmac_key_file: Path, keypair: KeyPair
) -> None:
    key = load_hmac_key(hmac_key_file)
    sign_model_dir(cls_model, hmac_key=key, private_key=keypair.private, version="h1")
    srv = http_dir(cls_model)
    srv.fail_first = {"MANIFEST.json": 1, "inference.pdiparams": 2}
    srv.truncate_once = {"inference.pdmodel"}
    r = fetch(srv.url, tmp_path / "dest", FetchOptions(hmac_key=key, public_key=str(keypair.public), **FAST))
    assert r.version == "h1" and r.checks == ("sha256", "hmac", "model-signing")
    assert srv.requests.count("MANIFEST.json") == 2  # one 503, then the real answer
    assert srv.requests.count("inference.pdiparams") == 3
    assert srv.requests.count("inference.pdmodel") == 2  # the short body was retried
    assert _same_tree(cls_model, r.path)


def test_http_wrong_checksum_exits_nonzero_and_switches_nothing(
    cls_model: Path, tmp_path: Path, http_dir
) -> None:
    sign_model_dir(cls_model, version="c1")
    dest = tmp_path / "dest"
    srv = http_dir(cls_model)
    fetch(srv.url, dest, FetchOptions(**FAST))
    (cls_model / "inference.pdiparams.info").write_bytes(b"next")
    sign_model_dir(cls_model, version="c2")
    good = (cls_model / "inference.pdiparams").read_bytes()
    srv.override["inference.pdiparams"] = good[:-4] + b"XXXX"  # same size, different bytes
    r = _cli("fetch", "--uri", srv.url, "--dest", str(dest), "--backoff-s", "0.01")
    assert r.returncode == EXIT_CODES["checksum"] == 5, r.stderr
    assert "fetch failed: checksum: SHA-256 of inference.pdiparams" in r.stderr
    assert resolve_current(dest).name == "c1"
    assert sorted(p.name for p in (dest / "versions").iterdir()) == ["c1"]


def test_http_failures_are_named(cls_model: Path, tmp_path: Path, http_dir) -> None:
    sign_model_dir(cls_model)
    srv = http_dir(cls_model)
    with pytest.raises(SourceNotFoundError, match="MANIFEST.json"):
        fetch(srv.url + "nothing-here/", tmp_path / "d1", FetchOptions(**FAST))
    srv.required_token = "tok"
    with pytest.raises(SourceAuthError, match="401"):
        fetch(srv.url, tmp_path / "d2", FetchOptions(**FAST))
    token = tmp_path / "token"
    token.write_text("tok\n")
    assert fetch(srv.url, tmp_path / "d3", FetchOptions(token_file=str(token), **FAST)).checks == ("sha256",)
    srv.required_token = None
    srv.fail_first = {"MANIFEST.json": 100}
    with pytest.raises(SourceUnavailableError, match="gave up after 3 attempts"):
        fetch(srv.url, tmp_path / "d4", FetchOptions(retries=2, **FAST))


def test_cli_exit_codes_name_the_failure(
    cls_model: Path, tmp_path: Path, hmac_key_file: Path, keypair: KeyPair
) -> None:
    r = _cli("fetch", "--uri", str(tmp_path / "missing"), "--dest", str(tmp_path / "d"))
    assert r.returncode == 3 and "fetch failed: not found" in r.stderr
    sign_model_dir(cls_model, hmac_key=b"other key")
    r = _cli(
        "fetch", "--uri", str(cls_model), "--dest", str(tmp_path / "d"), "--hmac-key-file", str(hmac_key_file)
    )
    assert r.returncode == 6 and "fetch failed: signature: HMAC" in r.stderr
    r = _cli(
        "fetch", "--uri", str(cls_model), "--dest", str(tmp_path / "d"), "--public-key", str(keypair.public)
    )
    assert r.returncode == 6 and "fetch failed: unsigned" in r.stderr
    r = _cli("fetch", "--uri", "ftp://x/y", "--dest", str(tmp_path / "d"))
    assert r.returncode == 2 and "unsupported URI scheme" in r.stderr
    assert not (tmp_path / "d" / "current").exists()


def test_disk_full_is_named(tmp_path: Path) -> None:
    """A source bigger than the destination's free space is refused before anything is copied."""
    dest = tmp_path / "dest"
    dest.mkdir()
    big = tmp_path / "big"
    big.mkdir()
    free = shutil.disk_usage(dest).free
    with open(big / "weights.pdiparams", "wb") as f:
        f.truncate(free + (1 << 30))  # sparse: takes no real space in the source
    r = _cli("fetch", "--uri", str(big), "--dest", str(dest))
    assert r.returncode == 7 and "fetch failed: disk full" in r.stderr, r.stderr
    assert not (dest / "current").exists()


def test_bad_signature_from_http(cls_model: Path, tmp_path: Path, http_dir, keypair: KeyPair) -> None:
    from .conftest import make_keypair

    sign_model_dir(cls_model, private_key=make_keypair(tmp_path, "attacker").private)
    srv = http_dir(cls_model)
    with pytest.raises(BadSignatureError):
        fetch(srv.url, tmp_path / "dest", FetchOptions(public_key=str(keypair.public), **FAST))


def test_http_archive_source(cls_model: Path, tmp_path: Path, http_dir, hmac_key_file: Path) -> None:
    key = load_hmac_key(hmac_key_file)
    sign_model_dir(cls_model, hmac_key=key, version="t1")
    pub = tmp_path / "pub"
    pub.mkdir()
    with tarfile.open(pub / "model.tar.gz", "w:gz") as tf:
        tf.add(cls_model, arcname="cls")  # one top-level directory, as PaddleOCR's tarballs have
    srv = http_dir(pub)
    srv.fail_first = {"model.tar.gz": 1}
    r = fetch(srv.url + "model.tar.gz", tmp_path / "dest", FetchOptions(hmac_key=key, **FAST))
    assert r.version == "t1" and r.checks == ("sha256", "hmac")
    assert _same_tree(cls_model, r.path)
    assert not list((tmp_path / "dest" / "versions").glob("*.archive"))


def test_s3_without_the_extra_is_a_named_config_error(tmp_path: Path) -> None:
    # boto3 is in the dev extra; None in sys.modules makes `import boto3` fail as if it were not installed.
    code = (
        "import sys; sys.modules['boto3'] = None; "
        "from paddle_runtime.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "fetch",
            "--uri",
            "s3://bucket/models/ocr",
            "--dest",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "s3:// needs boto3" in r.stderr, r.stderr


def _with_model_yaml_version(model: Path, version: str | None) -> None:
    (model / "model.yaml").unlink(missing_ok=True)
    if version is not None:
        (model / "model.yaml").write_text(f"version: {version}\n")


def test_version_directory_is_named_by_flag_then_manifest_then_model_yaml(cls_model: Path, tmp_path: Path) -> None:
    from paddle_runtime.model_dir import load_model_files

    _with_model_yaml_version(cls_model, "b")
    r = fetch(str(cls_model), tmp_path / "flag", FetchOptions(version="g0"))
    assert r.path.name == "g0"
    # What the runtime reports: model.yaml's version first, the directory name only without one.
    assert load_model_files(tmp_path / "flag").version == "b"
    assert fetch(str(cls_model), tmp_path / "yaml").path.name == "b"
    sign_model_dir(cls_model, version="m1")
    assert fetch(str(cls_model), tmp_path / "manifest").path.name == "m1"
    assert fetch(str(cls_model), tmp_path / "empty-flag", FetchOptions(version="")).path.name == "m1"


def test_runtime_reports_the_directory_name_without_a_model_yaml_version(cls_model: Path, tmp_path: Path) -> None:
    from paddle_runtime.model_dir import load_model_files

    _with_model_yaml_version(cls_model, None)
    fetch(str(cls_model), tmp_path / "d", FetchOptions(version="g0"))
    assert load_model_files(tmp_path / "d").version == "g0"
