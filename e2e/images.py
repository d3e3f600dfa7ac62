"""Container images without Docker: the runtime and operator images from their Dockerfiles, and pause.

``runtime/Dockerfile`` and ``operator/Dockerfile`` are built as they are, the files a Docker user
builds, with ``buildah bud``. Their ``FROM`` base cannot be pulled here, so a stand-in is made from
Debian bookworm packages with mmdebstrap and stored under the exact name the ``FROM`` lines use
(docs/local-cluster.md, "Images without Docker"). The pause image is ``pause.c`` from the pinned
k8s.io/kubernetes module, compiled static into a scratch image.

Each image is exported as a docker-archive that ``ctr -n k8s.io images import`` reads, and cached
under ``$PADDLE_SLA_CACHE/images`` by a hash of what it is built from (Dockerfile, the files it
copies, build args, base recipe): an unchanged second build is a lookup.

    python -m e2e.images build [--only runtime,operator,pause]
    python -m e2e.images list
    python -m e2e.images clean
"""

from __future__ import annotations

import argparse
import fcntl
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GO_KUBE = ROOT / "e2e" / "go" / "kube"

Log = Callable[[str], None]

# Bump when the way images are made changes in a way the hashed inputs do not show.
RECIPE_VERSION = "1"

# The python:3.11-slim-bookworm stand-in: Debian's Python 3.11 with venv, and the `python` name the
# official image has. LANG as in the official image.
BASE_REF = "docker.io/library/python:3.11-slim-bookworm"
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
BASE_SOURCES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
BASE_ENV = ("LANG=C.UTF-8",)
# Docs, man pages and translations are dropped, as Debian's slim images do.
BASE_DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")

# The registries are reached through a TLS path whose CA only the host trusts: the host bundle is
# bind-mounted into RUN steps at build time and never becomes part of an image.
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
# The sandbox lacks CAP_SYS_RESOURCE: rlimits above the host's are refused, so ask for low ones.
ULIMITS = ("nofile=1024:1024", "nproc=1024:1024")


class ImageBuildError(RuntimeError):
    """A build step failed; the message names the step and ends with the tail of its log."""


@dataclass(frozen=True)
class Image:
    """One built image: the name containerd and the pods use, and the archive to import."""

    name: str
    """Short name: ``runtime``, ``operator`` or ``pause``."""
    ref: str
    """Full reference, e.g. ``ghcr.io/paddle-sla/paddle-runtime:0.1.0-cpu``."""
    archive: Path
    """docker-archive tarball (``ctr -n k8s.io images import <archive>``)."""
    key: str
    """Hash of everything the image is built from."""
    image_id: str
    """Image ID in the buildah/podman storage it was built in (``storage_args()``)."""
    size_bytes: int
    """Size of the archive (uncompressed layers)."""
    cached: bool = False
    """True when this call found it in the cache instead of building it."""


@dataclass(frozen=True)
class ImageSet:
    """The images a real node needs: the project's two and the sandbox (pause) image."""

    runtime: Image
    operator: Image
    pause: Image

    def __iter__(self) -> Iterator[Image]:
        return iter((self.runtime, self.operator, self.pause))


@dataclass(frozen=True)
class DockerfileRecipe:
    """A Dockerfile built from the repository root, tagged ``ref``."""

    name: str
    dockerfile: Path
    ref: str
    build_args: dict[str, str] = field(default_factory=dict)


# --- where things live -------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$PADDLE_SLA_CACHE`` or ``~/.cache/paddle-sla`` (the same rule as e2e/cluster.py)."""
    return Path(os.environ.get("PADDLE_SLA_CACHE") or Path.home() / ".cache" / "paddle-sla").expanduser()


def images_dir() -> Path:
    """Archives, their records and build logs."""
    return cache_dir() / "images"


def storage_args() -> list[str]:
    """Global buildah/podman flags selecting the project's own container storage (not the host's)."""
    d = images_dir()
    return ["--root", str(d / "storage"), "--runroot", str(d / "run"), "--storage-driver", "overlay"]


