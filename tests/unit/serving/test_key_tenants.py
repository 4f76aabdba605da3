"""Keys belong to tenants (issue 18): the mapping's parsing and validation, the grant a key gets,
the check the handlers ask, and the guard putting the grant where the app sees it."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

from llmopt.settings import Settings
from serving import http_guard
from serving.http_guard import (
    ANY,
    Grant,
    GuardMiddleware,
    KeyConfigError,
    KeyRing,
    TenantForbiddenError,
    check_tenant,
    current_grant,
    default_tenant,
    key_digest,
    parse_key_tenants,
    tenant_refusal,
)
from serving.metrics import get_metrics

A, B, ADMIN = "key-a", "key-b", "key-admin"
DA, DB, DADMIN = key_digest(A), key_digest(B), key_digest(ADMIN)


def settings(**fields: Any) -> Settings:
    base: dict[str, Any] = {"client_keys": f"{A},{B}", "admin_keys": ADMIN}
    return Settings(**{**base, **fields})


def in_grant(grant: Grant, fn: Callable[[], Any]) -> Any:
    """``fn()`` with ``grant`` as the request's grant (in a copied context, as the guard does)."""

    def run() -> Any:
        http_guard._GRANT.set(grant)
        return fn()

    return contextvars.copy_context().run(run)


# -- the mapping ------------------------------------------------------------------------------


def test_keys_and_digests_both_bind_and_star_means_any():
    clients = frozenset({DA, DB})
    out = parse_key_tenants(
        {A: ["acme"], f"sha256:{DB.upper()}": ["acme", "beta", "acme"]}, clients, frozenset()
    )
    assert out == {DA: frozenset({"acme"}), DB: frozenset({"acme", "beta"})}
    assert parse_key_tenants({A: ["acme", "*"]}, clients, frozenset()) == {DA: None}
    assert parse_key_tenants({}, clients, frozenset()) == {}


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"key-c": ["acme"]}, "not in LLMOPT_CLIENT_KEYS"),
        ({f"sha256:{key_digest('key-c')}": ["acme"]}, "not in LLMOPT_CLIENT_KEYS"),
        ({ADMIN: ["acme"]}, "is an admin key"),
        ({A: []}, "has no tenant"),
        ({A: ["acme", ""]}, "is not a tenant id"),
        ({A: ["x" * 201]}, "is not a tenant id"),
        ({"sha256:abc": ["acme"]}, "is not sha256:<64 hex digits>"),
        ({" ": ["acme"]}, "an empty key"),
        ({A: ["acme"], f"sha256:{DA}": ["beta"]}, "listed twice"),
    ],
)
def test_a_wrong_mapping_is_refused_with_a_clear_message(mapping: Any, message: str):
    admin = frozenset({DADMIN})
    with pytest.raises(KeyConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_key_tenants(mapping, frozenset({DA, DB, DADMIN}) - admin, admin)


def test_the_refusal_never_shows_the_key():
    with pytest.raises(KeyConfigError) as info:
        parse_key_tenants({"secret-key-123": ["acme"]}, frozenset(), frozenset())
    assert "secret-key-123" not in str(info.value) and "key #1" in str(info.value)


def test_the_mapping_comes_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LLMOPT_CLIENT_KEY_TENANTS", f'{{"sha256:{DA}": ["acme"]}}')
    monkeypatch.setenv("LLMOPT_METRICS_REQUIRE_KEY", "true")
    s = Settings(client_keys=A, admin_keys=ADMIN)
    ring = KeyRing.from_settings(s)
    assert ring.tenants == {DA: frozenset({"acme"})} and ring.metrics_require_key


def test_metrics_behind_a_key_needs_admin_keys():
    with pytest.raises(KeyConfigError, match="LLMOPT_ADMIN_KEYS"):
        KeyRing.from_settings(Settings(client_keys=A, metrics_require_key=True))


# -- the grant --------------------------------------------------------------------------------


def test_without_a_mapping_every_key_acts_for_any_tenant():
    ring = KeyRing.from_settings(settings())
    assert ring.grant(DA, admin=False, endpoint="decide") is ANY
    assert ring.unbound == 0


def test_with_a_mapping_unlisted_keys_act_for_none_and_admins_for_all():
    ring = KeyRing.from_settings(settings(client_key_tenants={A: ["acme"]}))
    assert ring.grant(DA, admin=False, endpoint="decide") == Grant(frozenset({"acme"}), "decide")
    assert ring.grant(DB, admin=False, endpoint="decide") == Grant(frozenset(), "decide")
    assert ring.grant(DADMIN, admin=True, endpoint="decide") is ANY
    assert ring.unbound == 1
    star = KeyRing.from_settings(settings(client_key_tenants={A: ["*"]}))
    assert star.grant(DA, admin=False, endpoint="decide") is ANY


def test_the_check_refuses_other_tenants_and_says_which_are_allowed():
    grant = Grant(frozenset({"acme", "beta"}), "decide")
    assert in_grant(grant, lambda: tenant_refusal("acme")) is None
    why = in_grant(grant, lambda: tenant_refusal("other-team"))
    assert why == "this key may not act for tenant 'other-team': it may act for 'acme', 'beta'"
    nothing = in_grant(Grant(frozenset(), "decide"), lambda: tenant_refusal("acme"))
    assert "bound to no tenant" in nothing
    with pytest.raises(TenantForbiddenError) as info:
        in_grant(grant, lambda: check_tenant("x", field="requests.2.tenant"))
    assert info.value.field == "requests.2.tenant" and int(info.value.error_code) == 403
    assert info.value.code == "forbidden"
    assert tenant_refusal("anyone") is None  # no guard, no keys: no restriction


def test_a_refusal_is_counted():
    metrics = get_metrics()
    counter = metrics.refusals.labels("pareto", "403")
    before = counter._value.get()
    in_grant(Grant(frozenset({"acme"}), "pareto"), lambda: tenant_refusal("beta"))
    assert counter._value.get() == before + 1


def test_a_key_of_one_tenant_defaults_to_it():
    assert in_grant(Grant(frozenset({"acme"})), default_tenant) == "acme"
    assert in_grant(Grant(frozenset({"acme", "beta"})), default_tenant) == "default"
    assert in_grant(ANY, default_tenant) == "default"


# -- the guard --------------------------------------------------------------------------------


async def echo_grant(scope: Any, receive: Any, send: Any) -> None:
    """An app answering with the grant it sees."""
    tenants = current_grant().tenants
    body = b"any" if tenants is None else ",".join(sorted(tenants)).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def guarded(**fields: Any) -> TestClient:
    return TestClient(GuardMiddleware(echo_grant, settings(serving_rate_limit_per_s=0, **fields)))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_guard_hands_the_keys_grant_to_the_app():
    client = guarded(client_key_tenants={f"sha256:{DA}": ["acme", "beta"]})
    assert client.get("/pareto", headers=bearer(A)).text == "acme,beta"
    assert client.get("/pareto", headers=bearer(B)).text == ""  # unbound: no tenant
    assert client.get("/pareto", headers=bearer(ADMIN)).text == "any"
    assert client.get("/pareto", headers=bearer("nope")).status_code == 401
    assert current_grant() is ANY  # reset after the request


def test_a_wrong_mapping_stops_the_guard():
    with pytest.raises(KeyConfigError):
        GuardMiddleware(echo_grant, settings(client_key_tenants={"stranger": ["acme"]}))


def test_metrics_open_by_default_and_admin_only_when_required():
    assert guarded().get("/metrics").status_code == 200
    client = guarded(metrics_require_key=True)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer("nope")).status_code == 401
    refused = client.get("/metrics", headers=bearer(A))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    ok = client.get("/metrics", headers=bearer(ADMIN))
    assert ok.status_code == 200 and "llmopt_refusals" in ok.text
    assert client.get("/healthz").status_code == 200  # probes stay open


