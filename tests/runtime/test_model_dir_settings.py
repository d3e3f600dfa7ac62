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
