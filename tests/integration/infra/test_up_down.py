"""`make up` / `make down` for real: the whole production profile as processes on free ports.

A second stack beside any running one: its own ports, infra home, databases (a prefix) and
Redis database, on the shared PostgreSQL and Redis, which ``up`` must use as they are and
``down`` must leave running. Checks each component's health endpoint, a decision and its
feedback through the BentoML service (the feedback lands in PostgreSQL's event log, the
online features come from Redis), the work pool's worker and the deployments of prefect.yaml
on the Prefect server, then that ``down`` leaves no process of the stack behind.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipelines.deployments import FLOWS
from serving.schemas import EXAMPLE_DECIDE

pytestmark = [pytest.mark.integration, pytest.mark.services, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
INFRA = ROOT / "infra"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
        try:
            return r.status, json.loads(text)
        except json.JSONDecodeError:
            return r.status, text


def script(name: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INFRA / name)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stack_pids(home: Path) -> set[int]:
    """Every process of the stack: the pid files' processes and everything below them."""
    pids = {int(p.read_text()) for p in (home / "run").glob("*.pid")}
    table = subprocess.run(
        ["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True
    ).stdout
    children: dict[int, list[int]] = {}
    for line in table.splitlines():
        pid, ppid = map(int, line.split())
        children.setdefault(ppid, []).append(pid)
    todo, seen = list(pids), set(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))  # zombie


def shared_servers_answer() -> bool:
    """The shared PostgreSQL and Redis at their usual ports still answer."""
    pg = subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], check=False)
    ping = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping"],
        capture_output=True,
        text=True,
        check=False,
    )
    return pg.returncode == 0 and ping.stdout.strip() == "PONG"


@pytest.fixture
def stack_env(postgres_url: str, redis_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment of a second stack; afterwards: down, its databases and Redis keys dropped."""
    del redis_url  # only its availability
    prefix = f"llmopt_it_{uuid.uuid4().hex[:8]}_"
    redis_db = random.randint(8, 15)  # Feast's keys of project llmopt, apart from db 0's
    env = {
        **os.environ,
        "LLMOPT_INFRA_HOME": str(tmp_path / "infra"),
        "LLMOPT_INFRA_DB_PREFIX": prefix,
        "LLMOPT_INFRA_REDIS_DB": str(redis_db),
        "LLMOPT_INFRA_MLFLOW_PORT": str(free_port()),
        "LLMOPT_INFRA_PREFECT_PORT": str(free_port()),
        "LLMOPT_INFRA_SERVING_PORT": str(free_port()),
        "LLMOPT_INFRA_WORKERS": "1",
        "LLMOPT_INFRA_TIMEOUT": "200",
    }
    try:
        yield env
    finally:
        script("down.sh", env, timeout=120)
        server = postgres_url.rpartition("/")[0]
        admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            names = conn.execute(
                sa.text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                {"p": f"{prefix}%"},
            ).scalars()
            for name in list(names):
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        import redis  # noqa: PLC0415

        r = redis.Redis(host="127.0.0.1", port=6379, db=redis_db)
        for key in r.scan_iter():
            if key.endswith(b"llmopt"):  # Feast's keys end with the project's name
                r.delete(key)


@pytest.mark.timeout(480)
def test_up_serves_learns_and_down_stops_everything(stack_env: dict[str, str]) -> None:
    env = stack_env
    home = Path(env["LLMOPT_INFRA_HOME"])
    mlflow, prefect, serving = (
        int(env[f"LLMOPT_INFRA_{c}_PORT"]) for c in ("MLFLOW", "PREFECT", "SERVING")
    )

    started = time.monotonic()
    up = script("up.sh", env, timeout=400)
    up_s = time.monotonic() - started
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-5000:]
    print(f"make up: {up_s:.0f} s")
    healthy = {line.split()[0] for line in up.stdout.splitlines() if line.split()[1:2] == ["up"]}
    assert healthy == {
        *("postgres", "redis", "mlflow", "prefect-server", "prefect-worker-1"),
        *("deployments", "feast", "serving"),
    }, up.stdout
    # the shared servers were found running: used, not started (so down leaves them alone)
    assert "PostgreSQL answers" in up.stderr and "Redis answers" in up.stderr
    assert not list((home / "run").glob("*.started"))

    # health endpoints
    assert http(f"http://127.0.0.1:{mlflow}/health") == (200, "OK")
    assert http(f"http://127.0.0.1:{prefect}/api/health") == (200, True)
    assert http(f"http://127.0.0.1:{serving}/healthz")[0] == 200
    assert http(f"http://127.0.0.1:{serving}/readyz")[0] == 200
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

    # a decision and its feedback through the service; online features from Redis
    deadline = time.monotonic() + 90
    while True:
        _, decision = http(f"http://127.0.0.1:{serving}/decide", EXAMPLE_DECIDE)
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
    assert not [p for p in (mlflow, prefect, serving) if port_open(p)]
    assert not list((home / "run").glob("*.pid"))
    assert shared_servers_answer()
    status = script("status.sh", env, timeout=60)
    assert status.returncode == 1 and "serving            DOWN" in status.stdout

    again = script("down.sh", env, timeout=60)  # idempotent
    assert again.returncode == 0
