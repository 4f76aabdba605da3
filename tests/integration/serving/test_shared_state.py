"""Shared state across processes: 2 workers x 2 replicas (4 processes) hammering one tenant's
budget through Redis never overspend it; two services share one rate limit; Redis killed under
the service: decisions go on, on each worker's own state, said so, and Redis is used again once
it answers (with the outage's spend added back).

The single-process behaviours: ``tests/unit/serving/test_shared_state.py``."""

from __future__ import annotations

import multiprocessing
import random
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from llmopt.catalog import load_catalog
from llmopt.event_log import EventLog
from llmopt.schemas import Decision, Feedback, RequestContext
from serving.guards import BudgetExceededError
from serving.router import Router
from serving.shared_state import NANO, RedisBudgetLedger, redis_client
from tests.integration.serving.conftest import asgi_service
from tests.integration.serving.test_fault_redis import PrivateRedis

pytestmark = [pytest.mark.integration, pytest.mark.services]

PROCESSES = 4
"""2 workers x 2 replicas: four independent ledgers (and routers) in four processes."""
COSTS = (0.0001, 0.0002, 0.0005, 0.001)


def _run(target: Any, **params: Any) -> list[dict[str, Any]]:
    """``target(queue, start, index, params)`` in PROCESSES fresh processes; their results.

    Spawned, not forked: a fork copies the test process's locks as they are, and a child once
    hung for good in ``sqlite3.connect`` on a lock another thread of the parent held."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    start = ctx.Event()
    procs = [ctx.Process(target=target, args=(queue, start, i, params)) for i in range(PROCESSES)]
    for p in procs:
        p.start()
    start.set()  # all at once: they contend for the same budget
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    errors = [r["error"] for r in results if "error" in r]
    assert not errors, errors
    return results


def _hammer_ledger(queue: Any, start: Any, index: int, params: dict[str, Any]) -> None:
    """Like a worker: read what is left, choose a cost that fits, reserve it, sometimes settle."""
    try:
        rng = random.Random(index)
        ledger = RedisBudgetLedger(
            redis_client(params["url"]),
            per_tenant={"acme": params["budget"]},
            prefix=params["prefix"],
        )
        reserved: dict[str, float] = {}
        settled: dict[str, float] = {}
        refused = 0
        start.wait()
        while True:
            left = ledger.remaining("acme") or 0.0
            fits = [c for c in COSTS if c <= left]
            if not fits:
                break
            decision_id = f"p{index}-{len(reserved) + refused}"
            cost = rng.choice(fits)
            if not ledger.try_reserve("acme", decision_id, cost):
                refused += 1  # another process took it between the read and the reservation
                continue
            reserved[decision_id] = cost
            if rng.random() < 0.5:  # feedback: the actual cost, lower than predicted
                settled[decision_id] = round(cost * rng.uniform(0.2, 1.0), 9)
                ledger.settle(decision_id, settled[decision_id])
        queue.put({"reserved": reserved, "settled": settled, "refused": refused})
    except Exception as exc:  # reported to the test, not lost in a child's stderr
        queue.put({"error": repr(exc)})


def test_four_processes_never_overspend_one_tenant_and_settle_exactly_once(
    redis_url: str, prefix: str
) -> None:
    budget = 0.2
    results = _run(_hammer_ledger, url=redis_url, prefix=prefix, budget=budget)
    reserved = {k: v for r in results for k, v in r["reserved"].items()}
    settled = {k: v for r in results for k, v in r["settled"].items()}
    refused = sum(r["refused"] for r in results)
    ledger = RedisBudgetLedger(redis_client(redis_url), per_tenant={"acme": budget}, prefix=prefix)
    spent = ledger.spent("acme")
    # what every process committed, exactly: actual costs where settled, predicted elsewhere
    expected = sum(round(settled.get(k, v) * NANO) for k, v in reserved.items()) / NANO
    print(f"{len(reserved)} reservations, {len(settled)} settled, {refused} refused; {spent=}")
    assert spent == pytest.approx(expected, abs=len(reserved) / NANO)
    assert spent <= budget + max(COSTS)  # the bound; in fact:
    assert spent <= budget + 1e-12
    assert spent > budget - min(COSTS) - 1e-12  # and the budget was used up
    for decision_id, actual in settled.items():  # feedback again, on another worker: ignored
        ledger.settle(decision_id, actual + 1.0)
    assert ledger.spent("acme") == spent


class RandomPolicy:
    """Chooses uniformly among the models offered (within the budget left)."""

    name = "random"

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def pull(self, arm_ids: Sequence[str], context: Any = None) -> Decision:
        model = self.rng.choice(list(arm_ids))
        return Decision(model=model, propensity=1 / len(arm_ids), policy_name=self.name)

    def update(self, arm_id: str, context: Any, reward: float) -> RandomPolicy:
        return self


def _hammer_router(queue: Any, start: Any, index: int, params: dict[str, Any]) -> None:
    """A serving process: its own router and event log, the shared ledger; decides and sends
    feedback for one tenant until the budget refuses (402)."""
    try:
        rng = random.Random(index)
        ledger = RedisBudgetLedger(
            redis_client(params["url"]),
            per_tenant={"acme": params["budget"]},
            prefix=params["prefix"],
        )
        log = EventLog(f"sqlite:///{params['home']}/events{index}.db")
        router = Router(load_catalog(), log, ledger=ledger)
        router.swap(champion=(RandomPolicy(index), "random/1"))
        predicted: dict[str, float] = {}
        settled: dict[str, float] = {}
        decided_again = 0
        ctx = RequestContext(tenant="acme", prompt="Summarise the plot of Hamlet in one line.")
        router.decide(ctx.model_copy(update={"tenant": "warm-up"}))  # no budget: not counted
        start.wait()
        while True:
            try:
                routed = router.decide(ctx)
            except BudgetExceededError:
                break
            d = routed.decision
            predicted[d.decision_id] = routed.predicted_cost_usd or 0.0
            decided_again += sum("no longer fit" in n for n in d.notes)
            if rng.random() < 0.3:
                cost = round(predicted[d.decision_id] * 0.5, 9)
                router.feedback(Feedback(decision_id=d.decision_id, quality=0.8, cost_usd=cost))
                settled[d.decision_id] = cost
        queue.put({"predicted": predicted, "settled": settled, "decided_again": decided_again})
    except Exception as exc:
        queue.put({"error": repr(exc)})


def test_four_routers_in_four_processes_keep_one_tenants_budget(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    budget = 0.2
    results = _run(_hammer_router, url=redis_url, prefix=prefix, budget=budget, home=str(tmp_path))
    predicted = {k: v for r in results for k, v in r["predicted"].items()}
    settled = {k: v for r in results for k, v in r["settled"].items()}
    ledger = RedisBudgetLedger(redis_client(redis_url), per_tenant={"acme": budget}, prefix=prefix)
    spent = ledger.spent("acme")
    expected = sum(round(settled.get(k, v) * NANO) for k, v in predicted.items()) / NANO
    decided_again = sum(r["decided_again"] for r in results)
    shares = [len(r["predicted"]) for r in results]
    print(f"{shares} decisions per process, {len(settled)} settled, {decided_again} decided again")
    assert sum(1 for r in results if r["predicted"]) >= 2  # they did contend
    assert spent == pytest.approx(expected, abs=len(predicted) / NANO)
    assert spent <= budget + max(predicted.values())  # the bound; in fact:
    assert spent <= budget + 1e-12


# -- the service ------------------------------------------------------------------------------
@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.slow
def test_two_services_share_the_rate_limit_and_survive_redis_going_away(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    url = f"redis://127.0.0.1:{private_redis.port}/0"
    env = {
        "LLMOPT_SERVING_SHARED_STATE": "redis",
        "LLMOPT_REDIS_URL": url,
        "LLMOPT_SERVING_RATE_LIMIT_PER_S": "2",  # burst 4
        "LLMOPT_CLIENT_KEYS": "k1,k2",
        "LLMOPT_SERVING_MODEL_SOURCE": "fresh",
        "LLMOPT_SERVING_FEATURES": "off",
        "LLMOPT_SERVING_TENANT_BUDGETS": '{"acme": 0.5}',
    }
    k1, k2 = {"Authorization": "Bearer k1"}, {"Authorization": "Bearer k2"}
    decide = {"tenant": "acme", "prompt": "What is 2 + 2?"}
    spend_key = f"llmopt:serving:budget:{datetime.now(UTC).date().isoformat()}:acme"
    store = redis.Redis.from_url(url)
    with asgi_service(tmp_path / "a", **env) as a, asgi_service(tmp_path / "b", **env) as b:
        # one rate limit over both replicas: a burst of 4 for k1, whichever serves it
        codes = [(a, b)[i % 2].get("/unknown", headers=k1).status_code for i in range(10)]
        assert codes[:4] == [404] * 4 and codes.count(429) >= 5, codes
        # one budget: a's decision is b's spend too
        first = a.post("/decide", json=decide, headers=k2)
        assert first.status_code == 200, first.text
        predicted = first.json()["predicted_cost_usd"]
        assert int(store.get(spend_key) or 0) == round(predicted * NANO)
        second = b.post("/decide", json=decide, headers=k2).json()
        assert int(store.get(spend_key) or 0) == round(
            (predicted + second["predicted_cost_usd"]) * NANO
        )
        assert a.get("/readyz").json() == {"status": "ok", "reasons": []}

        private_redis.kill()
        during = a.post("/decide", json=decide, headers=k2)
        assert during.status_code == 200, during.text  # never a 500
        assert any(n.startswith("shared state unavailable") for n in during.json()["notes"])
        ready = a.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert any("shared state unavailable" in r for r in ready.json()["reasons"])
        assert a.get("/unknown", headers=k1).status_code in (404, 429)  # a's own bucket

        private_redis.start()  # an empty Redis: only what a spent during the outage returns
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and a.get("/readyz").json()["status"] != "ok":
            a.post("/decide", json={"tenant": "other", "prompt": "hi"}, headers=k2)
            time.sleep(0.5)
        assert a.get("/readyz").json() == {"status": "ok", "reasons": []}
        a.post("/decide", json=decide, headers=k2)  # a budget call: the outage's spend first
        spent = int(store.get(spend_key) or 0) / NANO
        assert spent >= during.json()["predicted_cost_usd"] - 1e-9
    store.close()
