"""Streaming detectors (golden indices, false-alarm rates, contract), the stream monitor, alerts
and the drift response."""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest

from llmopt.loop import LearningLoop
from models.ucb import UCB1
from monitoring.alerts import LOGGER_NAME, Alerter
from monitoring.detectors import (
    ADWIN,
    ALL_DETECTORS,
    CUSUM,
    IQR,
    MEAN_DETECTORS,
    DriftEvent,
    PageHinkley,
    StreamMonitor,
    ZScore,
)
from monitoring.drift_response import DriftResponder

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def detections(detector: object, stream: np.ndarray) -> list[int]:
    return [i for i, x in enumerate(stream.tolist()) if detector.update(x).drift_detected]  # type: ignore[attr-defined]


def big_shift() -> np.ndarray:
    """1000 values N(0.7, 0.1), then 1000 N(0.4, 0.1): a drop of 3 standard deviations."""
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(0.7, 0.1, 1000), rng.normal(0.4, 0.1, 1000)])


def small_shift() -> np.ndarray:
    """1000 values N(0.7, 0.1), then 1000 N(0.8, 0.1): a rise of 1 standard deviation."""
    rng = np.random.default_rng(1)
    return np.concatenate([rng.normal(0.7, 0.1, 1000), rng.normal(0.8, 0.1, 1000)])


# -- golden indices ------------------------------------------------------------------------------
# Each detector fires exactly once, after the change, then restarts and learns the new level.
GOLDEN_BIG = {
    "adwin": [1027],
    "page_hinkley": [1005],
    "cusum": [1005],
    "zscore": [1003],
    "iqr": [1003],
}
# A 1-sd shift: the mean detectors see it; single values are rarely outliers, so the anomaly
# detectors (made for large changes and bursts of outliers) do not.
GOLDEN_SMALL = {"adwin": [1091], "page_hinkley": [1029], "cusum": [1028], "zscore": [], "iqr": []}
DELAY_BOUND = {"big": 40, "small": 100}
"""Largest delay (values after the change) any detector may take."""


@pytest.mark.parametrize("name", sorted(ALL_DETECTORS))
def test_golden_detection_indices(name: str) -> None:
    found_big = detections(ALL_DETECTORS[name](), big_shift())
    found_small = detections(ALL_DETECTORS[name](), small_shift())
    assert found_big == GOLDEN_BIG[name]
    assert found_small == GOLDEN_SMALL[name]
    assert all(1000 <= i <= 1000 + DELAY_BOUND["big"] for i in found_big)
    assert all(1000 <= i <= 1000 + DELAY_BOUND["small"] for i in found_small)


# -- false alarms ------------------------------------------------------------------------------
# Alarms per 1000 values on 50 seeded stationary streams of 5000 values (250,000 values).
# Gaussian N(0.7, 0.1), measured: adwin 0, page_hinkley 0.004, cusum 0.004, zscore 0, iqr 0.064.
FALSE_ALARM_BOUND_GAUSSIAN = {
    "adwin": 0.02,
    "page_hinkley": 0.02,
    "cusum": 0.02,
    "zscore": 0.02,
    "iqr": 0.1,
}
# 0/1 values with 90% successes (a model's correctness), mean detectors only; measured:
# adwin 0, page_hinkley 0.036, cusum 0.048.
FALSE_ALARM_BOUND_BINARY = {"adwin": 0.02, "page_hinkley": 0.06, "cusum": 0.08}


def alarm_rate(
    make: Callable[[], object], draw: Callable[[np.random.Generator], np.ndarray]
) -> float:
    alarms = n = 0
    for seed in range(50):
        values = draw(np.random.default_rng(1000 + seed))
        alarms += len(detections(make(), values))
        n += len(values)
    return alarms / n * 1000


@pytest.mark.parametrize("name", sorted(ALL_DETECTORS))
def test_false_alarm_rate_on_stationary_gaussian_streams(name: str) -> None:
    rate = alarm_rate(ALL_DETECTORS[name], lambda rng: rng.normal(0.7, 0.1, 5000))
    assert rate <= FALSE_ALARM_BOUND_GAUSSIAN[name]


@pytest.mark.parametrize("name", sorted(MEAN_DETECTORS))
def test_false_alarm_rate_on_stationary_binary_streams(name: str) -> None:
    rate = alarm_rate(MEAN_DETECTORS[name], lambda rng: (rng.random(5000) < 0.9).astype(float))
    assert rate <= FALSE_ALARM_BOUND_BINARY[name]


