"""The Helm chart, rendered with `helm template`: CRDs, RBAC, the operator Deployment, options."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "paddle-operator"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
WILDCARD = "*"

# What the operator does with each resource (group, resource) -> verbs. Cluster-scoped needs are
# separate: kopf lists CRDs and namespaces to discover what to watch.
NAMESPACED_NEEDS: dict[tuple[str, str], set[str]] = {
    ("serving.paddlesla.io", "paddlemodelservices"): {"get", "list", "watch", "patch", "update"},
    ("serving.paddlesla.io", "paddlemodelservices/status"): {"get", "patch", "update"},
    ("serving.paddlesla.io", "paddlemodelservices/scale"): {"get", "patch", "update"},
    **{
        key: {"get", "list", "watch", "create", "patch", "update", "delete"}
        for key in [
            ("apps", "deployments"),
            ("", "services"),
            ("", "configmaps"),
            ("autoscaling", "horizontalpodautoscalers"),
            ("policy", "poddisruptionbudgets"),
            ("gateway.networking.k8s.io", "httproutes"),
            ("networking.istio.io", "virtualservices"),
            ("networking.istio.io", "destinationrules"),
        ]
    },
    ("", "secrets"): {"get"},
    ("", "persistentvolumeclaims"): {"get"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "events"): {"create", "patch"},
}
CLUSTER_NEEDS: dict[tuple[str, str], set[str]] = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}


def _by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def _grants(role: dict) -> dict[tuple[str, str], set[str]]:
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role.get("rules", []):
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                grants.setdefault((group, resource), set()).update(rule.get("verbs", []))
    return grants


def _assert_covers(grants: dict, needs: dict, where: str) -> None:
    missing = {k: sorted(v - grants.get(k, set())) for k, v in needs.items() if v - grants.get(k, set())}
    assert not missing, f"{where} lacks {missing}"


def _operator_roles(objs: list[dict]) -> list[dict]:
    """Roles bound to the operator (the aggregated edit/view roles are for users)."""
    return [
        o
        for o in objs
        if o["kind"] in ("Role", "ClusterRole")
        and not any(k.startswith("rbac.authorization.k8s.io/aggregate-to") for k in o["metadata"]["labels"])
    ]


def _container(objs: list[dict]) -> dict:
    (deploy,) = _by_kind(objs, "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return container


def test_chart_crds_are_identical_to_repo_crds():
    repo = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert repo, "crds/ is empty"
    assert chart == repo, "chart crds/ must hold exactly the files of crds/"
    _, mismatch, errors = filecmp.cmpfiles(ROOT / "crds", CHART / "crds", repo, shallow=False)
    assert not mismatch and not errors, (
        f"chart CRDs differ from crds/: {mismatch + errors}; run `cp crds/*.yaml {CHART.relative_to(ROOT)}/crds/`"
    )


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_rbac_has_no_wildcards(chart, values: Path):
    roles = [o for o in chart.render("-f", str(values)) if o["kind"] in ("Role", "ClusterRole")]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert WILDCARD not in rule.get(field, []), f"{role['metadata']['name']}: {field} {rule}"


def test_cluster_wide_mode_grants_what_the_operator_needs(chart):
    objs = chart.render()
    roles = _operator_roles(objs)
    assert [r["kind"] for r in roles] == ["ClusterRole"]
    _assert_covers(_grants(roles[0]), NAMESPACED_NEEDS | CLUSTER_NEEDS, "ClusterRole")
    (binding,) = _by_kind(objs, "ClusterRoleBinding")
    (sa,) = _by_kind(objs, "ServiceAccount")
    assert binding["roleRef"]["name"] == roles[0]["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "paddle-system"}
    ]
    # `paddle-operator run` without --namespace watches every namespace.
    assert not [a for a in _container(objs)["args"] if a.startswith("--namespace")]


def test_namespaced_mode_grants_only_the_listed_namespaces(chart):
    objs = chart.render("-f", str(CHART / "ci" / "namespaced-values.yaml"))
    roles = _operator_roles(objs)
    (cluster_role,) = [r for r in roles if r["kind"] == "ClusterRole"]
    # Cluster-wide: only the discovery reads, nothing that touches workloads or secrets.
    assert set(_grants(cluster_role)) == set(CLUSTER_NEEDS)
    _assert_covers(_grants(cluster_role), CLUSTER_NEEDS, "scanning ClusterRole")
    namespaced = {r["metadata"]["namespace"]: r for r in roles if r["kind"] == "Role"}
    assert set(namespaced) == {"ml-serving", "ml-staging"}
    for ns, role in namespaced.items():
        _assert_covers(_grants(role), NAMESPACED_NEEDS, f"Role in {ns}")
    bindings = _by_kind(objs, "RoleBinding")
    assert {b["metadata"]["namespace"] for b in bindings} == {"ml-serving", "ml-staging"}
    args = _container(objs)["args"]
    assert sorted(a for a in args if a.startswith("--namespace")) == [
        "--namespace=ml-serving",
        "--namespace=ml-staging",
    ]


def test_operator_deployment_is_single_restricted_and_read_only(chart):
    objs = chart.render()
    (deploy,) = _by_kind(objs, "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = _container(objs)
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # The probe must hit the endpoint kopf serves for --liveness.
    liveness = container["livenessProbe"]["httpGet"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}[liveness["port"]]
    assert f"--liveness=http://0.0.0.0:{port}{liveness['path']}" in container["args"]
    assert "resources" not in container, "no default resources: users size them"


def test_selectors_carry_no_chart_version(chart):
    objs = chart.render("--set", "image.tag=9.9.9")
    (deploy,) = _by_kind(objs, "Deployment")
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert "helm.sh/chart" not in selector and "app.kubernetes.io/version" not in selector
    assert selector.items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    assert deploy["metadata"]["labels"]["app.kubernetes.io/version"] == "9.9.9"
    assert _container(objs)["image"].endswith(":9.9.9")


def test_long_release_names_are_truncated_to_63_characters(chart):
    release = "a-long-release-name-that-goes-on-and-on-and-on-for-53"  # helm's own maximum
    assert len(release) == 53
    scenarios = [
        ("-f", str(CHART / "ci" / name)) for name in ("monitoring-values.yaml", "namespaced-values.yaml")
    ]
    objs = chart.render(*scenarios[0], *scenarios[1], release=release)
    assert {o["kind"] for o in objs} >= {"ClusterRole", "Role", "ServiceMonitor", "ConfigMap"}
    for obj in objs:
        if obj["kind"] != "CustomResourceDefinition":
            name = obj["metadata"]["name"]
            assert len(name) <= 63 and not name.endswith("-"), name


def test_monitoring_objects_are_off_by_default(chart):
    kinds = {o["kind"] for o in chart.render()}
    assert "ServiceMonitor" not in kinds
    assert "ConfigMap" not in kinds


def test_adapter_rules_define_the_hpa_metrics(chart):
    objs = chart.render("-f", str(CHART / "ci" / "monitoring-values.yaml"))
    (cm,) = [o for o in _by_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-adapter-rules")]
    assert cm["metadata"]["namespace"] == "monitoring"
    rules = {r["name"]["as"]: r for r in yaml.safe_load(cm["data"]["config.yaml"])["rules"]}
    qps = rules["paddle_runtime_requests_per_second"]
    assert "paddle_runtime_requests_total" in qps["seriesQuery"]
    assert "rate(<<.Series>>{<<.LabelMatchers>>}[2m])" in qps["metricsQuery"]
    gpu = rules["paddle_runtime_gpu_utilization_percent"]
    assert "paddle_runtime_gpu_utilization_percent" in gpu["seriesQuery"]
    for rule in rules.values():
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
    (monitor,) = _by_kind(objs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/managed-by"] == "paddle-sla-operator"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("watchNamespaces[0]=Not_A_Namespace", "watchNamespaces"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("serviceMonitor.interval=often", "interval"),
        ("replicaCount=2", "replicaCount"),
        ("settings.workers=0", "workers"),
        ("settings.no_such_setting=1", "no_such_setting"),
    ],
)
def test_schema_rejects_bad_values(chart, setting: str, field: str):
    out = chart.template("--set", setting)
    assert out.returncode != 0
    assert field in out.stderr


def test_chart_rbac_covers_every_call_the_operator_code_makes(chart):
    """Derived from the operator's own tables, so a new child kind without a grant fails here."""
    pytest.importorskip("kopf")
    from paddle_operator import kinds
    from paddle_operator.spec import GROUP, PLURAL

    needs: dict[tuple[str, str], set[str]] = {}
    for k in kinds.ALL:
        needs.setdefault((k.group, k.plural), set()).add("get")
    # Applied with server-side apply (create or patch), listed and deleted when pruned.
    for k in kinds.OWNED:
        needs.setdefault((k.group, k.plural), set()).update({"create", "patch", "list", "delete"})
    for k in kinds.WATCHED + kinds.OBSERVED:
        needs.setdefault((k.group, k.plural), set()).update({"list", "watch"})
    # kopf: the watch on the resource, annotations/finalizer patches, status patches.
    needs.setdefault((GROUP, PLURAL), set()).update({"list", "watch", "patch"})
    needs[(GROUP, f"{PLURAL}/status")] = {"patch"}
    for values in ("default-values.yaml", "namespaced-values.yaml"):
        roles = _operator_roles(chart.render("-f", str(CHART / "ci" / values)))
        grants: dict[tuple[str, str], set[str]] = {}
        for role in roles:
            for k, verbs in _grants(role).items():
                grants.setdefault(k, set()).update(verbs)
        _assert_covers(grants, needs, f"RBAC with {values}")


