"""The incremental-training flow killed with SIGKILL (a real process), then rerun: exactly once.

A separate interpreter runs the ``incremental-training`` flow (against this session's Prefect
test API) on an event log of tens of thousands of feedback events, in small batches. The test
watches the checkpoint table and kills the process with SIGKILL once the checkpoint shows
progress, while it is still learning batches; the rerun (this process) must resume after the
checkpoint's cursor, and the version it registers must have learned every feedback exactly
once: the same state as an uninterrupted run over the same log.

Second fault: the process is killed after its last checkpoint but before the MLflow
registration (the child stalls in ``log_policy_version`` so the kill lands there); the rerun
has no new feedback to learn, yet must still register what the killed run learned.

Embedded profile (SQLite) and production (a fresh PostgreSQL database).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from llmopt.event_log import EventLog, decisions, feedback
from llmopt.settings import Settings, get_settings
from models.kinds import RECOMMENDED, make_policy
from models.state import Stateful
from pipelines.checkpoint import Checkpoint, CheckpointStore
from pipelines.incremental_training import incremental_training
from pipelines.tasks import INCREMENTAL_CHECKPOINT
from pipelines.training import incremental_update
from registry import mlflow_registry as registry

from ..conftest import ARMS, QUALITY

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.usefixtures("prefect_harness"),
]

REPO = Path(__file__).resolve().parents[3]
N_EVENTS = 20_000
BATCH = 100  # 200 checkpoints: the kill lands between (or inside) batches, seconds before the end

RUN_FLOW = """
import sys
from pipelines.incremental_training import incremental_training
incremental_training(batch_size=int(sys.argv[1]))
"""

# The same flow, but the registration announces itself and stalls, so that the kill lands
# after the last checkpoint and before any version exists.
RUN_FLOW_STALL_AT_REGISTRATION = """
import sys, time
from pathlib import Path
from registry import mlflow_registry as registry

def stall(*args, **kwargs):
    Path(sys.argv[2]).write_text("registering")
    time.sleep(600)

registry.log_policy_version = stall
from pipelines.incremental_training import incremental_training
incremental_training(batch_size=int(sys.argv[1]))
"""


@pytest.fixture(params=["embedded", pytest.param("postgres", marks=pytest.mark.services)])
def profile(
    request: pytest.FixtureRequest, env: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """The env's settings; for ``postgres`` the event log is a fresh PostgreSQL database."""
    if request.param == "embedded":
        yield env
        return
    server = request.getfixturevalue("postgres_url").rpartition("/")[0]
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    name = f"llmopt_killed_flow_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    monkeypatch.setenv("LLMOPT_DATABASE_URL", f"{server}/{name}")
    get_settings.cache_clear()
    try:
        yield get_settings()
    finally:
        get_settings.cache_clear()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def bulk_fill(url: str, n: int, *, seed: int = 0) -> None:
    """``n`` decisions of a uniform router over ``ARMS`` and their feedback, bulk-inserted."""
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    dec_rows, fb_rows = [], []
    for _ in range(n):
        code = float(rng.random() < 0.5)
        model = ARMS[int(rng.integers(len(ARMS)))]
        quality = float(np.clip(QUALITY[model][0 if code else 1] + rng.normal(0, 0.1), 0, 1))
        did = uuid.uuid4().hex
        dec_rows.append(
            {
                "decision_id": did,
                "created_at": now,
                "tenant": "t",
                "model": model,
                "parameters": {},
                "propensity": 1 / len(ARMS),
                "policy_name": "uniform",
                "policy_version": "0",
                "scores": dict.fromkeys(ARMS, 0.0),
                "context": {"tenant": "t"},
                "features": {"bias": 1.0, "code": code},
            }
        )
        fb_rows.append(
            {
                "decision_id": did,
                "received_at": now,
                "quality": quality,
                "reward": quality - 0.01,
                "cost_usd": 0.0005,
                "payload": {},
                "payload_sha256": "",
            }
        )
    log = EventLog(url)
    with log.engine.begin() as conn:
        conn.execute(decisions.insert(), dec_rows)
        conn.execute(feedback.insert(), fb_rows)
    if log.engine.dialect.name == "postgresql":
        # What autovacuum does within a minute of a bulk load; without statistics the planner
        # joins the whole log for every batch (~70 ms per batch of 100 at 30,000 events).
        with log.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE decisions, feedback"))
    log.close()


def feedback_ids(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(feedback.c.feedback_id).order_by(feedback.c.feedback_id))
        return [int(r[0]) for r in rows]


