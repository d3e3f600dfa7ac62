"""Helpers shared by the smoke tests."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from e2e.cluster import Cluster

TESTDATA = Path(__file__).resolve().with_name("testdata")


@pytest.fixture
def apply(cluster: Cluster, namespace: str) -> Callable[..., object]:
    """``apply(obj_or_list, check=True)``: ``kubectl apply`` of dicts into the test namespace."""

    def _apply(objs: dict | list[dict], check: bool = True) -> subprocess.CompletedProcess[str]:
        items = objs if isinstance(objs, list) else [objs]
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=doc, check=check)

    return _apply
