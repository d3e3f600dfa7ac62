"""Fixtures for the chart tests: the helm binary the e2e harness builds, and the chart renderer."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "charts" / "paddle-operator"


def find_helm() -> str | None:
    """$HELM, else the pinned build in $PADDLE_SLA_CACHE/bin/<k8s version>/, else PATH."""
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    cache = os.environ.get("PADDLE_SLA_CACHE", os.path.expanduser("~/.cache/paddle-sla"))
    built = sorted(glob.glob(os.path.join(cache, "bin", "*", "helm")))
    return built[-1] if built else shutil.which("helm")


class Chart:
    """Runs helm against charts/paddle-operator with a throwaway helm home."""

    def __init__(self, helm: str, home: Path):
        self.helm = helm
        self.env = dict(
            os.environ, HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config")
        )

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.helm, *args], capture_output=True, text=True, env=self.env, timeout=120)

    def template(
        self, *args: str, release: str = "paddle-operator", namespace: str = "paddle-system"
    ) -> subprocess.CompletedProcess:
        """`helm template` the chart (CRDs included)."""
        return self.run(
            "template",
            release,
            str(CHART_DIR),
            *("--namespace", namespace, "--include-crds"),
            *args,
        )

    def render(self, *args: str, **kwargs: str) -> list[dict]:
        """The rendered objects; fails the test with helm's message when rendering fails."""
        out = self.template(*args, **kwargs)
        assert out.returncode == 0, f"helm template failed:\n{out.stderr}"
        return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="session")
def chart(tmp_path_factory) -> Chart:
    helm = find_helm()
    if not helm:
        pytest.skip("helm not built yet: run `python -m e2e.cluster build` (make binaries)")
    return Chart(helm, tmp_path_factory.mktemp("helm-home"))
