"""Model fetch: copy a model from a path, an HTTP(S) server or S3 into ``DEST/versions/<v>/``.

This is the init container's job (``paddle-runtime fetch --uri URI --dest DIR``) and also how a new
version is published next to a running server. The order is what makes it safe:

1. download into a hidden staging directory ``DEST/versions/.incoming-*`` (readers never look there);
2. verify it (:mod:`paddle_runtime.integrity`): checksums always when a manifest exists, HMAC and
   model-signing when keys are configured;
3. rename the staging directory to ``DEST/versions/<version>`` (atomic on one file system);
4. switch ``DEST/current`` by creating a new symlink and renaming it over the old one (atomic), so a
   reader sees the old version or the new one, never a mix and never a half-written directory.

Any failure leaves ``current`` untouched and removes the staging directory. The CLI exits with a
code and a message that name the failure (:data:`EXIT_CODES`).

Sources:
- a local directory (a mounted PVC), a tar archive, or another ``DEST`` layout (``current`` resolved);
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
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import yaml

from paddle_runtime.integrity import (
    HMAC_NAME,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    IncompleteModelError,
    IntegrityError,
    Manifest,
    TamperedModelError,
    verify_model_dir,
)

log = logging.getLogger(__name__)

CURRENT = "current"
VERSIONS = "versions"
_STAGING_PREFIX = ".incoming-"
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_CHUNK = 1 << 20
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class FetchError(Exception):
    """A fetch failed for a reason outside the model's content. ``kind`` names it for the exit message."""

    kind = "error"


class SourceNotFoundError(FetchError):
    kind = "not found"


class SourceAuthError(FetchError):
    kind = "auth"


class SourceUnavailableError(FetchError):
    """The source kept failing (network, 5xx) after every retry."""

    kind = "unavailable"


class DiskFullError(FetchError):
    kind = "disk full"


class FetchConfigError(FetchError):
    kind = "config"


# Exit status per failure kind, so an init container's restart reason is readable from the pod status.
EXIT_CODES: dict[str, int] = {
    "config": 2,
    "not found": 3,
    "auth": 4,
    "checksum": 5,
    "incomplete": 5,
    "signature": 6,
    "unsigned": 6,
    "disk full": 7,
    "unavailable": 8,
    "error": 1,
    "integrity": 5,
}


@dataclass
class FetchOptions:
    """How to fetch and what to require; the CLI flags map onto these one to one."""

    hmac_key: bytes | None = None
    public_key: str | None = None
    require_manifest: bool = False
    version: str | None = None
    retries: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    timeout_s: float = 30.0
    token_file: str | None = None
    s3_endpoint: str | None = None
    keep_versions: int = 3
    progress_interval_s: float = 5.0


@dataclass(frozen=True)
class FetchResult:
    version: str
    path: Path
    changed: bool  # False when the same content was already current (an init container restart)
    checks: tuple[str, ...]


# ---------------------------------------------------------------- the DEST layout


def resolve_current(dest: str | os.PathLike[str]) -> Path:
    """The directory ``serve`` should load: ``DEST/current`` resolved when present, else DEST itself."""
    d = Path(dest)
    cur = d / CURRENT
    if cur.is_symlink() or cur.exists():
        return cur.resolve()
    return d


def switch_current(dest: Path, version_dir: Path) -> None:
    """Point ``dest/current`` at ``version_dir`` atomically (a new symlink renamed over the old one).

    The link is relative so the volume can be mounted at another path in the serving container.
    """
    target = os.path.relpath(version_dir, dest)
    tmp = dest / f".{CURRENT}.{os.getpid()}.{random.randrange(1 << 30)}"
    os.symlink(target, tmp)
    try:
        os.replace(tmp, dest / CURRENT)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(dest)


def _fsync_dir(d: Path) -> None:
    # Without this a power loss can forget the rename even though the files are on disk.
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _version_label(staged: Path, manifest: Manifest | None, explicit: str | None) -> str:
    if explicit:
        label = explicit
    elif manifest is not None and manifest.version:
        label = str(manifest.version)
    else:
        label = _model_yaml_version(staged) or ""
    if label and not _VERSION_RE.match(label):
        raise FetchConfigError(f"version {label!r} is not a safe directory name ([A-Za-z0-9._-], max 128)")
    if not label:
        digest = manifest.digest[:8] if manifest is not None else _tree_digest(staged)[:8]
        label = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{digest}"
    return label


