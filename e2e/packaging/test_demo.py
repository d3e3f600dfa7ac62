"""The README's main command, `python -m e2e.demo`, run against the session cluster."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from e2e.cluster import Cluster

from .conftest import ROOT


@pytest.mark.slow
@pytest.mark.realnode
def test_quickstart_demo_ends_ready_with_a_real_ocr_answer(cluster: Cluster, namespace: str, real_node: str):
    """The true install path: Helm installs the operator as a pod, the example's real pod serves."""
    pytest.importorskip("paddle")
    env = dict(os.environ, E2E_KUBECONFIG=str(cluster.kubeconfig))
    proc = subprocess.run(
        [sys.executable, "-m", "e2e.demo", "--namespace", namespace],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    nodes = proc.stdout.split("==> kubectl get nodes -o wide", 1)[1].split("==>", 1)[0]
    assert any(real_node in line and "containerd://" in line for line in nodes.splitlines()), nodes
    pods = proc.stdout.split("==> kubectl get pods -o wide", 1)[1].split("==>", 1)[0]
    running = [line for line in pods.splitlines() if " Running " in line and real_node in line]
    assert any(line.startswith("paddle-operator") for line in running), pods
    assert any(line.startswith("ppocr-rec") for line in running), pods
    table = proc.stdout.split("==> kubectl get pms", 1)[1]
    header, row = table.strip().splitlines()[:2]
    assert header.split()[:2] == ["NAME", "READY"] and row.split()[:2] == ["ppocr-rec", "True"]
    # The README's sample shows the same columns.
    readme = (ROOT / "README.md").read_text().splitlines()
    readme_header = next(line for line in readme if line.startswith("NAME ") and " TAG " in line)
    assert header.split() == readme_header.split()
    assert "answer: 'PaddleSLA 2026'" in proc.stdout
