"""Bounded waits and object dumps for e2e tests: a wait never hangs, and a timeout shows the objects."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from e2e.cluster import Cluster

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A bounded wait ran out; the message says what was awaited, the last error and the dump."""


def wait_for(
    fn: Callable[[], T],
    timeout: float,
    what: str,
    dump: Callable[[], str] | None = None,
    interval: float = 0.5,
) -> T:
    """Call ``fn`` until it returns something truthy and return that; fail after ``timeout`` seconds.

    Exceptions from ``fn`` count as "not yet" (the object may not exist yet) and the last one is
    reported. On timeout ``dump()`` (e.g. ``dump_namespace(cluster, ns)``) is added to the failure.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    last_value: object = None
    while True:
        try:
            last_value = fn()
            if last_value:
                return last_value
        except Exception as exc:  # "not yet"; reported if it never succeeds
            last_error = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
    parts = [f"timed out after {timeout:g}s waiting for {what}", f"last value: {last_value!r}"]
    if last_error is not None:
        parts.append(f"last error: {type(last_error).__name__}: {last_error}")
    if dump is not None:
        try:
            parts.append("---- dump ----\n" + dump())
        except Exception as exc:  # the dump must not hide the timeout
            parts.append(f"(dump failed: {exc})")
    raise WaitTimeout("\n".join(parts))


DEFAULT_DUMP_KINDS = ("all", "events", "configmaps", "horizontalpodautoscalers", "poddisruptionbudgets")


def dump_namespace(
    cluster: Cluster, namespace: str, kinds: Sequence[str] = DEFAULT_DUMP_KINDS, describe: bool = True
) -> Callable[[], str]:
    """A ``dump`` for ``wait_for``: ``kubectl get -o wide`` (and ``describe``) of ``kinds`` in ``namespace``."""

    def dump() -> str:
        out = []
        for kind in kinds:
            verbs = [["get", kind, "-o", "wide"]]
            if describe and kind not in ("events", "all"):
                verbs.append(["describe", kind])
            elif describe and kind == "all":
                verbs.append(["describe", "deployments,replicasets,pods"])
            for verb in verbs:
                proc = cluster.kubectl(*verb, "-n", namespace, check=False, timeout=30)
                out.append(f"$ kubectl {' '.join(verb)} -n {namespace}\n{proc.stdout}{proc.stderr}")
        return "\n".join(out)

    return dump


def dump_objects(cluster: Cluster, *args: str) -> Callable[[], str]:
    """A ``dump`` of arbitrary objects: ``kubectl get ARGS -o yaml`` (e.g. ``"crd", "foos.example.com"``)."""

    def dump() -> str:
        proc = cluster.kubectl("get", *args, "-o", "yaml", check=False, timeout=30)
        return f"$ kubectl get {' '.join(args)} -o yaml\n{proc.stdout}{proc.stderr}"

    return dump


def service_address(cluster: Cluster, ns: str, name: str, timeout: float = 60) -> str:
    """``clusterIP:port`` of Service ``name``'s http port, once a TCP connection to it succeeds:
    kube-proxy programs a new Service asynchronously, and until it has, the node's confinement
    answers "Network is unreachable" (a Ready pod does not mean the Service routes to it yet)."""
    svc = cluster.get("service", name, "-n", ns)
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "http")
    address = f"{svc['spec']['clusterIP']}:{port}"

    def connects() -> bool:
        with socket.create_connection((svc["spec"]["clusterIP"], port), timeout=5):
            return True

    wait_for(connects, timeout, f"a TCP connection to Service {ns}/{name} at {address}", dump=dump_namespace(cluster, ns))
    return address