def _model_yaml_version(d: Path) -> str | None:
    p = d / "model.yaml"
    if not p.is_file():
        return None
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError:
        return None  # model_dir.py reports a broken model.yaml when the model loads; not fetch's job
    v = doc.get("version") if isinstance(doc, dict) else None
    return str(v) if v not in (None, "") else None


def _tree_digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(x for x in d.rglob("*") if x.is_file()):
        h.update(p.relative_to(d).as_posix().encode())
        h.update(str(p.stat().st_size).encode())
    return h.hexdigest()


def _same_content(a: Path, b: Path) -> bool:
    ma, mb = a / MANIFEST_NAME, b / MANIFEST_NAME
    if ma.is_file() and mb.is_file():
        return ma.read_bytes() == mb.read_bytes()
    return False


def _gc_versions(dest: Path, keep: int) -> None:
    """Drop the oldest version directories beyond ``keep``; never the current one.

    A loaded predictor holds its weights in memory, so removing its directory does not affect it.
    """
    if keep <= 0:
        return
    versions = dest / VERSIONS
    current = resolve_current(dest)
    dirs = sorted(
        (p for p in versions.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
    )
    for p in dirs[:-keep] if len(dirs) > keep else []:
        if p.resolve() != current:
            log.info("removing old model version %s", p.name)
            shutil.rmtree(p, ignore_errors=True)


def _check_free_space(where: Path, need: int) -> None:
    free = shutil.disk_usage(where).free
    # 1 % slack: file system metadata and the manifest itself also take blocks.
    if need and need * 1.01 > free:
        raise DiskFullError(f"{need} bytes needed in {where}, only {free} free")


# ---------------------------------------------------------------- sources


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
    def __init__(self, url: str, opts: FetchOptions) -> None:
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
        if path.endswith(_ARCHIVE_SUFFIXES):
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
            if not src.name.endswith(_ARCHIVE_SUFFIXES):
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
    def __init__(self, uri: str, opts: FetchOptions) -> None:
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
            if self.prefix.endswith(_ARCHIVE_SUFFIXES):
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


def _source_for(uri: str, opts: FetchOptions):
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


# ---------------------------------------------------------------- entry point


def fetch(uri: str, dest: str | os.PathLike[str], opts: FetchOptions | None = None) -> FetchResult:
    """Fetch ``uri`` into ``dest/versions/<version>``, verify it, and switch ``dest/current`` to it."""
    opts = opts or FetchOptions()
    dest_p = Path(dest)
    versions = dest_p / VERSIONS
    try:
        versions.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=versions))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"cannot create {versions}: {exc.strerror}") from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise FetchConfigError(f"cannot write to {dest_p}: {exc.strerror}") from None
        raise
    t0 = time.monotonic()
    try:
        try:
            _source_for(uri, opts).fetch_into(staging)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(f"disk full while fetching {uri} into {dest_p}: {exc.strerror}") from None
            raise
        result = verify_model_dir(
            staging,
            hmac_key=opts.hmac_key,
            public_key=opts.public_key,
            require_manifest=opts.require_manifest,
        )
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700; the serving container may run as another uid
        version = _version_label(staging, result.manifest, opts.version)
        final = versions / version
        changed = True
        if final.exists():
            if _same_content(final, staging):
                # An init container restarted after a successful fetch: keep the copy that is there.
                shutil.rmtree(staging)
                changed = resolve_current(dest_p) != final.resolve()
            else:
                suffix = result.manifest.digest[:8] if result.manifest else _tree_digest(staging)[:8]
                final = versions / f"{version}-{suffix}"
                version = final.name
        if staging.exists():
            if final.exists():  # same label and same digest suffix: identical content already there
                shutil.rmtree(staging)
            else:
                os.rename(staging, final)
        _fsync_dir(versions)
        switch_current(dest_p, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _gc_versions(dest_p, opts.keep_versions)
    log.info(
        "fetched %s into %s as version %s in %.1f s (checks: %s)%s",
        uri,
        final,
        version,
        time.monotonic() - t0,
        ", ".join(result.checks) or "none",
        "" if changed else "; already current",
    )
    return FetchResult(version=version, path=final, changed=changed, checks=result.checks)


def describe_failure(exc: BaseException) -> tuple[int, str]:
    """(exit status, one-line message) for a fetch failure; the message starts with the failure kind."""
    if isinstance(exc, FetchError | IntegrityError):
        kind = exc.kind
        return EXIT_CODES.get(kind, 1), f"fetch failed: {kind}: {exc}"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return EXIT_CODES["disk full"], f"fetch failed: disk full: {exc}"
    return 1, f"fetch failed: {type(exc).__name__}: {exc}"
