"""Predictor construction shared by the baselines: the same Paddle Config the runtime uses on CPU.

oneDNN on, ``cpu_threads`` math threads, IR optimisation, glog off, no eager tensor GC thread: a baseline that ran the slower
plain CPU kernels would make the comparison about kernels, not serving.
"""

from __future__ import annotations

import os
from pathlib import Path


def make_predictor(model_dir: str, threads: int = 1):
    import paddle
    import paddle.inference as pi

    # Same as the runtime's default (settings.cpu_tensor_gc = False): no GC thread competing on the core.
    paddle.set_flags({"FLAGS_eager_delete_tensor_gb": -1.0})
    d = Path(model_dir)
    model = d / "inference.json" if (d / "inference.json").is_file() else d / "inference.pdmodel"
    cfg = pi.Config(str(model), str(d / "inference.pdiparams"))
    cfg.disable_glog_info()
    cfg.disable_gpu()
    cfg.enable_mkldnn()
    cfg.set_cpu_math_library_num_threads(threads)
    if model.suffix == ".pdmodel":
        cfg.enable_memory_optim()
    return pi.create_predictor(cfg)


def env_shape() -> tuple[int, ...]:
    """Per-request input shape, from BENCH_SHAPE (e.g. ``1,3,224,224``)."""
    return tuple(int(x) for x in os.environ["BENCH_SHAPE"].split(","))
