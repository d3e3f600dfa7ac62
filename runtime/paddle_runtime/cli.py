"""``paddle-runtime`` command line.

Subcommands are listed in :data:`SUBCOMMANDS`: name -> (module, help).  Each module provides
``add_arguments(parser)`` and ``run(args) -> int`` and must stay cheap to import (import paddle
inside ``run``), because building the parser imports every listed module.  To add a subcommand,
write the module and add one line to the table (resilience adds ``fetch``, ``sign``, ``verify``).

``serve`` flags override env ``PADDLE_RUNTIME_*`` which overrides ``--config FILE``; see settings.py.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__
from .cli_resilience import register

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("paddle_runtime.cli", "serve a model directory over HTTP (OIP v2)"),
    "export": ("paddle_runtime.export", "export a paddle.vision model as an inference model directory"),
}

# ---- serve ------------------------------------------------------------------------------------------
# Flags that map 1:1 onto RuntimeSettings fields; only flags given on the command line override.
_SERVE_FLAGS: list[tuple[str, type, str]] = [
    ("model_dir", str, "model directory (a 'current' symlink inside is followed)"),
    ("model_name", str, "served model name"),
    ("host", str, "listen address (default 0.0.0.0)"),
    ("port", int, "HTTP port (default 8080; 0 = any free port)"),
    ("device", str, "cpu | gpu | npu | xpu"),
    ("device_id", int, "accelerator index"),
    ("workers", int, "predictors in the pool"),
    ("cpu_threads", int, "math threads per predictor"),
    ("max_batch_size", int, "most rows per dynamic batch"),
    ("batch_timeout_ms", float, "longest wait for a batch to fill while workers are busy"),
    ("max_queue_size", int, "waiting requests before 503"),
    ("max_body_bytes", int, "largest request body"),
    ("precision", str, "fp32 | fp16 | int8 (TensorRT)"),
    ("log_level", str, "DEBUG | INFO | WARNING"),
    # OCR pipeline (docs/ocr.md)
    ("pipeline", str, "serve a model pipeline instead of --model-dir: ppocr (PP-OCR det -> cls -> rec)"),
    ("ocr_det_model_dir", str, "pipeline det stage model (default: bundled PP-OCRv4 det)"),
    ("ocr_cls_model_dir", str, "pipeline cls stage model (default: bundled mobile-v2 cls; 'none' = off)"),
    ("ocr_rec_model_dir", str, "pipeline rec stage model (default: bundled PP-OCRv4 rec)"),
    ("ocr_rec_dict_file", str, "rec dictionary, one character per line (default: bundled ppocr_keys_v1.txt)"),
    # resilience (docs/resilience.md)
    ("fallback_model_dir", str, "fallback model with the same I/O contract (empty = none)"),
    ("reload_poll_s", float, "hot reload poll interval of DIR/current (0 = SIGHUP/admin only)"),
    ("hmac_key_file", str, "HMAC key: refuse models whose MANIFEST.hmac does not verify"),
    ("public_key_file", str, "EC public key: refuse models whose model-signing signature does not verify"),
    ("auth_token_file", str, "bearer token required for inference"),
    ("admin_port", int, "admin port for POST /admin/reload (0 = off)"),
    ("admin_token_file", str, "bearer token for the admin port"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``serve``."""
    p.add_argument("--config", dest="config_file", help="YAML settings file (keys = settings field names)")
    for field, typ, help_ in _SERVE_FLAGS:
        p.add_argument("--" + field.replace("_", "-"), dest=field, type=typ, default=None, help=help_)
    p.add_argument("--tensorrt", dest="tensorrt", action=argparse.BooleanOptionalAction, default=None,
                   help="TensorRT subgraphs (GPU)")
    p.add_argument("--mkldnn", dest="mkldnn", action=argparse.BooleanOptionalAction, default=None,
                   help="oneDNN kernels (CPU)")


def run(args: argparse.Namespace) -> int:
    """``serve``: build the settings from flags, env and config file, then run the server."""
    from pydantic import ValidationError

    # Here, not at the top: the wiring pulls in numpy, the HTTP stack and the engine module, which
    # ``paddle-runtime --help`` and the other subcommands do not need.
    from .serve import run as serve_run
    from .settings import load_settings

    overrides = {f: getattr(args, f) for f, _, _ in _SERVE_FLAGS}
    overrides.update(tensorrt=args.tensorrt, mkldnn=args.mkldnn)
    try:
        settings = load_settings(args.config_file, **overrides)
    except (ValidationError, ValueError) as e:
        print(f"paddle-runtime serve: invalid settings: {e}", file=sys.stderr)
        return 2
    if not settings.model_dir and not settings.pipeline:
        print("paddle-runtime serve: --model-dir (or PADDLE_RUNTIME_MODEL_DIR) is required", file=sys.stderr)
        return 2
    # Flags beat the config file also when it changes at run time (config_watch.py).
    pinned = {k for k, v in overrides.items() if v is not None}
    return serve_run(settings, pinned)


# ---- entry point ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``paddle-runtime`` parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="paddle-runtime", description="Paddle Inference model runtime")
    parser.add_argument("--version", action="version", version=f"paddle-runtime {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        mod = importlib.import_module(module)
        sp = sub.add_parser(name, help=help_, description=help_)
        mod.add_arguments(sp)
        sp.set_defaults(_run=mod.run)
    # fetch, sign, verify: three commands from one module, so they register themselves.
    register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
