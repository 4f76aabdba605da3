"""Keys' own limits (issue 18, ``LLMOPT_CLIENT_KEY_LIMITS``): the setting's parsing and
validation, the guard's per-key rate and its naming of a budgeted key, and the router making a
key's decisions fit the key's budget as well as its tenant's (both reserved or neither, both
settled by feedback, the key's 402).

Through the service: ``tests/integration/serving/test_key_limits.py``."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

from llmopt.catalog import ModelCatalog, load_catalog
from llmopt.event_log import EventLog
from llmopt.schemas import Feedback, RequestContext
from llmopt.settings import Settings
from serving.guards import BudgetExceededError, BudgetLedger
from serving.http_guard import (
    GuardMiddleware,
    KeyConfigError,
    KeyRing,
    key_digest,
    key_limits,
    parse_key_limits,
)
from serving.key_limits import KeyBudgets, KeyLimit, current_key, use_key
from serving.router import Router
from tests.unit.serving.test_router import FakePolicy

A, B, ADMIN = "key-a", "key-b", "key-admin"
DA, DB, DADMIN = key_digest(A), key_digest(B), key_digest(ADMIN)
CLIENTS, ADMINS = frozenset({DA, DB}), frozenset({DADMIN})


def settings(**fields: Any) -> Settings:
    base: dict[str, Any] = {"client_keys": f"{A},{B}", "admin_keys": ADMIN}
    return Settings(**{**base, **fields})


# -- the setting ------------------------------------------------------------------------------


def test_keys_digests_and_admin_keys_take_limits_each_optional():
    out = parse_key_limits(
        {
            A: {"daily_budget_usd": 2, "rate_per_s": 5.5},
            f"sha256:{DB.upper()}": {"rate_per_s": 0},
            ADMIN: {"daily_budget_usd": 0.0},
        },
        CLIENTS,
        ADMINS,
    )
    assert out == {
        DA: KeyLimit(daily_budget_usd=2.0, rate_per_s=5.5),
        DB: KeyLimit(rate_per_s=0.0),
        DADMIN: KeyLimit(daily_budget_usd=0.0),
    }
    assert parse_key_limits({}, CLIENTS, ADMINS) == {}


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"stranger": {"rate_per_s": 1}}, "key #1 (" + key_digest("stranger")[:8]),
        ({"stranger": {"rate_per_s": 1}}, "is not in LLMOPT_CLIENT_KEYS or LLMOPT_ADMIN_KEYS"),
        ({A: {"rate_per_s": 1}, B: {"rate": 1}}, f"key #2 ({DB[:8]}...): unknown field 'rate'"),
        ({A: {"daily_budget_usd": -0.5}}, "daily_budget_usd is negative (-0.5)"),
        ({A: {"rate_per_s": -1}}, "rate_per_s is negative"),
        ({A: {"rate_per_s": "5"}}, "rate_per_s must be a number, not '5'"),
        ({A: {"rate_per_s": True}}, "rate_per_s must be a number, not True"),
        ({A: {"daily_budget_usd": None}}, "daily_budget_usd must be a number, not None"),
        ({A: {"daily_budget_usd": float("inf")}}, "must be a number"),
        ({A: {}}, "sets no limit"),
        ({A: 5}, "give an object"),
        ({A: {"rate_per_s": 1}, f"sha256:{DA}": {"rate_per_s": 2}}, "listed twice"),
        ({"sha256:beef": {"rate_per_s": 1}}, "is not sha256:<64 hex digits>"),
        ({" ": {"rate_per_s": 1}}, "LLMOPT_CLIENT_KEY_LIMITS: an empty key"),
    ],
)
def test_a_wrong_entry_is_refused_naming_it(mapping: Any, message: str):
    with pytest.raises(KeyConfigError, match="LLMOPT_CLIENT_KEY_LIMITS") as info:
        parse_key_limits(mapping, CLIENTS, ADMINS)
    assert message in str(info.value)


def test_the_refusal_never_shows_the_key():
    with pytest.raises(KeyConfigError) as info:
        parse_key_limits({"secret-key-123": {"rate_per_s": -1}}, frozenset(), frozenset())
    assert "secret-key-123" not in str(info.value)
    with pytest.raises(KeyConfigError) as info:
        parse_key_limits({A: {"rate_per_s": -1}}, CLIENTS, ADMINS)
    assert A not in str(info.value)


def test_the_limits_come_from_the_environment_as_json_and_stop_the_start(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("LLMOPT_CLIENT_KEYS", f"{A},{B}")
    monkeypatch.setenv("LLMOPT_CLIENT_KEY_LIMITS", f'{{"{A}": {{"daily_budget_usd": 0.5}}}}')
    assert key_limits(Settings()) == {DA: KeyLimit(daily_budget_usd=0.5)}
    assert KeyRing.from_settings(Settings()).limits == {DA: KeyLimit(daily_budget_usd=0.5)}
    monkeypatch.setenv("LLMOPT_CLIENT_KEY_LIMITS", f'{{"{A}": {{"budget": 0.5}}}}')
    with pytest.raises(KeyConfigError, match="unknown field 'budget'"):
        KeyRing.from_settings(Settings())
    with pytest.raises(KeyConfigError, match="unknown field 'budget'"):
        GuardMiddleware(echo_key, Settings())


# -- the guard --------------------------------------------------------------------------------


async def echo_key(scope: Any, receive: Any, send: Any) -> None:
    """An app answering with the budgeted key the router would see (``-``: none)."""
    body = (current_key() or "-").encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def guarded(**fields: Any) -> TestClient:
    return TestClient(GuardMiddleware(echo_key, settings(**fields)))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def codes(client: TestClient, key: str, n: int) -> list[int]:
    return [client.get("/pareto", headers=bearer(key)).status_code for _ in range(n)]


def test_a_keys_own_rate_replaces_the_global_one():
    client = guarded(
        serving_rate_limit_per_s=1000,
        client_key_limits={A: {"rate_per_s": 1}, ADMIN: {"rate_per_s": 0}},
    )
    a = codes(client, A, 5)
    assert a[:2] == [200, 200] and a[2:] == [429, 429, 429]  # burst 2, then 1 per second
    assert codes(client, B, 20) == [200] * 20  # the global rate
    refused = client.get("/pareto", headers=bearer(A))
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1


def test_a_key_without_limit_is_unlimited_under_a_global_rate_and_others_are_not():
    client = guarded(serving_rate_limit_per_s=1, client_key_limits={ADMIN: {"rate_per_s": 0}})
    assert codes(client, ADMIN, 20) == [200] * 20
    assert 429 in codes(client, A, 5)


def test_a_key_rate_works_with_the_global_limit_off():
    client = guarded(serving_rate_limit_per_s=0, client_key_limits={A: {"rate_per_s": 1}})
    assert 429 in codes(client, A, 5)
    assert codes(client, B, 20) == [200] * 20


def test_the_guard_names_a_budgeted_key_to_the_router_only():
    client = guarded(
        serving_rate_limit_per_s=0,
        client_key_limits={A: {"daily_budget_usd": 1}, B: {"rate_per_s": 100}},
    )
    assert client.get("/pareto", headers=bearer(A)).text == DA
    assert client.get("/pareto", headers=bearer(B)).text == "-"
    assert client.get("/pareto", headers=bearer(ADMIN)).text == "-"
    assert current_key() is None  # reset after the request


# -- the router -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog() -> ModelCatalog:
    return load_catalog()


def as_key(digest: str | None, fn: Callable[[], Any]) -> Any:
    """``fn()`` with ``digest`` as the request's key (in a copied context, as the guard does)."""

    def run() -> Any:
        if digest is not None:
            use_key(digest)
        return fn()

    return contextvars.copy_context().run(run)


