"""Sample PaddleModelServices for the operator unit tests, loaded as typed models."""

from __future__ import annotations

from pathlib import Path

import yaml

from paddle_operator.spec import PaddleModelService

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).parent / "cases"
GOLDEN = Path(__file__).parent / "golden"
EXAMPLE_UID = "00000000-0000-0000-0000-000000000001"


def load_case(name: str) -> PaddleModelService:
    """A case from tests/operator/cases, or ``minimal`` = examples/01-minimal (given a namespace and uid)."""
    if name == "minimal":
        body = yaml.safe_load((ROOT / "examples/01-minimal/paddlemodelservice.yaml").read_text())
        body["metadata"].update(namespace="default", uid=EXAMPLE_UID, generation=1)
    else:
        body = yaml.safe_load((CASES / f"{name}.yaml").read_text())
    return PaddleModelService.from_body(body)


