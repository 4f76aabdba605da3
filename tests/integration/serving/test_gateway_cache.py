"""The gateway's semantic response cache (serving/response_cache.py), in process (the service's
ASGI app) forwarding over real HTTP to ``llmopt upstream-replay``, whose answers differ from
prompt to prompt (so a cached answer is recognisable by its text)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import sqlalchemy as sa
from starlette.testclient import TestClient

from llmopt.event_log import EventLog, decisions, feedback
from tests.integration.serving.conftest import asgi_service

pytestmark = pytest.mark.integration

CACHED = ["acme", "beta", "t1", "t2", "t3"]


def ask(prompt: str, tenant: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "auto",
        "messages": [{"role": "user", "content": prompt}],
        "llmopt": {"tenant": tenant},
        **extra,
    }


def text(r: Any) -> str:
    return str(r.json()["choices"][0]["message"]["content"])


def post(client: TestClient, body: dict[str, Any]) -> Any:
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r


def until_hit(client: TestClient, body: dict[str, Any], tries: int = 12) -> Any:
    """The same request until the cache serves it (each try draws a threshold; the learners are
    seeded, so how many tries it takes is the same on every run)."""
    for _ in range(tries):
        r = post(client, body)
        if r.headers.get("x-llmopt-cache") == "hit":
            return r
    raise AssertionError(f"no hit in {tries} tries")


def logged(home: Path, decision_id: str) -> tuple[int, int]:
    """(decision rows, feedback rows) of ``decision_id`` in the service's event log."""
    log = EventLog(f"sqlite:///{home}/llmopt/events.db")
    with log.engine.connect() as conn:
        d = conn.execute(
            sa.select(sa.func.count()).where(decisions.c.decision_id == decision_id)
        ).scalar_one()
        f = conn.execute(
            sa.select(sa.func.count()).where(feedback.c.decision_id == decision_id)
        ).scalar_one()
    log.close()
    return int(d), int(f)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-cache")


@pytest.fixture(scope="module")
def gw(home: Path, upstream: str) -> Iterator[TestClient]:
    with asgi_service(
        home,
        LLMOPT_UPSTREAM_URL=upstream,
        LLMOPT_GATEWAY_TIMEOUT_S="5",
        LLMOPT_RESPONSE_CACHE_TENANTS=json.dumps(CACHED),
    ) as client:
        yield client


def test_a_repeated_prompt_is_a_hit_with_its_own_decision(gw: TestClient, home: Path) -> None:
    body = ask("Name three primary colours.", "acme")
    first = post(gw, body)
    assert first.headers["x-llmopt-cache"] == "miss"
    assert "x-llmopt-cache-threshold" not in first.headers  # nothing to compare with yet
    hit = until_hit(gw, body)
    decision_id = hit.headers["x-llmopt-decision-id"]
    assert decision_id != first.headers["x-llmopt-decision-id"]
    assert hit.headers["x-llmopt-policy-version"] == "response_cache"
    assert hit.headers["x-llmopt-cache-similarity"] == "1.0000"  # the same messages
    assert hit.headers["x-llmopt-cache-threshold"] != "never"
    model = first.headers["x-llmopt-model"]
    assert hit.headers["x-llmopt-model"] == hit.json()["model"] == model
    assert text(hit) == text(first) and hit.json()["id"] == f"chatcmpl-{decision_id}"
    # The hit is no model's decision: not in the event log, and its feedback is the cache's.
    fb = gw.post("/feedback", json={"decision_id": decision_id, "quality": 0.9})
    assert fb.status_code == 200, fb.text
    assert fb.json()["status"] == "stored" and fb.json()["reward"] == pytest.approx(0.9, abs=1e-3)
    assert logged(home, decision_id) == (0, 0)
    again = gw.post("/feedback", json={"decision_id": decision_id, "quality": 0.9})
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    other = gw.post("/feedback", json={"decision_id": decision_id, "quality": 0.1})
    assert other.status_code == 409 and other.json()["error"]["code"] == "conflicting_feedback"
    # The routed decision's own feedback is stored and learned as before.
    first_id = first.headers["x-llmopt-decision-id"]
    fb = gw.post("/feedback", json={"decision_id": first_id, "quality": 0.8})
    assert fb.status_code == 200 and logged(home, first_id) == (1, 1)


