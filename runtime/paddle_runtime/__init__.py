"""Paddle Inference runtime: predictor pool, dynamic batcher, OIP v2 HTTP API, metrics."""

__version__ = "0.1.0"
