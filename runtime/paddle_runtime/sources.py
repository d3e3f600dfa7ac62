"""Model sources for ``fetch``: a local path or archive, HTTP(S), S3; each copies into a staging dir.

Every source has ``fetch_into(staging: Path) -> None`` and raises the :class:`~.errors.FetchError`
family (or an integrity error for content that cannot be right); :func:`source_for` picks one by URI.

- a local directory (a mounted PVC), a tar archive, or another store layout (``current`` resolved);
- ``http(s)://.../model.tar.gz`` (an archive) or ``http(s)://.../dir/`` (a signed directory: its
  ``MANIFEST.json`` says which files to get), with retries, exponential backoff and progress logs;
- ``s3://bucket/prefix`` through boto3 (extra ``[s3]``), endpoint overridable for MinIO/Ceph/OSS.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import logging
import os
import random
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from .errors import (
    DiskFullError,
    FetchConfigError,
    FetchError,
    IncompleteModelError,
    SourceAuthError,
    SourceNotFoundError,
    SourceUnavailableError,
    TamperedModelError,
)
from .integrity import HMAC_NAME, MANIFEST_NAME, SIGNATURE_NAME, Manifest
from .store import resolve_current

log = logging.getLogger("paddle_runtime.fetch")

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_CHUNK = 1 << 20


@dataclass
class SourceOptions:
    """What a source needs to know: retries, timeouts, credentials."""

    retries: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    timeout_s: float = 30.0
    token_file: str | None = None
    s3_endpoint: str | None = None
    progress_interval_s: float = 5.0


class Source(Protocol):
    """A place a model can be copied from."""

    def fetch_into(self, staging: Path) -> None:
        """Copy the model into the (empty, existing) ``staging`` directory."""
        ...


def _check_free_space(where: Path, need: int) -> None:
    free = shutil.disk_usage(where).free
    # 1 % slack: file system metadata and the manifest itself also take blocks.
    if need and need * 1.01 > free:
        raise DiskFullError(f"{need} bytes needed in {where}, only {free} free")


class _Progress:
    """Log download progress at most every ``interval_s`` seconds (init container logs stay readable)."""

    def __init__(self, what: str, total: int | None, interval_s: float) -> None:
        self.what, self.total, self.interval_s = what, total, interval_s
        self.done = 0
        self.start = self.last = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            self.log()

    def log(self) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        total = f"/{self.total / 2**20:.1f}" if self.total else ""
        log.info(
            "fetch %s: %.1f%s MiB%s at %.1f MiB/s",
            self.what,
            self.done / 2**20,
            total,
            pct,
            self.done / 2**20 / elapsed,
        )


class _HttpSource:
    def __init__(self, url: str, opts: SourceOptions) -> None:
        self.url, self.opts = url, opts
        self.headers = {"User-Agent": "paddle-runtime-fetch"}
        token_file = opts.token_file or os.environ.get("PADDLE_RUNTIME_FETCH_TOKEN_FILE")
        if token_file:
            try:
                token = Path(token_file).read_text().strip()
            except OSError as exc:
                raise FetchConfigError(f"cannot read token file {token_file}: {exc.strerror}") from exc
            self.headers["Authorization"] = f"Bearer {token}"

    def _join(self, rel: str) -> str:
        base = self.url if self.url.endswith("/") else self.url + "/"
        return urllib.parse.urljoin(base, urllib.parse.quote(rel))

    def fetch_into(self, staging: Path) -> None:
        path = urllib.parse.urlparse(self.url).path
        if path.endswith(ARCHIVE_SUFFIXES):
            archive = staging.parent / (staging.name + ".archive")
            try:
                self._download(self.url, archive, None, os.path.basename(path))
                _extract_archive(archive, staging)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    archive.unlink()
            return
        # A directory over HTTP cannot be listed; its manifest is the listing.
        try:
            raw = self._get_small(self._join(MANIFEST_NAME))
        except SourceNotFoundError:
            raise SourceNotFoundError(
                f"no {MANIFEST_NAME} at {self._join(MANIFEST_NAME)}: serve a signed model directory "
                f"(paddle-runtime sign) or point --uri at a .tar.gz archive"
            ) from None
        manifest = Manifest.parse(raw, self._join(MANIFEST_NAME))
        _check_free_space(staging, manifest.total_bytes)
        for rel, entry in sorted(manifest.files.items()):
            self._download(self._join(rel), staging / rel, entry.size, rel, expect_sha256=entry.sha256)
        for optional in (HMAC_NAME, SIGNATURE_NAME):
            with contextlib.suppress(SourceNotFoundError):
                (staging / optional).write_bytes(self._get_small(self._join(optional)))
        # The manifest lands last, as everywhere else.
        (staging / MANIFEST_NAME).write_bytes(raw)

    def _get_small(self, url: str) -> bytes:
        out: list[bytes] = []

        def read(resp) -> None:
            out.append(resp.read())

        self._with_retries(url, read)
        return b"".join(out)

    def _download(
        self, url: str, to: Path, size: int | None, what: str, expect_sha256: str | None = None
    ) -> None:
        to.parent.mkdir(parents=True, exist_ok=True)

        def read(resp) -> None:
            length = resp.headers.get("Content-Length")
            total = size if size is not None else (int(length) if length and length.isdigit() else None)
            progress = _Progress(what, total, self.opts.progress_interval_s)
            h = hashlib.sha256()
            with open(to, "wb") as f:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    progress.add(len(chunk))
            if length and length.isdigit() and progress.done != int(length):
                # A connection cut mid-body is a transient fault: retry rather than fail the checksum.
                raise _Transient(f"{url}: got {progress.done} of {length} bytes")
            if progress.done >= 4 * _CHUNK:
                progress.log()
            if expect_sha256 is not None and h.hexdigest() != expect_sha256:
                raise TamperedModelError(
                    f"SHA-256 of {what} downloaded from {url} does not match the manifest"
                )

        self._with_retries(url, read)

    def _with_retries(self, url: str, consume: Callable) -> None:
        attempts = max(1, self.opts.retries + 1)
        for attempt in range(attempts):
            retry_after: float | None = None
            try:
                req = urllib.request.Request(url, headers=self.headers)
                with urllib.request.urlopen(req, timeout=self.opts.timeout_s) as resp:
                    consume(resp)
                return
            except urllib.error.HTTPError as exc:
                if exc.code == 404 or exc.code == 410:
                    raise SourceNotFoundError(f"{url}: HTTP {exc.code}") from None
                if exc.code in (401, 403):
                    raise SourceAuthError(f"{url}: HTTP {exc.code} (check the token / credentials)") from None
                if exc.code not in (408, 425, 429) and exc.code < 500:
                    raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
                ra = exc.headers.get("Retry-After") if exc.headers else None
                retry_after = float(ra) if ra and ra.isdigit() else None
                reason = f"HTTP {exc.code}"
            except (
                TimeoutError,
                urllib.error.URLError,
                ConnectionError,
                http.client.HTTPException,
                _Transient,
            ) as exc:
                reason = str(getattr(exc, "reason", exc))
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise DiskFullError(f"disk full while writing {url}: {exc}") from None
                raise
            if attempt + 1 >= attempts:
                raise SourceUnavailableError(f"{url}: {reason} (gave up after {attempts} attempts)")
            delay = min(self.opts.backoff_max_s, self.opts.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
            delay = max(delay, retry_after or 0.0)
            log.warning(
                "fetch %s failed (%s); retry %d/%d in %.1f s", url, reason, attempt + 1, attempts - 1, delay
            )
            time.sleep(delay)


class _Transient(Exception):
    """A fault worth another attempt (short body)."""


class _LocalSource:
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def fetch_into(self, staging: Path) -> None:
        src = self.path
        if not src.exists():
            raise SourceNotFoundError(f"{src} does not exist")
        if not os.access(src, os.R_OK):
            raise SourceAuthError(f"{src} is not readable by uid {os.getuid()}")
        if src.is_file():
            if not src.name.endswith(ARCHIVE_SUFFIXES):
                raise SourceNotFoundError(f"{src} is a file, not a model directory or a .tar(.gz) archive")
            _extract_archive(src, staging)
            return
        src = resolve_current(src)
        files = [p for p in src.rglob("*") if p.is_file()]
        if not files:
            raise SourceNotFoundError(f"{src} holds no files")
        _check_free_space(staging, sum(p.stat().st_size for p in files))
        for p in files:
            rel = p.relative_to(src)
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, staging / rel)


class _S3Source:
    def __init__(self, uri: str, opts: SourceOptions) -> None:
        parsed = urllib.parse.urlparse(uri)
        self.bucket, self.prefix, self.opts = parsed.netloc, parsed.path.lstrip("/"), opts
        if not self.bucket:
            raise FetchConfigError(f"{uri}: no bucket name (use s3://bucket/prefix)")
        try:
            import boto3  # optional extra: pip install 'paddle-sla-operator[s3]'
            import boto3.exceptions
            import botocore.config
            import botocore.exceptions
        except ImportError as exc:
            raise FetchConfigError("s3:// needs boto3: pip install 'paddle-sla-operator[s3]'") from exc
        self._exc = botocore.exceptions
        self._boto3_exc = boto3.exceptions
        endpoint = opts.s3_endpoint or os.environ.get("PADDLE_RUNTIME_S3_ENDPOINT") or None
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            config=botocore.config.Config(
                retries={"max_attempts": max(1, opts.retries + 1), "mode": "standard"},
                connect_timeout=opts.timeout_s,
                read_timeout=opts.timeout_s,
            ),
        )

    def _map(self, exc: Exception, what: str) -> FetchError:
        if isinstance(exc, self._exc.NoCredentialsError | self._exc.PartialCredentialsError):
            return SourceAuthError(
                f"{what}: no S3 credentials ({exc}); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(
            exc,
            self._exc.ParamValidationError
            | self._exc.EndpointResolutionError
            | self._exc.InvalidEndpointConfigurationError
            | self._exc.NoRegionError,
        ):
            # A malformed --s3-endpoint or bucket name: retrying cannot help; say which setting is wrong.
            return FetchConfigError(
                f"{what}: {exc} (check --s3-endpoint / PADDLE_RUNTIME_S3_ENDPOINT and the URI)"
            )
        if isinstance(exc, self._exc.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            detail = f"{code} {err.get('Message') or ''}".strip()
            op = getattr(exc, "operation_name", "")
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
                return SourceNotFoundError(
                    f"{what}: {detail} ({op}; check the bucket name and the key/prefix)"
                )
            if code in ("401", "403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return SourceAuthError(
                    f"{what}: {detail} ({op}; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the "
                    f"bucket policy)"
                )
            if 400 <= status < 500 and status not in (408, 429):
                # Not worth a retry (a bad bucket name, a bad request): name it rather than "unavailable".
                return FetchError(f"{what}: {detail} ({op}, HTTP {status})")
        return SourceUnavailableError(f"{what}: {exc}")

    def fetch_into(self, staging: Path) -> None:
        where = f"s3://{self.bucket}/{self.prefix}"
        try:
            if self.prefix.endswith(ARCHIVE_SUFFIXES):
                archive = staging.parent / (staging.name + ".archive")
                try:
                    self.client.download_file(self.bucket, self.prefix, str(archive))
                    _extract_archive(archive, staging)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        archive.unlink()
                return
            prefix = self.prefix.rstrip("/") + "/" if self.prefix else ""
            objects = []
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                objects += [o for o in page.get("Contents", []) if not o["Key"].endswith("/")]
            if not objects:
                raise SourceNotFoundError(f"{where}: no objects under this prefix")
            _check_free_space(staging, sum(int(o["Size"]) for o in objects))
            total = sum(int(o["Size"]) for o in objects)
            progress = _Progress(where, total, self.opts.progress_interval_s)
            # Manifest last, so an interrupted download never holds a manifest over missing files.
            objects.sort(key=lambda o: o["Key"].endswith(MANIFEST_NAME))
            for o in objects:
                rel = o["Key"][len(prefix) :]
                # An absolute part ("prefix//etc/x") would make ``staging / rel`` point outside staging.
                rel_p = PurePosixPath(rel)
                if rel_p.is_absolute() or ".." in rel_p.parts or rel.startswith("\\"):
                    raise TamperedModelError(f"{where}: unsafe object key {o['Key']!r}")
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.bucket, o["Key"], str(staging / rel), Callback=progress.add)
            progress.log()
        except FetchError:
            raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(f"disk full while writing {where}: {exc}") from None
            raise
        except (self._exc.BotoCoreError, self._exc.ClientError) as exc:
            raise self._map(exc, where) from None
        except self._boto3_exc.Boto3Error as exc:
            # download_file's own RetriesExceededError: the body kept breaking off after every retry.
            raise SourceUnavailableError(f"{where}: {exc}") from None


def _source_for(uri: str, opts: SourceOptions):
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        return _HttpSource(uri, opts)
    if scheme == "s3":
        return _S3Source(uri, opts)
    if scheme == "file":
        return _LocalSource(urllib.parse.unquote(urllib.parse.urlparse(uri).path))
    if scheme in ("", "pvc") or len(scheme) == 1:  # "" = plain path; 1 letter = a Windows drive
        return _LocalSource(uri.split("://", 1)[1] if scheme == "pvc" else uri)
    raise FetchConfigError(f"unsupported URI scheme {scheme!r} in {uri} (use a path, http(s)://, s3://)")


def _extract_archive(archive: Path, into: Path) -> None:
    try:
        with tarfile.open(archive) as tf:
            # filter="data" refuses absolute paths, .. and device files: an archive is untrusted input.
            tf.extractall(into, filter="data")
    except (tarfile.TarError, EOFError) as exc:
        raise IncompleteModelError(f"{archive.name} is not a readable tar archive: {exc}") from exc
    # model.tar.gz usually wraps one top-level directory; the model is inside it.
    entries = list(into.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        inner = entries[0]
        for child in list(inner.iterdir()):
            child.rename(into / child.name)
        inner.rmdir()


def source_for(uri: str, opts: SourceOptions) -> Source:
    """The source for ``uri``: a path, ``file://``, ``pvc://``, ``http(s)://`` or ``s3://``."""
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        return _HttpSource(uri, opts)
    if scheme == "s3":
        return _S3Source(uri, opts)
    if scheme == "file":
        return _LocalSource(urllib.parse.unquote(urllib.parse.urlparse(uri).path))
    if scheme in ("", "pvc") or len(scheme) == 1:  # "" = plain path; 1 letter = a Windows drive
        return _LocalSource(uri.split("://", 1)[1] if scheme == "pvc" else uri)
    raise FetchConfigError(f"unsupported URI scheme {scheme!r} in {uri} (use a path, http(s)://, s3://)")
