"""The ArgoCD health check for PaddleModelService, run in a real Lua 5.1 interpreter (lupa).

Argo CD evaluates the script with the live object bound to the global ``obj`` and reads the
``status``/``message`` of the table it returns; these tests do the same against the sample objects
of ``e2e/packaging/argocd_health_cases.py``. The same cases run in Argo CD's own gopher-lua, through
the pinned ``argocd`` binary and argocd-cm.yaml, in ``e2e/packaging/test_argocd_health_gopher_lua.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from e2e.packaging.argocd_health_cases import (
    APP_KEY,
    ARGOCD_CM,
    HEALTH_LUA,
    PMS_KEY,
    Case,
    operator_cases,
    script,
    static_cases,
)

pytest.importorskip("lupa")
try:  # Argo CD runs health scripts in gopher-lua, a Lua 5.1: test with the same language version.
    import lupa.lua51 as lupa
except ImportError:  # pragma: no cover - lupa builds without the bundled 5.1
    import lupa


def _to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def assess(obj: dict[str, Any], source: str | None = None) -> tuple[str, str]:
    """Run the health script the way Argo CD does; return (status, message)."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = _to_lua(lua, obj)
    hs = lua.execute(source if source is not None else HEALTH_LUA.read_text())
    return hs["status"], hs["message"] or ""


@pytest.mark.parametrize("case", static_cases(), ids=lambda c: c.id)
def test_health_of_sample_objects(case: Case) -> None:
    source = HEALTH_LUA.read_text() if case.script_key == PMS_KEY else script(APP_KEY)
    case.check(*assess(case.obj, source))


def test_health_of_statuses_the_operator_writes() -> None:
    pytest.importorskip("paddle_operator.status")
    for case in operator_cases():
        case.check(*assess(case.obj))


def test_runs_as_lua_5_1_like_argo_cd():
    assert lupa.LuaRuntime().lua_version == (5, 1)


def test_argocd_cm_snippet_is_the_tested_script():
    cm = yaml.safe_load(ARGOCD_CM.read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    assert cm["data"][PMS_KEY] == HEALTH_LUA.read_text()