# -- /feedback: the decision's tenant ---------------------------------------------------------


class _Log:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def lookup_decision(self, decision_id: str) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def check_feedback(answer: Any, grant: Grant) -> None:
    from types import SimpleNamespace  # noqa: PLC0415

    from serving.service import DecisionService  # noqa: PLC0415

    stub = SimpleNamespace(router=SimpleNamespace(event_log=_Log(answer)))
    in_grant(grant, lambda: DecisionService.inner._check_decision_tenant(stub, "d1"))


def test_feedback_is_checked_against_its_decisions_tenant():
    from serving.errors import UnavailableError  # noqa: PLC0415

    acme = Grant(frozenset({"acme"}), "feedback")
    check_feedback(({"tenant": "acme"}, True), acme)
    check_feedback((None, True), acme)  # unknown: the router answers 404
    with pytest.raises(TenantForbiddenError, match="another tenant's") as info:
        check_feedback(({"tenant": "beta"}, True), acme)
    assert info.value.field == "decision_id" and "beta" not in info.value.message
    # The event log is down and this worker never saw the decision: the tenant cannot be
    # checked, so a bound key is told to retry (503) rather than let through.
    with pytest.raises(UnavailableError, match="retry"):
        check_feedback((None, False), acme)
    with pytest.raises(UnavailableError, match="OperationalError"):
        check_feedback(type("OperationalError", (Exception,), {})("down"), acme)
