"""The OpenAI-compatible gateway, in process (``Service.to_asgi()`` + a TestClient), forwarding
over real HTTP to ``llmopt upstream-replay`` (uvicorn on a free port, recorded AlpacaEval
outcomes, catalog models answered by their price-rank stand-ins)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from llmopt.event_log import EventLog, PendingWrites, decisions, feedback
from tests.integration.serving.conftest import asgi_service

pytestmark = pytest.mark.integration

ASK = {"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}


def serve(tmp: Path, **env: str) -> AbstractContextManager[TestClient]:
    return asgi_service(tmp, **env)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway")


@pytest.fixture(scope="module")
def gw(home: Path, upstream: str) -> Iterator[TestClient]:
    with serve(home, LLMOPT_UPSTREAM_URL=upstream, LLMOPT_GATEWAY_TIMEOUT_S="5") as client:
        yield client


def faults(upstream: str, **fault: Any) -> None:
    httpx.post(upstream.removesuffix("/v1") + "/admin/faults", json=fault).raise_for_status()


def rows(home: Path, decision_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The decision row and its feedback rows, read from the service's own event log."""
    log = EventLog(f"sqlite:///{home}/llmopt/events.db")
    with log.engine.connect() as conn:
        d = conn.execute(sa.select(decisions).where(decisions.c.decision_id == decision_id)).one()
        fbs = conn.execute(
            sa.select(feedback).where(feedback.c.decision_id == decision_id)
        ).fetchall()
    log.close()
    return dict(d._mapping), [dict(f._mapping) for f in fbs]


def test_models_list_auto_and_every_catalog_model(gw: TestClient) -> None:
    body = gw.get("/v1/models").json()
    ids = [m["id"] for m in body["data"]]
    assert body["object"] == "list" and ids[0] == "auto" and "gpt-4o" in ids


def test_auto_routes_forwards_and_measures_then_feedback_adds_quality(
    gw: TestClient, home: Path
) -> None:
    r = gw.post("/v1/chat/completions", json=ASK)
    assert r.status_code == 200, r.text
    body = r.json()
    decision_id, model = r.headers["x-llmopt-decision-id"], r.headers["x-llmopt-model"]
    assert body["model"] == model and body["choices"][0]["message"]["content"]
    assert r.headers["x-llmopt-policy-version"] and r.headers["x-llmopt-attempts"] == "1"
    row, fbs = rows(home, decision_id)
    call = (
        json.loads(row["context"])["call"]
        if isinstance(row["context"], str)
        else row["context"]["call"]
    )
    usage = body["usage"]
    assert call["input_tokens"] == usage["prompt_tokens"] and call["latency_ms"] > 0
    assert call["cost_usd"] > 0 and fbs == []  # measured; no quality yet, nothing learned
    # The client's quality completes the reward with what the gateway measured.
    fb = gw.post("/feedback", json={"decision_id": decision_id, "quality": 0.8})
    assert fb.status_code == 200, fb.text
    _, fbs = rows(home, decision_id)
    assert fbs[0]["latency_ms"] == call["latency_ms"] and fbs[0]["cost_usd"] == call["cost_usd"]
    assert fbs[0]["output_tokens"] == usage["completion_tokens"]


def test_a_catalog_model_bypasses_routing_but_is_logged(gw: TestClient) -> None:
    r = gw.post("/v1/chat/completions", json={**ASK, "model": "gpt-4o-mini"})
    assert r.status_code == 200 and r.headers["x-llmopt-model"] == "gpt-4o-mini"
    assert r.json()["model"] == "gpt-4o-mini"


def test_streaming_passes_chunks_through_and_ends_with_done(gw: TestClient, home: Path) -> None:
    with gw.stream("POST", "/v1/chat/completions", json={**ASK, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        model, decision_id = r.headers["x-llmopt-model"], r.headers["x-llmopt-decision-id"]
        lines = [line for line in r.iter_lines() if line]
    # feedback posted the moment the stream ends finds the measurements (kept before [DONE])
    assert (
        gw.post("/feedback", json={"decision_id": decision_id, "quality": 0.5}).status_code == 200
    )
    _, fbs = rows(home, decision_id)
    assert fbs[0]["output_tokens"] and fbs[0]["latency_ms"] and fbs[0]["cost_usd"]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["model"] == model for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert not any(c.get("usage") and not c["choices"] for c in chunks)  # not asked for
    with gw.stream(
        "POST",
        "/v1/chat/completions",
        json={**ASK, "stream": True, "stream_options": {"include_usage": True}},
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    usage = [json.loads(line[6:]) for line in lines[:-1] if '"usage"' in line]
    assert usage and usage[-1]["usage"]["completion_tokens"] > 0


def test_a_failing_upstream_falls_back_and_the_failure_is_learned(
    gw: TestClient, upstream: str, home: Path
) -> None:
    faults(upstream, model="gpt-4o", error_rate=1.0, kind="500")
    try:
        r = gw.post(
            "/v1/chat/completions",
            json={**ASK, "model": "auto", "llmopt": {"models": ["gpt-4o", "gpt-4o-mini"]}},
        )
        assert r.status_code == 200, r.text
        if r.headers["x-llmopt-attempts"] == "2":  # gpt-4o was tried first and failed
            assert r.headers["x-llmopt-model"] == "gpt-4o-mini"
        only = gw.post(
            "/v1/chat/completions",
            json={**ASK, "model": "auto", "llmopt": {"models": ["gpt-4o"]}},
        )
        assert only.status_code == 502 and only.json()["error"]["code"] == "upstream_error"
    finally:
        faults(upstream, model="*", error_rate=0)
    log = EventLog(f"sqlite:///{home}/llmopt/events.db")
    with log.engine.connect() as conn:
        failed = conn.execute(
            sa.select(feedback.c.error_kind, feedback.c.cost_usd, decisions.c.model)
            .join(decisions, decisions.c.decision_id == feedback.c.decision_id)
            .where(feedback.c.error_kind.is_not(None))
        ).fetchall()
    log.close()
    assert failed and all(f.model == "gpt-4o" and f.cost_usd == 0.0 for f in failed)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"not json", 400, None),
        (json.dumps({"model": "auto"}).encode(), 400, "messages"),
        (json.dumps({**ASK, "model": 3}).encode(), 400, "model"),
        (json.dumps({**ASK, "llmopt": {"colour": "red"}}).encode(), 400, "llmopt.colour"),
        (json.dumps({**ASK, "llmopt": {"willingness_to_pay": -1}}).encode(), 400, None),
        (json.dumps({**ASK, "model": "gpt-9"}).encode(), 404, "model"),
        (json.dumps({**ASK, "llmopt": {"models": ["gpt-9"]}}).encode(), 400, "llmopt.models"),
    ],
)
def test_bad_requests_are_4xx_in_one_error_shape(
    gw: TestClient, body: bytes, status: int, field: str | None
) -> None:
    r = gw.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    if field is not None:
        assert error["field"] == field == error["param"]
    assert gw.get("/v1/chat/completions").status_code == 405


