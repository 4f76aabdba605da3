"""Keys belong to tenants (issue 18), through the ASGI app in process (``Service.to_asgi()`` + a
TestClient): a client key bound in ``LLMOPT_CLIENT_KEY_TENANTS`` acts for its tenants only, on
every endpoint that names one; admin keys act for all; ``/metrics`` behind an admin key.

The gateway forwards over real HTTP to ``llmopt upstream-replay`` (as in ``test_gateway.py``);
its 403s come before any decision or upstream call (the event log is checked for that)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from llmopt.event_log import EventLog, decisions
from serving.http_guard import key_digest
from tests.integration.serving.conftest import asgi_service

pytestmark = pytest.mark.integration

ACME, BETA, PAIR, STAR, LOOSE, ADMIN = (
    "acme-key",
    "beta-key",
    "pair-key",
    "star-key",
    "loose-key",
    "admin-key",
)
BINDINGS = {
    f"sha256:{key_digest(ACME)}": ["acme"],  # as a digest, as operators should
    BETA: ["beta"],  # as the key itself
    PAIR: ["acme", "beta"],
    STAR: ["*"],
}
ASK = {"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}


def serve(tmp: Path, **env: str) -> AbstractContextManager[TestClient]:
    return asgi_service(tmp, LLMOPT_SERVING_RATE_LIMIT_PER_S="0", **env)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tenant-keys")


@pytest.fixture(scope="module")
def client(home: Path, upstream: str) -> Iterator[TestClient]:
    with serve(
        home,
        LLMOPT_CLIENT_KEYS=f"{ACME}, {BETA}, {PAIR}, {STAR}, sha256:{key_digest(LOOSE)}",
        LLMOPT_ADMIN_KEYS=ADMIN,
        LLMOPT_CLIENT_KEY_TENANTS=json.dumps(BINDINGS),
        LLMOPT_METRICS_REQUIRE_KEY="true",
        LLMOPT_UPSTREAM_URL=upstream,
        LLMOPT_GATEWAY_TIMEOUT_S="5",
    ) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def decision_tenants(home: Path) -> list[str]:
    """The tenant of every decision in the service's event log, oldest first."""
    log = EventLog(f"sqlite:///{home}/llmopt/events.db")
    with log.engine.connect() as conn:
        out = conn.execute(sa.select(decisions.c.tenant).order_by(decisions.c.created_at)).all()
    log.close()
    return [r[0] for r in out]


def forbidden(r: Any, field: str, tenant: str | None = None) -> None:
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "forbidden" and error["field"] == field, error
    if tenant is not None:
        assert f"may not act for tenant {tenant!r}" in error["message"], error


@pytest.mark.parametrize(
    ("key", "tenant", "allowed"),
    [
        (ACME, "acme", True),
        (ACME, "beta", False),
        (BETA, "beta", True),
        (BETA, "acme", False),
        (PAIR, "acme", True),
        (PAIR, "beta", True),
        (PAIR, "other-team", False),
        (STAR, "other-team", True),
        (LOOSE, "acme", False),  # a client key the mapping does not list acts for no tenant
        (ADMIN, "other-team", True),
    ],
)
def test_decide_only_for_the_keys_tenants(
    client: TestClient, key: str, tenant: str, allowed: bool
) -> None:
    r = client.post("/decide", json={"tenant": tenant, "prompt": "hi"}, headers=bearer(key))
    if allowed:
        assert r.status_code == 200, r.text
    else:
        forbidden(r, "tenant", tenant)


def test_the_issue_one_key_two_tenants(client: TestClient) -> None:
    """The issue's reproduction: one key decided as acme and then as other-team."""
    as_acme = client.post("/decide", json={"tenant": "acme"}, headers=bearer(ACME))
    as_other = client.post("/decide", json={"tenant": "other-team"}, headers=bearer(ACME))
    assert as_acme.status_code == 200 and as_other.status_code == 403


def test_a_batch_with_a_foreign_tenant_is_refused_whole(client: TestClient, home: Path) -> None:
    before = len(decision_tenants(home))
    batch = {"requests": [{"tenant": "acme"}, {"tenant": "beta"}, {"tenant": "acme"}]}
    forbidden(client.post("/decide_batch", json=batch, headers=bearer(ACME)), "requests.1.tenant")
    assert len(decision_tenants(home)) == before  # nothing decided
    ok = client.post("/decide_batch", json=batch, headers=bearer(PAIR))
    assert ok.status_code == 200 and all(ok.json()["decisions"]), ok.text
    assert client.post("/decide_batch", json=batch, headers=bearer(ADMIN)).status_code == 200


