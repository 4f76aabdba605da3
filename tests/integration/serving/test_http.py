"""Every endpoint through the ASGI app (``Service.to_asgi()`` + a TestClient), in process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from serving.schemas import EXAMPLE_DECIDE, EXAMPLE_DECIDE_FULL, EXAMPLE_FEEDBACK, EXAMPLE_TRAFFIC
from tests.integration.serving.conftest import asgi_service

pytestmark = pytest.mark.integration

CLIENT, ADMIN = "client-key-1", "admin-key-1"


def serve(tmp: Path, **env: str) -> AbstractContextManager[TestClient]:
    """The service as an ASGI app, its settings from ``env`` (read when the app is built)."""
    return asgi_service(tmp, **env)


@pytest.fixture(scope="module")
def open_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with serve(
        tmp_path_factory.mktemp("open"),
        LLMOPT_SERVING_TENANT_BUDGETS='{"poor": 0.00001}',
        LLMOPT_SERVING_MAX_BODY_BYTES="20000",
    ) as client:
        yield client


@pytest.fixture(scope="module")
def auth_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with serve(
        tmp_path_factory.mktemp("auth"),
        LLMOPT_CLIENT_KEYS=f"{CLIENT}, other",
        LLMOPT_ADMIN_KEYS=ADMIN,
        LLMOPT_SERVING_RATE_LIMIT_PER_S="0",
    ) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_contract_decide_then_feedback(open_client: TestClient):
    r = open_client.post("/decide", json=EXAMPLE_DECIDE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decision_id"] and body["model"]
    assert body["served_by"] == "champion" and not body["fallback"]
    assert body["explanation"]["reason"]
    assert 0 < body["propensity"] <= 1
    fb = {**EXAMPLE_FEEDBACK, "decision_id": body["decision_id"]}
    r = open_client.post("/feedback", json=fb)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "stored"


def test_decide_with_every_field_honours_the_caps(open_client: TestClient):
    r = open_client.post("/decide", json=EXAMPLE_DECIDE_FULL)
    assert r.status_code == 200, r.text
    assert r.json()["predicted_cost_usd"] <= EXAMPLE_DECIDE_FULL["max_cost_usd"]


def test_feedback_is_idempotent_and_refuses_conflicts_and_unknown_decisions(
    open_client: TestClient,
):
    did = open_client.post("/decide", json=EXAMPLE_DECIDE).json()["decision_id"]
    first = open_client.post("/feedback", json={"decision_id": did, "thumbs": "up"})
    again = open_client.post("/feedback", json={"decision_id": did, "thumbs": "up"})
    assert first.status_code == again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert again.json()["feedback_id"] == first.json()["feedback_id"]
    other = open_client.post("/feedback", json={"decision_id": did, "thumbs": "down"})
    assert other.status_code == 409 and "different feedback" in other.text
    unknown = open_client.post("/feedback", json={"decision_id": "nope", "quality": 0.5})
    assert unknown.status_code == 404 and "unknown decision_id" in unknown.text


def test_error_feedback_is_accepted(open_client: TestClient):
    did = open_client.post("/decide", json=EXAMPLE_DECIDE).json()["decision_id"]
    r = open_client.post("/feedback", json={"decision_id": did, "error_kind": "timeout"})
    assert r.status_code == 200 and r.json()["status"] == "stored"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/decide", {"prompt": "hi"}, "tenant"),
        ("/decide", {"tenant": "acme", "max_cost_usd": -1}, "max_cost_usd"),
        ("/decide", {"tenant": "acme", "colour": "red"}, "colour"),
        ("/decide_batch", {"requests": []}, "requests"),
        ("/decide_batch", {"requests": [{"prompt": "x"}]}, "tenant"),
        ("/feedback", {"quality": 0.5}, "decision_id"),
        ("/feedback", {"decision_id": "d", "quality": 2}, "quality"),
        ("/feedback", {"decision_id": "d", "quality": 0.5, "thumbs": "up"}, "thumbs"),
        ("/admin/traffic", {"mode": "sideways"}, "mode"),
        ("/admin/traffic", {"mode": "canary", "canary_percent": 101}, "canary_percent"),
        ("/admin/traffic", {"mode": "canary", "step_s": 0}, "step_s"),
        ("/admin/reload", {"force": "maybe"}, "force"),
    ],
)
def test_validation_errors_are_400_and_name_the_field(
    open_client: TestClient, path: str, body: dict[str, object], field: str
):
    r = open_client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert field in r.text


def test_models_restrict_the_choice_and_unknown_ones_are_400(open_client: TestClient):
    wanted = ["gpt-4o-mini", "claude-3-5-haiku", "not-a-model"]
    for _ in range(5):
        r = open_client.post("/decide", json={**EXAMPLE_DECIDE, "models": wanted})
        assert r.status_code == 200, r.text
        assert r.json()["model"] in wanted[:2]
    r = open_client.post("/decide", json={**EXAMPLE_DECIDE, "models": ["nope"]})
    assert r.status_code == 400
    assert "models" in r.text and "nope" in r.text
    r = open_client.post("/decide", json={**EXAMPLE_DECIDE, "models": []})
    assert r.status_code == 400 and "models" in r.text


def test_not_json_is_400(open_client: TestClient):
    r = open_client.post("/decide", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_decide_batch(open_client: TestClient):
    r = open_client.post(
        "/decide_batch", json={"requests": [EXAMPLE_DECIDE, {"tenant": "poor"}, EXAMPLE_DECIDE]}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decisions"][0]["model"] and body["decisions"][2]["model"]
    assert body["decisions"][1] is None
    assert body["errors"] == [{"index": 1, "status": 402, "message": body["errors"][0]["message"]}]
    # the second acme request was drawn with the first (pull_many): labelled as a single decision
    single = open_client.post("/decide", json=EXAMPLE_DECIDE).json()
    for d in (body["decisions"][0], body["decisions"][2]):
        assert (d["policy_name"], d["policy_version"]) == (
            single["policy_name"],
            single["policy_version"],
        )


def test_a_tenant_over_its_budget_is_refused_with_402(open_client: TestClient):
    r = open_client.post("/decide", json={"tenant": "poor", "prompt": "hi"})
    assert r.status_code == 402 and "daily budget" in r.text


def test_body_too_large_is_413(open_client: TestClient):
    r = open_client.post("/decide", json={"tenant": "acme", "prompt": "x" * 30_000})
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        yield b'{"tenant": "acme", "prompt": "'
        for _ in range(30):
            yield b"x" * 1000
        yield b'"}'

    r = open_client.post("/decide", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_probes_metrics_and_openapi(open_client: TestClient):
    assert open_client.get("/healthz").status_code == 200
    assert open_client.get("/readyz").status_code == 200
    metrics = open_client.get("/metrics")
    assert metrics.status_code == 200
    assert "llmopt_decisions_total" in metrics.text
    assert "llmopt_feedback_total" in metrics.text
    spec = open_client.get("/docs.json").json()
    for path in ("/decide", "/decide_batch", "/feedback", "/admin/reload", "/admin/traffic"):
        assert path in spec["paths"]


def test_admin_reload_and_traffic(open_client: TestClient):
    r = open_client.post("/admin/reload", json={})
    assert r.status_code == 200, r.text
    assert r.json()["champion"].startswith("fresh/") and r.json()["challenger"] is None
    r = open_client.post("/admin/traffic", json=EXAMPLE_TRAFFIC)
    assert r.status_code == 400 and "needs a challenger" in r.text
    r = open_client.post("/admin/traffic", json={"mode": "champion"})
    assert r.status_code == 200 and r.json()["mode"] == "champion"


ENDPOINTS = [
    ("/decide", EXAMPLE_DECIDE),
    ("/decide_batch", {"requests": [EXAMPLE_DECIDE]}),
    ("/feedback", {"decision_id": "nope", "quality": 0.5}),
    ("/admin/reload", {}),
    ("/admin/traffic", {"mode": "champion"}),
]


@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
def test_every_endpoint_needs_a_key(auth_client: TestClient, path: str, body: object):
    assert auth_client.post(path, json=body).status_code == 401
    assert auth_client.post(path, json=body, headers=bearer("wrong")).status_code == 401
    assert auth_client.post(path, json=body, headers={"Authorization": CLIENT}).status_code == 401


@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
def test_client_keys_serve_but_only_admin_keys_administer(
    auth_client: TestClient, path: str, body: object
):
    as_client = auth_client.post(path, json=body, headers=bearer(CLIENT))
    as_admin = auth_client.post(path, json=body, headers=bearer(ADMIN))
    expected = 404 if path == "/feedback" else 200
    if path.startswith("/admin/"):
        assert as_client.status_code == 403
    else:
        assert as_client.status_code == expected, as_client.text
    assert as_admin.status_code == expected, as_admin.text


def test_keys_may_be_configured_as_sha256_digests(tmp_path: Path):
    from serving.http_guard import key_digest  # noqa: PLC0415

    with serve(
        tmp_path,
        LLMOPT_CLIENT_KEYS=f"sha256:{key_digest(CLIENT)}",
        LLMOPT_ADMIN_KEYS=f"sha256:{key_digest(ADMIN)}",
    ) as client:
        ok = client.post("/decide", json=EXAMPLE_DECIDE, headers=bearer(CLIENT))
        assert ok.status_code == 200
        assert client.post("/decide", json=EXAMPLE_DECIDE, headers=bearer("x")).status_code == 401
        traffic = client.post("/admin/traffic", json=EXAMPLE_TRAFFIC, headers=bearer(ADMIN))
        assert traffic.status_code in (200, 400), traffic.text  # 400: no challenger; authorised
        # the digest itself is not a key
        digest_as_key = bearer(key_digest(CLIENT))
        assert client.post("/decide", json=EXAMPLE_DECIDE, headers=digest_as_key).status_code == 401


def test_probes_stay_open_with_auth(auth_client: TestClient):
    for path in ("/healthz", "/readyz", "/metrics", "/docs.json"):
        assert auth_client.get(path).status_code == 200


def test_rate_limit_is_429(tmp_path: Path):
    with serve(tmp_path, LLMOPT_SERVING_RATE_LIMIT_PER_S="1") as client:
        codes = [client.post("/decide", json=EXAMPLE_DECIDE).status_code for _ in range(4)]
    assert codes[:2] == [200, 200]
    assert 429 in codes[2:]


def test_pareto_shows_the_live_front_and_the_choice(open_client: TestClient):
    """Feedback for two task types; GET /pareto per task, with and without a tenant's budget."""
    for _ in range(6):
        for hints, quality in ((["code"], 0.9), (["math"], 0.2)):
            d = open_client.post(
                "/decide", json={"tenant": "acme", "prompt": "write a sort", "task_hints": hints}
            ).json()
            r = open_client.post(
                "/feedback",
                json={"decision_id": d["decision_id"], "quality": quality, "latency_ms": 500.0},
            )
            assert r.status_code == 200, r.text
    code = open_client.get("/pareto", params={"task": "code", "willingness_to_pay": 0.01})
    assert code.status_code == 200, code.text
    body = code.json()
    assert body["task"] == "code" and body["willingness_to_pay_source"] == "request"
    assert body["tasks_in_window"]["code"] >= 6 and body["tasks_in_window"]["math"] >= 6
    seen = {c["model"]: c for c in body["candidates"]}
    assert all(c["quality"] == 0.9 and c["latency_source"] == "observed" for c in seen.values())
    if seen:  # a model with 5+ code feedback is a candidate; the choice is on the front
        assert body["choice"] in seen and seen[body["choice"]]["on_front"]
    else:
        assert body["choice"] is None and body["too_few_samples"]
    default = open_client.get("/pareto", params={"tenant": "nobody"}).json()
    assert default["task"] is None and default["willingness_to_pay_source"] == "service default"
    spec = open_client.get("/docs.json").json()
    assert "get" in spec["paths"]["/pareto"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"task": "poetry"}, "task"),
        ({"window": "0"}, "window"),
        ({"window": "many"}, "window"),
        ({"willingness_to_pay": "-1"}, "willingness_to_pay"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_pareto_bad_queries_are_400_naming_the_parameter(
    open_client: TestClient, params: dict[str, str], field: str
):
    r = open_client.get("/pareto", params=params)
    assert r.status_code == 400 and r.json()["error"]["field"] == field, r.text


def test_pareto_needs_a_client_key(auth_client: TestClient):
    assert auth_client.get("/pareto").status_code == 401
    assert auth_client.get("/pareto", headers=bearer(CLIENT)).status_code == 200
