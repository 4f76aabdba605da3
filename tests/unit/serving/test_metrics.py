"""ServingMetrics: what each ``observe_*`` / ``sync_*`` call exposes, and that the text parses."""

from __future__ import annotations

import doctest
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

import serving.metrics
from llmopt.schemas import Decision, Explanation
from monitoring.estimators import RecoveryTracker
from serving.metrics import ServingMetrics


def decision(model: str = "gpt-4o-mini", *, explored: bool | None = False) -> Decision:
    explanation = (
        None
        if explored is None
        else Explanation(
            estimate=0.5,
            uncertainty_bonus=0.1,
            expected_reward=0.4,
            explored=explored,
            reason="optimism" if explored else "greedy",
        )
    )
    return Decision(model=model, propensity=0.8, policy_name="linucb", explanation=explanation)


def samples(m: ServingMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the rendered text, by (name, labels)."""
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m: ServingMetrics, name: str, **labels: str) -> float | None:
    return samples(m).get((name, frozenset(labels.items())))


@dataclass
class Cache:
    hits: int = 0
    misses: int = 0
    degraded_reads: int = 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_doctests_pass():
    result = doctest.testmod(serving.metrics)
    assert result.attempted > 0 and result.failed == 0


def test_the_exposition_parses_after_every_kind_of_observation():
    m = ServingMetrics()
    d = decision()
    m.observe_decision(d, served_by="champion", fallback=False, seconds=0.003)
    m.observe_failed_decision(402)
    m.observe_failed_decision(503)
    m.observe_feedback("stored", decision_id=d.decision_id, reward=-0.2)
    m.observe_feedback("duplicate", decision_id=d.decision_id, reward=-0.2)
    m.observe_feedback("unknown")
    m.observe_training(5, source="log")
    m.caught_up()
    m.observe_drift("gpt-4o", "reward", "adwin")
    m.sync_features("embedded", "open", Cache(hits=9, misses=1))
    m.set_model_available("champion", True)
    m.observe_swap(0.04)
    families = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    expected = {
        "llmopt_inference_latency_seconds": "histogram",
        "llmopt_predictions": "counter",
        "llmopt_reward": "counter",
        "llmopt_reward_observations": "counter",
        "llmopt_estimated_regret": "counter",
        "llmopt_exploration_rate": "gauge",
        "llmopt_drift_detections": "counter",
        "llmopt_drift_unrecovered": "gauge",
        "llmopt_feature_cache_hits": "counter",
        "llmopt_feature_cache_misses": "counter",
        "llmopt_feature_store_up": "gauge",
        "llmopt_hot_swap_duration_seconds": "histogram",
        "llmopt_training_examples": "counter",
        "llmopt_training_lag_seconds": "gauge",
        "llmopt_model_available": "gauge",
        "llmopt_requests": "counter",
        "llmopt_errors": "counter",
        # older names, still exposed
        "llmopt_decisions": "counter",
        "llmopt_feedback": "counter",
        "llmopt_refusals": "counter",
        "llmopt_model_swaps": "counter",
    }
    for name, kind in expected.items():
        assert families[name].type == kind, name


def test_decisions_count_by_algorithm_and_result_and_time_the_latency():
    m = ServingMetrics()
    m.observe_decision(decision(), served_by="champion", fallback=False, seconds=0.004)
    m.observe_decision(decision(), served_by="static_default", fallback=True, seconds=0.02)
    m.observe_failed_decision(402)
    m.observe_failed_decision(503)
    assert value(m, "llmopt_predictions_total", algorithm="linucb", result="served") == 1
    assert value(m, "llmopt_predictions_total", algorithm="linucb", result="fallback") == 1
    assert value(m, "llmopt_predictions_total", algorithm="none", result="refused") == 1
    assert value(m, "llmopt_predictions_total", algorithm="none", result="error") == 1
    assert value(m, "llmopt_requests_total", endpoint="decide") == 4
    assert value(m, "llmopt_errors_total", endpoint="decide") == 1  # the 402 is no error
    assert value(m, "llmopt_refusals_total", endpoint="decide", status="402") == 1
    assert value(m, "llmopt_inference_latency_seconds_count") == 2
    assert value(m, "llmopt_inference_latency_seconds_bucket", le="0.005") == 1
    assert value(m, "llmopt_inference_latency_seconds_bucket", le="0.015") == 1
    assert value(m, "llmopt_inference_latency_seconds_bucket", le="0.02") == 2
    assert value(m, "llmopt_decisions_total", served_by="champion", model="gpt-4o-mini") == 1
    assert m.decide_seconds is m.inference_latency


def test_exploration_rate_is_the_explored_share_of_the_recent_window():
    m = ServingMetrics(exploration_window=4)
    assert value(m, "llmopt_exploration_rate") == 0
    for explored in (True, True, False, None, False, True):  # None: no explanation (greedy)
        d = decision(explored=explored)
        m.observe_decision(d, served_by="champion", fallback=False, seconds=0.001)
    assert value(m, "llmopt_exploration_rate") == pytest.approx(0.25)  # last 4: F, None, F, T


def test_feedback_accumulates_reward_gain_and_loss_and_counts_training():
    m = ServingMetrics()
    a, b = decision(), decision()
    for d in (a, b):
        m.observe_decision(d, served_by="champion", fallback=False, seconds=0.001)
    m.observe_feedback("stored", decision_id=a.decision_id, reward=0.75)
    m.observe_feedback("stored", decision_id=b.decision_id, reward=-0.25)
    m.observe_feedback("duplicate", decision_id=b.decision_id, reward=-0.25)
    m.observe_feedback("stored", decision_id="from-another-worker", reward=0.5)
    m.observe_feedback("conflict")
    m.observe_feedback("error")
    assert value(m, "llmopt_reward_total", algorithm="linucb", sign="gain") == 0.75
    assert value(m, "llmopt_reward_total", algorithm="linucb", sign="loss") == 0.25
    assert value(m, "llmopt_reward_observations_total", algorithm="linucb") == 2
    assert value(m, "llmopt_reward_total", algorithm="unknown", sign="gain") == 0.5
    assert value(m, "llmopt_training_examples_total", source="feedback") == 3
    assert value(m, "llmopt_feedback_total", status="duplicate") == 1
    assert value(m, "llmopt_requests_total", endpoint="feedback") == 6
    assert value(m, "llmopt_errors_total", endpoint="feedback") == 1
    m.observe_training(7, source="log")
    m.observe_training(0, source="warm_start")
    assert value(m, "llmopt_training_examples_total", source="log") == 7
    assert value(m, "llmopt_training_examples_total", source="warm_start") is None


def test_regret_counter_is_exposed_per_algorithm():
    m = ServingMetrics()
    m.regret_estimator.min_count = 1
    good, bad = decision("good"), decision("bad")
    for d in (good, bad):
        m.observe_decision(d, served_by="champion", fallback=False, seconds=0.001)
    m.observe_feedback("stored", decision_id=good.decision_id, reward=1.0)
    m.observe_feedback("stored", decision_id=bad.decision_id, reward=0.25)
    assert value(m, "llmopt_estimated_regret_total", algorithm="linucb") == pytest.approx(0.75)


def test_feature_cache_counts_are_mirrored_as_increments():
    m = ServingMetrics()
    cache = Cache(hits=10, misses=2)
    m.sync_features("embedded", "open", cache)
    cache.hits, cache.misses, cache.degraded_reads = 25, 4, 1
    m.sync_features("embedded", "open", cache)
    m.sync_features("embedded", "open", Cache(hits=3, misses=1))  # a new cache: counts restart
    assert value(m, "llmopt_feature_cache_hits_total") == 28
    assert value(m, "llmopt_feature_cache_misses_total") == 5
    assert value(m, "llmopt_feature_store_degraded_reads_total") == 1


def test_feature_store_up_follows_the_state_and_degraded_reads():
    m = ServingMetrics()
    m.sync_features("production", "starting", None)
    assert value(m, "llmopt_feature_store_up", profile="production") == 0
    cache = Cache()
    m.sync_features("production", "open", cache)
    assert value(m, "llmopt_feature_store_up", profile="production") == 1  # open, no read yet
    cache.misses, cache.degraded_reads = 3, 3  # every read since the last scrape degraded
    m.sync_features("production", "open", cache)
    assert value(m, "llmopt_feature_store_up", profile="production") == 0
    cache.hits = 50  # only cache hits since: no news about the store
    m.sync_features("production", "open", cache)
    assert value(m, "llmopt_feature_store_up", profile="production") == 0
    cache.misses, cache.degraded_reads = 5, 4  # one read answered
    m.sync_features("production", "open", cache)
    assert value(m, "llmopt_feature_store_up", profile="production") == 1
    m.sync_features("production", "unavailable", cache)
    assert value(m, "llmopt_feature_store_up", profile="production") == 0
    m.sync_features("off", "off", None)
    m.sync_features("production", "off", None)
    assert value(m, "llmopt_feature_store_up", profile="production") is None


def test_model_availability_per_role():
    m = ServingMetrics()
    m.set_model_available("champion", False)
    m.set_model_available("challenger", True)
    assert value(m, "llmopt_model_available", role="champion") == 0
    assert value(m, "llmopt_model_available", role="challenger") == 1
    m.set_model_available("challenger", None)
    assert value(m, "llmopt_model_available", role="challenger") is None


def test_swaps_drift_and_training_lag():
    clock = Clock()
    m = ServingMetrics(clock=clock)
    m.observe_swap(0.2, trigger="poll")
    assert value(m, "llmopt_hot_swap_duration_seconds_count", trigger="poll") == 1
    assert value(m, "llmopt_hot_swap_duration_seconds_bucket", trigger="poll", le="0.25") == 1
    assert value(m, "llmopt_model_swaps_total", role="poll") == 1
    m.observe_drift("gpt-4o", "reward", "page_hinkley")
    m.observe_drift("gpt-4o", "reward", "adwin")
    labels = {"model": "gpt-4o", "stream": "reward"}
    assert value(m, "llmopt_drift_detections_total", detector="adwin", **labels) == 1
    assert value(m, "llmopt_drift_unrecovered", **labels) == 1
    m.observe_drift_recovered("gpt-4o", "reward")
    assert value(m, "llmopt_drift_unrecovered", **labels) == 0
    assert value(m, "llmopt_training_lag_seconds") == 0  # nothing to catch up with
    m.caught_up()
    clock.now += 90
    assert value(m, "llmopt_training_lag_seconds") == 90
    m.caught_up(at=clock.now - 5)
    assert value(m, "llmopt_training_lag_seconds") == 5


def test_hooks_refresh_state_gauges_when_rendered():
    m = ServingMetrics()
    m.hooks.append(lambda mm: mm.rollbacks.set(3))
    assert value(m, "llmopt_canary_rollbacks") == 3


def test_drift_is_unrecovered_until_the_reward_is_back_to_its_level():
    m = ServingMetrics()
    m.recovery = RecoveryTracker(window=20, tolerance=0.05)
    labels = {"model": "gpt-4o", "stream": "quality"}

    def rewards(level: float, n: int) -> None:
        for _ in range(n):
            d = decision()
            m.observe_decision(d, served_by="champion", fallback=False, seconds=0.001)
            m.observe_feedback("stored", decision_id=d.decision_id, reward=level)

    rewards(0.8, 20)
    m.observe_drift("gpt-4o", "quality", "adwin")
    rewards(0.3, 40)  # the policy has not adapted yet
    assert value(m, "llmopt_drift_unrecovered", **labels) == 1
    rewards(0.76, 19)  # within the tolerance, but not yet a full window of it
    assert value(m, "llmopt_drift_unrecovered", **labels) == 1
    rewards(0.76, 1)
    assert value(m, "llmopt_drift_unrecovered", **labels) == 0


def test_training_totals_kept_elsewhere_are_mirrored():
    m = ServingMetrics()
    m.sync_training_examples("log", 40)
    m.sync_training_examples("log", 55)
    m.observe_training(5, source="log")
    assert value(m, "llmopt_training_examples_total", source="log") == 60
