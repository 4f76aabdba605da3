"""`make up` / `make down` for real: the whole production profile as processes on free ports.

A second stack beside any running one: its own ports, infra home, databases (a prefix) and
Redis database, on the shared PostgreSQL and Redis, which ``up`` must use as they are and
``down`` must leave running; the decision service as two replicas (``make up REPLICAS=2``) on
consecutive ports. Checks each component's health endpoint, a decision on one replica and its
feedback through the other (the feedback lands in PostgreSQL's event log, the online features
come from Redis, the serving state is shared in Redis), the work pool's worker and the
deployments of prefect.yaml on the Prefect server, then that ``down`` leaves no process of the
stack behind.
"""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipelines.deployments import FLOWS
from serving.schemas import EXAMPLE_DECIDE

from .conftest import (
    alive,
    http,
    port_open,
    script,
    shared_servers_answer,
    stack_pids,
)

pytestmark = [pytest.mark.integration, pytest.mark.services, pytest.mark.slow]


def free_port_pair() -> int:
    """A port free on 127.0.0.1 whose successor is free too (replicas 1 and 2), below Linux's
    ephemeral range (32768-60999): replica 2 binds ~40 s after the pick, and a port from
    that range had meanwhile gone to an outgoing connection of the stack starting up (CI:
    serving-2 "Address already in use")."""
    rng = random.Random()
    while True:
        port = rng.randrange(20_000, 32_000)
        if _bindable(port) and _bindable(port + 1):
            return port


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return not port_open(port)


@pytest.mark.timeout(480)
def test_up_serves_learns_and_down_stops_everything(stack_env: dict[str, str]) -> None:
    env = stack_env
    env["LLMOPT_INFRA_REPLICAS"] = "2"  # make up REPLICAS=2
    env["LLMOPT_INFRA_SERVING_PORT"] = str(free_port_pair())
    home = Path(env["LLMOPT_INFRA_HOME"])
    mlflow, prefect, serving = (
        int(env[f"LLMOPT_INFRA_{c}_PORT"]) for c in ("MLFLOW", "PREFECT", "SERVING")
    )
    serving_2 = serving + 1

    started = time.monotonic()
    up = script("up.sh", env, timeout=400)
    up_s = time.monotonic() - started
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-5000:]
    print(f"make up: {up_s:.0f} s")
    healthy = {line.split()[0] for line in up.stdout.splitlines() if line.split()[1:2] == ["up"]}
    assert healthy == {
        *("postgres", "redis", "mlflow", "prefect-server", "prefect-worker-1"),
        *("deployments", "feast", "serving", "serving-2"),
    }, up.stdout
    # the shared servers were found running: used, not started (so down leaves them alone)
    assert "PostgreSQL answers" in up.stderr and "Redis answers" in up.stderr
    assert not list((home / "run").glob("*.started"))

    # health endpoints
    assert http(f"http://127.0.0.1:{mlflow}/health") == (200, "OK")
    assert http(f"http://127.0.0.1:{prefect}/api/health") == (200, True)
    for port in (serving, serving_2):
        assert http(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert http(f"http://127.0.0.1:{port}/readyz") == (200, {"status": "ok", "reasons": []})
    assert (home / "bentoml-2").is_dir()  # its own BentoML home (Prometheus folder)
    assert "LLMOPT_SERVING_SHARED_STATE='redis'" in (home / "env.sh").read_text()
    status, models = http(
        f"http://127.0.0.1:{mlflow}/api/2.0/mlflow/registered-models/search?max_results=10"
    )
    assert status == 200 and isinstance(models, dict)

    # Prefect: the pool's worker is online, prefect.yaml's deployments are registered
    api = f"http://127.0.0.1:{prefect}/api"
    _, workers = http(f"{api}/work_pools/llmopt/workers/filter", {})
    assert [w["status"] for w in workers if w["name"] == "llmopt-worker-1"] == ["ONLINE"]
    _, deployments = http(f"{api}/deployments/filter", {})
    assert {d["name"] for d in deployments} == set(FLOWS)
    assert all(d["work_pool_name"] == "llmopt" and d["schedules"] for d in deployments)

    # a decision on replica 2 and its feedback through replica 1; online features from Redis
    deadline = time.monotonic() + 90
    while True:
        _, decision = http(f"http://127.0.0.1:{serving_2}/decide", EXAMPLE_DECIDE)
        if decision["features"]["state"] == "open" or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert decision["features"]["state"] == "open", decision["features"]
    status, fb = http(
        f"http://127.0.0.1:{serving}/feedback",
        {"decision_id": decision["decision_id"], "quality": 0.8},
    )
    assert status == 200 and fb["status"] == "stored"
    events = sa.create_engine(
        f"postgresql+psycopg://postgres@127.0.0.1:5432/{env['LLMOPT_INFRA_DB_PREFIX']}llmopt"
    )
    with events.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT quality FROM feedback WHERE decision_id = :d"),
            {"d": decision["decision_id"]},
        ).scalar_one()
    events.dispose()
    assert stored == 0.8

    assert script("status.sh", env, timeout=60).returncode == 0

    # down: every process of the stack is gone, the shared servers still answer
    pids = stack_pids(home)
    assert len(pids) >= 4
    started = time.monotonic()
    down = script("down.sh", env, timeout=180)
    print(f"make down: {time.monotonic() - started:.0f} s")
    assert down.returncode == 0, down.stderr[-3000:]
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in pids if alive(p)]
    assert not [p for p in (mlflow, prefect, serving, serving_2) if port_open(p)]
    assert not list((home / "run").glob("*.pid"))
    assert shared_servers_answer()
    status = script("status.sh", env, timeout=60)
    assert status.returncode == 1 and "serving            DOWN" in status.stdout
    assert "serving-2          DOWN" in status.stdout  # the replicas the last up started

    again = script("down.sh", env, timeout=60)  # idempotent
    assert again.returncode == 0
