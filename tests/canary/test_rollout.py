"""The canary state machine, driven tick by tick as the operator's timer would."""

from __future__ import annotations

import pytest

from paddle_operator import rollout as r

POLICY = r.RolloutPolicy(
    steps=(10, 30, 60, 100),
    interval_s=10,
    failure_threshold=2,
    min_requests=20,
    max_latency_p99_ms=100,
    max_error_rate=0.01,
)
GOOD = r.Figures(requests=100, p99_ms=40, error_rate=0.0, qps=5)
SLOW = r.Figures(requests=100, p99_ms=900, error_rate=0.0, qps=5)


class Driver:
    """Feeds observations into ``rollout.step`` and keeps the state as status would."""

    def __init__(self, policy: r.RolloutPolicy = POLICY, stable: str = "v1") -> None:
        self.policy = policy
        self.state = r.RolloutState()
        self.stable = stable
        self.now = 1000.0
        self.events: list[r.Event] = []

    def tick(
        self,
        desired: str = "v2",
        *,
        ready: bool = True,
        analysis=None,
        rolled_out: bool = False,
        advance: float = 0.0,
    ) -> r.Decision:
        self.now += advance
        obs = r.Observation(
            desired,
            self.stable,
            canary_ready=ready,
            stable_rolled_out=rolled_out,
            now=self.now,
            analysis=analysis,
        )
        d = r.step(self.state, self.policy, obs)
        # Round-trip through the status dict, as the operator does between ticks.
        self.state = r.RolloutState.from_status(d.state.to_status())
        self.stable = d.stable_tag
        self.events.extend(d.events)
        return d


def test_same_tag_means_no_rollout_and_no_canary():
    d = Driver().tick(desired="v1")
    assert (
        d.state.phase == "" and d.canary == "absent" and d.routed_weight == 0 and d.stable_deploy_tag == "v1"
    )


def test_healthy_canary_goes_through_every_step_then_promotes():
    drv = Driver()
    d = drv.tick()
    assert (d.state.phase, d.state.step, d.routed_weight, d.canary) == ("Progressing", 1, 10, "running")
    weights = [d.routed_weight]
    for _ in range(3):
        d = drv.tick(analysis=GOOD, advance=10)
        weights.append(d.routed_weight)
    assert weights == [10, 30, 60, 100]
    d = drv.tick(analysis=GOOD, advance=10)
    assert d.state.phase == "Promoting"
    # While stable rolls to v2 (maxUnavailable 0), the proven canary carries the traffic.
    assert d.stable_deploy_tag == "v2" and d.stable_tag == "v1" and d.routed_weight == 100
    d = drv.tick(rolled_out=True, advance=1)
    assert (
        d.state.phase == "Promoted" and d.stable_tag == "v2" and d.canary == "absent" and d.routed_weight == 0
    )
    assert [e.reason for e in drv.events][-2:] == ["Promoting", "Promoted"]
    assert "p99=40.0ms" in d.state.message
    # Afterwards: idle, nothing more happens.
    d = drv.tick(advance=100)
    assert d.state.phase == "Promoted" and d.canary == "absent"


def test_weight_waits_for_ready_canary_pods():
    drv = Driver()
    d = drv.tick(ready=False)
    assert d.state.step == 0 and d.routed_weight == 0 and "waiting" in d.state.message
    d = drv.tick(ready=True, advance=1)
    assert d.state.step == 1 and d.routed_weight == 10


def test_traffic_is_taken_back_from_a_canary_that_turns_unready():
    drv = Driver()
    drv.tick()
    d = drv.tick(ready=False, analysis=GOOD, advance=10)
    assert d.routed_weight == 0 and d.state.step == 1 and "not ready" in d.state.message


def test_a_pass_needs_the_full_interval():
    drv = Driver()
    drv.tick()
    # Asked every tick (a breach would count), but a pass before the interval changes nothing.
    assert r.analysis_due(drv.state, POLICY, drv.now + 1)
    for _ in range(9):
        d = drv.tick(analysis=GOOD, advance=1)
        assert d.state.step == 1 and d.state.last_analysis is None and d.state.failed_checks == 0
    d = drv.tick(analysis=GOOD, advance=1)
    assert d.state.step == 2 and d.state.last_analysis["verdict"] == r.PASS


def test_early_holds_are_not_reported_before_the_interval():
    drv = Driver()
    drv.tick()
    for analysis in (r.Figures(requests=1, p99_ms=1, error_rate=0.0), r.Unreachable("refused")):
        d = drv.tick(analysis=analysis, advance=1)
        assert d.state.last_analysis is None and d.state.failed_checks == 0 and not d.events


