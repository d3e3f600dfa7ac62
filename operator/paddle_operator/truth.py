"""Status from what the pods report: served versions, fallback, reload errors. Pure.

The runtime exports ``paddle_runtime_model_info{version,role="main"}``,
``paddle_runtime_fallback_active`` and ``paddle_runtime_reload_failing{error}`` (docs/contracts.md).
The operator reads them for *all* resources in one query per period (``promql.runtime_truth``);
:func:`index_samples` turns the answer into per-pod reports keyed by resource and track, and
:func:`truth_status` turns one resource's reports into the fields this writer owns
(``TRUTH_MANAGER`` in status.py): ``modelVersion``, ``fallback``, ``served`` and the conditions
``Degraded`` and ``ModelCurrent``. A field left out is removed by server-side apply, so nothing
stale is kept once its cause is gone.

Pods whose model fetch (an init container ``fetch-*``) failed never report to Prometheus: the
operator reads them from a filtered pod watch instead (``handlers.pod_failures``, a kopf index that
holds only failing pods); :func:`pod_failure` reads one pod, and ``truth_status`` turns the failures
into ``Degraded``/``ModelCurrent`` with reason ``ModelFetchFailed`` and the fetch's own message.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from . import promql
from .spec import PaddleModelService
from .status import merge_conditions, now_iso

CONDITION_TYPES = ("Degraded", "ModelCurrent")


@dataclass(frozen=True)
class PodReport:
    """What one pod reports: the main model's version, whether the fallback serves, a reload error."""

    version: str | None = None
    fallback_active: bool = False
    reload_error: str | None = None
    scraped: bool = True  # False: the pod is a scrape target whose last scrape failed (no data now)


# (namespace, service) -> track -> pod -> report
Reports = dict[tuple[str, str], dict[str, dict[str, PodReport]]]

# Init containers that fetch a model (builders/deployment.py): fetch-model is the main model.
FETCH_PREFIX = "fetch-"
MAIN_FETCH = "fetch-model"


@dataclass(frozen=True)
class PodFailure:
    """A pod whose model fetch failed: which init container, and why (its termination message)."""

    pod: str
    container: str
    message: str

    @property
    def main_model(self) -> bool:
        """The main model's fetch (not the fallback's or a pipeline stage's)."""
        return self.container == MAIN_FETCH


