"""Fixtures for the operator unit tests."""

from __future__ import annotations

import pytest
from pms_cases import load_case

from paddle_operator.spec import PaddleModelService


@pytest.fixture(params=["minimal", "full", "gpu", "fixed", "pipeline"])
def case(request: pytest.FixtureRequest) -> tuple[str, PaddleModelService]:
    return request.param, load_case(request.param)