def ctx(tenant: str = "acme") -> RequestContext:
    return RequestContext(tenant=tenant, prompt="What is 2 + 2?")


def keyed_router(
    catalog: ModelCatalog, tenant_usd: float | None, key_usd: float, key_ledger: Any = None
) -> Router:
    router = Router(
        catalog,
        EventLog("sqlite://"),
        ledger=BudgetLedger(per_tenant={} if tenant_usd is None else {"acme": tenant_usd}),
        key_budgets=KeyBudgets(key_ledger or BudgetLedger(per_tenant={DA: key_usd})),
    )
    router.swap(champion=(FakePolicy("gpt-4o"), "v1"))  # wants an expensive model
    return router


def test_a_keys_budget_bounds_its_decisions_then_refuses_naming_the_key(catalog):
    budget = 0.001  # gpt-4o (0.0026 USD predicted) never fits
    router = keyed_router(catalog, tenant_usd=1.0, key_usd=budget)
    committed = 0.0
    with pytest.raises(BudgetExceededError) as info:
        for _ in range(200):
            routed = as_key(DA, lambda: router.decide(ctx()))
            assert routed.decision.model != "gpt-4o"
            assert any("tighter than its tenant's" in n for n in routed.decision.notes)
            committed += routed.predicted_cost_usd or 0.0
            assert committed <= budget + 1e-12
    assert committed > 0
    message = str(info.value)
    assert f"key {DA[:8]}...: the key's daily budget left" in message
    assert DA not in message and A not in message
    assert router.key_budgets.ledger is not None
    assert router.key_budgets.ledger.remaining(DA) >= -1e-12
    # the tenant was charged as much, and its other keys still get the model they want
    assert router.ledger.remaining("acme") == pytest.approx(1.0 - committed)
    assert as_key(DB, lambda: router.decide(ctx())).decision.model == "gpt-4o"
    assert as_key(None, lambda: router.decide(ctx())).decision.model == "gpt-4o"