def test_a_paraphrase_is_a_semantic_hit(gw: TestClient) -> None:
    answers = {text(post(gw, ask("How do I reverse a list in Python?", "acme")))}
    variants = [
        "How can I reverse a Python list?",
        "How do I reverse a Python list?",
        "How can I reverse a list in Python?",
        "How do you reverse a list in Python?",
        "In Python, how do I reverse a list?",
    ]
    for variant in variants:
        r = post(gw, ask(variant, "acme"))
        if r.headers["x-llmopt-cache"] == "hit":
            assert 0.9 <= float(r.headers["x-llmopt-cache-similarity"]) < 1.0
            assert text(r) in answers
            return
        answers.add(text(r))  # a miss: its answer is cached too
    raise AssertionError("no paraphrase was served from the cache")


def test_an_unrelated_prompt_is_never_a_candidate(gw: TestClient) -> None:
    post(gw, ask("Write a haiku about autumn leaves.", "acme"))
    r = post(gw, ask("What is the boiling point of water at sea level?", "acme"))
    assert r.headers["x-llmopt-cache"] == "miss" and "x-llmopt-cache-similarity" not in r.headers


def test_another_tenant_never_gets_the_answer(gw: TestClient) -> None:
    body = ask("List the planets of the solar system.", "acme")
    post(gw, body)
    until_hit(gw, body)  # acme's answer is cached
    # beta (opted in too) has its own store, empty of this prompt: nothing to compare with
    r = post(gw, {**body, "llmopt": {"tenant": "beta"}})
    assert r.headers["x-llmopt-cache"] == "miss" and "x-llmopt-cache-similarity" not in r.headers
    assert r.headers["x-llmopt-policy-version"] != "response_cache"
    # nor do other options of acme's (another willingness to pay: another scope)
    r = post(gw, {**body, "llmopt": {"tenant": "acme", "willingness_to_pay": 0.2}})
    assert r.headers["x-llmopt-cache"] == "miss" and "x-llmopt-cache-similarity" not in r.headers


def test_a_tenant_not_opted_in_is_never_cached(gw: TestClient, home: Path) -> None:
    body = ask("Name three primary colours.", "globex")
    ids = set()
    for _ in range(4):
        r = post(gw, body)
        assert "x-llmopt-cache" not in r.headers
        assert r.headers["x-llmopt-policy-version"] != "response_cache"
        ids.add(r.headers["x-llmopt-decision-id"])
    assert len(ids) == 4 and all(logged(home, d)[0] == 1 for d in ids)


def test_requests_the_cache_does_not_take_and_bad_input(gw: TestClient) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    body = ask("Name three primary colours.", "acme", tools=tools, model="gpt-4o-mini")
    assert "x-llmopt-cache" not in post(gw, body).headers
    bad = gw.post(
        "/v1/chat/completions",
        json={**ask("Name three primary colours.", "acme"), "llmopt": {"models": ["gpt-9"]}},
    )
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "llmopt.models"
    unknown = gw.post("/feedback", json={"decision_id": "0" * 32, "quality": 0.5})
    assert unknown.status_code == 404  # the service's answer, through the cache's watch


def test_a_streamed_hit_replays_the_answer_and_ends_in_done(gw: TestClient) -> None:
    body = ask("Explain photosynthesis in one sentence.", "acme", stream=True)

    def stream() -> tuple[Any, list[str]]:
        with gw.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            return r.headers, [line for line in r.iter_lines() if line]

    def content(lines: list[str]) -> str:
        chunks = [json.loads(line[6:]) for line in lines[:-1]]
        return "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )

    headers, lines = stream()
    assert headers["x-llmopt-cache"] == "miss" and lines[-1] == "data: [DONE]"
    for _ in range(12):
        hit_headers, hit_lines = stream()
        if hit_headers["x-llmopt-cache"] == "hit":
            break
        headers, lines = hit_headers, hit_lines  # drew "never": this answer replaced the other
    else:
        raise AssertionError("no streamed hit")
    assert hit_headers["content-type"].startswith("text/event-stream")
    assert hit_lines[-1] == "data: [DONE]" and content(hit_lines) == content(lines)
    chunks = [json.loads(line[6:]) for line in hit_lines[:-1]]
    assert {c["model"] for c in chunks} == {headers["x-llmopt-model"]}
    assert chunks[-1]["choices"][0]["finish_reason"]
    # the same answer, asked without streaming: the reassembled completion
    expected = content(lines)
    for _ in range(12):
        plain = post(gw, {**body, "stream": False})
        if plain.headers["x-llmopt-cache"] == "hit":
            assert text(plain) == expected
            break
        expected = text(plain)
    else:
        raise AssertionError("no hit")


