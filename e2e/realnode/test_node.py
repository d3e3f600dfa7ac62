"""The real node: joins with containerd and its own identity, runs pods, stays confined, and leaves
nothing behind when the cluster goes down."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from e2e.cluster import Cluster, k8s_version, pinned_versions
from e2e.cluster.node import CONFINED_RANGES, NodeNetwork, leftovers
from e2e.realnode.conftest import RESTRICTED, image_ref
from e2e.util import dump_namespace, wait_for

pytestmark = pytest.mark.realnode


def _condition(obj: dict, type_: str) -> str | None:
    return next(
        (c["status"] for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), None
    )


def test_real_node_joins_with_containerd_v2_and_the_pinned_kubelet(cluster: Cluster, real_node: str) -> None:
    node = cluster.get("node", real_node)
    info = node["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"] == f"containerd://{pinned_versions()['containerd'].lstrip('v')}"
    assert info["kubeletVersion"] == k8s_version()
    assert _condition(node, "Ready") == "True"
    assert node["metadata"]["labels"][next(iter(Cluster.REAL_NODE_SELECTOR))] == "real"
    assert {t["key"] for t in node["spec"].get("taints", [])} >= {Cluster.REAL_NODE_TOLERATIONS[0]["key"]}
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert cluster.local is not None and cluster.local.net is not None
    assert addresses["InternalIP"] == cluster.local.net.node_ip


def test_kubelet_identity_is_limited_by_the_node_authorizer(cluster: Cluster, real_node: str) -> None:
    assert cluster.local is not None and cluster.local.node is not None
    kc = str(cluster.local.node.root / "kubelet.kubeconfig")
    who = json.loads(cluster.kubectl("--kubeconfig", kc, "auth", "whoami", "-o", "json").stdout)
    assert who["status"]["userInfo"]["username"] == f"system:node:{real_node}"
    assert "system:nodes" in who["status"]["userInfo"]["groups"]
    # The Node authorizer: no listing secrets cluster-wide; NodeRestriction: no touching other nodes.
    secrets = cluster.kubectl("--kubeconfig", kc, "get", "secrets", "-A", check=False)
    assert secrets.returncode != 0 and "forbidden" in secrets.stderr.lower()
    other = cluster.kubectl("--kubeconfig", kc, "label", "node", "kwok-node-0", "x=y", check=False)
    assert other.returncode != 0 and "forbidden" in other.stderr.lower(), other.stderr


def _web_pod_spec(cluster: Cluster, on_real_node: dict) -> dict:
    # The operator image has Python: a tiny server, plus a call to the API server through the
    # `kubernetes` Service (ClusterIP -> kube-proxy -> the API server on the host end of the link).
    script = (
        "import json,os,ssl,urllib.request,http.server\n"
        "sa='/var/run/secrets/kubernetes.io/serviceaccount'\n"
        "ctx=ssl.create_default_context(cafile=sa+'/ca.crt')\n"
        "url='https://%s:%s/version'%(os.environ['KUBERNETES_SERVICE_HOST'],os.environ['KUBERNETES_SERVICE_PORT'])\n"
        "req=urllib.request.Request(url,headers={'Authorization':'Bearer '+open(sa+'/token').read()})\n"
        "print('apiserver', json.load(urllib.request.urlopen(req,context=ctx,timeout=10))['gitVersion'],flush=True)\n"
        "http.server.test(HandlerClass=http.server.SimpleHTTPRequestHandler,port=8080,bind='0.0.0.0')\n"
    )
    return {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "web",
                "image": image_ref(cluster, "paddle-operator"),
                "imagePullPolicy": "IfNotPresent",
                "command": ["python", "-c", script],
                "workingDir": "/tmp",
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                "securityContext": RESTRICTED,
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
        **on_real_node,
    }


def test_pod_runs_on_the_real_node_and_is_reached_through_its_service(
    cluster: Cluster, namespace: str, on_real_node: dict, apply
) -> None:
    labels = {"app": "web"}
    apply(
        [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": _web_pod_spec(cluster, on_real_node),
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web"},
                "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
            },
        ]
    )
    dump = dump_namespace(cluster, namespace)
    wait_for(
        lambda: (
            cluster.kubectl(
                "rollout", "status", "deploy/web", "-n", namespace, "--timeout=5s", check=False
            ).returncode
            == 0
        ),
        180,
        "the web pod Ready on the real node",
        dump=dump,
    )
    pod = cluster.get("pods", "-n", namespace, "-l", "app=web")["items"][0]
    assert pod["spec"]["nodeName"] == cluster.real_node
    assert cluster.local is not None and cluster.local.net is not None
    # Logs through the API server -> kubelet path (by address, with the API server's client cert).
    logs = wait_for(
        lambda: (
            (out := cluster.kubectl("logs", "-n", namespace, pod["metadata"]["name"]).stdout)
            and "apiserver" in out
            and out
        ),
        60,
        "the pod's log line about the API server",
        dump=dump,
    )
    assert f"apiserver {k8s_version()}" in logs
    pod_ip = pod["status"]["podIP"]
    assert pod_ip.startswith(cluster.local.net.pod_cidr.rsplit(".", 1)[0] + ".")
    svc = cluster.get("service", "web", "-n", namespace)
    cluster_ip = svc["spec"]["clusterIP"]
    for addr, url in ((pod_ip, f"http://{pod_ip}:8080/"), (cluster_ip, f"http://{cluster_ip}/")):
        route = _route("route", "get", addr)
        assert route.returncode == 0, f"no route to {addr}: {route.stderr}\n{_route('route').stdout}"
        def get(url: str = url) -> int:
            with urllib.request.urlopen(url, timeout=10) as resp:  # pod and Service ranges: routed into the node
                return resp.status

        try:
            # kube-proxy programs a new Service asynchronously; until then the node answers "unreachable".
            assert wait_for(lambda: get() == 200, 60, f"GET {url}") is True
        except AssertionError as exc:
            ns = cluster.local.net.netns
            diag = "\n".join(
                f"$ {' '.join(c)}\n{_route(*c).stdout}"
                for c in (("route",), ("-n", ns, "addr"), ("-n", ns, "route"), ("neigh",), ("-n", ns, "neigh"))
            )
            raise AssertionError(f"{url}: {exc}\n{diag}") from exc
    # exec through the kubelet: the container runs as 65532 on a read-only root.
    out = cluster.kubectl(
        "exec", "-n", namespace, pod["metadata"]["name"], "--", "python", "-c",
        "import os;print(os.getuid());open('/x','w')", check=False,
    )  # fmt: skip
    assert out.stdout.split()[0] == "65532"
    assert "Read-only file system" in out.stderr


def _route(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


def test_confinement_keeps_pod_and_service_addresses_on_this_machine(
    cluster: Cluster, real_node: str
) -> None:
    """Route lookups only: no packet is sent to check it."""
    assert cluster.local is not None and cluster.local.net is not None
    net = cluster.local.net
    # The slot's ranges go into the node's link, never to the default route.
    for addr in (net.service_ip, net.pod_gateway):
        got = _route("route", "get", addr)
        assert got.returncode == 0 and f"dev {net.host_if}" in got.stdout, got.stdout + got.stderr
    # Every other address of the pod, Service and link ranges is unreachable on the host.
    for cidr in CONFINED_RANGES:
        table = _route("route", "show", "type", "unreachable").stdout
        assert cidr in table, f"no unreachable route for {cidr}: {table}"
    # (Addresses no slot ever routes: slots use 10.96.0-127.x, 10.244.128-135.x and 10.250.0-7.x.)
    for addr in ("10.96.200.9", "10.244.7.7", "10.250.99.1"):
        got = _route("route", "get", addr)
        assert got.returncode != 0 or "unreachable" in got.stdout, f"{addr}: {got.stdout}"
    # Inside the node there is no default route: a pod's packet to the outside has nowhere to go.
    assert _route("-n", net.netns, "route", "show", "default").stdout.strip() == ""
    got = _route("-n", net.netns, "route", "get", "1.1.1.1")
    assert got.returncode != 0 and "unreachable" in got.stderr.lower(), got.stdout + got.stderr
    got = _route("-n", net.netns, "route", "get", "1.1.1.1", "from", net.pod_gateway.rsplit(".", 1)[0] + ".9",
                 "iif", "psla-br0")  # fmt: skip
    assert got.returncode != 0, f"a pod's packet to the outside would be forwarded: {got.stdout}"


def test_cluster_down_leaves_nothing_behind(cluster: Cluster, real_node: str, tmp_path: Path) -> None:
    """`python -m e2e.cluster up` with a real node, then `down`: no process, mount, namespace, link,
    route, rule or cgroup of that node is left."""
    name = f"teardown-{uuid.uuid4().hex[:6]}"
    cli = [sys.executable, "-m", "e2e.cluster"]
    env = dict(cluster.env)
    env.pop("KUBECONFIG", None)
    up = subprocess.run(
        [*cli, "up", "--name", name, "--nodes", "1"], capture_output=True, text=True, env=env, timeout=600
    )
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        status = subprocess.run(
            [*cli, "status", "--name", name], capture_output=True, text=True, env=env, timeout=60
        )
        assert status.returncode == 0, status.stdout + status.stderr
        m = re.search(r"namespace psla-node-(\d+)", status.stdout)
        assert m, status.stdout
        net = NodeNetwork(int(m.group(1)))
        state = Path(re.search(r"kubeconfig: (\S+)", status.stdout).group(1)).parent  # type: ignore[union-attr]
        assert net.exists() and any(leftovers(net, state / "node").values())  # it really ran
    finally:
        down = subprocess.run(
            [*cli, "down", "--name", name], capture_output=True, text=True, env=env, timeout=300
        )
    assert down.returncode == 0, down.stderr
    left = leftovers(net, state / "node")
    assert not any(left.values()), left
    assert not state.exists()
