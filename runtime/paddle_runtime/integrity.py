"""Model integrity: a SHA-256 manifest, an HMAC over it, and optional OpenSSF model signing.

A signed model directory holds, next to the model files:

- ``MANIFEST.json``: every model file with its size and SHA-256. It is written *last* (through a
  temporary file and a rename), so its presence means the files it lists were complete when it was
  written; a copy interrupted half-way has no manifest or a manifest whose files are short.
- ``MANIFEST.hmac``: ``hmac-sha256:<hex>`` over the exact bytes of ``MANIFEST.json``, keyed by a
  shared secret (a Kubernetes Secret mounted as a file, or an env var).
- ``model.sig``: an OpenSSF ``model-signing`` bundle (elliptic-curve key pair, fully offline) over
  the directory, manifest included. It is the stronger check: the verifier holds only a public key.

The same :func:`verify_model_dir` runs in ``fetch`` (before ``current`` is switched), at start and on
every hot reload, so a model refused in one place is refused everywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .errors import (
    BadSignatureError,
    IncompleteModelError,
    SigningUnavailableError,
    TamperedModelError,
    UnsignedModelError,
)

log = logging.getLogger(__name__)

MANIFEST_NAME = "MANIFEST.json"
HMAC_NAME = "MANIFEST.hmac"
SIGNATURE_NAME = "model.sig"
MANIFEST_FORMAT = "paddle-runtime-manifest/v1"
# Files that describe the model rather than belong to it; never listed in the manifest.
INTEGRITY_FILES = frozenset({MANIFEST_NAME, HMAC_NAME, SIGNATURE_NAME})
# The env var that may hold the HMAC key itself (for a Secret exposed through `env`, not a volume).
HMAC_KEY_ENV = "PADDLE_RUNTIME_HMAC_KEY"
# Directories the runtime itself may write into a model directory (Paddle's TensorRT engine cache);
# they are derived data, so they are neither signed nor treated as tampering.
DERIVED_DIRS = frozenset({"_opt_cache"})
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    """One model file as the manifest records it."""

    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """The parsed ``MANIFEST.json``: files by relative POSIX path, plus an optional version label."""

    files: Mapping[str, FileEntry]
    version: str | None = None
    created: str | None = None
    raw: bytes = field(default=b"", repr=False)

    @property
    def digest(self) -> str:
        """SHA-256 of the manifest bytes: one short id for the whole model content."""
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def total_bytes(self) -> int:
        """Sum of the listed file sizes."""
        return sum(e.size for e in self.files.values())

    @classmethod
    def parse(cls, raw: bytes, where: str = MANIFEST_NAME) -> Manifest:
        """Parse and check a manifest body; raises :class:`TamperedModelError` when it is not one."""
        try:
            doc = json.loads(raw)
            if doc.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, expected {MANIFEST_FORMAT!r}")
            files = {
                str(name): FileEntry(sha256=str(e["sha256"]).lower(), size=int(e["size"]))
                for name, e in doc["files"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TamperedModelError(f"{where} is not a valid manifest: {exc}") from exc
        for name in files:
            # A manifest naming ../x or /etc/x would make fetch write outside the version directory.
            if name.startswith("/") or ".." in Path(name).parts or not name:
                raise TamperedModelError(f"{where} lists an unsafe path: {name!r}")
        return cls(files=files, version=doc.get("version"), created=doc.get("created"), raw=raw)


@dataclass(frozen=True)
class VerifyResult:
    """What :func:`verify_model_dir` established about a directory."""

    manifest: Manifest | None
    checks: tuple[str, ...]  # e.g. ("sha256", "hmac", "model-signing"); empty when nothing was checked


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def iter_model_files(model_dir: Path) -> Iterator[tuple[str, Path]]:
    """Yield (relative POSIX path, path) for every regular file that belongs to the model.

    Symlinks are refused: one could point outside the directory and change after verification.
    """
    for root, dirs, files in os.walk(model_dir):
        if Path(root) == Path(model_dir):
            dirs[:] = [d for d in dirs if d not in DERIVED_DIRS]
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            p = Path(root) / name
            rel = p.relative_to(model_dir).as_posix()
            if rel in INTEGRITY_FILES:
                continue
            if p.is_symlink():
                raise TamperedModelError(
                    f"{rel} in {model_dir} is a symlink; model files must be regular files"
                )
            yield rel, p


def load_hmac_key(
    key_file: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> bytes | None:
    """The HMAC key from ``key_file``, else from ``$PADDLE_RUNTIME_HMAC_KEY``, else None (HMAC off).

    A trailing newline is stripped: ``kubectl create secret --from-file`` and ``echo`` both add one,
    and a key that silently differs by a newline would be a miserable bug to find.
    """
    env = os.environ if env is None else env
    if key_file:
        try:
            key = Path(key_file).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise SigningUnavailableError(f"cannot read HMAC key file {key_file}: {exc.strerror}") from exc
        source = str(key_file)
    elif env.get(HMAC_KEY_ENV):
        key, source = env[HMAC_KEY_ENV].encode(), f"${HMAC_KEY_ENV}"
    else:
        return None
    if not key:
        raise SigningUnavailableError(f"HMAC key from {source} is empty")
    return key


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _hmac_hex(key: bytes, raw: bytes) -> str:
    return hmac.new(key, raw, hashlib.sha256).hexdigest()


def build_manifest(model_dir: Path, version: str | None = None) -> bytes:
    """Hash every model file and return the manifest bytes (deterministic key order)."""
    files = {
        rel: {"sha256": sha256_file(p), "size": p.stat().st_size} for rel, p in iter_model_files(model_dir)
    }
    if not files:
        raise IncompleteModelError(f"{model_dir} holds no model files to sign")
    doc = {
        "format": MANIFEST_FORMAT,
        "version": version,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "algorithm": "sha256",
        "files": files,
    }
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def _model_signing():
    try:
        import model_signing  # optional extra: pip install 'paddle-sla-operator[signing]'
    except ImportError as exc:
        raise SigningUnavailableError(
            "a model-signing key is configured but the 'model-signing' package is not installed "
            "(pip install 'paddle-sla-operator[signing]')"
        ) from exc
    return model_signing


def _signing_hashing_config(ms):
    # model.sig cannot cover itself, and MANIFEST.hmac is added independently of the signature.
    return ms.hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME, HMAC_NAME], ignore_git_paths=False)


def sign_model_dir(
    model_dir: str | os.PathLike[str],
    *,
    hmac_key: bytes | None = None,
    private_key: str | os.PathLike[str] | None = None,
    version: str | None = None,
) -> Manifest:
    """Write ``MANIFEST.json`` (last, atomically), then ``MANIFEST.hmac`` and ``model.sig`` as asked."""
    d = Path(model_dir)
    if not d.is_dir():
        raise IncompleteModelError(f"{d} is not a directory")
    # Old integrity files would describe different content; drop them before the new manifest lands.
    for name in (HMAC_NAME, SIGNATURE_NAME):
        with contextlib.suppress(FileNotFoundError):
            (d / name).unlink()
    raw = build_manifest(d, version)
    _atomic_write(d / MANIFEST_NAME, raw)
    if hmac_key:
        _atomic_write(d / HMAC_NAME, f"hmac-sha256:{_hmac_hex(hmac_key, raw)}\n".encode())
    if private_key:
        ms = _model_signing()
        try:
            ms.signing.Config().set_hashing_config(_signing_hashing_config(ms)).use_elliptic_key_signer(
                private_key=Path(private_key)
            ).sign(d, d / SIGNATURE_NAME)
        except (ValueError, OSError) as exc:
            raise SigningUnavailableError(
                f"model-signing could not sign {d} with {private_key}: {exc}"
            ) from exc
    return Manifest.parse(raw, str(d / MANIFEST_NAME))


def read_manifest(model_dir: str | os.PathLike[str]) -> Manifest | None:
    """The parsed ``MANIFEST.json`` of a directory, or None when it has none."""
    p = Path(model_dir) / MANIFEST_NAME
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return None
    return Manifest.parse(raw, str(p))


def verify_hmac(manifest: Manifest, hmac_text: str, key: bytes, where: str) -> None:
    """Check ``MANIFEST.hmac`` against the manifest bytes; raises :class:`BadSignatureError`."""
    expected = _hmac_hex(key, manifest.raw)
    got = hmac_text.strip().removeprefix("hmac-sha256:")
    # compare_digest: a timing side channel here would let an attacker forge the tag byte by byte.
    if not hmac.compare_digest(expected, got):
        raise BadSignatureError(
            f"HMAC of {where} does not match the configured key (manifest edited or wrong key)"
        )


def verify_files(model_dir: Path, manifest: Manifest) -> None:
    """Every listed file present with its size and SHA-256, and no unlisted file."""
    for rel, entry in manifest.files.items():
        p = model_dir / rel
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise IncompleteModelError(
                f"{rel} is listed in the manifest but missing from {model_dir}"
            ) from None
        if size < entry.size:
            raise IncompleteModelError(
                f"{rel} in {model_dir} is truncated: {size} bytes, manifest says {entry.size}"
            )
        if size != entry.size:
            raise TamperedModelError(f"{rel} in {model_dir} is {size} bytes, manifest says {entry.size}")
    on_disk = {rel for rel, _ in iter_model_files(model_dir)}
    extra = sorted(on_disk - set(manifest.files))
    if extra:
        raise TamperedModelError(
            f"{model_dir} holds files the manifest does not list: {', '.join(extra[:5])}"
        )
    # Sizes first (cheap) so a half-written copy is named "incomplete", then the expensive hashes.
    for rel, entry in manifest.files.items():
        if sha256_file(model_dir / rel) != entry.sha256:
            raise TamperedModelError(f"SHA-256 of {rel} in {model_dir} does not match the manifest")


def verify_signature(model_dir: Path, public_key: str | os.PathLike[str]) -> None:
    """Check ``model.sig`` with the public key; raises an integrity error naming the problem."""
    sig = model_dir / SIGNATURE_NAME
    if not sig.is_file():
        raise UnsignedModelError(f"{model_dir} has no {SIGNATURE_NAME} and a public key is configured")
    ms = _model_signing()
    try:
        ms.verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key)).verify(model_dir, sig)
    except FileNotFoundError as exc:
        raise SigningUnavailableError(f"public key {public_key} not found") from exc
    except Exception as exc:  # model-signing raises ValueError, protobuf/crypto errors on a mangled bundle
        msg = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise BadSignatureError(f"model-signing verification of {model_dir} failed: {msg}") from exc


def verify_model_dir(
    model_dir: str | os.PathLike[str],
    *,
    hmac_key: bytes | None = None,
    public_key: str | os.PathLike[str] | None = None,
    require_manifest: bool = False,
) -> VerifyResult:
    """Check a model directory; raise an :class:`IntegrityError` subclass naming what is wrong.

    With a key configured (or ``require_manifest``) the manifest and the matching signature must be
    present. Without one, an existing manifest is still checked (it costs a hash pass and catches a
    truncated copy), and a directory without one is accepted as a plain unsigned model.
    """
    d = Path(model_dir)
    if not d.is_dir():
        raise IncompleteModelError(f"model directory {d} does not exist")
    required = require_manifest or bool(hmac_key) or public_key is not None
    manifest = read_manifest(d)
    if manifest is None:
        if required:
            raise UnsignedModelError(
                f"{d} has no {MANIFEST_NAME}: the model is unsigned or was not completely written"
            )
        return VerifyResult(manifest=None, checks=())
    checks = ["sha256"]
    if hmac_key:
        try:
            tag = (d / HMAC_NAME).read_text()
        except FileNotFoundError:
            raise UnsignedModelError(f"{d} has no {HMAC_NAME} and an HMAC key is configured") from None
        verify_hmac(manifest, tag, hmac_key, str(d / MANIFEST_NAME))
        checks.append("hmac")
    verify_files(d, manifest)
    if public_key is not None:
        verify_signature(d, public_key)
        checks.append("model-signing")
    log.debug("verified %s (%s)", d, ", ".join(checks))
    return VerifyResult(manifest=manifest, checks=tuple(checks))
