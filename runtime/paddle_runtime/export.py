"""``paddle-runtime export ARCH --dest DIR``: save a ``paddle.vision.models`` network as an inference model.

The result is a model directory as model_dir.py describes: ``inference.json`` (PIR) +
``inference.pdiparams`` + ``model.yaml``.  Weights are random unless ``--weights FILE``
(a ``.pdparams`` state dict) is given: the runtime's behaviour does not depend on what the weights
are, and the machines this runs on cannot download the pretrained ones.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import yaml

# Architectures exported with a fixed 224x224 RGB input and a dynamic batch dimension.
ARCHS: dict[str, str] = {
    "resnet50": "resnet50",
    "resnet18": "resnet18",
    "mobilenet_v3_small": "mobilenet_v3_small",
    "mobilenet_v3_large": "mobilenet_v3_large",
    "mobilenet_v2": "mobilenet_v2",
}


def export_model(arch: str, dest: str | os.PathLike, *, weights: str | None = None, seed: int = 0,
                 image_size: int = 224, version: str = "1") -> Path:
    """Export ``arch`` into ``dest`` atomically (written to a temp dir, then renamed); returns ``dest``."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHS)}")
    import paddle
    from paddle.static import InputSpec

    paddle.seed(seed)
    net = getattr(paddle.vision.models, ARCHS[arch])(pretrained=False)
    if weights:
        net.set_state_dict(paddle.load(weights))
    net.eval()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    paddle.jit.save(net, str(tmp / "inference"),
                    input_spec=[InputSpec([None, 3, image_size, image_size], "float32", "x")])
    (tmp / "model.yaml").write_text(yaml.safe_dump({
        "name": arch.replace("_", "-"),
        "version": version,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, image_size, image_size]}],
    }, sort_keys=False))
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``export``."""
    p.add_argument("arch", choices=sorted(ARCHS), help="paddle.vision.models architecture")
    p.add_argument("--dest", required=True, help="model directory to write")
    p.add_argument("--weights", help=".pdparams state dict to load (default: random init, seeded)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--version", default="1", help="version written into model.yaml")


def run(args: argparse.Namespace) -> int:
    """``export``: write a paddle.vision model as an inference model directory."""
    out = export_model(args.arch, args.dest, weights=args.weights, image_size=args.image_size, version=args.version)
    print(f"exported {args.arch} to {out}")
    return 0