def test_a_breach_counts_as_soon_as_it_is_measured_then_once_per_interval():
    """Fail fast: rolled back within interval x failureThreshold of the step, not one interval later."""
    drv = Driver()
    drv.tick()
    step_started = drv.now
    d = drv.tick(analysis=SLOW, advance=3)  # enough requests after 3 s: counted at once
    assert d.state.failed_checks == 1 and d.state.last_analysis["verdict"] == r.FAIL
    assert d.state.next_analysis_at == drv.now + POLICY.interval_s
    for _ in range(9):  # still breaching, but at most one failed check per interval
        d = drv.tick(analysis=SLOW, advance=1)
        assert d.state.failed_checks == 1 and d.state.phase == "Progressing"
    d = drv.tick(analysis=SLOW, advance=1)
    assert d.state.phase == "RolledBack" and d.routed_weight == 0
    assert drv.now - step_started <= POLICY.interval_s * POLICY.failure_threshold


def test_one_failed_check_per_interval_also_from_memory():
    """The operator keeps the state in memory between ticks (float times, no status round trip)."""
    state = r.step(r.RolloutState(), POLICY, r.Observation("v2", "v1", canary_ready=True, now=1000.4)).state
    for t in (1003.7, 1004.7, 1005.9, 1012.9):
        state = r.step(state, POLICY, r.Observation("v2", "v1", canary_ready=True, now=t, analysis=SLOW)).state
    assert state.failed_checks == 1 and state.phase == "Progressing"
    state = r.step(state, POLICY, r.Observation("v2", "v1", canary_ready=True, now=1013.8, analysis=SLOW)).state
    assert state.phase == "RolledBack"


def test_not_asked_when_paused_or_before_the_canary_serves():
    drv = Driver()
    drv.tick(ready=False)
    assert not r.analysis_due(drv.state, POLICY, drv.now + 100)  # step 0: no traffic yet
    drv.tick()
    paused = r.RolloutPolicy(**{**POLICY.__dict__, "paused": True})
    assert not r.analysis_due(drv.state, paused, drv.now + 100)


def test_too_few_requests_holds_and_never_promotes_blind():
    drv = Driver()
    drv.tick()
    for _ in range(10):
        d = drv.tick(analysis=r.Figures(requests=5, p99_ms=1, error_rate=0.0), advance=10)
    assert d.state.step == 1 and d.routed_weight == 10 and d.state.failed_checks == 0
    assert d.state.last_analysis["verdict"] == r.INSUFFICIENT and "5 of 20 requests" in d.state.message


def test_missing_latency_data_is_not_a_pass():
    drv = Driver()
    drv.tick()
    d = drv.tick(analysis=r.Figures(requests=50, p99_ms=None, error_rate=0.0), advance=10)
    assert d.state.step == 1 and d.state.last_analysis["verdict"] == r.INSUFFICIENT


def test_prometheus_unreachable_holds_the_weight_and_says_so():
    drv = Driver()
    drv.tick()
    drv.tick(analysis=GOOD, advance=10)  # step 2, 30 %
    for _ in range(5):
        d = drv.tick(analysis=r.Unreachable("connection refused"), advance=10)
    assert d.state.phase == "Progressing" and d.routed_weight == 30 and d.state.failed_checks == 0
    assert "Prometheus unreachable: connection refused" in d.state.message
    # Warned once, not every tick.
    assert [e.reason for e in drv.events].count("AnalysisUnavailable") == 1
    d = drv.tick(analysis=GOOD, advance=10)
    assert d.routed_weight == 60


def test_failure_threshold_failed_checks_roll_back_with_figures():
    drv = Driver()
    drv.tick()
    d = drv.tick(analysis=SLOW, advance=10)
    assert d.state.failed_checks == 1 and d.routed_weight == 10 and d.state.phase == "Progressing"
    d = drv.tick(analysis=SLOW, advance=10)
    assert d.state.phase == "RolledBack" and d.routed_weight == 0 and d.canary == "scaled-to-zero"
    assert d.stable_tag == "v1" and d.stable_deploy_tag == "v1"
    assert "p99 900.0ms > 100ms" in d.state.message
    assert d.state.last_analysis["p99Ms"] == 900
    rb = [e for e in drv.events if e.reason == "RolledBack"]
    assert rb and rb[0].type == "Warning" and "900.0ms" in rb[0].message


def test_error_rate_breach_fails_the_check():
    v = r.judge(r.Figures(requests=100, p99_ms=10, error_rate=0.5), POLICY)
    assert v.result == r.FAIL and "error rate 50.00% > 1%" in v.reason


def test_error_breach_fails_even_without_latency_data():
    # A runtime that answers only 500s may record no latency samples at all.
    v = r.judge(r.Figures(requests=100, p99_ms=None, error_rate=1.0), POLICY)
    assert v.result == r.FAIL and "error rate 100.00%" in v.reason