def test_service_monitor_gives_the_labels_the_operator_queries(chart):
    pytest.importorskip("kopf")
    from paddle_operator import promql
    from paddle_operator.spec import LABEL_SERVICE, LABEL_TRACK

    (monitor,) = _by_kind(chart.render("--set", "serviceMonitor.enabled=true"), "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]

    def meta(label: str) -> str:  # how Prometheus exposes a pod label to relabelling
        return "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in label)

    targets = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert targets[promql.LABEL_SERVICE] == [meta(LABEL_SERVICE)]
    assert targets[promql.LABEL_TRACK] == [meta(LABEL_TRACK)]
    # Only the main Service: the per-track router Services select the same pods.
    assert {"key": LABEL_TRACK, "operator": "DoesNotExist"} in monitor["spec"]["selector"]["matchExpressions"]


def test_existing_service_account_must_be_named(chart):
    out = chart.template("--set", "serviceAccount.create=false")
    assert out.returncode != 0 and "serviceAccount.name is required" in out.stderr
    objs = chart.render("--set", "serviceAccount.create=false", "--set", "serviceAccount.name=ops")
    assert not _by_kind(objs, "ServiceAccount")
    (deploy,) = _by_kind(objs, "Deployment")
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert {s["name"] for b in _by_kind(objs, "ClusterRoleBinding") for s in b["subjects"]} == {"ops"}


# Settings that make no sense for the chart: in a pod the service account is used, and the image
# decides MALLOC_ARENA_MAX.
NOT_CHART_SETTINGS = {"kubeconfig", "malloc_arena_max"}


def test_chart_values_expose_every_operator_setting():
    """values.yaml and its schema list exactly OperatorSettings' fields (no helm needed)."""
    from paddle_operator.settings import OperatorSettings

    fields = set(OperatorSettings.model_fields) - NOT_CHART_SETTINGS
    values = yaml.safe_load((CHART / "values.yaml").read_text())["settings"]
    schema = __import__("json").loads((CHART / "values.schema.json").read_text())
    assert set(values) == fields
    assert set(schema["properties"]["settings"]["properties"]) == fields
    assert all(v is None for v in values.values()), "defaults live in OperatorSettings, not in the chart"


def test_chart_settings_reach_the_operator_as_its_settings(chart):
    from paddle_operator.settings import OperatorSettings

    default_env = {e["name"] for e in _container(chart.render()).get("env", [])}
    assert not any(n.startswith("PADDLE_OPERATOR_") for n in default_env), "null keeps the operator default"
    container = _container(
        chart.render(
            "--set", "settings.rollout_tick_s=2",
            "--set", "settings.workers=16",
            "--set", "settings.prometheus_url=http://prometheus.monitoring:9090",
        )
    )
    env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("PADDLE_OPERATOR_")}
    assert env == {
        "PADDLE_OPERATOR_ROLLOUT_TICK_S": "2",
        "PADDLE_OPERATOR_WORKERS": "16",
        "PADDLE_OPERATOR_PROMETHEUS_URL": "http://prometheus.monitoring:9090",
    }
    # The operator reads exactly these variables into its settings.
    from pytest import MonkeyPatch

    with MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        s = OperatorSettings()
    assert (s.rollout_tick_s, s.workers, s.prometheus_url) == (2.0, 16, "http://prometheus.monitoring:9090")
