"""The typed spec model agrees with the CRD (the single source of truth for validation and defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from paddle_operator.spec import (
    GROUP,
    KIND,
    MAX_NAME_LENGTH,
    PLURAL,
    VERSION,
    ServiceSpec,
)

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "serving.paddlesla.io_paddlemodelservices.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def test_names(crd: dict[str, Any]) -> None:
    assert crd["spec"]["group"] == GROUP
    assert crd["spec"]["names"]["kind"] == KIND
    assert crd["spec"]["names"]["plural"] == PLURAL
    assert crd["spec"]["names"]["shortNames"] == ["pms"]
    assert crd["spec"]["versions"][0]["name"] == VERSION


def test_name_length_rule_matches_child_suffixes(schema: dict[str, Any]) -> None:
    rules = [r["rule"] for r in schema["x-kubernetes-validations"]]
    assert f"self.metadata.name.size() <= {MAX_NAME_LENGTH}" in rules


def test_subresources_and_printer_columns(crd: dict[str, Any]) -> None:
    (version,) = crd["spec"]["versions"]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert "status" in version["subresources"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Tag", "Replicas", "Model", "P99/Target", "Fallback", "Rollout", "Canary%", "Age"]


def _pydantic_default(model: type[BaseModel], alias: str) -> tuple[bool, Any, type[BaseModel] | None]:
    for name, info in model.model_fields.items():
        info: FieldInfo
        if (info.alias or name) == alias or name == alias:
            default = info.get_default(call_default_factory=True)
            sub = default.__class__ if isinstance(default, BaseModel) else None
            if sub is None:
                ann = info.annotation
                for arg in getattr(ann, "__args__", (ann,)):
                    if isinstance(arg, type) and issubclass(arg, BaseModel):
                        sub = arg
            return True, default, sub
    return False, None, None


def _walk(props: dict[str, Any], model: type[BaseModel], path: str, seen: list[str]) -> None:
    for key, prop in props.items():
        found, default, sub = _pydantic_default(model, key)
        assert found, f"{path}.{key} is in the CRD but not in {model.__name__}"
        if "default" in prop:
            value = default.model_dump(by_alias=True) if isinstance(default, BaseModel) else default
            if isinstance(value, tuple):
                value = list(value)
            if prop["default"] != {}:
                assert value == prop["default"], f"{path}.{key}: CRD default {prop['default']!r} != model {value!r}"
            seen.append(f"{path}.{key}")
        if sub is not None and "properties" in prop:
            _walk(prop["properties"], sub, f"{path}.{key}", seen)


def test_every_crd_default_is_the_model_default(schema: dict[str, Any]) -> None:
    seen: list[str] = []
    _walk(schema["properties"]["spec"]["properties"], ServiceSpec, "spec", seen)
    assert "spec.inference.device" in seen and "spec.rollout.steps" in seen  # the walk reached nested blocks


def test_cel_messages_name_their_field(schema: dict[str, Any]) -> None:
    def rules(node: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        if isinstance(node, dict):
            found += node.get("x-kubernetes-validations", [])
            for v in node.values():
                found += rules(v)
        elif isinstance(node, list):
            for v in node:
                found += rules(v)
        return found

    all_rules = rules(schema)
    assert len(all_rules) >= 12
    for r in all_rules:
        assert r["message"].startswith(("spec.", "metadata.")), r


def test_minimal_spec_parses_with_defaults() -> None:
    spec = ServiceSpec.model_validate({"model": {"uri": "file:///m"}})
    assert spec.inference.device == "cpu" and spec.replicas == 1 and spec.rollout.steps == (10, 30, 60, 100)
    assert not spec.autoscaled
