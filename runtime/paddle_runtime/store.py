"""The model-store layout ``fetch`` writes and ``serve`` reads: the one place ``current`` is resolved.

::

    DEST/versions/<version>/...   one directory per fetched version (verified before it is named)
    DEST/versions/.incoming-*     staging while a fetch runs (readers never look there)
    DEST/current -> versions/<v>  a relative symlink, switched atomically (new link renamed over the old)
    DEST/fetch-failed.json        the last refused fetch into DEST (uri, version, error); removed by
                                  the next successful one. ``serve`` reports it as a reload failure.

A plain model directory without ``current`` is its own store: :func:`resolve_current` returns it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

CURRENT = "current"
VERSIONS = "versions"
STAGING_PREFIX = ".incoming-"
FETCH_FAILED = "fetch-failed.json"


def resolve_current(dest: str | os.PathLike[str]) -> Path:
    """The directory to load: ``DEST/current`` resolved when present (even dangling), else DEST itself.

    Both results are absolute and resolved, so callers may compare them with ``Path.resolve()``.
    """
    d = Path(dest)
    cur = d / CURRENT
    if cur.is_symlink() or cur.exists():
        return cur.resolve()
    return d.resolve()


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
    fsync_dir(dest)


def fsync_dir(d: Path) -> None:
    """Flush a directory's entries (a rename) to disk."""
    # Without this a power loss can forget the rename even though the files are on disk.
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def gc_versions(dest: Path, keep: int) -> None:
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


def record_fetch_failure(dest: str | os.PathLike[str], uri: str, version: str | None, error: str) -> None:
    """Leave the refusal of a fetch into ``dest`` where ``serve`` reads it (atomically replaced).

    Best effort: a store that cannot be written is reported by the fetch's own exit status.
    """
    d = Path(dest)
    doc = {"uri": uri, "version": version, "error": error}
    tmp = d / f".{FETCH_FAILED}.{os.getpid()}"
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, d / FETCH_FAILED)


def clear_fetch_failure(dest: str | os.PathLike[str]) -> None:
    """Forget a refused fetch (a fetch into ``dest`` succeeded)."""
    with contextlib.suppress(FileNotFoundError):
        (Path(dest) / FETCH_FAILED).unlink()


def read_fetch_failure(dest: str | os.PathLike[str]) -> dict[str, str | None] | None:
    """The last refused fetch into ``dest`` (``uri``, ``version``, ``error``), or None."""
    try:
        doc = json.loads((Path(dest) / FETCH_FAILED).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"uri": None, "version": None, "error": "fetch failed (unreadable failure record)"}
    if not isinstance(doc, dict):
        return None
    return {k: (str(doc[k]) if doc.get(k) is not None else None) for k in ("uri", "version", "error")}
