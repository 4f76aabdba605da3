"""Two replicas of the decision service, as ``make up REPLICAS=2`` runs them: separate BentoML
processes on their own ports, one PostgreSQL event log (a fresh database of the test's own on
the shared server), the shared serving state in the shared Redis (a database number of the
test's own among 8-15, as the stack tests; tenants of the test's own), one ``LLMOPT_HOME`` and a
``BENTOML_HOME`` each (what infra/up.sh gives them).

Only the two services are started (not MLflow, Prefect and Feast, which ``make up`` adds and
``test_up_down.py`` covers): a fresh policy, no online features.

- Decide on one replica, feedback on the other (and the reverse): every feedback is stored
  (the other replica finds the decision in the shared log), and the same feedback sent again to
  the deciding replica is a ``duplicate``; the event log then holds each acknowledged feedback
  exactly once: 0 lost, 0 duplicated.
- A tenant with a daily budget, hammered by four threads alternating between the replicas,
  each feedback reporting the call's cost to the other replica: every request ends 200 or 402,
  the spend in Redis is exactly the sum of the costs reported, and it never exceeds the budget
  by more than one request's predicted cost (the issue's bound; the atomic reservation in fact
  keeps it within the budget).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
import sqlalchemy as sa

from llmopt.app.processes import free_port, stop_group
from llmopt.event_log import EventLog
from serving.shared_state import NANO, PREFIX, RedisBudgetLedger, redis_client

pytestmark = [pytest.mark.integration, pytest.mark.services, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
RUN = uuid.uuid4().hex[:8]
FREE = f"replicas-{RUN}"
"""A tenant without a budget (cross-replica feedback)."""
CAPPED = f"replicas-capped-{RUN}"
"""A tenant with a daily budget (the shared ledger)."""
BUDGET_USD = 0.02
N_CROSS = 40
"""Decide + feedback round trips of the cross-replica part."""
THREADS = 4


@dataclass
class Replica:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def events_url(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database of this test's own on the shared server (dropped after),
    its schema created once before the replicas start (as ``make up`` runs ``llmopt db
    upgrade`` first)."""
    server = postgres_url.rpartition("/")[0]
    name = f"llmopt_replicas_{RUN}"
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = f"{server}/{name}"
    EventLog(url).close()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def shared_redis(redis_url: str) -> Iterator[str]:
    """The shared Redis, in a database number among 8-15; afterwards the keys of this test's
    tenants (their spend, and reservations never settled) are deleted. The circuit breaker's
    per-model outcome lists stay (expiring within a day): another test may share them."""
    db = random.randint(8, 15)
    url = redis_url.rpartition("/")[0] + f"/{db}"
    yield url
    client = redis.Redis.from_url(url)
    ours = [k for t in (FREE, CAPPED) for k in client.scan_iter(match=f"{PREFIX}budget:*:{t}")]
    for key in client.scan_iter(match=f"{PREFIX}reservation:*"):
        held: bytes | None = client.get(key)  # type: ignore[assignment]
        if held is not None and held.split(b" ", 1)[-1] in ours:
            client.delete(key)
    if ours:
        client.delete(*ours)
    client.close()


def tree(pid: int) -> list[psutil.Process]:
    """A process and everything below it (BentoML's workers leave its process group)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def replicas(events_url: str, shared_redis: str, tmp_path: Path) -> Iterator[list[Replica]]:
    """Two ``bentoml serve`` processes on free ports, started together, ready; stopped after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMOPT_", "BENTOML_"))}
    env.update(
        {
            "LLMOPT_HOME": str(tmp_path / "home"),  # shared, as make up's replicas
            "LLMOPT_DATABASE_URL": events_url,
            "LLMOPT_REDIS_URL": shared_redis,
            "LLMOPT_SERVING_SHARED_STATE": "redis",
            "LLMOPT_SERVING_SYNC_LOG_S": "1",
            "LLMOPT_SERVING_MODEL_SOURCE": "fresh",
            "LLMOPT_SERVING_POLL_S": "0",
            "LLMOPT_SERVING_FEATURES": "off",
            "LLMOPT_SERVING_RATE_LIMIT_PER_S": "0",
            "LLMOPT_SERVING_TENANT_BUDGETS": f'{{"{CAPPED}": {BUDGET_USD}}}',
            "LLMOPT_RETRAIN_DEPLOYMENT": "",
            "BENTOML_DO_NOT_TRACK": "True",
        }
    )
    started: list[Replica] = []
    try:
        for name in ("a", "b"):
            port = free_port()
            log = tmp_path / f"{name}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [str(BIN / "bentoml"), "serve", "serving.service:DecisionService"]
                    + ["--host", "127.0.0.1", "--port", str(port)],
                    cwd=ROOT,
                    env={**env, "BENTOML_HOME": str(tmp_path / f"bentoml-{name}")},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            started.append(Replica(f"http://127.0.0.1:{port}", proc, log))
        deadline = time.monotonic() + 150
        for r in started:
            while True:
                try:
                    if httpx.get(f"{r.url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if r.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{r.url} did not start:\n{r.log.read_text()[-3000:]}")
                time.sleep(0.3)
        yield started
    finally:
        procs = [p for r in started for p in tree(r.proc.pid)]
        for r in started:
            stop_group(r.proc, timeout_s=30)
        for p in procs:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                p.kill()


