"""``paddle-runtime fetch | sign | verify``: the resilience subcommands.

They live apart from ``cli.py`` (the core's ``serve``/``export``/``bench``) so the two can evolve
independently; ``cli.py`` calls :func:`register` on its argparse sub-parsers. Each command returns an
exit status; ``fetch`` uses :data:`paddle_runtime.fetch.EXIT_CODES` so an init container's exit code
says what went wrong (3 not found, 4 auth, 5 checksum/incomplete, 6 signature/unsigned, 7 disk full,
8 source unavailable after retries, 2 configuration).

Keys come from flags or the same env vars ``serve`` reads (``PADDLE_RUNTIME_HMAC_KEY_FILE``,
``PADDLE_RUNTIME_HMAC_KEY``, ``PADDLE_RUNTIME_PUBLIC_KEY_FILE``), so one Secret mounted into both the
init container and the server is enough.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from paddle_runtime import fetch as fetch_mod
from paddle_runtime import integrity
from paddle_runtime.errors import IntegrityError
from paddle_runtime.store import record_fetch_failure

log = logging.getLogger("paddle_runtime.cli")

_HMAC_FILE_ENV = "PADDLE_RUNTIME_HMAC_KEY_FILE"
_PUBLIC_KEY_ENV = "PADDLE_RUNTIME_PUBLIC_KEY_FILE"


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _add_key_flags(p: argparse.ArgumentParser, *, private: bool = False) -> None:
    p.add_argument(
        "--hmac-key-file",
        default=os.environ.get(_HMAC_FILE_ENV) or None,
        help=f"HMAC-SHA256 key file (env {_HMAC_FILE_ENV}; or the key itself in ${integrity.HMAC_KEY_ENV})",
    )
    if private:
        p.add_argument(
            "--private-key", default=None, help="EC private key (PEM) for an OpenSSF model-signing signature"
        )
    else:
        p.add_argument(
            "--public-key",
            default=os.environ.get(_PUBLIC_KEY_ENV) or None,
            help=f"EC public key (PEM) to verify the OpenSSF model-signing signature (env {_PUBLIC_KEY_ENV})",
        )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fetch``, ``sign`` and ``verify`` to the ``paddle-runtime`` argument parser.

    Each sub-parser sets ``func`` to a callable ``(args) -> int`` (the exit status).
    """
    p = subparsers.add_parser(
        "fetch",
        help="download a model into DEST/versions/<v>, verify it, switch DEST/current atomically",
        description="Fetch a model (path, http(s)://, s3://) into DEST/versions/<v>/, verify it and "
        "switch DEST/current atomically. Exits non-zero naming the failure.",
    )
    p.add_argument(
        "--uri", required=True, help="local dir/PVC path, .tar(.gz), http(s)://..., s3://bucket/prefix"
    )
    p.add_argument("--dest", required=True, help="destination root (DEST/versions/<v>/ and DEST/current)")
    _add_key_flags(p)
    p.add_argument(
        "--require-signed",
        action="store_true",
        default=os.environ.get("PADDLE_RUNTIME_REQUIRE_SIGNED", "").lower() in ("1", "true", "yes"),
        help="refuse a model without MANIFEST.json even when no key is configured",
    )
    p.add_argument(
        "--version", default=None, help="version label (default: manifest, model.yaml, or a timestamp)"
    )
    p.add_argument("--retries", type=int, default=int(_env_float("PADDLE_RUNTIME_FETCH_RETRIES", 5)))
    p.add_argument("--backoff-s", type=float, default=_env_float("PADDLE_RUNTIME_FETCH_BACKOFF_S", 0.5))
    p.add_argument("--timeout-s", type=float, default=_env_float("PADDLE_RUNTIME_FETCH_TIMEOUT_S", 30.0))
    p.add_argument(
        "--token-file",
        default=os.environ.get("PADDLE_RUNTIME_FETCH_TOKEN_FILE") or None,
        help="bearer token for http(s) sources",
    )
    p.add_argument(
        "--s3-endpoint",
        default=os.environ.get("PADDLE_RUNTIME_S3_ENDPOINT") or None,
        help="S3-compatible endpoint URL (MinIO, Ceph, ...); credentials from the usual AWS_* env",
    )
    p.add_argument("--keep-versions", type=int, default=3, help="old version directories to keep (0 = all)")
    p.set_defaults(func=cmd_fetch, _run=cmd_fetch)

    p = subparsers.add_parser(
        "sign", help="write MANIFEST.json (+ HMAC, + model-signing signature) into a model dir"
    )
    p.add_argument("model_dir")
    _add_key_flags(p, private=True)
    p.add_argument("--version", default=None, help="version label recorded in the manifest")
    p.set_defaults(func=cmd_sign, _run=cmd_sign)

    p = subparsers.add_parser("verify", help="check a model dir against its manifest, HMAC and signature")
    p.add_argument("model_dir")
    _add_key_flags(p)
    p.add_argument("--require-signed", action="store_true", help="fail when there is no manifest")
    p.set_defaults(func=cmd_verify, _run=cmd_verify)


