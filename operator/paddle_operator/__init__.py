"""Kopf operator for PaddleModelService: spec model, pure builders, thin handlers."""

__version__ = "0.1.0"
