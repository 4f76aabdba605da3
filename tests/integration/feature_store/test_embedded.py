"""The embedded profile end to end, on a copy of feature_repo/ in a temporary folder: apply,
push -> online read, point-in-time training sets without leakage, materialisation, and the reader's
fallbacks (store missing, locked, slow; unknown keys)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from feature_store import names, training
from feature_store import store as fs_store
from feature_store.aggregation import Observation
from feature_store.reader import OnlineFeatureReader
from feature_store.writer import FeatureWriter
from llmopt.event_log import LoggedEvent
from serving.live_features import TASK_QUALITY_24H, live_exclusions, live_penalties, live_priors

pytestmark = pytest.mark.integration

MODELS = [f"model-{i}" for i in range(11)]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    repo = fs_store.copy_repo(tmp_path_factory.mktemp("feature_repo"))
    return fs_store.apply_repo("embedded", repo)


def obs(at: datetime, model: str, quality: float, **kw: Any) -> Observation:
    return Observation(
        model=model, task_type=kw.pop("task_type", "code"), tenant=kw.pop("tenant", "acme"),
        received_at=at, decided_at=kw.pop("decided_at", at - timedelta(seconds=1)),
        quality=quality, latency_ms=kw.pop("latency_ms", 200.0),
        cost_usd=kw.pop("cost_usd", 0.001), error=kw.pop("error", False), **kw,
    )  # fmt: skip


def test_apply_registers_views_and_services(store: Any) -> None:
    views = {v.name for v in store.list_feature_views()}
    assert views == {
        names.MODEL_PERF_VIEW, names.MODEL_TASK_PERF_VIEW, names.TENANT_VIEW,
        names.SYSTEM_VIEW,
    }  # fmt: skip
    assert [v.name for v in store.list_on_demand_feature_views()] == [names.REQUEST_VIEW]
    services = {s.name for s in store.list_feature_services()}
    assert {names.ROUTER_SERVICE, names.TRAINING_SERVICE, names.REQUEST_SERVICE} <= services
    router = store.get_feature_service(names.ROUTER_SERVICE)
    assert names.ROUTER_SERVICE == "router_v2"
    assert {
        p.name: tuple(f.name for f in p.features) for p in router.feature_view_projections
    } == names.ROUTER_FEATURES  # model-keyed views only, each feature used by serving
    old = store.get_feature_service(names.ROUTER_V1_SERVICE)  # kept for a rolling deployment
    assert old.tags["deprecated"] == "true" and old.tags["superseded_by"] == names.ROUTER_SERVICE
    for view in store.list_feature_views():
        assert all(f.description for f in view.features), view.name


def test_push_then_online_read(store: Any) -> None:
    now = datetime.now(UTC)
    writer = FeatureWriter(store, max_batch=10_000)
    events = [obs(now - timedelta(seconds=60 - k), MODELS[k % 3], 0.5 + 0.1 * (k % 3))
              for k in range(30)]  # fmt: skip
    bad = obs(now, MODELS[0], 0.1)
    object.__setattr__(bad, "quality", float("nan"))  # a malformed row slipping past construction
    result = writer.add([*events, bad])
    assert result.accepted == 30
    assert len(result.rejected) == 1 and "quality must be" in result.rejected[0]
    rows = writer.flush()
    assert rows[names.MODEL_PERF_VIEW] == 3
    reader = OnlineFeatureReader(store, budget_ms=1000)
    assert reader.tenant_keyed  # not known before the service is resolved: assume it is
    got = reader.read(MODELS[:3], tenant="acme", task_type="code")
    assert not got.degraded and not got.defaulted
    assert not reader.tenant_keyed  # router_v2's views are keyed by model and task type only
    for k, model in enumerate(MODELS[:3]):
        v = got.values[model]
        assert v["model_task_performance__quality_mean_24h"] == pytest.approx(0.5 + 0.1 * k)
        assert v["model_performance__request_count_1h"] == 10
        assert v["model_task_performance__request_count_24h"] == 10
    # unknown model and tenant: defaults with the flag
    got = reader.read([MODELS[0], "brand-new-model"], tenant="nobody", task_type="code")
    assert got.defaulted == {"brand-new-model"}  # the tenant's row is not the models' concern
    assert got.values["brand-new-model"]["model_performance__request_count_1h"] == 0.0
    assert got.values[MODELS[0]]["model_performance__request_count_1h"] == 10
    reader.close()


def test_a_first_time_tenant_keeps_the_models_live_statistics_in_use(store: Any) -> None:
    """The models' own rows decide whether their values are trusted, whatever the tenant.

    ``router_v1`` also read tenant and system features: a tenant without a ``tenant_features``
    row (its first request) got defaults for them, which put every candidate in ``defaulted``,
    and ``live_exclusions``/``live_penalties``/``live_priors`` then ignored the models' own
    5-minute and 24-hour statistics for that tenant. The router's service holds model-keyed
    features only now.
    """
    now = datetime.now(UTC)
    writer = FeatureWriter(store, max_batch=10_000)
    events = [obs(now - timedelta(seconds=40 - k), "flaky", 0.8, error=k % 2 == 1)
              for k in range(20)]  # fmt: skip
    writer.add(events)
    writer.flush()
    reader = OnlineFeatureReader(store, budget_ms=1000)
    for tenant in ("acme", "first-time-tenant"):
        got = reader.read(["flaky"], tenant=tenant, task_type="code")
        assert not got.degraded and got.defaulted == set(), tenant
        assert "flaky" in live_exclusions(["flaky"], got, max_latency_ms=None), tenant
        pen, _ = live_penalties(["flaky"], got, latency_weight=0.0,
                                catalog_latency_ms=lambda m: None,
                                expected_quality=lambda m: 0.8)  # fmt: skip
        assert pen["flaky"] == pytest.approx(0.5 * 0.8), tenant
        quality = got.values["flaky"][TASK_QUALITY_24H]
        assert live_priors(["flaky"], got, arm_mean=lambda m: None) == {"flaky": quality}, tenant
    reader.close()


def test_a_task_type_new_to_a_model_keeps_its_fleet_wide_statistics_in_use(store: Any) -> None:
    """A model never served on a task type has no model x task row: no prior from it, but its
    fleet-wide error rate still leaves it out (only the features that got defaults are
    distrusted, not the whole model)."""
    now = datetime.now(UTC)
    writer = FeatureWriter(store, max_batch=10_000)
    writer.add([obs(now - timedelta(seconds=40 - k), "down", 0.0, error=True) for k in range(10)])
    writer.flush()
    reader = OnlineFeatureReader(store, budget_ms=1000)
    got = reader.read(["down"], tenant="acme", task_type="never-seen-task")
    assert not got.degraded and got.defaulted == {"down"}
    assert got.defaulted_features["down"] == {
        names.feature_ref(names.MODEL_TASK_PERF_VIEW, f)
        for f in ("quality_mean_24h", "request_count_24h")
    }
    assert "down" in live_exclusions(["down"], got, max_latency_ms=None)
    assert live_priors(["down"], got, arm_mean=lambda m: None) == {}
    reader.close()


def _logged(k: int, decided: datetime, received: datetime, quality: float) -> LoggedEvent:
    return LoggedEvent(
        feedback_id=k, decision_id=f"d{k}", decided_at=decided, received_at=received,
        tenant="pit", model="pit-model", propensity=0.5, policy_name="p", policy_version="0",
        context={"task_hints": ["math"]}, features={}, quality=quality, reward=quality,
        cost_usd=0.001, latency_ms=100.0, error_kind=None,
    )  # fmt: skip


def test_point_in_time_training_set_has_no_leakage(store: Any) -> None:
    t0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    # decision k at t0 + 60k s; its feedback arrives 45 s later; qualities 0 then, at the end, a
    # "future" burst of quality-1 feedback that no earlier decision may see.
    events = [_logged(k, t0 + timedelta(seconds=60 * k), t0 + timedelta(seconds=60 * k + 45), 0.0)
              for k in range(20)]  # fmt: skip
    future = [_logged(100 + k, t0 + timedelta(seconds=1200), t0 + timedelta(seconds=1250 + k), 1.0)
              for k in range(5)]  # fmt: skip
    training.backfill(store, sorted([*events, *future], key=lambda e: e.received_at))
    frame = training.training_set(store, training.decisions_frame(events))
    assert sorted(frame["decision_id"]) == sorted(e.decision_id for e in events)
    received = sorted(e.received_at for e in [*events, *future])
    for _, row in frame.iterrows():
        decided = row[names.TIMESTAMP].to_pydatetime()
        known = [t for t in received if t <= decided]
        count = row["model_performance__request_count_24h"]
        assert (0 if pd.isna(count) else count) == len(known), decided  # NaN: nothing known yet
        q = row["model_performance__quality_mean_24h"]
        assert pd.isna(q) or q == 0.0  # the quality-1 future never leaks
        task_count = row["model_task_performance__request_count_24h"]
        assert (0 if pd.isna(task_count) else task_count) == len(known)


def test_materialize_incremental_fills_online_store(store: Any) -> None:
    now = datetime.now(UTC)
    training.backfill(store, [obs(now - timedelta(minutes=5), "offline-only", 0.7)])
    reader = OnlineFeatureReader(store, budget_ms=1000)
    assert (
        "offline-only" in reader.read(["offline-only"], tenant="acme", task_type="code").defaulted
    )
    out = training.materialize_incremental(store=store, end_date=now)  # the scheduled job
    assert out["end_date"] == now.isoformat()
    got = reader.read(["offline-only"], tenant="acme", task_type="code")
    v = got.values["offline-only"]
    assert v["model_task_performance__quality_mean_24h"] == pytest.approx(0.7)
    assert v["model_performance__request_count_1h"] == 1
    reader.close()


@pytest.fixture
def warm_reader(store: Any) -> Iterator[OnlineFeatureReader]:
    reader = OnlineFeatureReader(store, budget_ms=3.0)
    for _ in range(20):  # warm up, and remember last-known values
        if not reader.read(MODELS[:3], tenant="acme", task_type="code").degraded:
            break
        time.sleep(0.05)
    yield reader
    reader.close()


def test_reader_serves_last_known_when_store_is_slow(
    store: Any, warm_reader: OnlineFeatureReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store.get_online_features

    def slow(**kw: Any) -> Any:
        time.sleep(0.2)
        return real(**kw)

    monkeypatch.setattr(store, "get_online_features", slow)
    started = time.perf_counter()
    got = warm_reader.read(MODELS[:3], tenant="acme", task_type="code")
    waited_ms = (time.perf_counter() - started) * 1000
    assert got.degraded and "slower than" in got.reason
    assert got.stale == set(MODELS[:3])
    assert got.values[MODELS[0]]["model_performance__request_count_1h"] == 10
    assert waited_ms < 3.0 + 20.0  # the budget, plus scheduling slack on a busy machine
    again = warm_reader.read(MODELS[:3], tenant="acme", task_type="code")  # call still running
    assert again.degraded and "still waiting" in again.reason


def test_reader_defaults_when_online_store_file_is_missing(store: Any, tmp_path: Path) -> None:
    repo = Path(str(store.config.repo_path))
    broken = fs_store.open_store("embedded", repo)
    broken.config.online_store.path = str(tmp_path / "no" / "such" / "dir" / "online.db")
    reader = OnlineFeatureReader(broken, budget_ms=3.0)
    started = time.perf_counter()
    got = reader.read(MODELS[:2], tenant="acme", task_type="code")
    assert got.degraded and got.defaulted == set(MODELS[:2])
    assert got.values[MODELS[0]]["model_performance__request_count_1h"] == 0.0
    assert (time.perf_counter() - started) * 1000 < 3.0 + 20.0
    reader.close()


def test_reader_falls_back_while_online_store_is_locked(
    store: Any, warm_reader: OnlineFeatureReader
) -> None:
    db = Path(str(store.config.repo_path)) / store.config.online_store.path
    locker = sqlite3.connect(db, timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.perf_counter()
        got = warm_reader.read(MODELS[:3], tenant="acme", task_type="code")
        assert (time.perf_counter() - started) * 1000 < 3.0 + 20.0
    finally:
        locker.rollback()
        locker.close()
    assert got.degraded
    assert got.stale == set(MODELS[:3])


def test_demo_roundtrip(tmp_path: Path) -> None:
    from feature_store.demo import demo_roundtrip  # noqa: PLC0415
    from llmopt.settings import Settings  # noqa: PLC0415

    t0 = datetime.now(UTC) - timedelta(minutes=30)
    events = [
        _logged(k, t0 + timedelta(seconds=10 * k), t0 + timedelta(seconds=10 * k + 5), 0.5)
        for k in range(50)
    ]
    summary = demo_roundtrip(events, settings=Settings(home=tmp_path / ".llmopt"))
    assert summary["accepted"] == 50 and summary["rejected"] == 0
    assert summary["online"]["pit-model"]["request_count_1h"] == 50
    assert summary["training_set"]["rows"] == 50
