"""Windowed aggregation: windows, quantiles, malformed rows, tenant and system features."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from feature_store import names
from feature_store.aggregation import (
    FeedbackAggregator,
    MalformedEventError,
    Observation,
    aggregate_rows,
)
from feature_store.request_view import request_feature_columns, transform
from llmopt.event_log import LoggedEvent
from llmopt.features import request_features

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def obs(seconds: float, **kw: object) -> Observation:
    base: dict[str, object] = {
        "model": "m",
        "task_type": "code",
        "tenant": "acme",
        "received_at": T0 + timedelta(seconds=seconds),
        "decided_at": T0 + timedelta(seconds=seconds - 2),
        "quality": 1.0,
        "latency_ms": 100.0,
        "cost_usd": 0.01,
        "error": False,
    }
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def model_row(agg: FeedbackAggregator) -> dict[str, object]:
    return agg.emit()[names.MODEL_PERF_VIEW][0]


def test_windows_expire_old_events() -> None:
    agg = FeedbackAggregator()
    agg.update(obs(0, quality=0.0))
    agg.update(obs(400, quality=1.0))  # the first event left the 5-minute window
    row = model_row(agg)
    assert row["request_count_5m"] == 1
    assert row["quality_mean_5m"] == 1.0
    assert row["request_count_1h"] == 2
    assert row["quality_mean_1h"] == 0.5
    assert row["event_timestamp"] == T0 + timedelta(seconds=400)
    agg.update(obs(2 * 86_400, quality=0.25))  # two days later: only itself in every window
    row = model_row(agg)
    assert row["request_count_24h"] == 1
    assert row["quality_mean_24h"] == 0.25


def test_rates_and_cost() -> None:
    agg = FeedbackAggregator()
    agg.update(obs(1, quality=0.9, cost_usd=0.02))
    agg.update(obs(2, quality=0.2, cost_usd=0.04))
    agg.update(obs(3, quality=0.0, error=True, cost_usd=None, latency_ms=None))
    row = model_row(agg)
    assert row["success_rate_5m"] == pytest.approx(1 / 3)
    assert row["error_rate_5m"] == pytest.approx(1 / 3)
    assert row["cost_per_request_usd_5m"] == pytest.approx(0.03)
    assert row["quality_mean_5m"] == pytest.approx(1.1 / 3)


def test_latency_quantiles_within_one_percent() -> None:
    rng = np.random.default_rng(0)
    lat = rng.lognormal(mean=6.5, sigma=0.6, size=5000)
    agg = FeedbackAggregator()
    for k, v in enumerate(lat):
        agg.update(obs(k * 0.05, latency_ms=float(v)))
    row = model_row(agg)
    for q, name in ((50, "latency_p50_ms_5m"), (95, "latency_p95_ms_5m")):
        exact = float(np.percentile(lat, q))
        assert abs(float(row[name]) / exact - 1) < 0.015, (name, row[name], exact)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("quality", float("nan"), "quality must be a number in [0, 1]"),
        ("quality", 1.5, "quality must be a number in [0, 1]"),
        ("latency_ms", -3.0, "latency_ms must be a finite number >= 0"),
        ("cost_usd", float("inf"), "cost_usd must be a finite number >= 0"),
        ("model", "", "model must be a non-empty string"),
        ("received_at", datetime(2025, 1, 1), "timezone-aware"),  # noqa: DTZ001 - the bad row
    ],
)
def test_malformed_rows_rejected_without_poisoning(field: str, value: object, message: str) -> None:
    agg = FeedbackAggregator()
    agg.update(obs(1, quality=0.8))
    before = model_row(agg)
    with pytest.raises(MalformedEventError, match=message.replace("[", r"\[").replace("]", r"\]")):
        agg.update(replace(obs(2), **{field: value}))
    agg.update(obs(2, quality=0.8))  # the window still works and saw only the good events
    after = model_row(agg)
    assert after["request_count_5m"] == 2
    assert after["quality_mean_5m"] == pytest.approx(0.8)
    assert before["quality_mean_5m"] == pytest.approx(0.8)


def test_wrong_type_rejected() -> None:
    with pytest.raises(MalformedEventError, match="expected an Observation"):
        FeedbackAggregator().update({"model": "m"})  # type: ignore[arg-type]


def test_tenant_and_system_features() -> None:
    agg = FeedbackAggregator({"acme": 1.0})
    for k in range(60):
        agg.update(obs(k, cost_usd=0.01, willingness_to_pay=0.2, error=k % 10 == 0))
    rows = agg.emit()
    tenant = rows[names.TENANT_VIEW][0]
    assert tenant["has_budget"] == 1.0
    assert tenant["spend_today_usd"] == pytest.approx(0.6)
    assert tenant["budget_left_usd"] == pytest.approx(0.4)
    assert tenant["willingness_to_pay"] == 0.2
    system = rows[names.SYSTEM_VIEW][0]
    assert system["load_rps_1m"] == pytest.approx(1.0)
    assert system["feedback_delay_s_5m"] == pytest.approx(2.0)
    assert system["queue_depth"] == pytest.approx(2.0)  # Little's law: 1 req/s x 2 s
    assert system["error_rate_5m"] == pytest.approx(0.1)


def test_emit_only_dirty_keys_and_columns_match_catalog() -> None:
    agg = FeedbackAggregator()
    agg.update(obs(1, model="a"))
    agg.update(obs(2, model="b", task_type="math"))
    rows = agg.emit()
    for view, view_rows in rows.items():
        for row in view_rows:
            assert list(row) == names.view_columns(view)
    agg.update(obs(3, model="a"))
    assert [r["model"] for r in agg.emit()[names.MODEL_PERF_VIEW]] == ["a"]


def test_aggregate_rows_emits_per_interval_and_is_point_in_time() -> None:
    events = [obs(k * 3.0, quality=random.Random(k).random()) for k in range(40)]
    rows = aggregate_rows(events, emit_every=timedelta(seconds=30))[names.MODEL_PERF_VIEW]
    assert len(rows) == 4
    for row in rows:
        seen = [e for e in events if e.received_at <= row["event_timestamp"]]
        assert row["request_count_5m"] == len(seen)


def test_from_logged_event_derives_task_type() -> None:
    e = LoggedEvent(
        feedback_id=1, decision_id="d", decided_at=T0, received_at=T0 + timedelta(seconds=1),
        tenant="acme", model="m", propensity=0.5, policy_name="p", policy_version="0",
        context={"task_hints": ["Math"], "willingness_to_pay": 0.1}, features={}, quality=0.5,
        reward=0.4, cost_usd=0.001, latency_ms=10.0, error_kind=None,
    )  # fmt: skip
    o = Observation.from_logged(e)
    assert (o.task_type, o.willingness_to_pay, o.event_id) == ("math", 0.1, "d")


def test_request_view_is_request_features() -> None:
    prompts = ["How do I sort a list in Python?", "Solve 2x + 3 = 7", None]
    hints = [["code"], ["math"], []]
    out = transform({"prompt": prompts, "task_hints": hints})
    for i, (p, h) in enumerate(zip(prompts, hints, strict=True)):
        expected = request_features(p, task_hints=h)
        assert {n: out[n][i] for n in request_feature_columns()} == expected
