"""What an image's cache key covers: the files its Dockerfile copies, its args and base; not bytecode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2e import images


@pytest.fixture
def context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small build context standing in for the repository root."""
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "m.py").write_text("x = 1\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    (tmp_path / "docs.md").write_text("not copied\n")
    (tmp_path / ".dockerignore").write_text("*\n!pyproject.toml\n!src/\n**/__pycache__\n")
    (tmp_path / "Dockerfile").write_text(
        "FROM python:3.11-slim-bookworm\nCOPY pyproject.toml ./\nCOPY src/ src/\n"
    )
    monkeypatch.setattr(images, "ROOT", tmp_path)
    return tmp_path


def _key(ctx: Path, **args: str) -> str:
    return images.dockerfile_key(images.DockerfileRecipe("t", ctx / "Dockerfile", "example.org/t:1", args))


def test_key_changes_with_a_copied_file_the_dockerfile_or_a_build_arg(context: Path):
    before = _key(context)
    assert _key(context) == before
    (context / "src" / "pkg" / "m.py").write_text("x = 2\n")
    edited = _key(context)
    assert edited != before
    assert _key(context, VERSION="2") != edited
    (context / "Dockerfile").write_text((context / "Dockerfile").read_text() + "USER 65532\n")
    assert _key(context) != edited


def test_key_ignores_bytecode_and_files_the_dockerfile_does_not_copy(context: Path):
    before = _key(context)
    (context / "src" / "pkg" / "__pycache__").mkdir()
    (context / "src" / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0\1")
    (context / "docs.md").write_text("edited\n")
    assert _key(context) == before
    assert [str(p.relative_to(context)) for p in images.copied_files(context / "Dockerfile")] == [
        "pyproject.toml",
        "src/pkg/m.py",
    ]


def test_a_copy_of_a_missing_path_is_reported_by_name(context: Path):
    (context / "Dockerfile").write_text("FROM scratch\nCOPY nothere/ /x/\n")
    with pytest.raises(images.ImageBuildError, match="COPY nothere/ does not exist"):
        _key(context)


def test_the_stand_in_base_has_the_name_both_dockerfiles_start_from():
    """buildah resolves the FROM short name to docker.io/library/...: the stand-in must be exactly that."""
    for recipe in images.recipes():
        text = recipe.dockerfile.read_text()
        default = next(
            line.split("=", 1)[1]
            for line in text.splitlines()
            if line.startswith("ARG ") and "slim-bookworm" in line
        )
        assert f"docker.io/library/{default}" == images.BASE_REF, recipe.dockerfile


def test_image_names_are_the_ones_the_example_and_the_chart_use():
    assert images.runtime_ref() == "ghcr.io/paddle-sla/paddle-runtime:0.1.0-cpu"
    assert images.operator_ref() == "ghcr.io/paddle-sla/paddle-operator:0.1.0"


def test_builds_from_two_checkouts_are_cached_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """One cache serves several branches: a record per key, not per name, so neither evicts the other."""
    monkeypatch.setenv("PADDLE_SLA_CACHE", str(tmp_path))
    images.images_dir().mkdir(parents=True)
    for key in ("a" * 64, "b" * 64):
        archive = images.images_dir() / f"operator-{key[:16]}.tar"
        archive.write_bytes(b"tar")
        rec = {"name": "operator", "ref": "r:1", "key": key, "archive": str(archive), "image_id": key}
        images._record_path("operator", key).write_text(json.dumps(rec))
    hit_a, hit_b = images.cached("operator", "a" * 64), images.cached("operator", "b" * 64)
    assert hit_a and hit_b and hit_a.archive != hit_b.archive
    assert images.cached("operator", "c" * 64) is None
    (images.images_dir() / f"operator-{'a' * 16}.tar").unlink()
    assert images.cached("operator", "a" * 64) is None, "a record whose archive is gone is no hit"