def test_bad_feedback_on_hits_moves_the_learned_threshold_to_never(gw: TestClient) -> None:
    """Hits judged useless (quality 0) and routed answers judged good (quality 1): each tenant's
    learner (three tenants, three seeds) ends up drawing "never"; hits stop."""
    for tenant in ("t1", "t2", "t3"):
        body = ask(f"Summarise the plot of Hamlet, please ({tenant}).", tenant)
        arms: list[str] = []
        hits: list[bool] = []
        for _ in range(25):
            r = post(gw, body)
            hit = r.headers["x-llmopt-cache"] == "hit"
            hits.append(hit)
            if "x-llmopt-cache-threshold" in r.headers:
                arms.append(r.headers["x-llmopt-cache-threshold"])
            quality = 0.0 if hit else 1.0
            fb = gw.post(
                "/feedback",
                json={"decision_id": r.headers["x-llmopt-decision-id"], "quality": quality},
            )
            assert fb.status_code == 200, fb.text
        assert sum(hits[:10]) >= 3, (tenant, arms)  # at first every threshold is tried
        assert sum(hits[-10:]) <= 1, (tenant, arms)
        assert arms[-8:].count("never") >= 7, (tenant, arms)


def test_an_answer_expires(tmp_path: Path, upstream: str) -> None:
    with asgi_service(
        tmp_path,
        LLMOPT_UPSTREAM_URL=upstream,
        LLMOPT_RESPONSE_CACHE_TENANTS='["acme"]',
        LLMOPT_RESPONSE_CACHE_TTL_S="0.5",
    ) as client:
        body = ask("Name three primary colours.", "acme")
        post(client, body)
        until_hit(client, body)
        time.sleep(0.6)
        r = post(client, body)
        assert (
            r.headers["x-llmopt-cache"] == "miss" and "x-llmopt-cache-similarity" not in r.headers
        )


def test_the_cache_is_off_by_default(tmp_path: Path, upstream: str) -> None:
    with asgi_service(tmp_path, LLMOPT_UPSTREAM_URL=upstream) as client:
        body = ask("Name three primary colours.", "acme")
        ids = []
        for _ in range(3):
            r = post(client, body)
            assert not any(h.startswith("x-llmopt-cache") for h in r.headers)
            assert r.headers["x-llmopt-policy-version"] != "response_cache"
            ids.append(r.headers["x-llmopt-decision-id"])
        fb = client.post("/feedback", json={"decision_id": ids[0], "quality": 0.7})
        assert fb.status_code == 200 and fb.json()["status"] == "stored"
        assert all(logged(tmp_path, d)[0] == 1 for d in ids)


def test_a_key_bound_to_another_tenant_cannot_rate_a_hit(tmp_path: Path, upstream: str) -> None:
    with asgi_service(
        tmp_path,
        LLMOPT_UPSTREAM_URL=upstream,
        LLMOPT_RESPONSE_CACHE_TENANTS='["acme", "beta"]',
        LLMOPT_CLIENT_KEYS="acme-key, beta-key",
        LLMOPT_CLIENT_KEY_TENANTS='{"acme-key": ["acme"], "beta-key": ["beta"]}',
    ) as client:
        acme = {"authorization": "Bearer acme-key"}
        body = ask("Name three primary colours.", "acme")
        assert client.post("/v1/chat/completions", json=body, headers=acme).status_code == 200
        for _ in range(12):
            r = client.post("/v1/chat/completions", json=body, headers=acme)
            if r.headers["x-llmopt-cache"] == "hit":
                break
        else:
            raise AssertionError("no hit")
        rating = {"decision_id": r.headers["x-llmopt-decision-id"], "quality": 0.9}
        other = client.post("/feedback", json=rating, headers={"authorization": "Bearer beta-key"})
        assert other.status_code == 403 and other.json()["error"]["code"] == "forbidden"
        mine = client.post("/feedback", json=rating, headers=acme)
        assert mine.status_code == 200 and mine.json()["status"] == "stored"