# -- contract -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ALL_DETECTORS))
def test_reset_returns_to_the_fresh_state_and_pickling_continues_identically(name: str) -> None:
    stream = big_shift()
    det = ALL_DETECTORS[name]()
    detections(det, stream[:1500])
    assert det.n_seen == 1500  # type: ignore[attr-defined]
    copy = pickle.loads(pickle.dumps(det))
    assert detections(copy, stream[1500:]) == detections(det, stream[1500:])
    det.reset()
    assert det.n_seen == 0 and not det.drift_detected  # type: ignore[attr-defined]
    assert detections(det, stream) == GOLDEN_BIG[name]


@pytest.mark.parametrize("name", sorted(ALL_DETECTORS))
def test_bad_values_are_refused(name: str) -> None:
    det = ALL_DETECTORS[name]()
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            det.update(bad)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ADWIN(0.0),
        lambda: ADWIN(clock=0),
        lambda: PageHinkley(threshold=0.0),
        lambda: CUSUM(h=-1.0),
        lambda: CUSUM(warmup=1),
        lambda: ZScore(0.0),
        lambda: ZScore(window=50, warmup=100),
        lambda: IQR(min_anomalies=11, patience=10),
    ],
)
def test_bad_hyperparameters_are_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("name", sorted(ALL_DETECTORS))
def test_a_constant_stream_that_changes_is_detected(name: str) -> None:
    # A fixed price or latency has no spread: any change of it is a change.
    det = ALL_DETECTORS[name]()
    stream = np.r_[np.full(300, 0.002), np.full(300, 0.006)]
    found = detections(det, stream)
    assert found and 300 <= found[0] <= 340


@pytest.mark.parametrize("cls", [ZScore, IQR])
def test_one_outlier_is_an_anomaly_but_not_a_drift(cls: type[ZScore] | type[IQR]) -> None:
    det = cls()
    for x in np.random.default_rng(0).normal(0.7, 0.1, 300).tolist():
        det.update(x)
    det.update(5.0)
    assert det.anomaly_detected and not det.drift_detected
    det.update(0.7)
    assert not det.anomaly_detected
    # Outliers stay out of the reference: the first one and two more make three in ten.
    assert [det.update(5.0).drift_detected for _ in range(2)] == [False, True]


# -- stream monitor ---------------------------------------------------------------------------
def test_monitor_keys_detectors_by_model_and_stream() -> None:
    monitor = StreamMonitor(
        {"quality": {"cusum": CUSUM}, "cost_usd": {"iqr": IQR}}, clock=lambda: T0
    )
    rng = np.random.default_rng(0)
    events: list[DriftEvent] = []
    for t in range(600):
        events += monitor.observe(
            "a", quality=rng.normal(0.8 if t < 400 else 0.4, 0.1), cost_usd=0.001
        )
        events += monitor.observe(
            "b", quality=rng.normal(0.8, 0.1), cost_usd=0.001 if t < 500 else 0.003
        )
        events += monitor.observe("c", latency_ms=900.0)  # latency not watched here
    assert [(e.model, e.stream, e.detector) for e in events] == [
        ("a", "quality", "cusum"),
        ("b", "cost_usd", "iqr"),
    ]
    first = events[0]
    assert 400 < first.n_seen <= 420 and first.time == T0
    assert json.loads(json.dumps(first.to_dict()))["time"] == "2025-01-01T00:00:00+00:00"
    assert monitor.n_seen("a", "quality") == 600 and monitor.n_seen("c", "latency_ms") == 0
    monitor.reset("a")
    assert monitor.n_seen("a", "quality") == 600  # counts survive a reset


def test_monitor_default_detectors_and_refusals() -> None:
    monitor = StreamMonitor()
    assert set(monitor.detectors["quality"]) == set(MEAN_DETECTORS)
    assert set(monitor.detectors["cost_usd"]) == set(ALL_DETECTORS)
    assert monitor.observe("a") == []  # nothing observed
    with pytest.raises(ValueError, match="unknown stream"):
        StreamMonitor({"tokens": {"cusum": CUSUM}})
    with pytest.raises(ValueError, match="at least one detector"):
        StreamMonitor({"quality": {}})


# -- alerts --------------------------------------------------------------------------------------
def event(
    model: str = "gpt-4o", stream: str = "quality", detector: str = "cusum", n: int = 512
) -> DriftEvent:
    return DriftEvent(model, stream, detector, n, 0.0, T0)


