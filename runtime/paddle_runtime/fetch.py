"""Model fetch: copy a model from a source into ``DEST/versions/<v>/``, verify it, switch ``current``.

This is the init container's job (``paddle-runtime fetch --uri URI --dest DIR``) and also how a new
version is published next to a running server. The order is what makes it safe:

1. download into a hidden staging directory ``DEST/versions/.incoming-*`` (readers never look there);
2. verify it (:mod:`paddle_runtime.integrity`): checksums always when a manifest exists, HMAC and
   model-signing when keys are configured;
3. rename the staging directory to ``DEST/versions/<version>`` (atomic on one file system);
4. switch ``DEST/current`` (:func:`paddle_runtime.store.switch_current`, atomic), so a reader sees the
   old version or the new one, never a mix and never a half-written directory.

Any failure leaves ``current`` untouched and removes the staging directory. The CLI exits with a
code and a message that name the failure (:data:`EXIT_CODES`). Sources are in ``sources.py``, the
store layout in ``store.py``; this module is the orchestration.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from .errors import DiskFullError, FetchConfigError, FetchError, IntegrityError
from .integrity import MANIFEST_NAME, Manifest, verify_model_dir
from .sources import SourceOptions, source_for
from .store import (
    STAGING_PREFIX,
    VERSIONS,
    clear_fetch_failure,
    fsync_dir,
    gc_versions,
    resolve_current,
    switch_current,
)

log = logging.getLogger(__name__)

_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

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

    def source_options(self) -> SourceOptions:
        """The part of these options a source uses."""
        return SourceOptions(self.retries, self.backoff_s, self.backoff_max_s, self.timeout_s,
                             self.token_file, self.s3_endpoint, self.progress_interval_s)


@dataclass(frozen=True)
class FetchResult:
    """What a fetch produced: the version label, its directory, whether ``current`` moved."""

    version: str
    path: Path
    changed: bool  # False when the same content was already current (an init container restart)
    checks: tuple[str, ...]


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


def fetch(uri: str, dest: str | os.PathLike[str], opts: FetchOptions | None = None) -> FetchResult:
    """Fetch ``uri`` into ``dest/versions/<version>``, verify it, and switch ``dest/current`` to it."""
    opts = opts or FetchOptions()
    dest_p = Path(dest)
    versions = dest_p / VERSIONS
    try:
        versions.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=versions))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"cannot create {versions}: {exc.strerror}") from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise FetchConfigError(f"cannot write to {dest_p}: {exc.strerror}") from None
        raise
    t0 = time.monotonic()
    try:
        try:
            source_for(uri, opts.source_options()).fetch_into(staging)
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
        fsync_dir(versions)
        switch_current(dest_p, final)
        clear_fetch_failure(dest_p)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    gc_versions(dest_p, opts.keep_versions)
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
