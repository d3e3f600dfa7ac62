"""Static checks of the Dockerfiles: what they copy exists, they run as the UID the pods expect."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_DOCKERFILE = ROOT / "operator" / "Dockerfile"
VALUES = ROOT / "charts" / "paddle-operator" / "values.yaml"


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    assert starts, "no FROM"
    return instructions[starts[-1] :]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics, simplified: last matching pattern wins, `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat.rstrip("*").rstrip("/") + "/*"):
            ignored = not negate
    return ignored


def test_operator_image_runs_as_the_chart_uid_and_not_root():
    final = _final_stage(_instructions(OPERATOR_DOCKERFILE))
    users = [args for word, args in final if word == "USER"]
    assert users, "final stage has no USER: it would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and uid != "0", "numeric non-root UID, so runAsNonRoot can be verified"
    values = yaml.safe_load(VALUES.read_text())
    assert int(uid) == values["podSecurityContext"]["runAsUser"]


def test_operator_image_default_command_serves_the_probed_health_endpoint():
    final = _final_stage(_instructions(OPERATOR_DOCKERFILE))
    entrypoint = [args for word, args in final if word == "ENTRYPOINT"][-1]
    cmd = [args for word, args in final if word == "CMD"][-1]
    assert '"paddle-operator"' in entrypoint
    port = yaml.safe_load(VALUES.read_text())["healthPort"]
    assert f"--liveness=http://0.0.0.0:{port}/healthz" in cmd
    assert any(word == "EXPOSE" and args == str(port) for word, args in final)


@pytest.mark.parametrize("dockerfile", [OPERATOR_DOCKERFILE], ids=lambda p: str(p.relative_to(ROOT)))
def test_everything_copied_exists_and_is_in_the_build_context(dockerfile: Path):
    # The context is the repository root: its .dockerignore, then a per-Dockerfile one (BuildKit) if any.
    patterns = [
        line.strip()
        for ignore_file in (ROOT / ".dockerignore", dockerfile.with_name(dockerfile.name + ".dockerignore"))
        for line in (ignore_file.read_text().splitlines() if ignore_file.exists() else [])
        if line.strip() and not line.startswith("#")
    ]
    copies = [args for word, args in _instructions(dockerfile) if word == "COPY" and "--from=" not in args]
    assert copies
    for args in copies:
        *sources, _dest = args.split()
        for src in sources:
            path = ROOT / src
            assert path.exists(), f"{dockerfile.name}: COPY {src} does not exist"
            files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
            for f in files:
                rel = str(f.relative_to(ROOT))
                assert not _ignored(rel, patterns), f"{rel} is excluded from the build context"


RUNTIME_DOCKERFILE = ROOT / "runtime" / "Dockerfile"


@pytest.fixture
def runtime_dockerfile() -> Path:
    if not RUNTIME_DOCKERFILE.exists():
        pytest.skip("runtime/Dockerfile not written yet (runtime issue)")
    return RUNTIME_DOCKERFILE


def test_runtime_image_fits_the_pod_the_operator_builds(runtime_dockerfile: Path):
    from paddle_operator.spec import MODEL_ROOT, RUNTIME_PORT

    final = _final_stage(_instructions(runtime_dockerfile))
    users = [args.split(":")[0] for word, args in final if word == "USER"]
    # The pod sets runAsUser itself; the image must still be non-root by number for runAsNonRoot.
    assert users and users[-1].isdigit() and users[-1] != "0", f"USER {users}"
    assert str(RUNTIME_PORT) in [args for word, args in final if word == "EXPOSE"]
    # The operator runs `paddle-runtime` by name and mounts the model volume at MODEL_ROOT.
    env = " ".join(args for word, args in final if word == "ENV")
    assert "/opt/venv/bin" in env or any(
        "paddle-runtime" in args for word, args in final if word == "ENTRYPOINT"
    )
    assert MODEL_ROOT in runtime_dockerfile.read_text()


def test_runtime_image_holds_the_models_file_uris_point_at(runtime_dockerfile: Path):
    """examples/*/ with a file:// model URI need that path inside the runtime image."""
    text = runtime_dockerfile.read_text()
    for manifest in sorted((ROOT / "examples").glob("[0-9][0-9]-*/*.yaml")):
        for doc in yaml.safe_load_all(manifest.read_text()):
            if not doc or doc.get("kind") != "PaddleModelService":
                continue
            uris = [doc["spec"]["model"]["uri"], (doc["spec"].get("fallback") or {}).get("uri", "")]
            for uri in uris:
                if uri.startswith("file://"):
                    parent = str(Path(uri.removeprefix("file://")).parent)
                    assert parent in text, f"{manifest.relative_to(ROOT)}: {uri} is not put into the image"


@pytest.mark.parametrize("dockerfile", [RUNTIME_DOCKERFILE], ids=["runtime/Dockerfile"])
def test_runtime_dockerfile_copies_only_what_exists(runtime_dockerfile: Path, dockerfile: Path):
    # Same checks as for the operator image (they assert inside).
    test_everything_copied_exists_and_is_in_the_build_context(dockerfile)
    assert "COPY" in runtime_dockerfile.read_text()


def _base_defaults(dockerfile: Path) -> list[str]:
    """Default values of the ARGs the Dockerfile's FROM lines name (or the literal FROM images)."""
    instructions = _instructions(dockerfile)
    args = dict(a.split("=", 1) for w, a in instructions if w == "ARG" and "=" in a)
    stages = {a.split()[-1] for w, a in instructions if w == "FROM" and " AS " in a.upper()}
    froms = [a.split()[0] for w, a in instructions if w == "FROM"]
    return [args.get(f.strip("${}"), f) for f in froms if f not in stages]


def test_both_images_build_on_one_bookworm_python_311_base():
    """One base for both (its stand-in is made from Debian bookworm, whose Python is 3.11)."""
    bases = {b for d in (RUNTIME_DOCKERFILE, OPERATOR_DOCKERFILE) for b in _base_defaults(d)}
    assert bases == {"python:3.11-slim-bookworm"}, bases
