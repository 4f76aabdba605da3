"""The fast path (``serving/fast_path.py``) answers ``/decide`` and ``/feedback`` exactly as
BentoML's request machinery does: the same status and body for valid requests, every kind of
invalid body, tenant-bound keys and the feedback lifecycle, with ``LLMOPT_SERVING_FAST_PATH``
on and off (the in-process ASGI app, real SQLite event log)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.integration.serving.conftest import asgi_service

pytestmark = pytest.mark.integration

KEY, ADMIN = "acme-key", "admin-key"
AUTH = {"authorization": f"Bearer {KEY}"}
BAD_DECIDE = [
    b'{"tenant": 3}',
    b"not json",
    b"[]",
    b'{"tenant": "acme", "bogus": 1}',
    b"{}",
    b"",
    b'{"tenant": "acme", "willingness_to_pay": -1}',
    b'{"tenant": "acme", "models": []}',
    b'{"tenant": "other-team"}',  # the key may not act for this tenant: 403
]
BAD_FEEDBACK = [
    b'{"decision_id": "nope", "quality": 0.5}',  # unknown: 404
    b'{"decision_id": "nope"}',  # no outcome: 400
    b'{"decision_id": "nope", "quality": 7}',
    b"{",
]
BATCHES = [
    b'{"requests": [{"tenant": "acme", "prompt": "2 + 2?", "models": ["gpt-4o-mini"]}, '
    b'{"tenant": "acme", "models": ["no-such-model"]}]}',  # the second: a per-item error
    b'{"requests": [{"tenant": "acme"}, {"tenant": "other-team"}]}',  # a foreign tenant: 403
    b'{"requests": []}',
    b'{"requests": [{"tenant": "acme", "bogus": 1}]}',
    b"{}",
]
VOLATILE = {"decision_id", "created_at", "features", "feedback_id"}


@pytest.fixture(scope="module", params=["true", "false"], ids=["fast", "bentoml"])
def client(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    home = tmp_path_factory.mktemp(f"fast-path-{request.param}")
    with asgi_service(
        home,
        LLMOPT_SERVING_FAST_PATH=request.param,
        LLMOPT_SERVING_RATE_LIMIT_PER_S="0",
        LLMOPT_CLIENT_KEYS=KEY,
        LLMOPT_ADMIN_KEYS=ADMIN,
        LLMOPT_CLIENT_KEY_TENANTS=json.dumps({KEY: ["acme"]}),
    ) as c:
        yield c


def _stable(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _stable(v) for k, v in doc.items() if k not in VOLATILE}
    if isinstance(doc, list):
        return [_stable(v) for v in doc]
    return doc


def _answers(client: TestClient) -> list[tuple[int, Any]]:
    """What the service answers to a fixed script of requests (volatile fields dropped)."""
    out: list[tuple[int, Any]] = []
    ids: list[str] = []

    def post(path: str, body: bytes) -> Any:
        r = client.post(path, content=body, headers={**AUTH, "content-type": "application/json"})
        assert r.headers["content-type"] == "application/json"
        assert int(r.headers["content-length"]) == len(r.content)
        text = r.text
        for i, decision_id in enumerate(ids):  # ids named in messages
            text = text.replace(decision_id, f"<decision {i}>")
        out.append((r.status_code, _stable(json.loads(text))))
        if "decision_id" in r.json():
            ids.append(r.json()["decision_id"])
        return r.json()

    decided = post(
        "/decide", b'{"tenant": "acme", "prompt": "What is 2 + 2?", "models": ["gpt-4o-mini"]}'
    )
    for body in BAD_DECIDE:
        post("/decide", body)
    fb = {"decision_id": decided["decision_id"], "quality": 0.8, "cost_usd": 0.0001}
    post("/feedback", json.dumps(fb).encode())
    post("/feedback", json.dumps(fb).encode())  # the same again: duplicate
    post("/feedback", json.dumps({**fb, "quality": 0.1}).encode())  # conflicting: 409
    for body in BAD_FEEDBACK:
        post("/feedback", body)
    for body in BATCHES:
        post("/decide_batch", body)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[int, Any]]:
    """The answers through BentoML's machinery, in a service of their own."""
    with asgi_service(
        tmp_path_factory.mktemp("fast-path-reference"),
        LLMOPT_SERVING_FAST_PATH="false",
        LLMOPT_SERVING_RATE_LIMIT_PER_S="0",
        LLMOPT_CLIENT_KEYS=KEY,
        LLMOPT_ADMIN_KEYS=ADMIN,
        LLMOPT_CLIENT_KEY_TENANTS=json.dumps({KEY: ["acme"]}),
    ) as c:
        return _answers(c)


def test_answers_match_bentomls(client: TestClient, reference: list[tuple[int, Any]]) -> None:
    answers = _answers(client)
    statuses = [status for status, _ in answers]
    assert statuses[0] == 200 and 403 in statuses and 404 in statuses and 409 in statuses
    assert answers == reference


def test_the_fast_path_skips_bentoml(client: TestClient, request: pytest.FixtureRequest) -> None:
    """BentoML names itself in the ``server`` header; the fast path's answers do not."""
    r = client.post("/decide", json={"tenant": "acme"}, headers=AUTH)
    assert r.status_code == 200
    fast = request.node.callspec.params["client"] == "true"
    assert ("server" not in r.headers) is fast
    # other endpoints and methods still go through BentoML
    assert client.get("/decide", headers=AUTH).status_code == 405
    admin = {"authorization": f"Bearer {ADMIN}"}
    r = client.post("/admin/traffic", json={"mode": "champion"}, headers=admin)
    assert r.status_code == 200 and "server" in r.headers


def test_the_guard_still_runs_first(client: TestClient) -> None:
    assert client.post("/decide", json={"tenant": "acme"}).status_code == 401
    r = client.post(
        "/decide", content=b'{"tenant": "acme"}', headers={**AUTH, "content-type": "text/plain"}
    )
    assert r.status_code == 415
    assert r.json()["error"]["code"] == "unsupported_media_type"