def pod_failure(pod: dict[str, Any]) -> PodFailure | None:
    """The failed model fetch of one pod (its first ``fetch-*`` init container that exited non-zero
    and has not succeeded since), or None. Kubernetes keeps the last failure in ``lastState`` while
    the kubelet retries, so a retry in progress still counts; a later exit 0 clears it."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return None
    for c in status.get("initContainerStatuses") or []:
        name = c.get("name") or ""
        if not name.startswith(FETCH_PREFIX):
            continue
        state = c.get("state") or {}
        now = state.get("terminated")
        if now is not None and now.get("exitCode") == 0:
            continue
        term = now if now is not None and now.get("exitCode") else (c.get("lastState") or {}).get("terminated")
        if not term or not term.get("exitCode"):
            continue
        text = " ".join(str(term.get("message") or "").split())
        if not text:
            text = f"exit code {term.get('exitCode')} ({term.get('reason') or 'Error'})"
        return PodFailure(str(meta.get("name") or "?"), name, text[:512])
    return None


def index_samples(samples: list[dict[str, Any]]) -> Reports:
    """The per-pod index from an instant-vector answer of :func:`promql.runtime_truth`."""
    raw: dict[tuple[str, str], dict[str, dict[str, dict[str, Any]]]] = {}
    for s in samples:
        m = s.get("metric") or {}
        ns, service = m.get(promql.LABEL_NAMESPACE), m.get(promql.LABEL_SERVICE)
        pod = m.get(promql.LABEL_POD) or m.get("instance")
        if not ns or not service or not pod:
            continue
        try:
            value = float(s["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        track = m.get(promql.LABEL_TRACK) or "stable"
        fields = raw.setdefault((ns, service), {}).setdefault(track, {}).setdefault(pod, {})
        name = m.get("__name__")
        if name == promql.MODEL_INFO and m.get("role", "main") == "main" and value > 0:
            fields["version"] = m.get("version")
        elif name == promql.FALLBACK_ACTIVE:
            fields["fallback_active"] = value > 0
        elif name == promql.RELOAD_FAILING and value > 0:
            fields["reload_error"] = m.get("error") or "reload failed"
        elif name == promql.UP:
            fields["scraped"] = value > 0
    return {
        key: {track: {pod: PodReport(**f) for pod, f in pods.items()} for track, pods in tracks.items()}
        for key, tracks in raw.items()
    }


def carry_over(
    now: dict[str, dict[str, PodReport]], before: dict[str, dict[str, PodReport]] | None
) -> dict[str, dict[str, PodReport]]:
    """One resource's reports with a missed scrape bridged: a pod that is still a target but whose
    last scrape failed keeps its previous report (a busy pod missing one scrape is not a pod that
    stopped serving); one never reported before is left out, as is every pod that is gone.

    Without this a single failed scrape flipped ``fallback`` to ``Armed`` and ``ModelCurrent`` to
    ``Unknown``, with an event each way (seen on the real node at load average 20).
    """
    out: dict[str, dict[str, PodReport]] = {}
    for track, pods in now.items():
        kept = {}
        for pod, report in pods.items():
            if report.scraped:
                kept[pod] = report
            elif (prev := ((before or {}).get(track) or {}).get(pod)) is not None:
                kept[pod] = prev
        if kept:
            out[track] = kept
    return out


def _track_status(pods: dict[str, PodReport]) -> dict[str, Any]:
    versions = Counter(r.version for r in pods.values() if r.version is not None)
    out: dict[str, Any] = {
        "pods": len(pods),
        "versions": [{"version": v, "pods": n} for v, n in sorted(versions.items(), key=lambda x: (-x[1], x[0]))],
        "fallbackPods": sum(r.fallback_active for r in pods.values()),
    }
    errors = Counter(r.reload_error for r in pods.values() if r.reload_error)
    if errors:
        out["reloadFailingPods"] = sum(errors.values())
        out["reloadError"] = errors.most_common(1)[0][0]
    return out


def _version_summary(versions: Counter[str], total: int) -> str:
    if len(versions) == 1 and sum(versions.values()) == total:
        return next(iter(versions))
    return ", ".join(f"{v} ({n}/{total})" for v, n in sorted(versions.items(), key=lambda x: (-x[1], x[0])))


def _deployment_degraded(status: dict[str, Any]) -> tuple[str, str] | None:
    """The reconcile's own signs of degradation, read from its fields (it writes them, not this)."""
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    prog = conds.get("Progressing") or {}
    if prog.get("status") == "False" and prog.get("reason") == "ProgressDeadlineExceeded":
        return "ProgressDeadlineExceeded", prog.get("message") or "rollout stuck"
    avail = conds.get("Available") or {}
    ready, desired = status.get("readyReplicas"), None
    summary = str(status.get("replicaSummary") or "")
    if "/" in summary:
        try:
            desired = int(summary.split("/", 1)[1])
        except ValueError:
            desired = None
    if avail.get("status") == "True" and desired is not None and ready is not None and ready < desired:
        return "ReplicasUnavailable", f"only {ready}/{desired} replicas ready"
    return None


