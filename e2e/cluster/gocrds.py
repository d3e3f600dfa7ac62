"""Third-party CRDs the routers need (Gateway API, Istio), taken from their upstream Go modules.

Both projects publish their CRD manifests inside their Go modules (``sigs.k8s.io/gateway-api``
under ``config/crd/standard/``, ``istio.io/api`` under ``kubernetes/``), and the Go module proxy is
reachable where release downloads are not. ``go mod download -json`` fetches a pinned version into
the module cache; we copy the files we need into ``$PADDLE_SLA_CACHE/crds/`` and reuse them. Nothing
is committed: the pins below are the one source.

    python -m e2e.cluster.gocrds      # fetch (or reuse) and print the paths
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from .binaries import cache_dir


@dataclass(frozen=True)
class CRDSource:
    """Where one project's CRDs live in its Go module."""

    name: str
    module: str
    version: str
    files: tuple[str, ...]
    # Only these CRDs are kept from the files (None: all); Istio ships ~15 in one file.
    keep: tuple[str, ...] | None = None


# The whole standard channel: Traefik's Gateway provider watches GRPCRoutes and BackendTLSPolicies
# too, and waits for every informer to sync, so a missing CRD would keep it from ever routing.
# v1.4.0 is what Traefik v3.6 implements (e2e/go/traefik/go.mod requires the same module version).
GATEWAY_API = CRDSource(
    "gateway-api",
    "sigs.k8s.io/gateway-api",
    "v1.4.0",
    tuple(
        f"config/crd/standard/gateway.networking.k8s.io_{kind}.yaml"
        for kind in (
            "gatewayclasses", "gateways", "httproutes", "grpcroutes", "referencegrants", "backendtlspolicies"
        )
    ),
)
ISTIO = CRDSource(
    "istio",
    "istio.io/api",
    "v1.24.2",
    ("kubernetes/customresourcedefinitions.gen.yaml",),
    keep=("virtualservices.networking.istio.io", "destinationrules.networking.istio.io"),
)
SOURCES = (GATEWAY_API, ISTIO)


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise RuntimeError(
            "the Go toolchain is needed to fetch the Gateway API / Istio CRDs (go mod download)"
        )
    return go


def _module_dir(module: str, version: str) -> Path:
    """``go mod download -json`` and return the module's directory in the module cache."""
    # Run outside any module so our e2e/go wrappers' go.mod files do not interfere.
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [_go(), "mod", "download", "-json", f"{module}@{version}"],
            capture_output=True,
            text=True,
            cwd=tmp,
            env=dict(os.environ, GOFLAGS="-mod=mod", GO111MODULE="on"),
            timeout=600,
        )
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise RuntimeError(
            f"go mod download {module}@{version} failed:\n{proc.stdout}\n{proc.stderr}"
        ) from exc
    if info.get("Error") or not info.get("Dir"):
        raise RuntimeError(f"go mod download {module}@{version}: {info.get('Error') or proc.stderr}")
    return Path(info["Dir"])


def _select(text: str, keep: tuple[str, ...] | None) -> str:
    if keep is None:
        return text
    docs = [d for d in yaml.safe_load_all(text) if d and d.get("metadata", {}).get("name") in keep]
    missing = set(keep) - {d["metadata"]["name"] for d in docs}
    if missing:
        raise RuntimeError(f"CRDs not found upstream: {sorted(missing)}")
    return yaml.safe_dump_all(docs, sort_keys=False)


def fetch(source: CRDSource, root: Path | None = None) -> Path:
    """The directory holding ``source``'s CRD files, fetched on first use."""
    dest = (root or cache_dir() / "crds") / f"{source.name}-{source.version}"
    stamp = dest / ".complete"
    # A source whose file list grew since the cache was filled is fetched again.
    if stamp.exists() and all((dest / Path(rel).name).exists() for rel in source.files):
        return dest
    mod_dir = _module_dir(source.module, source.version)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent if dest.parent.exists() else None))
    try:
        for rel in source.files:
            text = (mod_dir / rel).read_text()
            (tmp / Path(rel).name).write_text(_select(text, source.keep))
        (tmp / ".complete").write_text(f"{source.module}@{source.version}\n")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(tmp), dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def crd_files(source: CRDSource) -> list[Path]:
    """The YAML files to ``kubectl apply --server-side -f``."""
    return sorted(fetch(source).glob("*.yaml"))


def main() -> int:
    for source in SOURCES:
        for path in crd_files(source):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