def test_without_an_upstream_the_gateway_says_how_to_configure_it(tmp_path: Path) -> None:
    with serve(tmp_path) as client:
        r = client.post("/v1/chat/completions", json=ASK)
    assert r.status_code == 404 and "LLMOPT_UPSTREAM_URL" in r.json()["error"]["message"]


def test_a_conversation_keeps_its_model_until_that_model_fails(
    gw: TestClient, upstream: str
) -> None:
    def turn(conversation: str) -> str:
        r = gw.post("/v1/chat/completions", json={**ASK, "llmopt": {"conversation": conversation}})
        assert r.status_code == 200, r.text
        return r.headers["x-llmopt-model"]

    first = turn("conv-1")
    assert {turn("conv-1") for _ in range(8)} == {first}  # the router would spread these
    faults(upstream, model=first, error_rate=1.0, kind="500")
    try:
        moved = turn("conv-1")  # fails over, and the conversation follows
        assert moved != first
        assert {turn("conv-1") for _ in range(3)} == {moved}
    finally:
        faults(upstream, model="*", error_rate=0)
    bad = gw.post("/v1/chat/completions", json={**ASK, "llmopt": {"conversation": ""}})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "llmopt.conversation"


def test_the_session_header_names_the_conversation(gw: TestClient) -> None:
    def turn(session: str, **options: str) -> str:
        body = {**ASK, "llmopt": options} if options else ASK
        r = gw.post("/v1/chat/completions", json=body, headers={"x-llmopt-session": session})
        assert r.status_code == 200, r.text
        return r.headers["x-llmopt-model"]

    first = turn("sess-1")
    assert {turn("sess-1") for _ in range(8)} == {first}  # the router would spread these
    # the body's conversation wins over the header: the same as naming it in the body
    assert turn("sess-other", conversation="sess-1") == first
    bad = gw.post("/v1/chat/completions", json=ASK, headers={"x-llmopt-session": ""})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "llmopt.conversation"


def test_tools_and_images_go_only_to_models_that_support_them(gw: TestClient) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    vision = {
        **ASK,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}],
    }
    for _ in range(5):
        r = gw.post("/v1/chat/completions", json=vision)
        assert r.status_code == 200, r.text
        assert r.headers["x-llmopt-model"] in {
            "gpt-4.1",
            "gpt-4.1-mini",
            "gpt-4.1-nano",
            "gpt-4o",
            "gpt-4o-mini",
            "claude-sonnet-4",
            "gemini-2.0-flash",
        }
    tools = {**ASK, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
    r = gw.post("/v1/chat/completions", json={**tools, "model": "llama-3.1-8b-instruct"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_capability"
    assert "tools" in r.json()["error"]["message"]


def test_a_stream_is_logged_before_its_first_byte_and_written_after_its_request(
    tmp_path: Path, upstream: str
) -> None:
    """A streamed call's decision write is held until its upstream request is out (the
    writer's work then overlaps the upstream's, not the request's way out), and it is
    committed before the client gets a byte, as every answered decision is."""
    from llmopt.settings import Settings  # noqa: PLC0415
    from serving.gateway import handle_chat  # noqa: PLC0415
    from serving.runtime import ServingRuntime  # noqa: PLC0415

    runtime = ServingRuntime(
        Settings(home=tmp_path, upstream_url=upstream, serving_features="off"), background=False
    )
    gateway = runtime.gateway
    assert gateway is not None
    order: list[str] = []
    logged_at_start: list[bool] = []
    client = gateway.client
    release = PendingWrites.release

    def watched_client() -> Any:
        session = client()
        post = session.post

        def recorded(*args: Any, **kwargs: Any) -> Any:
            order.append("request")
            return post(*args, **kwargs)

        session.post = recorded  # type: ignore[method-assign]
        return session

    def watched_release(self: PendingWrites, calls: Any = None) -> None:
        if self.held:
            order.append("write")
        release(self, calls)

    async def send(message: Mapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = dict(message["headers"])
            decision_id = headers[b"x-llmopt-decision-id"].decode()
            logged_at_start.append(runtime.event_log.get_decision(decision_id) is not None)

    body = json.dumps({**ASK, "stream": True}).encode()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(gateway, "client", watched_client)
            mp.setattr(PendingWrites, "release", watched_release)
            asyncio.run(handle_chat(gateway, body, send))
    finally:
        asyncio.run(gateway.aclose())
        runtime.close()
    assert order == ["request", "write"]
    assert logged_at_start == [True]
