"""Model directory contract and settings precedence (no inference engine involved)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from paddle_runtime.errors import ModelLoadError
from paddle_runtime.model_dir import load_model_files, read_program_io, resolve_model_dir
from paddle_runtime.settings import load_settings


def test_legacy_pdmodel_dir_reads_io_from_program(ocr_rec_dir: Path) -> None:
    files = load_model_files(ocr_rec_dir)
    assert files.format == "legacy" and files.model_file.name == "inference.pdmodel"
    assert files.name == "ch_PP-OCRv4_rec_infer" and files.version == "1"
    inputs, outputs = read_program_io(files)
    assert [(s.name, s.datatype, s.shape) for s in inputs] == [("x", "FP32", (-1, 3, 48, -1))]
    assert outputs[0].shape == (-1, -1, 6625)


def test_pir_json_dir_reads_io_from_program(mobilenet_v3_dir: Path) -> None:
    files = load_model_files(mobilenet_v3_dir)
    assert files.format == "pir" and files.model_file.name == "inference.json"
    inputs, outputs = read_program_io(files)
    assert [(s.name, s.shape) for s in inputs] == [("x", (-1, 3, 224, 224))]
    assert outputs[0].shape == (-1, 1000)


def test_current_symlink_and_versions_dir_give_the_version(tmp_path: Path, ocr_cls_dir: Path) -> None:
    v = tmp_path / "versions" / "7"
    shutil.copytree(ocr_cls_dir, v)
    os.symlink("versions/7", tmp_path / "current")
    assert resolve_model_dir(tmp_path) == v.resolve()
    files = load_model_files(tmp_path)
    assert files.version == "7" and files.path == v.resolve()
    assert files.name == tmp_path.name


def test_model_yaml_overrides_name_version_and_specs(tmp_path: Path, ocr_cls_dir: Path) -> None:
    shutil.copytree(ocr_cls_dir, tmp_path / "m")
    (tmp_path / "m" / "model.yaml").write_text(yaml.safe_dump({
        "name": "cls", "version": "3", "max_batch_size": 4,
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3, 48, 192]}],
    }))
    files = load_model_files(tmp_path / "m")
    assert (files.name, files.version, files.max_batch_size) == ("cls", "3", 4)
    assert files.inputs[0].datatype == "FP32" and files.inputs[0].example_shape(2) == (2, 3, 48, 192)


def test_directory_without_a_model_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "inference.pdiparams").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no Paddle inference model"):
        load_model_files(tmp_path)


def test_settings_precedence_flag_over_env_over_file_over_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "runtime.yaml"
    cfg.write_text(yaml.safe_dump({"port": 9001, "max_batch_size": 4, "batch_timeout_ms": 7}))
    monkeypatch.setenv("PADDLE_RUNTIME_MAX_BATCH_SIZE", "6")
    monkeypatch.setenv("PADDLE_RUNTIME_WORKERS", "3")
    s = load_settings(str(cfg), workers=2, port=None)
    assert s.workers == 2  # flag beats env
    assert s.max_batch_size == 6  # env beats file
    assert s.port == 9001 and s.batch_timeout_ms == 7  # file beats default
    assert s.max_queue_size == 256  # default
    monkeypatch.setenv("PADDLE_RUNTIME_CONFIG_FILE", str(cfg))
    assert load_settings().port == 9001  # config file named by env


def test_settings_reject_unknown_config_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "runtime.yaml"
    cfg.write_text("max_batch: 4\n")
    with pytest.raises(ValueError, match="unknown settings"):
        load_settings(str(cfg))


def test_warm_up_shapes_from_model_yaml_the_setting_wins_and_misfits_are_refused(
    tmp_path: Path, ocr_rec_dir: Path
) -> None:
    """PP-OCR rec has a dynamic width: warm-up must run the widths clients send (model.yaml beside
    the model, or the ``warmup_shapes`` setting), each at the batch size asked for."""
    from paddle_runtime.model_dir import TensorSpec, warmup_examples, with_warmup_shapes

    bundled = Path(__file__).parents[2] / "runtime" / "bundled" / "ch_PP-OCRv4_rec_infer" / "model.yaml"
    shutil.copytree(ocr_rec_dir, tmp_path / "m")
    shutil.copy(bundled, tmp_path / "m" / "model.yaml")
    (spec,) = load_model_files(tmp_path / "m").inputs
    assert spec.shape == ()  # named for its warm-up only: the engine takes the shape from the program
    program = TensorSpec("x", "FP32", (-1, 3, 48, -1))
    spec = with_warmup_shapes(TensorSpec("x", "FP32", program.shape, spec.warmup_shapes), spec.warmup_shapes, "m")
    assert [x["x"].shape for x in warmup_examples((spec,), 4)] == [(4, 3, 48, 320), (4, 3, 48, 640)]
    # Without any: one example, unknown dims as 64 (the old default, which left width 320 cold).
    assert [x["x"].shape for x in warmup_examples((program,), 1)] == [(1, 3, 48, 64)]
    with pytest.raises(ModelLoadError, match=r"warm-up shape \[1, 1, 48, 320\] of input 'x' does not fit"):
        with_warmup_shapes(program, [[1, 1, 48, 320]], "setting warmup_shapes")
    with pytest.raises(ModelLoadError, match="does not fit"):
        with_warmup_shapes(program, [[1, 3, 48]], "setting warmup_shapes")
    s = load_settings(warmup_shapes={"x": [[1, 3, 48, 480]]})
    assert s.warmup_shapes == {"x": [[1, 3, 48, 480]]}
    os.environ["PADDLE_RUNTIME_WARMUP_SHAPES"] = '{"x": [[1, 3, 48, 320], [1, 3, 48, 960]]}'
    try:
        assert load_settings().warmup_shapes["x"][1] == [1, 3, 48, 960]
    finally:
        del os.environ["PADDLE_RUNTIME_WARMUP_SHAPES"]


def test_engine_warms_the_declared_widths_and_refuses_a_setting_for_an_unknown_input(
    tmp_path: Path, ocr_rec_dir: Path
) -> None:
    from paddle_runtime.engine import PaddleEngine

    eng = PaddleEngine(load_settings(max_batch_size=2, warmup_shapes={"x": [[1, 3, 48, 320], [1, 3, 48, 480]]}),
                       ocr_rec_dir)
    eng.load()
    try:
        (x,) = eng.inputs
        assert x.shape == (-1, 3, 48, -1) and x.warmup_shapes == ((1, 3, 48, 320), (1, 3, 48, 480))
    finally:
        eng.unload()
    bad = PaddleEngine(load_settings(warmup_shapes={"image": [[1, 3, 48, 320]]}), ocr_rec_dir)
    with pytest.raises(ModelLoadError, match=r"warmup_shapes names inputs the model does not have: \['image'\]"):
        bad.load()