def feedback_rows(events_url: str, decision_ids: list[str]) -> Counter[str]:
    """Rows of the event log's feedback table per decision id."""
    engine = sa.create_engine(events_url)
    query = sa.text(
        "SELECT decision_id, count(*) FROM feedback WHERE decision_id IN :ids GROUP BY decision_id"
    ).bindparams(sa.bindparam("ids", expanding=True))
    with engine.connect() as conn:
        rows = conn.execute(query, {"ids": decision_ids}).all()
    engine.dispose()
    return Counter({str(r[0]): int(r[1]) for r in rows})


def hammer_budget(urls: list[str], index: int, out: list[dict[str, Any]]) -> None:
    """One client thread: decide on replica ``index + k`` (alternating), report the predicted
    cost as the call's cost in the feedback to the other replica, until the budget says 402."""
    clients = [httpx.Client(base_url=u, timeout=30) for u in urls]
    k = index
    try:
        while True:
            at, to = clients[k % 2], clients[(k + 1) % 2]
            k += 1
            r = at.post("/decide", json={"tenant": CAPPED, "prompt": f"Summarise report {k}."})
            if r.status_code == 402:
                out.append({"status": 402})
                return
            assert r.status_code == 200, r.text
            d = r.json()
            cost = d["predicted_cost_usd"]
            body = {"decision_id": d["decision_id"], "quality": 0.5, "cost_usd": cost}
            f = to.post("/feedback", json=body)
            stored = f.json().get("status")
            out.append(
                {"status": 200, "feedback": f.status_code, "stored": stored, **body, "cost": cost}
            )
    except Exception as exc:  # the test reports it
        out.append({"status": "error", "error": repr(exc)})
    finally:
        for c in clients:
            c.close()


@pytest.mark.timeout(300)
def test_two_replicas_share_the_event_log_and_one_budget(
    replicas: list[Replica], events_url: str, shared_redis: str
) -> None:
    a, b = (r.url for r in replicas)

    # 1. decide on one replica, feedback on the other; again on the first: a duplicate
    sent: dict[str, str] = {}
    statuses: Counter[str] = Counter()
    with httpx.Client(timeout=30) as http:
        for i in range(N_CROSS):
            decide, other = (a, b) if i % 2 == 0 else (b, a)
            r = http.post(f"{decide}/decide", json={"tenant": FREE, "prompt": f"What is {i}?"})
            assert r.status_code == 200, r.text
            decision_id = r.json()["decision_id"]
            body = {"decision_id": decision_id, "quality": (i % 10) / 10}
            f = http.post(f"{other}/feedback", json=body)
            assert f.status_code == 200, f.text
            statuses[f"other replica: {f.json()['status']}"] += 1
            again = http.post(f"{decide}/feedback", json=body)
            assert again.status_code == 200, again.text
            statuses[f"again, deciding replica: {again.json()['status']}"] += 1
            sent[decision_id] = decide
    rows = feedback_rows(events_url, list(sent))
    lost = [d for d in sent if rows[d] == 0]
    duplicated = sum(n - 1 for n in rows.values() if n > 1)
    print(
        f"\ncross-replica feedback: {len(sent)} decisions ({Counter(sent.values())}), answers "
        f"{dict(statuses)}; event log: {sum(rows.values())} rows, {len(lost)} lost, "
        f"{duplicated} duplicated"
    )
    assert statuses == {
        "other replica: stored": N_CROSS,
        "again, deciding replica: duplicate": N_CROSS,
    }
    assert not lost and duplicated == 0 and sum(rows.values()) == N_CROSS

    # 2. one tenant's budget, four threads alternating between the replicas
    results: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=hammer_budget, args=([a, b], i, results)) for i in range(THREADS)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    elapsed = time.monotonic() - started
    errors = [r["error"] for r in results if r["status"] == "error"]
    assert not errors, errors
    served = [r for r in results if r["status"] == 200]
    assert sum(r["status"] == 402 for r in results) == THREADS  # every thread ended on a 402
    assert {(r["feedback"], r["stored"]) for r in served} == {(200, "stored")}
    ledger = RedisBudgetLedger(redis_client(shared_redis), per_tenant={CAPPED: BUDGET_USD})
    spent = ledger.spent(CAPPED)
    reported = sum(round(r["cost"] * NANO) for r in served) / NANO
    biggest = max(r["cost"] for r in served)
    rows = feedback_rows(events_url, [r["decision_id"] for r in served])
    print(
        f"budget {BUDGET_USD} USD: {len(served)} decisions served in {elapsed:.1f} s by "
        f"{THREADS} threads over 2 replicas, then 402; spent {spent:.9f} USD (reported "
        f"{reported:.9f}), overshoot {spent - BUDGET_USD:+.9f} USD, biggest predicted cost "
        f"{biggest:.9f}; event log: {sum(rows.values())} feedback rows for {len(served)}"
    )
    assert len(served) >= 20  # the budget was shared out over many requests
    assert spent == pytest.approx(reported, abs=len(served) / NANO)  # settled exactly once each
    assert spent <= BUDGET_USD + biggest  # the bound; in fact:
    assert spent <= BUDGET_USD + 1e-9
    assert len(rows) == len(served) and set(rows.values()) == {1}
