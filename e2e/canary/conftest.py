"""Fixtures for the canary e2e tests: a real Prometheus scraping real runtime processes.

The pods the operator creates run on kwok nodes, which are not real: nothing listens behind them.
So the test wires the metric path itself. It starts real ``paddle-runtime serve`` processes on
127.0.0.1 (one per track, serving real exported ``paddle.vision.models`` networks) and a real
Prometheus (Debian's ``prometheus`` package) whose scrape config attaches the labels the operator
queries (``namespace``, ``service``, ``track``), exactly what the ``kubernetes_sd_configs``
relabelling in docs/canary.md produces for real pods. A load thread sends real inference requests to
both processes. Traffic does not follow the weight (no real router in front of kwok pods); the
analysis only needs each track's own latency and error figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from e2e.cluster import cache_dir
from e2e.util import wait_for

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MODEL_NAME = "classifier"
IMAGE_SIZE = 224
# Fast stable model and a ~10x slower one (measured here: MobileNetV3-small ~6 ms, ResNet50 ~60 ms
# of pure compute per image on one CPU thread). A latency bound below ResNet50's compute time fails it
# however idle the machine is; the healthy test uses a generous bound, since this machine is shared
# and MobileNet's p99 includes whatever else runs.
FAST_ARCH = "mobilenet_v3_small"
SLOW_ARCH = "resnet50"
# A canary that errors: LeNet exported with dynamic height/width, so the runtime accepts 32x32 images
# its fully connected layer cannot take (it was trained for 28x28): every request is an engine fault
# (HTTP 500). A real model with a wrong input contract, not a stub.
BROKEN_SIZE = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if pytest dies, even by SIGKILL; nothing is left behind."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _http_ok(url: str, timeout: float = 2) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------- models


def _model_dir(arch: str) -> Path:
    """Export ``arch`` once into the shared cache (random weights: latency does not depend on them)."""
    dest = cache_dir() / "models" / "canary-e2e" / arch
    if not (dest / "model.yaml").exists():
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from paddle_runtime.export import export_model; "
                "export_model(sys.argv[1], sys.argv[2], image_size=int(sys.argv[3]))",
                arch,
                str(dest),
                str(IMAGE_SIZE),
            ],
            check=True,
            timeout=600,
        )
    return dest


def _broken_model_dir() -> Path:
    dest = cache_dir() / "models" / "canary-e2e" / "lenet-dynamic"
    if not (dest / "model.yaml").exists():
        script = (
            "import sys, yaml, paddle\n"
            "from paddle.static import InputSpec\n"
            "paddle.seed(0)\n"
            "net = paddle.vision.models.LeNet(); net.eval()\n"
            "paddle.jit.save(net, sys.argv[1] + '/inference', "
            "input_spec=[InputSpec([None, 1, None, None], 'float32', 'x')])\n"
            "open(sys.argv[1] + '/model.yaml', 'w').write(yaml.safe_dump({'name': 'lenet', 'version': '1', "
            "'inputs': [{'name': 'x', 'datatype': 'FP32', 'shape': [-1, 1, -1, -1], "
            "'warmup_shape': [1, 1, 28, 28]}]}, sort_keys=False))\n"
        )
        tmp = Path(tempfile.mkdtemp(prefix=".lenet-", dir=dest.parent if dest.parent.exists() else None))
        subprocess.run([sys.executable, "-c", script, str(tmp)], check=True, timeout=300)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return dest


# ---------------------------------------------------------------------------------- runtimes


@dataclass
class Runtime:
    """One ``paddle-runtime serve`` process."""

    name: str
    port: int
    proc: subprocess.Popen
    log: Path
    image_size: int = IMAGE_SIZE
    channels: int = 3

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


def _start_runtime(
    name: str, model_dir: Path, workdir: Path, image_size: int = IMAGE_SIZE, channels: int = 3
) -> Runtime:
    port = free_port()
    log = workdir / f"runtime-{name}.log"
    env = dict(
        os.environ,
        PADDLE_RUNTIME_MODEL_NAME=MODEL_NAME,
        PADDLE_RUNTIME_HOST="127.0.0.1",
        # One thread, one worker: the machine is shared, and the latency gap is what matters.
        PADDLE_RUNTIME_CPU_THREADS="1",
        PADDLE_RUNTIME_WORKERS="1",
        PADDLE_RUNTIME_MAX_BATCH_SIZE="1",
    )
    cmd = [str(VENV_BIN / "paddle-runtime"), "serve", "--model-dir", str(model_dir), "--port", str(port)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=workdir, preexec_fn=_die_with_parent
        )
    rt = Runtime(name, port, proc, log, image_size, channels)
    try:
        wait_for(
            lambda: proc.poll() is None and _http_ok(f"{rt.url}/v2/health/ready") or proc.poll() is not None,
            180,
            f"runtime {name} ready on {rt.address}",
            dump=lambda: _tail(log),
        )
        if proc.poll() is not None:
            raise RuntimeError(f"runtime {name} exited with {proc.returncode}:\n{_tail(log)}")
    except BaseException:
        _stop(proc)
        raise
    return rt


@dataclass
class Runtimes:
    stable: Runtime
    healthy_canary: Runtime
    slow_canary: Runtime
    broken_canary: Runtime


@pytest.fixture(scope="session")
def runtimes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtimes]:
    """Real runtimes: stable and healthy canary (MobileNetV3-small), slow canary (ResNet50), and a
    canary that errors (LeNet fed images of the wrong size)."""
    workdir = tmp_path_factory.mktemp("runtimes")
    fast, slow, broken = _model_dir(FAST_ARCH), _model_dir(SLOW_ARCH), _broken_model_dir()
    started: list[Runtime] = []
    try:
        for name, model in (("stable", fast), ("healthy-canary", fast), ("slow-canary", slow)):
            started.append(_start_runtime(name, model, workdir))
        started.append(_start_runtime("broken-canary", broken, workdir, BROKEN_SIZE, 1))
        yield Runtimes(*started)
    finally:
        for rt in started:
            _stop(rt.proc)


# ---------------------------------------------------------------------------------- load


def _infer_body(rt: Runtime) -> bytes:
    shape = [1, rt.channels, rt.image_size, rt.image_size]
    data = [round((i % 97) / 97, 2) for i in range(rt.channels * rt.image_size * rt.image_size)]
    doc = {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]}
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class Load:
    """Background inference traffic to some runtimes, a fixed number of requests per second each."""

    targets: list[Runtime]
    rps: float = 3.0
    sent: dict[str, int] = field(default_factory=dict)
    codes: dict[str, dict[int, int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, rt: Runtime, body: bytes) -> None:
        url = f"{rt.url}/v2/models/{MODEL_NAME}/infer"
        period = 1.0 / self.rps
        while not self._stop.is_set():
            start = time.monotonic()
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    resp.read()
                    code = resp.status
            except urllib.error.HTTPError as exc:
                code = exc.code
            except (urllib.error.URLError, OSError):
                code = 0
            self.sent[rt.name] = self.sent.get(rt.name, 0) + 1
            per = self.codes.setdefault(rt.name, {})
            per[code] = per.get(code, 0) + 1
            self._stop.wait(max(0.0, period - (time.monotonic() - start)))

    def start(self) -> Load:
        for rt in self.targets:
            t = threading.Thread(
                target=self._run, args=(rt, _infer_body(rt)), name=f"load-{rt.name}", daemon=True
            )
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


@contextlib.contextmanager
def load(*targets: Runtime, rps: float = 3.0) -> Iterator[Load]:
    gen = Load(list(targets), rps).start()
    try:
        yield gen
    finally:
        gen.stop()


# ---------------------------------------------------------------------------------- Prometheus


@dataclass
class Prometheus:
    """A real Prometheus on 127.0.0.1 scraping the given runtimes every second."""

    binary: str
    workdir: Path
    port: int
    scrape: list[tuple[Runtime, dict[str, str]]]
    proc: subprocess.Popen | None = None
    rule_files: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "prometheus.log"

    def _config(self) -> dict:
        return {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": "paddle-runtime",
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    # Static targets with the labels the kubernetes_sd relabelling gives real pods
                    # (docs/canary.md): the operator's queries select on exactly these.
                    "static_configs": [
                        {"targets": [rt.address], "labels": labels} for rt, labels in self.scrape
                    ],
                }
            ],
        }

    def start(self) -> Prometheus:
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(self._config(), sort_keys=False))
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=_die_with_parent,
            )
        wait_for(
            lambda: _http_ok(f"{self.url}/-/ready"), 60, "Prometheus ready", dump=lambda: _tail(self.log)
        )
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def query(self, expr: str) -> list[dict]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.load(resp)["data"]["result"]


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator:
    """``start(scrape=[(runtime, labels), ...])`` → a running :class:`Prometheus`; stopped afterwards."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the `prometheus` binary is missing: `make system-deps` (Debian package prometheus)")
    started: list[Prometheus] = []

    def start(scrape: list[tuple[Runtime, dict[str, str]]], rule_files: list[Path] | None = None) -> Prometheus:
        workdir = Path(tempfile.mkdtemp(prefix="prometheus-", dir=tmp_path))
        prom = Prometheus(binary, workdir, free_port(), scrape, rule_files=list(rule_files or [])).start()
        started.append(prom)
        return prom

    try:
        yield start
    finally:
        for prom in started:
            prom.stop()


