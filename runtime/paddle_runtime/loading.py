"""Getting a model from disk to a ready engine: integrity first, then load and warm up.

The same steps serve start-up (main and fallback model) and hot reload, so a model refused in one
place is refused everywhere.  Engines are built through an :data:`EngineFactory` chosen once by the
wiring (``serve.py``): the real :class:`~.engine.PaddleEngine`, or the test-only fault injector
around it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .contracts import Engine, contract_difference
from .errors import IntegrityError, ModelLoadError
from .integrity import load_hmac_key, verify_model_dir
from .model_dir import resolve_model_dir
from .settings import RuntimeSettings

log = logging.getLogger("paddle_runtime.loading")

EngineFactory = Callable[[RuntimeSettings, str, str], Engine]
"""``factory(settings, model_dir, role)`` -> an unloaded engine."""


def integrity_options(settings: RuntimeSettings) -> dict[str, Any]:
    """Keyword arguments for :func:`~.integrity.verify_model_dir` from the settings.

    Keys are read now, so a rotated Secret is picked up by the next check.
    """
    return {
        "hmac_key": load_hmac_key(settings.hmac_key_file or None),
        "public_key": settings.public_key_file or None,
        "require_manifest": settings.require_signed,
    }


def verify(settings: RuntimeSettings, model_dir: str | Path) -> tuple[str, ...]:
    """Integrity check of the model that ``model_dir`` resolves to; raises :class:`IntegrityError`."""
    target = resolve_model_dir(model_dir)
    res = verify_model_dir(target, **integrity_options(settings))
    if res.checks:
        log.info("model %s verified (%s)", target, ", ".join(res.checks))
    return res.checks


def load_verified(settings: RuntimeSettings, model_dir: str, role: str,
                  factory: EngineFactory) -> tuple[Engine, tuple[str, ...]]:
    """The start-up load: integrity (a refused model never reaches Paddle), then load and warm-up.

    Returns the ready engine and the integrity checks that passed; raises :class:`ModelLoadError`.
    """
    try:
        checks = verify(settings, model_dir)
    except IntegrityError as exc:
        what = "model" if role == "main" else f"{role} model"
        raise ModelLoadError(f"{what} refused: {exc.kind}: {exc}") from exc
    eng = factory(settings, model_dir, role)
    eng.load()
    return eng, checks


def check_same_contract(main: Engine, other: Engine) -> None:
    """Refuse a fallback whose inputs or outputs differ from the main model's (name, dtype, shape)."""
    diff = contract_difference(main.inputs, other.inputs, main.outputs, other.outputs)
    if diff:
        raise ModelLoadError(f"fallback model {other.source} does not match the main model's contract: {diff}")