def buildah(*args: str) -> list[str]:
    """A buildah command line on the project's storage."""
    return ["buildah", *storage_args(), *args]


# --- what the images are called -----------------------------------------------------------------


def runtime_ref() -> str:
    """The runtime image examples/01-minimal runs (``spec.image:spec.tag``)."""
    for doc in yaml.safe_load_all((ROOT / "examples" / "01-minimal" / "paddlemodelservice.yaml").read_text()):
        if doc and doc.get("kind") == "PaddleModelService":
            return f"{doc['spec']['image']}:{doc['spec']['tag']}"
    raise RuntimeError("examples/01-minimal has no PaddleModelService")


def operator_ref() -> str:
    """The operator image the chart runs by default (``image.repository:appVersion``)."""
    chart = ROOT / "charts" / "paddle-operator"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    app_version = yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"]
    return f"{values['image']['repository']}:{values['image'].get('tag') or app_version}"


def k8s_version() -> str:
    """The pinned k8s.io/kubernetes version (e2e/go/kube/go.mod is the one pin)."""
    text = (GO_KUBE / "go.mod").read_text()
    m = re.search(r"^\s*(?:require\s+)?k8s\.io/kubernetes\s+(v\S+)", text, re.MULTILINE)
    if not m:
        raise RuntimeError("k8s.io/kubernetes is not required in e2e/go/kube/go.mod")
    return m.group(1)


def recipes() -> tuple[DockerfileRecipe, ...]:
    """The two Dockerfiles, with default build args (CPU runtime)."""
    return (
        DockerfileRecipe("runtime", ROOT / "runtime" / "Dockerfile", runtime_ref()),
        DockerfileRecipe("operator", ROOT / "operator" / "Dockerfile", operator_ref()),
    )


# --- hashing what an image is built from ---------------------------------------------------------


def dockerfile_instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out = []
    for line in re.sub(r"\\\n", " ", dockerfile.read_text()).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerignore_patterns() -> list[str]:
    """The build context's .dockerignore (the context is the repository root)."""
    path = ROOT / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


def dockerignored(rel: str, patterns: Sequence[str]) -> bool:
    """Docker's rule, simplified: a pattern matches the path or a parent; the last match wins."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        alts = (pat, pat[3:]) if pat.startswith("**/") else (pat,)
        if any(fnmatch.fnmatchcase(c, a) for c in candidates for a in alts):
            ignored = not negate
    return ignored


def copied_files(dockerfile: Path) -> list[Path]:
    """Every context file the Dockerfile's COPY/ADD lines take (not ``--from`` ones), sorted."""
    patterns = dockerignore_patterns()
    files: set[Path] = set()
    for word, args in dockerfile_instructions(dockerfile):
        if word not in ("COPY", "ADD") or "--from=" in args:
            continue
        *sources, _dest = [a for a in shlex.split(args) if not a.startswith("--")]
        for src in sources:
            path = ROOT / src
            if not path.exists():
                raise ImageBuildError(f"{dockerfile.relative_to(ROOT)}: COPY {src} does not exist")
            for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
                if not dockerignored(str(f.relative_to(ROOT)), patterns):
                    files.add(f)
    return sorted(files)


