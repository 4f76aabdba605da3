"""The production profile against the real PostgreSQL (fresh database) and Redis: apply, push ->
online read from Redis, point-in-time training set from PostgreSQL, and the reader when its own
Redis server is killed."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from feature_store import names, training
from feature_store import store as fs_store
from feature_store.aggregation import Observation
from feature_store.reader import OnlineFeatureReader
from feature_store.writer import FeatureWriter

pytestmark = [pytest.mark.integration, pytest.mark.services]

MODELS = [f"model-{i}" for i in range(11)]


def pg_env(url: str) -> dict[str, str]:
    u = sa.make_url(url)
    return {
        "LLMOPT_FEAST_PG_HOST": u.host or "127.0.0.1",
        "LLMOPT_FEAST_PG_PORT": str(u.port or 5432),
        "LLMOPT_FEAST_PG_DATABASE": u.database or "",
        "LLMOPT_FEAST_PG_USER": u.username or "postgres",
        "LLMOPT_FEAST_PG_PASSWORD": u.password or "",
    }


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fs_store.copy_repo(tmp_path_factory.mktemp("feature_repo"))


@pytest.fixture(scope="module")
def store(repo: Path, postgres_url: str, redis_url: str) -> Iterator[Any]:
    del redis_url  # only its availability: the store uses LLMOPT_FEAST_REDIS's default
    project = f"t{uuid.uuid4().hex[:8]}"  # keeps this run's keys apart in the shared Redis
    st = fs_store.apply_repo("production", repo, env=pg_env(postgres_url), project=project)
    yield st
    st.teardown()  # removes this project's keys from the shared Redis


def obs(at: datetime, model: str, quality: float) -> Observation:
    return Observation(
        model=model, task_type="code", tenant="acme", received_at=at,
        decided_at=at - timedelta(seconds=1), quality=quality, latency_ms=150.0,
        cost_usd=0.002, error=False,
    )  # fmt: skip


def test_production_apply_push_and_read(store: Any) -> None:
    assert store.config.online_store.type == "redis"
    assert {v.name for v in store.list_feature_views()} >= {names.MODEL_PERF_VIEW}
    now = datetime.now(UTC)
    writer = FeatureWriter(store)
    writer.add([obs(now - timedelta(seconds=30 - k), MODELS[k % 11], 0.6) for k in range(22)])
    writer.flush()
    reader = OnlineFeatureReader(store, budget_ms=1000)
    got = reader.read(MODELS, tenant="acme", task_type="code")
    assert not got.degraded and not got.defaulted
    assert got.values[MODELS[5]]["model_performance__request_count_1h"] == 2
    first = reader.read(MODELS, tenant="first-time-tenant", task_type="code")
    assert not first.degraded and not first.defaulted  # the tenant has no row: irrelevant
    reader.close()


def test_production_point_in_time_from_postgres(store: Any) -> None:
    t0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    events = [obs(t0 + timedelta(seconds=60 * k), "pg-model", 0.0) for k in range(10)]
    future = [obs(t0 + timedelta(seconds=2000), "pg-model", 1.0)]
    training.backfill(store, [*events, *future])
    import pandas as pd  # noqa: PLC0415

    entity = pd.DataFrame(
        {
            "decision_id": [f"d{k}" for k in range(10)],
            names.MODEL_KEY: "pg-model", names.TASK_TYPE_KEY: "code",
            names.TENANT_KEY: "acme", names.DEPLOYMENT_KEY: names.DEFAULT_DEPLOYMENT,
            names.TIMESTAMP: [e.received_at + timedelta(seconds=30) for e in events],
        }
    )  # fmt: skip
    frame = training.training_set(store, entity)
    assert len(frame) == 10
    assert list(frame["model_performance__request_count_24h"]) == list(range(1, 11))
    assert (frame["model_performance__quality_mean_24h"] == 0.0).all()  # the future never leaks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def own_redis() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    import redis  # noqa: PLC0415

    for _ in range(100):
        try:
            redis.Redis(host="127.0.0.1", port=port).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield proc, port
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_reader_under_killed_redis_returns_defaults_within_budget(
    repo: Path, postgres_url: str, own_redis: tuple[subprocess.Popen[bytes], int]
) -> None:
    proc, port = own_redis
    env = {**pg_env(postgres_url), "LLMOPT_FEAST_REDIS": f"127.0.0.1:{port}"}
    store = fs_store.apply_repo("production", repo, env=env, project=f"k{uuid.uuid4().hex[:8]}")
    writer = FeatureWriter(store, offline=False)
    now = datetime.now(UTC)
    writer.add([obs(now - timedelta(seconds=5), m, 0.9) for m in MODELS[:3]])
    writer.flush()
    reader = OnlineFeatureReader(store, budget_ms=3.0)
    for _ in range(50):
        got = reader.read(MODELS[:3], tenant="acme", task_type="code")
        if not got.degraded:
            break
        time.sleep(0.02)
    assert not got.degraded
    proc.kill()
    proc.wait()
    worst = 0.0
    for _ in range(20):
        started = time.perf_counter()
        got = reader.read([*MODELS[:3], "never-seen"], tenant="acme", task_type="code")
        worst = max(worst, (time.perf_counter() - started) * 1000)
        assert got.degraded and got.reason
        assert got.stale == set(MODELS[:3])  # last-known values
        assert got.defaulted == {"never-seen"}  # nothing known: defaults
        v = got.values[MODELS[0]]
        assert v["model_task_performance__quality_mean_24h"] == pytest.approx(0.9)
        time.sleep(0.01)
    assert worst < 3.0 + 20.0, worst  # the budget, plus scheduling slack on a shared machine
    reader.close()
