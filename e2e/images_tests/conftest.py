"""Fixtures for the built images: the image set (built or cached) and podman on the project's storage."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

import pytest

from e2e import images

# podman as the node runs containers here: runc with cgroupfs (crun refuses these hybrid cgroups),
# rlimits the sandbox allows (it lacks CAP_SYS_RESOURCE), events to a file (no journald).
PODMAN = [
    "podman",
    *images.storage_args(),
    "--runtime",
    "runc",
    "--cgroup-manager",
    "cgroupfs",
    "--events-backend",
    "file",
]
# The pod's restrictions: read-only root, the uid the operator sets, no capabilities, no network.
RESTRICTED = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
    "--read-only",
    "--user",
    "65532:65532",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--network",
    "none",
    "--log-driver",
    "k8s-file",
]


def podman(
    *args: str, timeout: float = 120, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run podman on the images' storage; a failure shows its output."""
    proc = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        pytest.fail(f"podman {' '.join(args[:3])} ... exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _require(tools: Sequence[str]) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (make system-deps)")


@pytest.fixture(scope="session")
def image_set() -> images.ImageSet:
    """Every image, built with buildah on first use (minutes) and cached after."""
    _require(["buildah", "mmdebstrap", "gcc", "go"])
    return images.ensure_images()


@pytest.fixture(scope="session")
def in_podman(image_set: images.ImageSet) -> images.ImageSet:
    """The image set, each image present in the storage podman reads (loaded from its archive if not)."""
    _require(["podman", "runc"])
    for image in image_set:
        if podman("image", "exists", image.image_id, check=False).returncode != 0:
            podman("load", "--quiet", "--input", str(image.archive), timeout=300)
    return image_set