def test_feedback_only_on_the_keys_tenants_decisions(client: TestClient) -> None:
    did = client.post("/decide", json={"tenant": "acme"}, headers=bearer(ACME)).json()[
        "decision_id"
    ]
    fb = {"decision_id": did, "quality": 0.7}
    forbidden(client.post("/feedback", json=fb, headers=bearer(BETA)), "decision_id")
    forbidden(client.post("/feedback", json=fb, headers=bearer(LOOSE)), "decision_id")
    r = client.post("/feedback", json=fb, headers=bearer(PAIR))
    assert r.status_code == 200 and r.json()["status"] == "stored", r.text
    again = client.post("/feedback", json=fb, headers=bearer(ACME))
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    unknown = client.post("/feedback", json={**fb, "decision_id": "nope"}, headers=bearer(ACME))
    assert unknown.status_code == 404
    other = client.post("/decide", json={"tenant": "beta"}, headers=bearer(ADMIN)).json()
    admin_fb = {"decision_id": other["decision_id"], "quality": 0.5}
    assert client.post("/feedback", json=admin_fb, headers=bearer(ADMIN)).status_code == 200


def test_gateway_refuses_a_foreign_tenant_before_deciding(client: TestClient, home: Path) -> None:
    before = len(decision_tenants(home))
    foreign = {**ASK, "llmopt": {"tenant": "beta"}}
    r = client.post("/v1/chat/completions", json=foreign, headers=bearer(ACME))
    forbidden(r, "llmopt.tenant", "beta")
    assert r.json()["error"]["param"] == "llmopt.tenant"  # OpenAI's shape too
    # A key of two tenants names one; "default" is not one of them.
    forbidden(client.post("/v1/chat/completions", json=ASK, headers=bearer(PAIR)), "llmopt.tenant")
    assert len(decision_tenants(home)) == before  # no decision, so no upstream call
    ok = client.post("/v1/chat/completions", json=foreign, headers=bearer(PAIR))
    assert ok.status_code == 200, ok.text
    assert client.post("/v1/chat/completions", json=foreign, headers=bearer(ADMIN)).is_success
    assert decision_tenants(home)[-2:] == ["beta", "beta"]


def test_gateway_a_key_of_one_tenant_acts_for_it_by_default(client: TestClient, home: Path) -> None:
    r = client.post("/v1/chat/completions", json=ASK, headers=bearer(ACME))
    assert r.status_code == 200, r.text
    assert decision_tenants(home)[-1] == "acme"
    r = client.post("/v1/chat/completions", json=ASK, headers=bearer(ADMIN))
    assert r.status_code == 200 and decision_tenants(home)[-1] == "default"


def test_pareto_for_the_keys_tenants_only(client: TestClient) -> None:
    forbidden(client.get("/pareto", params={"tenant": "beta"}, headers=bearer(ACME)), "tenant")
    mine = client.get("/pareto", params={"tenant": "acme"}, headers=bearer(ACME))
    assert mine.status_code == 200 and mine.json()["tenant"] == "acme"
    fleet = client.get("/pareto", headers=bearer(ACME))  # no tenant: the fleet's front
    assert fleet.status_code == 200 and fleet.json()["tenant"] is None
    assert client.get("/pareto", params={"tenant": "beta"}, headers=bearer(ADMIN)).is_success


def test_metrics_need_an_admin_key_and_count_the_refusals(client: TestClient) -> None:
    client.post("/decide", json={"tenant": "beta"}, headers=bearer(ACME))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(ACME)).status_code == 403
    r = client.get("/metrics", headers=bearer(ADMIN))
    assert r.status_code == 200
    assert 'llmopt_refusals_total{endpoint="decide",status="403"}' in r.text
    for path in ("/healthz", "/readyz", "/docs.json"):
        assert client.get(path).status_code == 200  # probes stay open


def test_admin_endpoints_stay_admin_only(client: TestClient) -> None:
    assert client.post("/admin/reload", json={}, headers=bearer(STAR)).status_code == 403
    assert client.post("/admin/reload", json={}, headers=bearer(ADMIN)).status_code == 200


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LLMOPT_CLIENT_KEY_TENANTS": '{"stranger": ["acme"]}'}, "not in LLMOPT_CLIENT_KEYS"),
        ({"LLMOPT_CLIENT_KEY_TENANTS": f'{{"{ACME}": []}}'}, "has no tenant"),
        ({"LLMOPT_CLIENT_KEY_TENANTS": "[1, 2]"}, "client_key_tenants"),
        ({"LLMOPT_METRICS_REQUIRE_KEY": "true", "LLMOPT_ADMIN_KEYS": ""}, "LLMOPT_ADMIN_KEYS"),
    ],
)
def test_keys_that_do_not_hold_together_stop_the_start(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    with (
        pytest.raises(Exception, match=message),
        serve(tmp_path, LLMOPT_CLIENT_KEYS=ACME, LLMOPT_ADMIN_KEYS=ADMIN, **env),
    ):
        pass