def test_alert_is_a_structured_log_record_and_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[dict[str, object]] = []
    alerter = Alerter(on_alert=seen.append)
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        alerter.handle([event(), event(n=900), event(detector="adwin")])
    records = [r for r in caplog.records if r.name == LOGGER_NAME]
    assert len(records) == 3 and records[0].levelno == logging.WARNING
    alert = records[1].alert  # type: ignore[attr-defined]
    assert json.loads(json.dumps(alert)) == {
        "kind": "drift",
        "model": "gpt-4o",
        "stream": "quality",
        "detector": "cusum",
        "n_seen": 900,
        "value": 0.0,
        "time": "2025-01-01T00:00:00+00:00",
        "count": 2,
    }
    assert alerter.counts == {("gpt-4o", "quality", "cusum"): 2, ("gpt-4o", "quality", "adwin"): 1}
    assert seen == [r.alert for r in records]  # type: ignore[attr-defined]


def test_webhook_receives_the_alert_as_json() -> None:
    received: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(204)

    client = httpx.Client(transport=httpx.MockTransport(handler))
    alerter = Alerter("http://hooks.test/drift", client=client)
    record = alerter.alert(event())
    assert len(received) == 1 and received[0].method == "POST"
    assert str(received[0].url) == "http://hooks.test/drift"
    assert json.loads(received[0].content) == record
    assert alerter.webhook_failures == 0
    alerter.close()
    assert not client.is_closed  # a client passed in belongs to the caller


@pytest.mark.parametrize("failure", ["refused", "timeout", "status 500"])
def test_a_failing_webhook_never_raises(failure: str, caplog: pytest.LogCaptureFixture) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if failure == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if failure == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(500)

    def broken_hook(record: dict[str, object]) -> None:
        raise RuntimeError("metrics down")

    alerter = Alerter(
        "http://hooks.test/drift",
        client=httpx.Client(transport=httpx.MockTransport(handler)),
        on_alert=broken_hook,
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        record = alerter.alert(event())
    assert record["count"] == 1 and alerter.webhook_failures == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("webhook failed" in r.getMessage() for r in errors)
    assert any("on_alert hook failed" in r.getMessage() for r in errors)


def test_unreachable_webhook_with_its_own_client_times_out_quietly() -> None:
    alerter = Alerter("http://127.0.0.1:9/drift", timeout_s=0.5)  # discard port: refused
    alerter.alert(event())
    assert alerter.webhook_failures == 1
    alerter.close()
    with pytest.raises(ValueError):
        Alerter(timeout_s=0)


# -- drift response ---------------------------------------------------------------------------
def trained_loop() -> tuple[LearningLoop, UCB1]:
    policy = UCB1(seed=0)
    for _ in range(100):
        policy.update("a", None, 0.9)
        policy.update("b", None, 0.5)
    return LearningLoop(policy, ["a", "b"]), policy


def test_reward_drift_discounts_the_arm_and_requests_retraining() -> None:
    loop, policy = trained_loop()
    requested: list[DriftEvent] = []
    responder = DriftResponder(loop, keep=10, on_retrain_request=requested.append)
    acted = responder.handle(
        [event("a", "quality", "cusum", 101), event("a", "reward", "adwin", 130)]
    )
    assert [e.detector for e in acted] == ["cusum"]  # the second is within the cooldown
    assert policy._stats["a"][0] == pytest.approx(10.0)
    assert policy.arm_mean("a") == pytest.approx(0.9)  # same mean, less weight
    assert policy._stats["b"][0] == pytest.approx(100.0)
    assert requested == acted == responder.retrain_requests
    # After the cooldown the same model can be acted on again.
    assert responder.handle([event("a", "quality", "cusum", 400)])


def test_cost_drift_forgets_costs_and_latency_only_alerts() -> None:
    calls: list[tuple[str, float | None, bool]] = []

    class Target:
        def reset_arm(
            self,
            arm: str,
            *,
            factor: float = 0.0,
            max_weight: float | None = None,
            costs: bool = False,
        ) -> bool:
            calls.append((arm, max_weight, costs))
            return False

    responder = DriftResponder(Target(), detectors={"cusum"})
    responder.handle(
        [
            event("a", "cost_usd", "cusum"),
            event("a", "latency_ms", "cusum"),
            event("b", "quality", "iqr"),
        ]
    )
    assert calls == [("a", 20.0, True)]  # iqr is not an acting detector here
    assert [e.stream for e in responder.retrain_requests] == ["cost_usd"]


def test_a_failing_retraining_hook_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    def hook(e: DriftEvent) -> None:
        raise ConnectionError("prefect unreachable")

    responder = DriftResponder(None, on_retrain_request=hook)
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        assert responder.handle([event()])
    assert any("on_retrain_request hook failed" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError):
        DriftResponder(keep=-1)
