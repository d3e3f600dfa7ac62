"""pytest wiring for everything under e2e/: the `e2e` marker, the session cluster, a namespace per test.

Fixtures (contract in docs/contracts.md):
- ``cluster`` (session): an ``e2e.cluster.Cluster`` with ``.kubeconfig``, ``.bin_dir``, ``.env``,
  ``.kubectl(*args, input=None, check=True, timeout=60)``, ``.helm(...)``, ``.get(...)`` (parsed JSON).
- ``namespace`` (function): a fresh namespace name, deleted in ``finally``.
- ``prometheus`` (session): an ``e2e.cluster.prometheus.Prometheus`` discovering the cluster's pods
  with the users' scrape config (``.url``, ``.query(expr)``, ``.targets()``, ``.rules()``,
  ``.set_rule_files(paths)``); reachable from pods when the cluster has a real node.
- ``gateway`` (session): an ``e2e.cluster.gateway.Traefik`` routing the Gateway ``gateway-system/public``
  (``.url``, ``.address``, ``.dump()``; ``gateway.parent_ref()`` for HTTPRoutes); real node only.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import cluster as harness
from e2e.cluster.gateway import Traefik, start_gateway
from e2e.cluster.prometheus import Prometheus, start_prometheus
from e2e.util import dump_namespace, wait_for

E2E_DIR = Path(__file__).resolve().parent
_build_error: BaseException | None = None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselection, so `-m e2e` / `-m "not e2e"` see the marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.e2e)


_real_node = False
# The node's images as built (or found) at collection: the cluster takes these, so it does not wait
# on the image lock a second time while other sessions build theirs.
_images: list | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing binaries (and, for real pods, images) before any test starts: a cold build
    outlasts any per-test timeout. The session cluster gets a real node only when a selected test
    is marked ``realnode``; Argo CD is built when a selected test is marked ``argocd``."""
    global _build_error, _real_node, _images
    if session.config.option.collectonly or not any(i.get_closest_marker("e2e") for i in session.items):
        return
    _real_node = any(i.get_closest_marker("realnode") for i in session.items)
    groups = harness.WITH_NODE if _real_node else harness.CONTROL
    # Traefik is the longest single build: only when a selected test routes through the gateway.
    if _real_node and any("gateway" in getattr(i, "fixturenames", ()) for i in session.items):
        groups = (*groups, *harness.GATEWAY)
    if any(i.get_closest_marker("argocd") for i in session.items):
        groups += harness.ARGOCD  # built only when a selected test runs Argo CD
    try:
        if not harness.binaries_ready(groups=groups):
            harness.build(groups=groups)
        if _real_node:
            _images = harness.node_images(harness._stderr_log)
    except Exception as exc:  # reported by the `cluster` fixture, so unit tests in the same run still run
        _build_error = exc


@pytest.fixture(scope="session")
def cluster() -> Iterator[harness.Cluster]:
    if _build_error is not None:
        pytest.fail(f"building the e2e binaries failed: {_build_error}", pytrace=False)
    with harness.open_cluster(real_node=_real_node, images=_images) as c:
        yield c


@pytest.fixture(scope="session")
def real_node(cluster: harness.Cluster) -> str:
    """The real node's name; tests that need real pods take this fixture (and the marker)."""
    if cluster.real_node is None:
        pytest.skip("no real node in this cluster (mark the test `realnode`; local mode only)")
    return cluster.real_node


@pytest.fixture(scope="session")
def prometheus(cluster: harness.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """One Prometheus for the session, started on first use."""
    prom = start_prometheus(cluster, tmp_path_factory.mktemp("prometheus"))
    try:
        yield prom
    finally:
        prom.stop()


@pytest.fixture(scope="session")
def gateway(
    cluster: harness.Cluster, real_node: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Traefik]:
    """Traefik and its Gateway for the session, started on first use, stopped at the end."""
    router = start_gateway(cluster, tmp_path_factory.mktemp("traefik"))
    try:
        yield router
    finally:
        router.stop()


@pytest.fixture
def namespace(cluster: harness.Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deleted afterwards even when the test fails."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].rstrip("-")
    name = f"e2e-{stem}-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", name)
    try:
        cluster.kubectl("label", "namespace", name, "paddle-sla-e2e=true")
        # Pods are refused until the ServiceAccount controller has created `default`.
        wait_for(
            lambda: (
                cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0
            ),
            60,
            f"ServiceAccount default in {name}",
            dump=dump_namespace(cluster, name, kinds=("serviceaccounts", "events")),
        )
        yield name
    finally:
        # --wait=false: finalizers may take a while; the namespace is gone with the cluster anyway.
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
