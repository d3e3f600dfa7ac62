"""``python -m e2e.cluster build|up|down|status|env``."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __doc__ as PACKAGE_DOC
from .binaries import ARGOCD, CONTROL, WITH_NODE, _stderr_log, build, cache_dir
from .control import LocalCluster
from .handle import _install_sigterm_handler, node_images
from .node import RealNode


def _dev_state_dir(name: str) -> Path:
    return cache_dir() / "clusters" / name


def _attach_dev(name: str) -> LocalCluster | None:
    state = _dev_state_dir(name)
    try:
        return LocalCluster.attach(state)
    except (OSError, ValueError, KeyError):
        return None


def _print_env(local: LocalCluster) -> None:
    print(f"export KUBECONFIG={local.kubeconfig}")
    print(f"export PATH={local.bins}:$PATH")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m e2e.cluster build|up|down|status|env``."""
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=PACKAGE_DOC.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or reuse) the pinned binaries")
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    b.add_argument("--no-real-node", action="store_true", help="only the control plane's binaries")
    b.add_argument("--argocd", action="store_true", help="also Argo CD (the GitOps e2e tests build it on demand)")
    for cmd, text in (
        ("up", "start a persistent local cluster"),
        ("down", "stop it and remove its state"),
        ("status", "show its processes and API health"),
        ("env", 'print shell exports for it (eval "$(python -m e2e.cluster env)")'),
    ):
        p = sub.add_parser(cmd, help=text)
        p.add_argument(
            "--name", default="dev", help="cluster name (state in $PADDLE_SLA_CACHE/clusters/NAME)"
        )
        if cmd == "up":
            p.add_argument("--nodes", type=int, default=2, help="number of fake kwok nodes")
            p.add_argument(
                "--real-node",
                action=argparse.BooleanOptionalAction,
                default=True,
                help="also start a real node (containerd + kubelet + kube-proxy; images built with buildah)",
            )
    args = parser.parse_args(argv)

    if args.cmd == "build":
        groups = (CONTROL if args.no_real_node else WITH_NODE) + (ARGOCD if args.argocd else ())
        d = build(force=args.force, groups=groups)
        print(d)
        return 0

    local = _attach_dev(args.name)
    if args.cmd == "up":
        if local and all(local.alive().values()) and local.alive():
            _stderr_log(f"cluster {args.name!r} already running")
        else:
            if local:
                local.stop()  # stale: some process died; start afresh
            shutil.rmtree(_dev_state_dir(args.name), ignore_errors=True)
            groups = WITH_NODE if args.real_node else CONTROL
            local = LocalCluster(
                state_dir=_dev_state_dir(args.name),
                bins=build(groups=groups),
                persistent=True,
                nodes=args.nodes,
                real_node=args.real_node,
                node_images=node_images(_stderr_log) if args.real_node else (),
            )
            _install_sigterm_handler()
            local.start()  # stops and cleans up by itself if interrupted
        _print_env(local)
        return 0
    if args.cmd == "down":
        if local:
            local.stop()
            _stderr_log(f"cluster {args.name!r} stopped")
        else:
            shutil.rmtree(_dev_state_dir(args.name), ignore_errors=True)
            _stderr_log(f"no cluster {args.name!r}")
        return 0
    if local is None:
        print(f"no cluster {args.name!r} (start one with `python -m e2e.cluster up`)", file=sys.stderr)
        return 1
    if args.cmd == "env":
        _print_env(local)
        return 0
    # status
    alive = local.alive()
    pids = {**local.pids, **(local.node.pids if local.node else {})}
    for name in [*LocalCluster.ORDER, *(RealNode.ORDER if local.node else ())]:
        print(f"{name:24} pid {pids.get(name, '-')!s:>8}  {'running' if alive.get(name) else 'DOWN'}")
    if local.net:
        print(
            f"real node: {local.node.name if local.node else '?'} at {local.net.node_ip}, namespace "
            f"{local.net.netns}, pods {local.net.pod_cidr}, services {local.net.service_cidr}"
        )
    try:
        ok = local._healthy("kube-apiserver", "/readyz")
    except Exception as exc:  # status reports; it does not raise
        ok, why = False, str(exc)
    else:
        why = ""
    print(f"API {local.api_url}: {'ready' if ok else 'NOT ready ' + why}")
    print(f"kubeconfig: {local.kubeconfig}")
    return 0 if ok and all(alive.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