def truth_status(
    svc: PaddleModelService,
    tracks: dict[str, dict[str, PodReport]] | None,
    status: dict[str, Any] | None,
    now: str | None = None,
    no_data_reason: str = "NoPodsReporting",
    previous: dict[str, Any] | None = None,
    failures: list[PodFailure] | tuple[PodFailure, ...] = (),
) -> dict[str, Any]:
    """Every status field ``TRUTH_MANAGER`` owns, from one resource's pod reports.

    ``tracks`` is ``None`` when nothing could be read (no Prometheus for this resource): the served
    figures are left out and ``ModelCurrent`` is Unknown with ``no_data_reason``. ``status`` is the
    resource's status (the reconcile's Deployment signs are read from it); ``previous``, when newer,
    is what this writer applied last (the watch-fed copy can lag it). ``failures`` are its pods whose
    model fetch failed (read from the pods, not Prometheus: such a pod never serves).
    """
    status = dict(status or {})
    now = now or now_iso()
    gen = svc.generation
    tracks = {t: p for t, p in (tracks or {}).items() if p} if tracks is not None else None
    all_pods = [r for pods in (tracks or {}).values() for r in pods.values()]
    total = len(all_pods)
    versions = Counter(r.version for r in all_pods if r.version is not None)
    fallback_pods = sum(r.fallback_active for r in all_pods)
    errors = Counter(r.reload_error for r in all_pods if r.reload_error)
    want = svc.spec.model.version

    out: dict[str, Any] = {}
    if tracks:
        out["served"] = {t: _track_status(p) for t, p in sorted(tracks.items())}
    stable_versions = Counter(
        r.version for r in ((tracks or {}).get("stable") or {}).values() if r.version is not None
    )
    if stable_versions:
        out["modelVersion"] = _version_summary(stable_versions, sum(stable_versions.values()))
    if not svc.spec.fallback_armed:
        out["fallback"] = "Off"
    elif fallback_pods:
        out["fallback"] = f"Active ({fallback_pods}/{total})"
    else:
        out["fallback"] = "Armed"

    conds: list[dict[str, Any]] = []

    def add(type_: str, value: str, reason: str, message: str) -> None:
        conds.append({"type": type_, "status": value, "reason": reason, "message": message[:1024],
                      "observedGeneration": gen})

    reasons: list[tuple[str, str]] = []
    if fallback_pods:
        reasons.append(("FallbackActive", f"{fallback_pods}/{total} pods serve the fallback model"))
    if errors:
        error, n = errors.most_common(1)[0]
        reasons.append(("ReloadFailed", f"{n}/{total} pods refused the new model: {error}"))
    failures = sorted(failures, key=lambda f: (not f.main_model, f.pod))
    fetch_msg = ""
    if failures:
        first = failures[0]
        fetch_msg = f"pod {first.pod}: {first.container}: {first.message}"
        more = f" (and {len(failures) - 1} more pods)" if len(failures) > 1 else ""
        reasons.append(("ModelFetchFailed", f"{fetch_msg}{more}"))
    dep = _deployment_degraded(status)
    if dep is not None:
        reasons.append(dep)
    if reasons:
        add("Degraded", "True", reasons[0][0], "; ".join(m for _, m in reasons))
    else:
        add("Degraded", "False", "AsExpected", "no degradation observed")

    main_failed = [f for f in failures if f.main_model]
    if main_failed:
        # A pod that cannot fetch the spec's model does not serve it: known even without Prometheus.
        served = _version_summary(versions, total) if versions else "no version reported"
        add("ModelCurrent", "False", "ModelFetchFailed",
            f"{len(main_failed)} pod(s) cannot fetch {want or 'the model'} (pods serve {served}): {fetch_msg}")
    elif tracks is None:
        add("ModelCurrent", "Unknown", no_data_reason, "the pods' served version cannot be read")
    elif not sum(versions.values()):
        # Scraped but no model yet is a pod still loading: not known, and not a fault to warn about.
        add("ModelCurrent", "Unknown", "NoPodsReporting", "no pod of this resource reports its model yet")
    else:
        # Pods that report no model yet are loading (a new pod of a rollout): judged once they do.
        reporting = sum(versions.values())
        served = _version_summary(versions, reporting)
        loading = f"; {total - reporting} pod(s) still loading" if total > reporting else ""
        current = versions.get(want, 0) == reporting if want else len(versions) == 1
        if current:
            add("ModelCurrent", "True", "AllPodsCurrent", f"{reporting}/{reporting} pods serve {served}{loading}")
        elif errors:
            error, _ = errors.most_common(1)[0]
            add("ModelCurrent", "False", "ReloadFailed",
                f"pods serve {served}, spec asks {want or 'one version'}: {error}")
        else:
            add("ModelCurrent", "False", "PodsNotCurrent",
                f"pods serve {served}, spec asks {want or 'one version'}{loading}")
    out["conditions"] = merge_conditions((previous or status).get("conditions"), conds, now)
    return out


@dataclass(frozen=True)
class Transition:
    """An event to post: a condition or the fallback state changed."""

    type: str
    reason: str
    message: str


def _cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def transitions(old: dict[str, Any] | None, new: dict[str, Any]) -> list[Transition]:
    """Events for condition changes between the old status and the new truth (none on a no-op).

    A fallback switch changes ``Degraded`` (reason ``FallbackActive``), so it has its event too.
    """
    old = old or {}
    out: list[Transition] = []
    for type_, bad in (("Degraded", "True"), ("ModelCurrent", "False")):
        before, after = _cond(old, type_), _cond(new, type_)
        if after.get("status") == before.get("status") and after.get("reason") == before.get("reason"):
            continue
        if after.get("status") == bad:
            out.append(Transition("Warning", after.get("reason") or type_, after.get("message") or ""))
        elif before.get("status") == bad:
            # ModelCurrent can leave False for Unknown (no Prometheus): say that, not "current".
            ok = "Recovered" if type_ == "Degraded" else (
                "ModelCurrent" if after.get("status") == "True" else after.get("reason") or "ModelCurrentUnknown")
            out.append(Transition("Normal", ok, after.get("message") or ""))
    return out


def comparable(status: dict[str, Any]) -> dict[str, Any]:
    """The owned fields without timestamps: two equal ones need no write."""
    out = {k: status.get(k) for k in ("served", "modelVersion", "fallback")}
    out["conditions"] = sorted(
        ({k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or []
         if c.get("type") in CONDITION_TYPES),
        key=lambda c: c["type"],
    )
    return out