def _log_setup() -> None:
    # `paddle-runtime` configures logging only for serve; fetch progress must reach the pod log too.
    logging.basicConfig(
        level=os.environ.get("PADDLE_RUNTIME_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# Kubernetes' default terminationMessagePath: what is written there becomes the container's
# `state.terminated.message` in the pod status (the kubelet mounts it writable on a read-only root).
TERMINATION_LOG = Path("/dev/termination-log")


def _termination_message(msg: str) -> None:
    """Leave the failure where the kubelet reports it, when running in a pod."""
    if TERMINATION_LOG.is_file():
        with contextlib.suppress(OSError):
            TERMINATION_LOG.write_text(msg[:4000])


def cmd_fetch(args: argparse.Namespace) -> int:
    """``fetch``: copy, verify and switch ``current``; the exit code names the failure."""
    _log_setup()
    try:
        opts = fetch_mod.FetchOptions(
            hmac_key=integrity.load_hmac_key(args.hmac_key_file),
            public_key=args.public_key,
            require_manifest=args.require_signed,
            version=args.version,
            retries=args.retries,
            backoff_s=args.backoff_s,
            timeout_s=args.timeout_s,
            token_file=args.token_file,
            s3_endpoint=args.s3_endpoint,
            keep_versions=args.keep_versions,
        )
        result = fetch_mod.fetch(args.uri, args.dest, opts)
    except Exception as exc:
        code, msg = fetch_mod.describe_failure(exc)
        log.debug("fetch failure", exc_info=True)
        print(msg, file=sys.stderr)
        _termination_message(msg)
        # For the runtime serving from this store (the model-sync sidecar's refused candidate):
        # it reports the refusal as a failing reload, so it reaches the resource's status.
        if Path(args.dest).is_dir():
            record_fetch_failure(args.dest, args.uri, args.version, msg)
        return code
    print(
        f"fetched {args.uri} -> {result.path} (version {result.version}; checks: {', '.join(result.checks) or 'none'})"
    )
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    """``sign``: write MANIFEST.json (+ HMAC / model-signing signature) into a model directory."""
    try:
        key = integrity.load_hmac_key(args.hmac_key_file)
        m = integrity.sign_model_dir(
            args.model_dir, hmac_key=key, private_key=args.private_key, version=args.version
        )
    except IntegrityError as exc:
        print(f"sign failed: {exc.kind}: {exc}", file=sys.stderr)
        return fetch_mod.EXIT_CODES.get(exc.kind, 1)
    what = ["manifest"] + (["hmac"] if key else []) + (["model-signing"] if args.private_key else [])
    print(f"signed {args.model_dir}: {len(m.files)} files, {m.total_bytes} bytes ({', '.join(what)})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """``verify``: check a model directory the way ``serve`` and ``fetch`` do."""
    try:
        res = integrity.verify_model_dir(
            args.model_dir,
            hmac_key=integrity.load_hmac_key(args.hmac_key_file),
            public_key=args.public_key,
            require_manifest=args.require_signed,
        )
    except IntegrityError as exc:
        print(f"verify failed: {exc.kind}: {exc}", file=sys.stderr)
        return fetch_mod.EXIT_CODES.get(exc.kind, 1)
    if not res.checks:
        print(f"{args.model_dir}: no manifest, nothing to verify (unsigned model)")
    else:
        print(f"{args.model_dir}: OK ({', '.join(res.checks)})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m paddle_runtime.cli_resilience``), same commands as ``paddle-runtime``."""
    parser = argparse.ArgumentParser(prog="paddle-runtime")
    parser.add_argument("--log-level", default=os.environ.get("PADDLE_RUNTIME_LOG_LEVEL", "INFO"))
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
