"""Keys' own limits (issue 18, ``LLMOPT_CLIENT_KEY_LIMITS``) through the ASGI app in process
(``Service.to_asgi()`` + a TestClient): a key with a tiny daily budget gets cheaper models, then
402 on ``/decide``, ``/decide_batch`` and the gateway, while another key of the same tenant still
decides; feedback settles its spend; a key with its own rate gets 429 at that rate while another
does not; with shared state on Redis, two services sharing one key's budget never exceed it.

The setting's parsing and the router's reservations: ``tests/unit/serving/test_key_limits.py``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from serving.http_guard import key_digest
from serving.shared_state import NANO
from tests.integration.serving.conftest import asgi_service

pytestmark = pytest.mark.integration

TINY, FREE, SLOW = "tiny-key", "free-key", "slow-key"
BUDGET = 0.002
"""TINY's daily budget in USD: below gpt-4o's predicted cost for the prompt (0.0026 USD), above
the cheaper models'; the tenant's own budget (1 USD) is far from reached."""
PROMPT = "What is 2 + 2?"
ASK = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def keyed_env(**extra: str) -> dict[str, str]:
    return {
        "LLMOPT_CLIENT_KEYS": f"{TINY},{FREE},sha256:{key_digest(SLOW)}",
        "LLMOPT_CLIENT_KEY_TENANTS": json.dumps({TINY: ["acme"], FREE: ["acme"], SLOW: ["*"]}),
        "LLMOPT_CLIENT_KEY_LIMITS": json.dumps(
            {
                TINY: {"daily_budget_usd": BUDGET},
                f"sha256:{key_digest(SLOW)}": {"rate_per_s": 1},
            }
        ),
        "LLMOPT_SERVING_TENANT_BUDGETS": '{"acme": 1.0}',
        "LLMOPT_SERVING_MODEL_SOURCE": "fresh",
        "LLMOPT_SERVING_FEATURES": "off",
        **extra,
    }


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[TestClient]:
    home = tmp_path_factory.mktemp("key-limits")
    env = keyed_env(
        LLMOPT_SERVING_RATE_LIMIT_PER_S="1000",
        LLMOPT_UPSTREAM_URL=upstream,
        LLMOPT_GATEWAY_TIMEOUT_S="5",
    )
    with asgi_service(home, **env) as c:
        yield c


def decide(client: TestClient, key: str) -> Any:
    return client.post("/decide", json={"tenant": "acme", "prompt": PROMPT}, headers=bearer(key))


def spend_until_refused(client: TestClient, key: str, limit: int = 500) -> list[dict[str, Any]]:
    """Decisions made with ``key`` until its budget refuses one (asserted, with the message)."""
    made: list[dict[str, Any]] = []
    for _ in range(limit):
        r = decide(client, key)
        if r.status_code == 402:
            error = r.json()["error"]
            assert error["code"] == "budget_exceeded", error
            assert f"key {key_digest(key)[:8]}...: the key's daily budget left" in error["message"]
            assert key not in error["message"] and key_digest(key) not in error["message"]
            return made
        assert r.status_code == 200, r.text
        made.append(r.json())
    raise AssertionError(f"{limit} decisions and the key's budget still not spent")


def test_a_tiny_key_budget_gets_cheaper_models_then_402_while_its_tenant_decides(
    client: TestClient,
) -> None:
    made = spend_until_refused(client, TINY)
    assert made, "the budget paid for no decision at all"
    spent = sum(d["predicted_cost_usd"] for d in made)
    assert spent <= BUDGET + 1e-12
    assert all(d["model"] != "gpt-4o" for d in made)  # 0.0026 USD: never fits the key's budget
    assert all(
        any("tighter than its tenant's" in n for n in d["notes"]) for d in made
    )  # the key's budget, not the tenant's, chose the models offered
    # /decide_batch and the gateway go through the same budget
    batch = client.post(
        "/decide_batch",
        json={"requests": [{"tenant": "acme", "prompt": PROMPT}]},
        headers=bearer(TINY),
    )
    assert batch.status_code == 200, batch.text
    assert batch.json()["decisions"] == [None]
    assert batch.json()["errors"][0]["status"] == 402
    assert "the key's daily budget left" in batch.json()["errors"][0]["message"]
    gateway = client.post("/v1/chat/completions", json=ASK, headers=bearer(TINY))
    assert gateway.status_code == 402, gateway.text
    assert "the key's daily budget left" in gateway.json()["error"]["message"]
    # Another key of the same tenant still decides, and the tenant was charged TINY's spend.
    other = decide(client, FREE)
    assert other.status_code == 200, other.text
    assert not any("tighter" in n for n in other.json()["notes"])
    assert client.post("/v1/chat/completions", json=ASK, headers=bearer(FREE)).status_code == 200

    # Feedback settles the key's spend at the actual cost: free calls give the budget back.
    for d in made:
        fb = {"decision_id": d["decision_id"], "quality": 0.9, "cost_usd": 0.0}
        r = client.post("/feedback", json=fb, headers=bearer(FREE))  # whichever key sends it
        assert r.status_code == 200 and r.json()["status"] == "stored", r.text
    again = spend_until_refused(client, TINY)
    assert sum(d["predicted_cost_usd"] for d in again) == pytest.approx(spent, abs=0.0006)


def test_a_key_with_its_own_rate_gets_429_at_it_while_another_does_not(
    client: TestClient,
) -> None:
    slow = [client.get("/unknown", headers=bearer(SLOW)).status_code for _ in range(6)]
    assert slow[:2] == [404, 404] and slow.count(429) >= 3, slow  # burst 2, then 1 per second
    refused = client.get("/unknown", headers=bearer(SLOW))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limited"
    free = [client.get("/unknown", headers=bearer(FREE)).status_code for _ in range(30)]
    assert free == [404] * 30  # the global rate, 1000/s


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"stranger": {"rate_per_s": 1}}, "is not in LLMOPT_CLIENT_KEYS or LLMOPT_ADMIN_KEYS"),
        ({TINY: {"daily_budget": 1}}, "unknown field 'daily_budget'"),
        ({TINY: {"rate_per_s": -2}}, "rate_per_s is negative"),
    ],
)
def test_limits_that_do_not_hold_together_stop_the_start(
    tmp_path: Path, limits: dict[str, Any], message: str
) -> None:
    env = keyed_env(LLMOPT_CLIENT_KEY_LIMITS=json.dumps(limits))
    with pytest.raises(Exception, match=message), asgi_service(tmp_path, **env):
        pass


# -- shared state -----------------------------------------------------------------------------


def _spend(service: AbstractContextManager[TestClient] | TestClient, out: list[Any]) -> None:
    assert isinstance(service, TestClient)
    for _ in range(300):
        r = decide(service, TINY)
        out.append(r)
        if r.status_code != 200:
            return


@pytest.mark.services
def test_two_services_on_redis_share_one_keys_budget(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    env = keyed_env(
        LLMOPT_SERVING_SHARED_STATE="redis",
        LLMOPT_REDIS_URL=redis_url,
        LLMOPT_SERVING_SHARED_STATE_PREFIX=prefix,
        LLMOPT_SERVING_RATE_LIMIT_PER_S="0",
    )
    day = datetime.now(UTC).date().isoformat()
    key_spend = f"{prefix}keys:budget:{day}:{key_digest(TINY)}"
    tenant_spend = f"{prefix}budget:{day}:acme"
    store = redis.Redis.from_url(redis_url)
    with asgi_service(tmp_path / "a", **env) as a, asgi_service(tmp_path / "b", **env) as b:
        answers: tuple[list[Any], list[Any]] = ([], [])
        threads = [
            threading.Thread(target=_spend, args=(svc, out))
            for svc, out in zip((a, b), answers, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        made = [r.json() for out in answers for r in out if r.status_code == 200]
        first = answers[0][0].json()  # a's (each service here has an event log of its own)
        assert all(out and out[-1].status_code == 402 for out in answers), [
            out[-1].text for out in answers
        ]
        assert all(len(out) > 1 for out in answers)  # both services spent from the one budget
        predicted = [d["predicted_cost_usd"] for d in made]
        # Reserve-if-it-fits in one Lua script: the budget is never exceeded at all (the
        # issue's bound, one request's predicted cost over it, holds a fortiori).
        assert sum(predicted) <= BUDGET + 1e-9
        assert int(store.get(key_spend) or 0) == pytest.approx(sum(predicted) * NANO, abs=10)
        assert int(store.get(key_spend) or 0) <= BUDGET * NANO
        assert int(store.get(tenant_spend) or 0) == pytest.approx(sum(predicted) * NANO, abs=10)
        # Feedback settles the key's spend in Redis, for both services.
        fb = {"decision_id": first["decision_id"], "quality": 0.9, "cost_usd": 0.0}
        assert a.post("/feedback", json=fb, headers=bearer(FREE)).status_code == 200
        after = int(store.get(key_spend) or 0) / NANO
        assert after == pytest.approx(sum(predicted) - first["predicted_cost_usd"], abs=1e-8)
        assert decide(b, TINY).status_code == 200  # b decides with what a's feedback gave back
        assert decide(a, FREE).status_code == 200  # the tenant's other key still decides
    store.close()