def _digest(parts: Iterable[str | bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def base_key() -> str:
    """Hash of the base stand-in's recipe."""
    return _digest(
        [RECIPE_VERSION, BASE_REF, BASE_SUITE, *BASE_PACKAGES, *BASE_SOURCES, *BASE_ENV, *BASE_DPKG_EXCLUDES]
    )


def dockerfile_key(recipe: DockerfileRecipe) -> str:
    """Hash of the Dockerfile, the files it copies, its build args, the base and the ignore file."""
    parts: list[str | bytes] = [RECIPE_VERSION, recipe.ref, base_key(), recipe.dockerfile.read_bytes()]
    parts += [f"{k}={v}" for k, v in sorted(recipe.build_args.items())]
    parts += dockerignore_patterns()
    for f in copied_files(recipe.dockerfile):
        parts += [str(f.relative_to(ROOT)), str(os.access(f, os.X_OK)), f.read_bytes()]
    return _digest(parts)


# --- running things, with progress ---------------------------------------------------------------


def _default_log(line: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _run(cmd: Sequence[str], *, log_file: Path, step: str) -> str:
    """Run ``cmd``, appending its output to ``log_file``; stdout returned; failure names ``step``."""
    with log_file.open("a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True)
        f.write(proc.stdout)
    if proc.returncode != 0:
        raise ImageBuildError(f"{step} failed (exit {proc.returncode}); log {log_file}:\n{_tail(log_file)}")
    return proc.stdout


def _stream(cmd: Sequence[str], *, log_file: Path, step: str, log: Log, progress: re.Pattern[str]) -> None:
    """Run a long ``cmd``; every output line goes to ``log_file``, lines matching ``progress`` to ``log``."""
    start = time.monotonic()
    with log_file.open("a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            if progress.search(line):
                log(f"{step} +{time.monotonic() - start:.0f}s {line.strip()[:150]}")
        rc = proc.wait()
    if rc != 0:
        raise ImageBuildError(f"{step} failed (exit {rc}); log {log_file}:\n{_tail(log_file)}")


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def _lock() -> Iterator[None]:
    """One builder at a time per cache (the lead's harness and tests may ask together)."""
    images_dir().mkdir(parents=True, exist_ok=True)
    with (images_dir() / "build.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _image_id(ref: str) -> str | None:
    proc = subprocess.run(
        buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref),
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip() or None if proc.returncode == 0 else None


# --- the cache record ----------------------------------------------------------------------------


# Archives kept per image name: several checkouts (branches) share one cache and must not evict
# each other's current build; older ones go, least recently used first.
KEEP_PER_NAME = 3


def _record_path(name: str, key: str) -> Path:
    return images_dir() / f"{name}-{key[:16]}.json"


def _records(name: str = "*") -> list[dict]:
    """Every cache record (of ``name``), most recently used first."""
    out = []
    for path in sorted(images_dir().glob(f"{name}-*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            out.append({**json.loads(path.read_text()), "record": str(path)})
        except (OSError, ValueError):
            continue
    return out


def cached(name: str, key: str) -> Image | None:
    """The cached image ``name`` if it was built from ``key`` and its archive is still there."""
    path = _record_path(name, key)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    archive = Path(rec.get("archive", ""))
    if rec.get("key") != key or not archive.is_file():
        return None
    os.utime(path)  # most recently used: the last one eviction takes
    return Image(name, rec["ref"], archive, key, rec["image_id"], archive.stat().st_size, cached=True)


def _export(name: str, ref: str, key: str, log_file: Path, steps: Sequence[str] = ()) -> Image:
    """Push ``ref`` from storage to a docker-archive named by its key; evict beyond ``KEEP_PER_NAME``."""
    image_id = _image_id(ref)
    if not image_id:
        raise ImageBuildError(f"{ref} is not in the image storage after its build")
    archive = images_dir() / f"{name}-{key[:16]}.tar"
    tmp = archive.with_suffix(".tar.part")
    tmp.unlink(missing_ok=True)
    _run(
        buildah("push", "--quiet", ref, f"docker-archive:{tmp}:{ref}"),
        log_file=log_file,
        step=f"export {ref}",
    )
    tmp.rename(archive)
    rec = {
        "name": name,
        "ref": ref,
        "key": key,
        "archive": str(archive),
        "image_id": image_id,
        "steps": list(steps),
    }
    _record_path(name, key).write_text(json.dumps(rec, indent=2) + "\n")
    for old in _records(name)[KEEP_PER_NAME:]:
        Path(old["archive"]).unlink(missing_ok=True)
        Path(old["record"]).unlink(missing_ok=True)
    return Image(name, ref, archive, key, image_id, archive.stat().st_size)


def _storage_ids() -> list[str]:
    out = subprocess.run(
        buildah("images", "--all", "--no-trunc", "--quiet"), capture_output=True, text=True, check=True
    ).stdout
    return [line.strip().removeprefix("sha256:") for line in out.splitlines() if line.strip()]


def _step_ids(log_file: Path) -> list[str]:
    """Full IDs of the step images a ``buildah bud --layers`` run made or reused (its ``-->`` lines)."""
    short = re.findall(r"^--> (?:Using cache )?([0-9a-f]{11,64})$", log_file.read_text(), re.MULTILINE)
    ids = _storage_ids()
    return sorted({i for s in short for i in ids if i.startswith(s)})


def _tidy(log_file: Path) -> None:
    """Keep only what the current images use: the base, each recorded image and its build's step images.

    The step images are the layer cache (a source edit re-runs only the steps after its COPY); those of
    older builds, older tags and working containers go, so the storage does not grow with each rebuild.
    """
    _run(buildah("rm", "--all"), log_file=log_file, step="remove working containers")
    keep: set[str] = set()
    for rec in [*_records(), _base_record()]:
        keep.update(str(i).removeprefix("sha256:") for i in [rec.get("image_id", ""), *rec.get("steps", [])])
    drop = [i for i in _storage_ids() if i not in keep]
    if drop:
        _run(buildah("rmi", "--force", *drop), log_file=log_file, step="remove unused images")


def _base_record() -> dict:
    try:
        return dict(json.loads((images_dir() / "base.json").read_text()))
    except (OSError, ValueError):
        return {}


# --- the three kinds of image --------------------------------------------------------------------


def ensure_base(log: Log = _default_log) -> str:
    """The base stand-in in storage under ``BASE_REF`` (made with mmdebstrap when missing); its ID."""
    key = base_key()
    marker = images_dir() / "base.json"
    rec = _base_record()
    image_id = _image_id(BASE_REF)
    if image_id and rec.get("key") == key and rec.get("image_id") == image_id:
        return image_id
    log(f"base: making {BASE_REF} from Debian {BASE_SUITE} packages with mmdebstrap (about 1-2 min)")
    start = time.monotonic()
    log_file = images_dir() / "logs" / "base.log"
    log_file.write_text("")
    with tempfile.TemporaryDirectory(dir=images_dir(), prefix="base-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        _stream(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--format=tar",
                f"--include={','.join(BASE_PACKAGES)}",
                '--aptopt=Acquire::Retries "3"',
                *(f"--dpkgopt=path-exclude={p}" for p in BASE_DPKG_EXCLUDES),
                BASE_SUITE,
                str(rootfs),
                *BASE_SOURCES,
            ],
            log_file=log_file,
            step="base",
            log=log,
            progress=re.compile(r"^I: (?!running)"),
        )
        ctr = _run(
            buildah("from", "--quiet", "scratch"), log_file=log_file, step="base: buildah from"
        ).strip()
        try:
            _run(buildah("add", ctr, str(rootfs), "/"), log_file=log_file, step="base: add rootfs")
            env = [a for e in BASE_ENV for a in ("--env", e)]
            _run(buildah("config", *env, "--cmd", "python3", ctr), log_file=log_file, step="base: config")
            _run(buildah("commit", "--quiet", ctr, BASE_REF), log_file=log_file, step="base: commit")
        finally:
            subprocess.run(buildah("rm", ctr), capture_output=True)
    image_id = _image_id(BASE_REF) or ""
    marker.write_text(json.dumps({"ref": BASE_REF, "key": key, "image_id": image_id}) + "\n")
    log(f"base: {BASE_REF} ready in {time.monotonic() - start:.0f}s")
    return image_id


def build_dockerfile(recipe: DockerfileRecipe, *, log: Log = _default_log) -> Image:
    """Build one Dockerfile unchanged with ``buildah bud`` (cached by ``dockerfile_key``)."""
    key = dockerfile_key(recipe)
    hit = cached(recipe.name, key)
    if hit:
        return hit
    ensure_base(log)
    log_file = images_dir() / "logs" / f"{recipe.name}.log"
    log_file.write_text("")
    rel = recipe.dockerfile.relative_to(ROOT)
    log(f"{recipe.name}: buildah bud -f {rel} -t {recipe.ref} (full log {log_file})")
    start = time.monotonic()
    cmd = buildah(
        "bud",
        "--runtime",
        "runc",
        "--isolation",
        "chroot",
        "--cgroup-manager",
        "cgroupfs",
        *(a for u in ULIMITS for a in ("--ulimit", u)),
        # Layers: a source edit re-runs only the steps after its COPY, not the dependency installs.
        "--layers",
        "--pull=never",
        "--volume",
        f"{HOST_CA}:{HOST_CA}:ro",
        *(a for k, v in sorted(recipe.build_args.items()) for a in ("--build-arg", f"{k}={v}")),
        "--file",
        str(recipe.dockerfile),
        "--tag",
        recipe.ref,
        str(ROOT),
    )
    try:
        _stream(
            cmd,
            log_file=log_file,
            step=recipe.name,
            log=log,
            progress=re.compile(r"(^|\] )STEP \d+/\d+|^Successfully (built|tagged)|^Downloading \S*paddle"),
        )
    except ImageBuildError:
        subprocess.run(buildah("rm", "--all"), capture_output=True)
        raise
    log(f"{recipe.name}: built in {time.monotonic() - start:.0f}s; exporting")
    image = _export(recipe.name, recipe.ref, key, log_file, _step_ids(log_file))
    _tidy(log_file)
    log(f"{recipe.name}: {image.ref} {image.size_bytes / 1e6:.0f} MB in {time.monotonic() - start:.0f}s")
    return image


def pause_source() -> tuple[str, bytes]:
    """(tag, pause.c) from the pinned k8s.io/kubernetes module zip (the tag from its Makefile)."""
    version = k8s_version()
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
        cwd=GO_KUBE,
        capture_output=True,
        text=True,
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    )
    if proc.returncode != 0:
        raise ImageBuildError(f"go mod download k8s.io/kubernetes@{version} failed:\n{proc.stderr[-2000:]}")
    prefix = f"k8s.io/kubernetes@{version}/build/pause/"
    with zipfile.ZipFile(json.loads(proc.stdout)["Zip"]) as z:
        makefile = z.read(prefix + "Makefile").decode()
        source = z.read(prefix + "linux/pause.c")
    m = re.search(r"^TAG \?= (\S+)", makefile, re.MULTILINE)
    if not m:
        raise ImageBuildError(f"no TAG in {prefix}Makefile")
    return m.group(1), source


def build_pause(*, log: Log = _default_log) -> Image:
    """``registry.k8s.io/pause:<tag>``: pause.c compiled ``-Os -static`` into a scratch image."""
    tag, source = pause_source()
    ref = f"registry.k8s.io/pause:{tag}"
    cflags = ["-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{tag}-{k8s_version()}"]
    gcc = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
    key = _digest([RECIPE_VERSION, ref, source, *cflags, gcc])
    hit = cached("pause", key)
    if hit:
        return hit
    log(f"pause: gcc {' '.join(cflags)} pause.c -> {ref}")
    log_file = images_dir() / "logs" / "pause.log"
    log_file.write_text("")
    with tempfile.TemporaryDirectory(dir=images_dir(), prefix="pause-") as tmp:
        (Path(tmp) / "pause.c").write_bytes(source)
        binary = Path(tmp) / "pause"
        _run(
            ["gcc", *cflags, "-o", str(binary), str(Path(tmp) / "pause.c")],
            log_file=log_file,
            step="pause: gcc",
        )
        ctr = _run(
            buildah("from", "--quiet", "scratch"), log_file=log_file, step="pause: buildah from"
        ).strip()
        try:
            _run(
                buildah("copy", "--chmod", "0755", ctr, str(binary), "/pause"),
                log_file=log_file,
                step="pause: copy",
            )
            # As the upstream image: build/pause/Dockerfile.
            _run(
                buildah("config", "--user", "65535:65535", "--entrypoint", '["/pause"]', ctr),
                log_file=log_file,
                step="pause: config",
            )
            _run(buildah("commit", "--quiet", "--rm", ctr, ref), log_file=log_file, step="pause: commit")
        except BaseException:
            subprocess.run(buildah("rm", ctr), capture_output=True)
            raise
    image = _export("pause", ref, key, log_file)
    _tidy(log_file)
    log(f"pause: {ref} {image.size_bytes / 1e3:.0f} kB")
    return image


NAMES = ("runtime", "operator", "pause")


def build(names: Iterable[str] = NAMES, *, log: Log = _default_log) -> list[Image]:
    """Build (or find cached) the named images, in the order of ``NAMES``."""
    wanted = set(names)
    unknown = wanted - set(NAMES)
    if unknown:
        raise ImageBuildError(f"unknown image(s) {sorted(unknown)}; known: {', '.join(NAMES)}")
    (images_dir() / "logs").mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    out = []
    with _lock():
        for name in NAMES:  # records of the first version: one per name
            legacy = images_dir() / f"{name}.json"
            if legacy.exists():
                key = json.loads(legacy.read_text()).get("key", "")
                legacy.rename(_record_path(name, key)) if key else legacy.unlink()
        out += [build_dockerfile(r, log=log) for r in recipes() if r.name in wanted]
        if "pause" in wanted:
            out.append(build_pause(log=log))
    fresh = [i.name for i in out if not i.cached]
    log(
        f"images ready in {time.monotonic() - start:.0f}s ({'built ' + ', '.join(fresh) if fresh else 'all cached'})"
    )
    return out


def ensure_images(log: Log = _default_log) -> ImageSet:
    """Every image a real node needs, built or taken from the cache."""
    return ImageSet(**{i.name: i for i in build(NAMES, log=log)})


def clean(log: Log = _default_log) -> None:
    """Remove every archive, record and the project's container storage."""
    with _lock():
        subprocess.run(buildah("rm", "--all"), capture_output=True)
        subprocess.run(buildah("rmi", "--all", "--force"), capture_output=True)
        for p in images_dir().iterdir():
            if p.name == "build.lock":
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()
    log(f"removed {images_dir()}")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``build [--only ...]``, ``list``, ``clean``."""
    parser = argparse.ArgumentParser(prog="python -m e2e.images", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build or reuse the images")
    b.add_argument("--only", default="runtime,operator,pause", help="comma-separated subset")
    sub.add_parser("list", help="show each image, its archive and whether it is up to date")
    sub.add_parser("clean", help="remove archives and the container storage")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            for i in build([s for s in args.only.split(",") if s]):
                print(f"{i.name:9} {i.ref:50} {i.size_bytes / 1e6:8.1f} MB  {i.archive}")
        elif args.cmd == "list":
            current = {r.name: dockerfile_key(r) for r in recipes()}
            for rec in sorted(_records(), key=lambda r: NAMES.index(r["name"]) if r["name"] in NAMES else 9):
                archive = Path(rec["archive"])
                size = f"{archive.stat().st_size / 1e6:8.1f} MB" if archive.exists() else "missing"
                state = "current" if current.get(rec["name"], rec["key"]) == rec["key"] else "other"
                print(f"{rec['name']:9} {rec['ref']:45} {rec['key'][:16]} {state:7} {size}  {archive}")
            for name, key in current.items():
                if not (images_dir() / f"{name}-{key[:16]}.json").exists():
                    print(
                        f"{name:9} not built from this checkout (key {key[:16]}): python -m e2e.images build"
                    )
        else:
            clean()
    except ImageBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
