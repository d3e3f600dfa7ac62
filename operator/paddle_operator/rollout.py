"""The canary state machine: when traffic moves, when a canary is promoted or rolled back.

Pure: it takes the policy (from ``spec.rollout``), the state recorded in ``status.rollout`` and what
the handler observed (readiness of the tracks, analysis figures or "Prometheus unreachable") and
returns the next state plus what the children should look like. The kopf handler only observes and
applies; every rule below is unit-tested in ``tests/canary/test_rollout.py``.

Rules (the reasons are the bugs other tools shipped, see issue 7):
- ``spec.tag`` is the desired version; ``status.stableTag`` is what serves. A difference starts a
  canary; ``spec`` is never rewritten, promotion and rollback live in ``status``.
- Weight only moves when the canary's pods are ready (KServe #5983 sent traffic to unready canaries),
  and traffic to a canary that turns unready is taken back until it is ready again.
- Each ``interval`` the canary is analysed; a verdict needs ``minRequests`` requests in the window
  and the figures it checks. Missing data or an unreachable Prometheus holds the weight: never
  promote blind (KServe #5335 silently did a full rollout).
- Fail fast, promote slow: between the scheduled checks the canary is also analysed on every tick,
  and a breach measured there counts at once as a failed check (the next one is then a full interval
  later, so at most one per interval); anything else measured early is ignored, a pass needs the full
  interval. A canary that breaks its SLA is thereby rolled back within
  ``intervalSeconds × failureThreshold`` of taking traffic, not one interval later.
- A pass moves to the next step; ``failureThreshold`` failed checks in one rollout roll back.
  Failed checks accumulate over the rollout (a canary that fails every other check is not healthy).
- After the last step (100 %) the stable Deployment takes the new tag by a rolling update that never
  drops below the SLA's replica floor (``maxUnavailable: 0`` on the stable Deployment) while the
  canary carries the traffic; once stable is rolled out, with at least as many ready pods as the
  canary has (the handler observes both), traffic returns to it and the canary goes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from .spec import Rollout as SpecRollout

# Defaults come from the spec model, which mirrors the CRD (tests/operator/test_spec.py): one source.
_SPEC_DEFAULTS = SpecRollout()
DEFAULT_STEPS: tuple[int, ...] = _SPEC_DEFAULTS.steps
DEFAULT_INTERVAL_S = float(_SPEC_DEFAULTS.interval_seconds)
DEFAULT_FAILURE_THRESHOLD = _SPEC_DEFAULTS.analysis.failure_threshold
DEFAULT_MIN_REQUESTS = _SPEC_DEFAULTS.analysis.min_requests

# Phases written to status.rollout.phase.
PROGRESSING = "Progressing"
PAUSED = "Paused"
PROMOTING = "Promoting"
PROMOTED = "Promoted"
ROLLED_BACK = "RolledBack"
ACTIVE_PHASES = (PROGRESSING, PAUSED, PROMOTING)

CANARY = "Canary"
ROLLING = "Rolling"

# Verdicts of one analysis.
PASS = "Pass"
FAIL = "Fail"
INSUFFICIENT = "InsufficientData"
UNREACHABLE = "PrometheusUnreachable"


@dataclass(frozen=True)
class RolloutPolicy:
    """``spec.rollout`` with thresholds resolved (explicit analysis values, else derived from ``spec.sla``)."""

    strategy: str = CANARY
    steps: tuple[int, ...] = DEFAULT_STEPS
    interval_s: float = DEFAULT_INTERVAL_S
    paused: bool = False
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    min_requests: int = DEFAULT_MIN_REQUESTS
    max_latency_p99_ms: float | None = None
    max_error_rate: float | None = None

    def __post_init__(self) -> None:
        steps = tuple(int(s) for s in self.steps)
        if not steps or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
            raise ValueError(
                f"steps must be strictly increasing percentages in 1..100, got {list(self.steps)}"
            )
        if steps[-1] != 100:
            # The last step must carry all traffic: promotion only after the canary served 100 %.
            steps = (*steps, 100)
        object.__setattr__(self, "steps", steps)
        if self.failure_threshold < 1:
            raise ValueError("failureThreshold must be at least 1")
        if self.interval_s <= 0:
            raise ValueError("intervalSeconds must be positive")


@dataclass(frozen=True)
class Figures:
    """What Prometheus said about the canary over one analysis window. ``None`` = no data."""

    requests: float
    p99_ms: float | None = None
    error_rate: float | None = None
    qps: float | None = None

    def describe(self) -> str:
        """Figures in one line for conditions and events."""
        p99 = "n/a" if self.p99_ms is None else f"{self.p99_ms:.1f}ms"
        err = "n/a" if self.error_rate is None else f"{self.error_rate * 100:.2f}%"
        return f"p99={p99} errorRate={err} requests={self.requests:.0f}"


@dataclass(frozen=True)
class Unreachable:
    """Prometheus could not be asked (connection refused, timeout, HTTP error, bad answer)."""

    reason: str


Analysis = Figures | Unreachable


@dataclass(frozen=True)
class Verdict:
    """One analysis, judged against the policy."""

    result: str
    reason: str
    figures: Figures | None = None


def judge(analysis: Analysis, policy: RolloutPolicy) -> Verdict:
    """Compare figures with the thresholds. Anything not measured is not a pass."""
    if isinstance(analysis, Unreachable):
        return Verdict(UNREACHABLE, f"Prometheus unreachable: {analysis.reason}")
    fig = analysis
    if fig.requests < policy.min_requests:
        return Verdict(
            INSUFFICIENT, f"{fig.requests:.0f} of {policy.min_requests} requests needed for a verdict", fig
        )
    # A breach that was measured fails the check even when another figure is missing: a canary
    # answering only 5xx may record no latency at all, and that must not read as "no data".
    breaches: list[str] = []
    missing: list[str] = []
    if policy.max_latency_p99_ms is not None:
        if fig.p99_ms is None:
            missing.append("latency")
        elif fig.p99_ms > policy.max_latency_p99_ms:
            breaches.append(f"p99 {fig.p99_ms:.1f}ms > {policy.max_latency_p99_ms:g}ms")
    if policy.max_error_rate is not None:
        if fig.error_rate is None:
            missing.append("error-rate")
        elif fig.error_rate > policy.max_error_rate:
            breaches.append(f"error rate {fig.error_rate * 100:.2f}% > {policy.max_error_rate * 100:g}%")
    if not breaches and missing:
        return Verdict(INSUFFICIENT, f"no {' or '.join(missing)} data for the canary", fig)
    if breaches:
        return Verdict(FAIL, "; ".join(breaches), fig)
    return Verdict(PASS, f"within SLA ({fig.describe()})", fig)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(value: str | None) -> float:
    if not value:
        return 0.0
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


@dataclass(frozen=True)
class RolloutState:
    """``status.rollout``: the durable record of the rollout (the operator may restart any time)."""

    phase: str = ""
    tag: str = ""  # the tag being rolled out (canary tag)
    step: int = 0  # 1-based index into policy.steps; 0 = canary not serving yet
    weight: int = 0  # % of traffic for the canary at this step
    failed_checks: int = 0
    next_analysis_at: float = 0.0
    message: str = ""
    last_analysis: dict[str, Any] | None = None

    def to_status(self, total_steps: int | None = None) -> dict[str, Any]:
        """The camelCase dict written to ``status.rollout``."""
        out: dict[str, Any] = {
            "phase": self.phase,
            "tag": self.tag,
            "step": self.step,
            "weight": self.weight,
            "failedChecks": self.failed_checks,
            "message": self.message,
        }
        if total_steps is not None:
            out["totalSteps"] = total_steps
        if self.next_analysis_at:
            out["nextAnalysisAt"] = _iso(self.next_analysis_at)
        if self.last_analysis is not None:
            out["lastAnalysis"] = self.last_analysis
        return out

    @classmethod
    def from_status(cls, status: dict[str, Any] | None) -> RolloutState:
        """Read back what :meth:`to_status` wrote (tolerates an empty or partial record)."""
        status = status or {}
        return cls(
            phase=str(status.get("phase") or ""),
            tag=str(status.get("tag") or ""),
            step=int(status.get("step") or 0),
            weight=int(status.get("weight") or 0),
            failed_checks=int(status.get("failedChecks") or 0),
            next_analysis_at=_parse_iso(status.get("nextAnalysisAt")),
            message=str(status.get("message") or ""),
            last_analysis=status.get("lastAnalysis"),
        )


@dataclass(frozen=True)
class Observation:
    """What the handler saw just now."""

    desired_tag: str  # spec.tag
    stable_tag: str  # status.stableTag (spec.tag on first sight)
    canary_ready: bool = False  # canary Deployment has all its desired replicas ready
    stable_rolled_out: bool = False  # stable Deployment runs the new tag, all replicas updated and available
    now: float = 0.0
    analysis: Analysis | None = None  # None: not run this tick (not due, or not applicable)


@dataclass(frozen=True)
class Event:
    """A Kubernetes event to emit alongside the state change."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """The next state and the shape of the children that follows from it."""

    state: RolloutState
    stable_tag: str  # status.stableTag after this step
    stable_deploy_tag: str  # the tag the stable Deployment runs (new tag while promoting)
    canary: str  # "absent" | "running" | "scaled-to-zero"
    routed_weight: int  # % of traffic routers send to the canary right now
    events: tuple[Event, ...] = field(default_factory=tuple)

    @property
    def canary_tag(self) -> str:
        """Tag of the canary Deployment (meaningful when it exists)."""
        return self.state.tag


def analysis_due(state: RolloutState, policy: RolloutPolicy, now: float) -> bool:
    """Whether the handler should query Prometheus on this tick: whenever the canary serves a step
    (a breach counts as soon as it is measured; :func:`step` judges a pass only when the interval is up)."""
    return state.phase == PROGRESSING and state.step > 0 and not policy.paused and policy.strategy == CANARY


def check_scheduled(state: RolloutState, now: float) -> bool:
    """The interval since the step began (or the last check) is up: any verdict counts now."""
    return now >= state.next_analysis_at


def _failed_this_interval(state: RolloutState, policy: RolloutPolicy) -> bool:
    """A failed check was already counted in the interval now running (its record is in status)."""
    rec = state.last_analysis or {}
    # The record's time has whole seconds (it is also read back from status): 1 s of slack.
    return rec.get("verdict") == FAIL and _parse_iso(rec.get("time")) > state.next_analysis_at - policy.interval_s - 1


def _analysis_record(verdict: Verdict, now: float) -> dict[str, Any]:
    rec: dict[str, Any] = {"time": _iso(now), "verdict": verdict.result, "reason": verdict.reason}
    fig = verdict.figures
    if fig is not None:
        rec["requests"] = round(fig.requests, 1)
        if fig.p99_ms is not None:
            rec["p99Ms"] = round(fig.p99_ms, 2)
        if fig.error_rate is not None:
            rec["errorRate"] = round(fig.error_rate, 6)
        if fig.qps is not None:
            rec["qps"] = round(fig.qps, 3)
    return rec


def _idle(stable_tag: str, state: RolloutState) -> Decision:
    canary = "scaled-to-zero" if state.phase == ROLLED_BACK else "absent"
    return Decision(state, stable_tag, stable_tag, canary, 0)


def step(state: RolloutState, policy: RolloutPolicy, obs: Observation) -> Decision:
    """Advance the rollout by one observation. Deterministic; no I/O."""
    desired, stable = obs.desired_tag, obs.stable_tag or obs.desired_tag
    now = obs.now

    # Nothing to roll out: the desired tag serves already.
    if desired == stable:
        if state.phase in ACTIVE_PHASES:
            msg = f"spec.tag returned to the stable tag {stable}; canary {state.tag} removed"
            new = replace(state, phase=ROLLED_BACK, weight=0, message=msg, next_analysis_at=0.0)
            return Decision(new, stable, stable, "absent", 0, (Event("Normal", "RolloutAborted", msg),))
        return Decision(state, stable, stable, "absent", 0)

    # A rollout of this tag already ended in rollback: keep stable, do not retry on our own.
    if state.phase == ROLLED_BACK and state.tag == desired:
        return _idle(stable, state)

    events: list[Event] = []
    if state.tag != desired or state.phase not in ACTIVE_PHASES:
        # A new target (first change, or the tag changed again mid-rollout): start over.
        if state.phase in ACTIVE_PHASES:
            events.append(
                Event("Normal", "RolloutRestarted", f"target changed from {state.tag} to {desired}")
            )
        if policy.strategy == ROLLING:
            state = RolloutState(
                phase=PROMOTING,
                tag=desired,
                message=f"rolling update {stable} -> {desired} (strategy Rolling)",
            )
        else:
            state = RolloutState(
                phase=PROGRESSING,
                tag=desired,
                message=f"canary {desired} created; waiting for its pods to be ready",
            )
        events.append(Event("Normal", "RolloutStarted", f"{policy.strategy} rollout {stable} -> {desired}"))

    if state.phase == PROMOTING:
        return _promoting(state, policy, obs, stable, tuple(events))

    # Progressing or Paused.
    if policy.paused:
        held = state.weight if obs.canary_ready else 0
        msg = (
            f"paused by spec.rollout.paused at step {state.step}/{len(policy.steps)}, weight {state.weight}%"
        )
        new = replace(state, phase=PAUSED, message=msg)
        if state.phase != PAUSED:
            events.append(Event("Normal", "RolloutPaused", msg))
        return Decision(new, stable, stable, "running", held, tuple(events))
    if state.phase == PAUSED:
        # Resumed: a fresh interval before the next verdict, the paused time says nothing.
        state = replace(state, phase=PROGRESSING, next_analysis_at=now + policy.interval_s)
        events.append(Event("Normal", "RolloutResumed", f"resumed at weight {state.weight}%"))

    if not obs.canary_ready:
        if state.step == 0:
            msg = f"waiting for canary {desired} pods to be ready before sending traffic"
        else:
            msg = f"canary pods not ready: traffic held back from the canary (step weight {state.weight}%)"
        return Decision(replace(state, message=msg), stable, stable, "running", 0, tuple(events))

    if state.step == 0:
        first = policy.steps[0]
        msg = f"step 1/{len(policy.steps)}: {first}% of traffic to canary {desired}"
        new = replace(state, step=1, weight=first, next_analysis_at=now + policy.interval_s, message=msg)
        events.append(Event("Normal", "CanaryWeight", msg))
        return Decision(new, stable, stable, "running", first, tuple(events))

    if obs.analysis is None:
        return Decision(state, stable, stable, "running", state.weight, tuple(events))
    verdict = judge(obs.analysis, policy)
    if not check_scheduled(state, now) and (verdict.result != FAIL or _failed_this_interval(state, policy)):
        # Early: only a measured breach counts before the interval is up, and one per interval.
        return Decision(state, stable, stable, "running", state.weight, tuple(events))

    record = _analysis_record(verdict, now)
    state = replace(state, last_analysis=record, next_analysis_at=now + policy.interval_s)

    if verdict.result in (UNREACHABLE, INSUFFICIENT):
        msg = f"holding weight {state.weight}%: {verdict.reason}"
        if verdict.result == UNREACHABLE and state.message != msg:
            events.append(Event("Warning", "AnalysisUnavailable", msg))
        return Decision(replace(state, message=msg), stable, stable, "running", state.weight, tuple(events))

    if verdict.result == FAIL:
        failed = state.failed_checks + 1
        if failed >= policy.failure_threshold:
            msg = (
                f"rolled back canary {desired} after {failed} failed checks at weight {state.weight}%: "
                f"{verdict.reason} ({verdict.figures.describe() if verdict.figures else ''}); "
                f"all traffic to stable {stable}"
            )
            new = replace(
                state, phase=ROLLED_BACK, failed_checks=failed, weight=0, message=msg, next_analysis_at=0.0
            )
            events.append(Event("Warning", "RolledBack", msg))
            return Decision(new, stable, stable, "scaled-to-zero", 0, tuple(events))
        msg = (
            f"check failed ({failed}/{policy.failure_threshold}) at weight {state.weight}%: {verdict.reason}; "
            "holding"
        )
        events.append(Event("Warning", "AnalysisFailed", msg))
        new = replace(state, failed_checks=failed, message=msg)
        return Decision(new, stable, stable, "running", state.weight, tuple(events))

    # PASS
    if state.step >= len(policy.steps):
        msg = f"canary {desired} passed at 100% ({verdict.figures.describe() if verdict.figures else ''}); promoting"
        new = replace(state, phase=PROMOTING, message=msg, next_analysis_at=0.0)
        events.append(Event("Normal", "Promoting", msg))
        return _promoting(new, policy, replace(obs, stable_rolled_out=False), stable, tuple(events))
    nxt = state.step + 1
    weight = policy.steps[nxt - 1]
    msg = f"step {nxt}/{len(policy.steps)}: {weight}% of traffic to canary {desired} (last check: {verdict.reason})"
    events.append(Event("Normal", "CanaryWeight", msg))
    new = replace(state, step=nxt, weight=weight, message=msg)
    return Decision(new, stable, stable, "running", weight, tuple(events))


def _promoting(
    state: RolloutState, policy: RolloutPolicy, obs: Observation, stable: str, events: tuple[Event, ...]
) -> Decision:
    """Stable rolls to the new tag while the canary (if any) keeps the traffic; then the canary goes."""
    canary_mode = policy.strategy == CANARY
    if obs.stable_rolled_out:
        fig = ""
        if state.last_analysis:
            fig = f" (last analysis: {state.last_analysis.get('reason', '')})"
        msg = f"promoted {state.tag}: stable runs it{fig}" + ("; canary removed" if canary_mode else "")
        new = replace(state, phase=PROMOTED, weight=0, message=msg, next_analysis_at=0.0)
        return Decision(new, state.tag, state.tag, "absent", 0, (*events, Event("Normal", "Promoted", msg)))
    weight = 100 if canary_mode and obs.canary_ready else 0
    canary = "running" if canary_mode else "absent"
    return Decision(
        replace(state, weight=100 if canary_mode else 0), stable, state.tag, canary, weight, events
    )


@dataclass(frozen=True)
class SLAFigures:
    """``status.sla`` figures; ``None`` where Prometheus has no data (e.g. no traffic yet)."""

    p99_ms: float | None
    error_rate: float | None
    availability: float | None
    qps: float | None
    error_budget_remaining: float | None


@dataclass(frozen=True)
class SLAVerdict:
    """The ``SLAMet`` condition: ``status`` is "True", "False" or "Unknown"."""

    status: str
    reason: str
    message: str
    summary: str  # the p99/target printer column


def _fmt(value: float | None, fmt: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value * scale, fmt)


def evaluate_sla(
    figures: SLAFigures | Unreachable, target_p99_ms: float | None, availability_target: float | None
) -> SLAVerdict:
    """Judge measured figures against ``spec.sla``; no data is ``Unknown``, not a pass."""
    target_txt = "-" if target_p99_ms is None else f"{target_p99_ms:g}ms"
    if isinstance(figures, Unreachable):
        return SLAVerdict("Unknown", "PrometheusUnreachable", figures.reason, f"?/{target_txt}")
    f = figures
    summary = f"{_fmt(f.p99_ms, '.0f')}ms/{target_txt}" if f.p99_ms is not None else f"n/a/{target_txt}"
    text = (
        f"p99={_fmt(f.p99_ms, '.1f')}ms (target {target_txt}), "
        f"availability={_fmt(f.availability, '.3f', 100)}%"
        + ("" if availability_target is None else f" (target {availability_target * 100:g}%)")
        + f", errorRate={_fmt(f.error_rate, '.3f', 100)}%, qps={_fmt(f.qps, '.2f')}, "
        f"errorBudgetRemaining={_fmt(f.error_budget_remaining, '.1f', 100)}%"
    )
    breaches: list[str] = []
    missing = False
    if target_p99_ms is not None:
        if f.p99_ms is None:
            missing = True
        elif f.p99_ms > target_p99_ms:
            breaches.append("LatencyAboveTarget")
    if availability_target is not None:
        if f.availability is None:
            missing = True
        elif f.availability < availability_target:
            breaches.append("AvailabilityBelowTarget")
    if breaches:
        return SLAVerdict("False", breaches[0], text, summary)
    if missing:
        return SLAVerdict("Unknown", "NoData", f"no traffic measured yet: {text}", summary)
    return SLAVerdict("True", "WithinSLA", text, summary)
