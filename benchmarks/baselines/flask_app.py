"""Seed-style baseline (c): Flask under gunicorn, one predictor per worker, no batching.

POST /predict with the raw float32 input bytes (shape from BENCH_SHAPE); answers the raw float32
output bytes.  Run: ``BENCH_MODEL_DIR=... BENCH_SHAPE=1,3,224,224 gunicorn -w 2 flask_app:app``.
"""

from __future__ import annotations

import os

import numpy as np
from common import env_shape, make_predictor
from flask import Flask, Response, request

app = Flask(__name__)
_pred = None  # created lazily in each worker: predictors must not cross fork()
_shape = env_shape()


@app.post("/predict")
def predict() -> Response:
    global _pred
    if _pred is None:
        _pred = make_predictor(os.environ["BENCH_MODEL_DIR"])
    x = np.frombuffer(request.get_data(), np.float32).reshape(_shape)
    _pred.get_input_handle(_pred.get_input_names()[0]).copy_from_cpu(x)
    _pred.run()
    out = _pred.get_output_handle(_pred.get_output_names()[0]).copy_to_cpu()
    return Response(out.tobytes(), mimetype="application/octet-stream")


@app.get("/ready")
def ready() -> str:
    return "ok"