def start_flow(script: str, tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """The flow in a new interpreter, on this session's Prefect test API and the env's stores."""
    import prefect.settings  # noqa: PLC0415

    api_url = prefect.settings.PREFECT_API_URL.value()
    assert api_url, "the Prefect test harness is not running"
    out = (tmp_path / "flow-process.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env={**os.environ, "PREFECT_API_URL": str(api_url)},
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def wait_for(
    proc: subprocess.Popen[bytes], tmp_path: Path, done: Callable[[], bool], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        log = (tmp_path / "flow-process.log").read_text(errors="replace")[-3000:]
        assert proc.poll() is None, f"the flow process ended before the kill:\n{log}"
        assert time.monotonic() < deadline, f"no progress in {timeout_s} s:\n{log}"
        time.sleep(0.01)


def kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def assert_consistent(cp: Checkpoint, ids: list[int]) -> None:
    """The checkpoint's state has learned exactly the feedback up to its cursor."""
    learned = sum(1 for i in ids if i <= cp.last_feedback_id)
    assert cp.n_events == learned
    assert Stateful.from_dict(cp.state).n_updates == learned


def uninterrupted(log: EventLog) -> dict[str, object]:
    """The state one run without a fault reaches on the same log (its own checkpoint)."""
    result = incremental_update(
        log,
        CheckpointStore(log.engine),
        name="uninterrupted",
        initial=lambda: (make_policy(RECOMMENDED, seed=0), 0, 0),
        batch_size=BATCH,
    )
    return result.policy.to_dict()


def test_flow_killed_midway_then_rerun_learns_every_feedback_once(
    profile: Settings, tmp_path: Path
) -> None:
    url = profile.event_log_url
    t0 = time.monotonic()
    bulk_fill(url, N_EVENTS)
    t_filled = time.monotonic()
    log = EventLog(url)
    store = CheckpointStore(log.engine)
    ids = feedback_ids(log.engine)
    total, top = len(ids), ids[-1]
    assert total == N_EVENTS

    proc = start_flow(RUN_FLOW, tmp_path, str(BATCH))
    progress: list[int] = []

    def learning_batches() -> bool:  # a quarter in, well before the end
        cp = store.load(INCREMENTAL_CHECKPOINT)
        progress.append(cp.n_events if cp else 0)
        return cp is not None and cp.n_events >= total // 4

    wait_for(proc, tmp_path, learning_batches, timeout_s=120)
    t_kill = time.monotonic()
    kill(proc)
    killed = store.load(INCREMENTAL_CHECKPOINT)
    assert killed is not None
    assert 0 < killed.n_events < total  # midway: batches were left
    assert_consistent(killed, ids)
    client = registry.configure(profile)
    assert registry.version_for_alias(client, "dev") is None  # killed before registering

    t_rerun = time.monotonic()
    out = incremental_training(batch_size=BATCH)
    t_done = time.monotonic()
    assert out["data_window"] == f"feedback ({killed.last_feedback_id}, {top}]"
    assert out["n_events"] == total - killed.n_events  # only what the killed run had not saved
    assert out["n_total"] == total and out["last_feedback_id"] == top
    assert out["registration_reason"] == "min_events"  # 20,000 events since no version

    final = store.load(INCREMENTAL_CHECKPOINT)
    assert final is not None and final.last_feedback_id == top
    assert_consistent(final, ids)  # every feedback id, once

    version, policy = registry.load_policy(client, "dev")
    assert version == out["version"]
    assert policy.n_updates == total  # nothing lost, nothing learned twice
    mv = client.get_model_version(registry.MODEL_NAME, version)
    assert mv.tags["n_events"] == str(total) and mv.tags["last_feedback_id"] == str(top)
    assert mv.run_id and client.get_run(mv.run_id).data.metrics["n_total"] == total

    assert policy.to_dict() == uninterrupted(log)  # same state as without the fault
    log.close()
    print(
        f"\n{total} events in {t_filled - t0:.1f} s; killed after {t_kill - t_filled:.1f} s at "
        f"{killed.n_events}/{total} learned; rerun learned {out['n_events']} and registered "
        f"version {version} in {t_done - t_rerun:.1f} s; uninterrupted run "
        f"{time.monotonic() - t_done:.1f} s"
    )


def test_flow_killed_before_registering_then_rerun_registers_what_it_learned(
    env: Settings, tmp_path: Path
) -> None:
    n = 2_000
    bulk_fill(env.event_log_url, n, seed=1)
    log = EventLog(env.event_log_url)
    store = CheckpointStore(log.engine)
    ids = feedback_ids(log.engine)
    marker = tmp_path / "registering"

    proc = start_flow(RUN_FLOW_STALL_AT_REGISTRATION, tmp_path, "500", str(marker))
    wait_for(proc, tmp_path, marker.exists, timeout_s=120)
    kill(proc)
    cp = store.load(INCREMENTAL_CHECKPOINT)
    assert cp is not None and cp.last_feedback_id == ids[-1]  # learned all, registered nothing
    assert_consistent(cp, ids)
    client = registry.configure(env)
    assert registry.version_for_alias(client, "dev") is None

    out = incremental_training(batch_size=500)
    assert out["n_events"] == 0  # nothing new to learn...
    assert out["version"] is not None  # ...but what the killed run learned is registered
    assert out["n_new_since_version"] == n and out["registration_reason"] == "min_events"
    version, policy = registry.load_policy(client, "dev")
    assert version == out["version"] and policy.n_updates == n
    assert client.get_model_version(registry.MODEL_NAME, version).tags["n_events"] == str(n)
    assert policy.to_dict() == uninterrupted(log)

    assert incremental_training(batch_size=500)["version"] is None  # now nothing to register
    log.close()