def test_failed_checks_accumulate_across_passes():
    drv = Driver()
    drv.tick()
    drv.tick(analysis=SLOW, advance=10)
    drv.tick(analysis=GOOD, advance=10)
    d = drv.tick(analysis=SLOW, advance=10)
    assert d.state.phase == "RolledBack"


def test_rolled_back_tag_is_not_retried_but_a_new_tag_starts_a_new_rollout():
    drv = Driver(r.RolloutPolicy(failure_threshold=1, interval_s=10, min_requests=1, max_latency_p99_ms=100))
    drv.tick()
    drv.tick(analysis=SLOW, advance=10)
    d = drv.tick(analysis=GOOD, advance=100)
    assert d.state.phase == "RolledBack" and d.canary == "scaled-to-zero"
    d = drv.tick(desired="v3", advance=1)
    assert d.state.phase == "Progressing" and d.state.tag == "v3" and d.state.failed_checks == 0


def test_tag_change_mid_rollout_restarts_with_the_new_target():
    drv = Driver()
    drv.tick()
    drv.tick(analysis=GOOD, advance=10)
    d = drv.tick(desired="v3", ready=False, advance=1)
    assert d.state.tag == "v3" and d.state.step == 0 and d.routed_weight == 0
    assert "RolloutRestarted" in [e.reason for e in drv.events]


def test_reverting_the_tag_to_stable_removes_the_canary():
    drv = Driver()
    drv.tick()
    d = drv.tick(desired="v1", advance=1)
    assert d.canary == "absent" and d.routed_weight == 0 and d.stable_deploy_tag == "v1"
    assert d.state.phase == "RolledBack"


def test_paused_holds_the_weight_without_verdicts_then_resumes():
    drv = Driver()
    drv.tick()
    drv.policy = r.RolloutPolicy(**{**POLICY.__dict__, "paused": True})
    for _ in range(3):
        d = drv.tick(analysis=SLOW, advance=10)
    assert d.state.phase == "Paused" and d.routed_weight == 10 and d.state.failed_checks == 0
    drv.policy = POLICY
    d = drv.tick(analysis=GOOD, advance=1)
    assert d.state.phase == "Progressing" and d.routed_weight == 10  # fresh interval after resume
    d = drv.tick(analysis=GOOD, advance=10)
    assert d.routed_weight == 30


def test_rolling_strategy_updates_stable_without_canary():
    drv = Driver(r.RolloutPolicy(strategy="Rolling"))
    d = drv.tick()
    assert d.state.phase == "Promoting" and d.canary == "absent" and d.stable_deploy_tag == "v2"
    assert d.routed_weight == 0
    d = drv.tick(rolled_out=True, advance=1)
    assert d.state.phase == "Promoted" and d.stable_tag == "v2"


def test_status_round_trip():
    s = r.RolloutState("Progressing", "v2", 2, 30, 1, 1_700_000_000.0, "m", {"verdict": "Pass"})
    assert r.RolloutState.from_status(s.to_status(total_steps=4)) == s
    assert s.to_status(total_steps=4)["nextAnalysisAt"] == "2023-11-14T22:13:20Z"


@pytest.mark.parametrize("steps", [(), (0, 50), (50, 30, 100), (10, 10, 100), (10, 101)])
def test_invalid_steps_are_rejected(steps):
    with pytest.raises(ValueError):
        r.RolloutPolicy(steps=steps)


def test_steps_not_ending_at_100_get_a_final_full_step():
    assert r.RolloutPolicy(steps=(20, 50)).steps == (20, 50, 100)


def test_sla_verdicts():
    ok = r.SLAFigures(p99_ms=80, error_rate=0.0005, availability=0.9995, qps=12.5, error_budget_remaining=0.5)
    v = r.evaluate_sla(ok, 100, 0.999)
    assert (v.status, v.reason, v.summary) == ("True", "WithinSLA", "80ms/100ms")
    assert "p99=80.0ms (target 100ms)" in v.message and "errorBudgetRemaining=50.0%" in v.message
    slow = r.SLAFigures(p99_ms=180, error_rate=0.0, availability=1.0, qps=1, error_budget_remaining=1)
    assert r.evaluate_sla(slow, 100, 0.999).reason == "LatencyAboveTarget"
    bad = r.SLAFigures(p99_ms=10, error_rate=0.1, availability=0.9, qps=1, error_budget_remaining=-99)
    assert r.evaluate_sla(bad, 100, 0.999).status == "False"
    idle = r.SLAFigures(None, None, None, 0.0, None)
    assert r.evaluate_sla(idle, 100, 0.999).status == "Unknown"
    assert r.evaluate_sla(r.Unreachable("refused"), 100, None).reason == "PrometheusUnreachable"
