"""Our health checks in Argo CD's own Lua: the pinned ``argocd`` binary (gopher-lua, Argo CD's Lua
libraries, its loading of ``resource.customizations.health.<group>_<kind>`` keys) reads
``examples/argocd/argocd-cm.yaml`` as users install it and assesses every sample object of
``argocd_health_cases.py`` with ``argocd admin settings resource-overrides health``, the same code
path (``health.GetResourceHealth`` with the Lua overrides) the application controller uses.
"""

from __future__ import annotations

import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import ARGOCD, build, pinned_versions

from .argocd_health_cases import ARGOCD_CM, Case, operator_cases, static_cases

pytestmark = pytest.mark.argocd


@pytest.fixture(scope="module")
def argocd_binary() -> Path:
    """The pinned Argo CD build (built by the session's collection hook, reused here)."""
    return build(groups=ARGOCD) / "argocd"


def gopher_assess(binary: Path, obj: dict[str, Any], workdir: Path) -> tuple[str, str]:
    """(status, message) as Argo CD assesses ``obj`` with the checks of argocd-cm.yaml."""
    path = workdir / f"{obj['metadata']['name']}-{abs(hash(yaml.safe_dump(obj)))}.yaml"
    path.write_text(yaml.safe_dump(obj))
    proc = subprocess.run(
        [str(binary), "admin", "settings", "resource-overrides", "health", str(path),
         "--argocd-cm-path", str(ARGOCD_CM)],
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(workdir), "ARGOCD_BINARY_NAME": "argocd"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = proc.stdout
    status = re.search(r"^STATUS: (.*)$", out, re.MULTILINE)
    message = re.search(r"^MESSAGE: (.*)$", out, re.MULTILINE)
    assert proc.returncode == 0 and status and message, f"exit {proc.returncode}\n{out}\n{proc.stderr}"
    return status.group(1), message.group(1)


def _run_all(binary: Path, cases: list[Case], workdir: Path) -> list[str]:
    """Assess every case with gopher-lua; the cases whose check failed, with what they got."""
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: gopher_assess(binary, c.obj, workdir), cases))
    failures = []
    for case, (status, message) in zip(cases, results, strict=True):
        try:
            case.check(status, message)
        except AssertionError as exc:
            failures.append(f"{case.id}: got {status} {message!r}: {exc}")
    return failures


def test_argocd_gopher_lua_assesses_every_sample_like_lupa(argocd_binary: Path, tmp_path: Path) -> None:
    failures = _run_all(argocd_binary, static_cases(), tmp_path)
    assert not failures, "\n".join(failures)


def test_argocd_gopher_lua_assesses_statuses_the_operator_writes(argocd_binary: Path, tmp_path: Path) -> None:
    failures = _run_all(argocd_binary, operator_cases(), tmp_path)
    assert not failures, "\n".join(failures)


def test_argocd_reports_its_pinned_version(argocd_binary: Path) -> None:
    out = subprocess.run(
        [str(argocd_binary), "version", "--client", "--short"],
        env={"PATH": os.environ.get("PATH", ""), "ARGOCD_BINARY_NAME": "argocd", "HOME": "/nonexistent"},
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    # The module zip carries no commit: the tag, then "+unknown" where a release build has the commit.
    assert out.strip() == f"argocd: {pinned_versions()['argocd']}+unknown", out
