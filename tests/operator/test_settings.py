"""OperatorSettings: the one place the operator reads its environment, every field documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from paddle_operator.settings import ENV_PREFIX, OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "paddle_operator"


def test_settings_are_read_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PADDLE_OPERATOR_ROLLOUT_TICK_S", "1.5")
    monkeypatch.setenv("PADDLE_OPERATOR_PROMETHEUS_URL", "http://prom:9090")
    monkeypatch.setenv("KUBECONFIG", "/tmp/a:/tmp/b")
    s = OperatorSettings()
    assert (s.rollout_tick_s, s.prometheus_url, s.kubeconfig) == (1.5, "http://prom:9090", "/tmp/a:/tmp/b")


def test_bad_setting_is_rejected_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PADDLE_OPERATOR_WORKERS", "0")
    with pytest.raises(ValueError, match="workers"):
        OperatorSettings()


def test_watch_client_timeout_must_outlast_the_server_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PADDLE_OPERATOR_WATCH_SERVER_TIMEOUT_S", "300")
    monkeypatch.setenv("PADDLE_OPERATOR_WATCH_CLIENT_TIMEOUT_S", "300")
    with pytest.raises(ValueError, match="watch_client_timeout_s"):
        OperatorSettings()


def test_every_setting_is_documented_in_code_and_docs() -> None:
    docs = (ROOT / "docs" / "operator.md").read_text()
    for name, info in OperatorSettings.model_fields.items():
        assert info.description, f"{name} has no docstring"
        alias = info.validation_alias
        env = alias.choices[0] if alias is not None else f"{ENV_PREFIX}{name.upper()}"  # type: ignore[union-attr]
        assert f"`{env}`" in docs, f"docs/operator.md does not list {env}"


def test_no_other_operator_module_reads_the_environment() -> None:
    readers = [
        p.relative_to(ROOT).as_posix()
        for p in PACKAGE.rglob("*.py")
        if p.name != "settings.py" and re.search(r"os\.environ|os\.getenv|getenv\(", p.read_text())
    ]
    assert readers == []