def shared_env(upstream: str, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """Settings of services caching tenant acme's answers, their shared state in Redis."""
    return {
        "LLMOPT_UPSTREAM_URL": upstream,
        "LLMOPT_GATEWAY_TIMEOUT_S": "5",
        "LLMOPT_SERVING_FEATURES": "off",
        "LLMOPT_RESPONSE_CACHE_TENANTS": json.dumps(["acme"]),
        "LLMOPT_SERVING_SHARED_STATE": "redis",
        "LLMOPT_REDIS_URL": redis_url,
        "LLMOPT_SERVING_SHARED_STATE_PREFIX": prefix,
        **extra,
    }


@pytest.mark.services
def test_a_hits_feedback_is_taken_by_any_worker_sharing_redis(
    tmp_path: Path, upstream: str, redis_url: str, prefix: str
) -> None:
    """Two services on one Redis (the shared state): a hit served by one is rated through the
    other, learned there once, and the first one answers the same feedback as a duplicate and
    another as a conflict. Without shared state the other one does not know the hit (404)."""
    env = shared_env(upstream, redis_url, prefix)
    with asgi_service(tmp_path / "a", **env) as a, asgi_service(tmp_path / "b", **env) as b:
        body = ask("How do I reverse a list in Python?", "acme")
        post(a, body)
        hit = until_hit(a, body).headers["x-llmopt-decision-id"]
        rating = {"decision_id": hit, "quality": 0.9}
        r = b.post("/feedback", json=rating)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "stored" and r.json()["reward"] == pytest.approx(0.9)
        r = a.post("/feedback", json=rating)  # the client retries on the worker that served
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "duplicate"
        r = a.post("/feedback", json={"decision_id": hit, "quality": 0.1})
        assert r.status_code == 409, r.text
    store = redis.Redis.from_url(redis_url)
    ttl = int(store.ttl(f"{prefix}rcache:pending:{hit}"))  # type: ignore[arg-type]
    store.close()
    assert ttl > 86_000
    local = {k: v for k, v in env.items() if "SHARED_STATE" not in k and k != "LLMOPT_REDIS_URL"}
    with (
        asgi_service(tmp_path / "c", **local) as a,
        asgi_service(tmp_path / "d", **local) as b,
    ):
        body = ask("How do I reverse a list in Python?", "acme")
        post(a, body)
        hit = until_hit(a, body).headers["x-llmopt-decision-id"]
        r = b.post("/feedback", json={"decision_id": hit, "quality": 0.9})
        assert r.status_code == 404, r.text


@pytest.mark.services
def test_an_answer_cached_behind_one_service_is_served_by_another(
    tmp_path: Path, upstream: str, redis_url: str, prefix: str
) -> None:
    """``LLMOPT_RESPONSE_CACHE_SHARED``: the answer one service cached is a hit on the other
    (its text, not a new upstream call), and the cache's Redis keys hold no prompt text."""
    env = shared_env(upstream, redis_url, prefix, LLMOPT_RESPONSE_CACHE_SHARED="true")
    prompt = "Name three prime numbers greater than 50."
    with asgi_service(tmp_path / "a", **env) as a, asgi_service(tmp_path / "b", **env) as b:
        first = post(a, ask(prompt, "acme"))
        assert first.headers.get("x-llmopt-cache") != "hit"
        seen = post(b, ask(prompt, "acme"))  # b never answered it: a candidate from a
        assert seen.headers["x-llmopt-cache-similarity"] == "1.0000", seen.headers
        hit = until_hit(b, ask(prompt, "acme"))
        assert text(hit) == text(first)
    store = redis.Redis.from_url(redis_url)
    records: list[Any] = []
    for k in store.scan_iter(match=f"{prefix}rcache:entries:*"):
        records += cast(list[Any], store.xrange(k))
    store.close()
    dumped = b"".join(v for _, fields in records for v in fields.values())
    assert dumped and prompt.encode() not in dumped