def test_the_tenants_budget_still_binds_when_it_is_the_tighter(catalog):
    router = keyed_router(catalog, tenant_usd=0.0005, key_usd=1.0)
    with pytest.raises(BudgetExceededError) as info:
        for _ in range(200):
            routed = as_key(DA, lambda: router.decide(ctx()))
            assert not any("tighter" in n for n in routed.decision.notes)
    assert str(info.value).startswith("tenant 'acme'")


def test_a_key_budget_with_no_tenant_budget_and_feedback_settles_both(catalog):
    router = keyed_router(catalog, tenant_usd=None, key_usd=0.01)
    tenant_router = keyed_router(catalog, tenant_usd=0.01, key_usd=0.01)
    for r in (router, tenant_router):
        routed = as_key(DA, lambda r=r: r.decide(ctx()))
        keys = r.key_budgets.ledger
        assert keys is not None
        assert keys.remaining(DA) == pytest.approx(0.01 - (routed.predicted_cost_usd or 0.0))
        r.feedback(Feedback(decision_id=routed.decision.decision_id, quality=1, cost_usd=0.002))
        assert keys.remaining(DA) == pytest.approx(0.008)
    assert tenant_router.ledger.remaining("acme") == pytest.approx(0.008)


class RefusingLedger(BudgetLedger):
    """A key ledger whose budget another worker always spends first (its reservations fail)."""

    def __init__(self) -> None:
        super().__init__(per_tenant={DA: 1.0})
        self.attempts = 0

    def try_reserve(self, tenant: str, decision_id: str, usd: float) -> bool:
        self.attempts += 1
        return False


def test_a_refused_key_reservation_releases_the_tenants(catalog):
    keys = RefusingLedger()
    router = keyed_router(catalog, tenant_usd=1.0, key_usd=1.0, key_ledger=keys)
    with pytest.raises(BudgetExceededError, match="spent by concurrent requests"):
        as_key(DA, lambda: router.decide(ctx()))
    assert keys.attempts >= 2
    assert router.ledger.remaining("acme") == pytest.approx(1.0)  # every reservation released
    assert router.ledger._reserved == {}


def test_cascade_first_steps_are_reserved_on_the_key_too(catalog):
    router = keyed_router(catalog, tenant_usd=None, key_usd=1.0)
    cascade = RequestContext(tenant="acme", prompt="What is 2 + 2?", mode="cascade")
    routed = as_key(DA, lambda: router.decide(cascade))
    assert routed.plan is not None and len(routed.plan) == 2
    keys = router.key_budgets.ledger
    assert keys is not None
    assert set(keys._reserved) == {s.decision_id for s in routed.plan}