def track_labels(namespace: str, service: str, track: str) -> dict[str, str]:
    return {"namespace": namespace, "service": service, "track": track}


# ---------------------------------------------------------------------------------- operator


@pytest.fixture(scope="session")
def crds_installed(cluster) -> None:
    """Our CRD, applied the way users do."""
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    # Polled, not `kubectl wait`: that fails outright while the new CRD has no conditions yet.
    wait_for(
        lambda: cluster.kubectl("get", "pms", "-A", check=False).returncode == 0,
        60,
        "PaddleModelService CRD established",
    )


@dataclass
class Operator:
    """One ``paddle-operator run`` process at a time; :meth:`restart` kills it hard and starts another."""

    cmd: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None

    def start(self) -> Operator:
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                self.cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env, preexec_fn=_die_with_parent
            )
        time.sleep(1)
        if self.proc.poll() is not None:
            pytest.fail(f"operator exited with {self.proc.returncode}:\n{self.tail()}")
        return self

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, nothing kept in memory; only status survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    def restart(self) -> None:
        self.kill()
        self.start()

    def tail(self, n: int = 60) -> str:
        return _tail(self.log, n)


@pytest.fixture
def operator_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """More operator settings for one test: ``@pytest.mark.parametrize("operator_env", [{...}], indirect=True)``."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def operator(
    cluster, namespace: str, crds_installed: None, tmp_path: Path, operator_env: dict[str, str]
) -> Iterator[Operator]:
    """``paddle-operator run`` for this test's namespace, with short rollout ticks and windows."""
    env = dict(
        cluster.env,
        # Seconds instead of minutes so the suite stays short; the rules are the same.
        PADDLE_OPERATOR_ROLLOUT_TICK_S="1",
        PADDLE_OPERATOR_ANALYSIS_MIN_WINDOW_S="10",
        PADDLE_OPERATOR_SLA_PERIOD_S="3",
        PADDLE_OPERATOR_PROMETHEUS_TIMEOUT_S="2",
        **operator_env,
    )
    env.pop("PADDLE_OPERATOR_PROMETHEUS_URL", None)
    cmd = [str(VENV_BIN / "paddle-operator"), "run", "--namespace", namespace, "--liveness", ""]
    op = Operator(cmd, env, tmp_path / "operator.log")
    try:
        yield op.start()
    finally:
        op.stop()
        # Shown by pytest for failing tests: what the operator did.
        print(f"---- operator log ({op.log}) ----\n{op.tail(120)}")
