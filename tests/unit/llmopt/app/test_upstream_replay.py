"""The replay upstream through its ASGI app: recorded outcomes, OpenAI shapes, latency, faults."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from llmopt.app.cli import app as cli
from llmopt.app.upstream_replay import (
    DEFAULT_TTFT_MS,
    Fault,
    UpstreamReplay,
    create_app,
    filler_text,
    parse_fail_option,
)
from llmopt.catalog import ModelCatalog, ModelSpec
from llmopt.routing_data import RoutingData, routing_data_from_frame
from llmopt.settings import get_settings

OUTCOMES = {"big": (0.9, 0.01, 400), "small": (0.4, 0.001, 120)}
PROMPTS = [f"question number {i}?" for i in range(5)]


def spec(model: str, ttft_ms: float, tokens_per_second: float) -> ModelSpec:
    return ModelSpec(
        id=model,
        provider="test",
        context_window=8192,
        ttft_ms=ttft_ms,
        tokens_per_second=tokens_per_second,
        input_per_mtok=1.0,
        output_per_mtok=2.0,
        price_source="override",
        parameters={},
    )


CATALOG = ModelCatalog([spec("big", 800.0, 50.0)])  # "small" is not in it: the default timing


def rows() -> list[dict[str, Any]]:
    return [
        dict(
            dataset="d",
            split="s",
            sample_id=f"p{i}",
            prompt=prompt,
            model=m,
            quality=round(q - i / 100, 4),
            cost_usd=c * (i + 1),
            input_chars=len(prompt),
            output_chars=n + i,
        )
        for i, prompt in enumerate(PROMPTS)
        for m, (q, c, n) in OUTCOMES.items()
    ]


@pytest.fixture(scope="module")
def data() -> RoutingData:
    return routing_data_from_frame(pd.DataFrame(rows()))


@pytest.fixture
def client(data: RoutingData) -> Iterator[TestClient]:
    with TestClient(create_app(data, catalog=CATALOG, speed=1000)) as c:
        yield c


def chat(client: TestClient, model: str, prompt: str | list[Any], **body: Any) -> Any:
    messages = [{"role": "user", "content": prompt}]
    return client.post("/v1/chat/completions", json={"model": model, "messages": messages, **body})


def sse(text: str) -> list[Any]:
    """The payloads of an event stream, in order; ``[DONE]`` as the string."""
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [e[6:] if e[6:] == "[DONE]" else json.loads(e[6:]) for e in events]


def test_models_lists_the_file_models(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["big", "small"]
    assert all(m["object"] == "model" for m in body["data"])


def test_a_recorded_prompt_answers_with_its_outcome(client: TestClient) -> None:
    r = chat(client, "small", PROMPTS[2])
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "small"
    assert body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert len(content) == 122  # the recorded output_chars of (prompt 2, small)
    assert body["usage"] == {
        "prompt_tokens": 5,  # 18 characters / 4, rounded up
        "completion_tokens": 31,
        "total_tokens": 36,
    }
    assert float(r.headers["x-replay-quality"]) == 0.38
    assert float(r.headers["x-replay-cost-usd"]) == pytest.approx(0.003)
    assert r.headers["x-replay-sample-id"] == "p2" and r.headers["x-replay-matched"] == "true"
    # modelled latency at speed 1: the default timing (not in the catalog) for 31 tokens
    assert float(r.headers["x-replay-latency-ms"]) == pytest.approx(DEFAULT_TTFT_MS + 310.0)
    again = chat(client, "small", PROMPTS[2]).json()["choices"][0]["message"]["content"]
    assert again == content  # deterministic


def test_the_last_user_message_is_the_prompt_and_content_parts_count(client: TestClient) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": PROMPTS[0]},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "user", "content": [{"type": "text", "text": PROMPTS[4]}]},
    ]
    r = client.post(
        "/v1/chat/completions",
        json={"model": "big", "messages": messages, "tools": [], "temperature": 0.2},
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-replay-sample-id"] == "p4"
    assert float(r.headers["x-replay-quality"]) == 0.86
    # every message's text counts in prompt_tokens
    chars = len("be brief") + len(PROMPTS[0]) + len(PROMPTS[4])
    assert r.json()["usage"]["prompt_tokens"] == -(-chars // 4)


def test_an_unknown_prompt_gets_a_recorded_row_picked_by_its_hash(
    client: TestClient, data: RoutingData
) -> None:
    first = chat(client, "big", "something nobody recorded")
    second = chat(client, "big", "something nobody recorded")
    assert first.status_code == 200 and first.headers["x-replay-matched"] == "false"
    assert first.headers["x-replay-sample-id"] == second.headers["x-replay-sample-id"]
    i = data.sample_ids.index(first.headers["x-replay-sample-id"])
    assert float(first.headers["x-replay-quality"]) == data.quality[i, 0]
    picked = {chat(client, "big", f"other {k}").headers["x-replay-sample-id"] for k in range(30)}
    assert len(picked) > 1  # the hash spreads prompts over the rows


def test_an_unknown_model_is_openai_s_404(client: TestClient) -> None:
    r = chat(client, "gpt-9", PROMPTS[0])
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert error["type"] == "invalid_request_error" and "gpt-9" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"\xff\xfe", None),
        ([1, 2], None),
        ({"messages": [{"role": "user", "content": "q"}]}, "model"),
        ({"model": 3, "messages": [{"role": "user", "content": "q"}]}, "model"),
        ({"model": "big"}, "messages"),
        ({"model": "big", "messages": []}, "messages"),
        ({"model": "big", "messages": "hello"}, "messages"),
        ({"model": "big", "messages": [{"content": "q"}]}, "messages[0]"),
        ({"model": "big", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "big", "messages": [{"role": "user", "content": [{"type": "text"}]}]}, None),
        ({"model": "big", "messages": [{"role": "user", "content": "q"}], "stream": "yes"}, None),
        ({"model": "big", "messages": [{"role": "user", "content": "q"}], "max_tokens": 0}, None),
        ({"model": "big", "messages": [{"role": "user", "content": "q"}], "temperature": 3}, None),
        ({"model": "big", "messages": [{"role": "user", "content": "q"}], "n": 2}, "n"),
        (
            {
                "model": "big",
                "messages": [{"role": "user", "content": "q"}],
                "stream_options": {"include_usage": "yes"},
            },
            "stream_options",
        ),
    ],
)
def test_bad_input_is_a_400_in_openai_s_shape(
    client: TestClient, body: Any, param: str | None
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post("/v1/chat/completions", content=content)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param


def test_unknown_routes_and_methods_answer_in_openai_s_shape(client: TestClient) -> None:
    assert client.get("/v1/nothing").json()["error"]["message"].startswith("Not Found")
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_max_tokens_cuts_the_answer(client: TestClient) -> None:
    body = chat(client, "big", PROMPTS[0], max_tokens=10).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["message"]["content"]) == 40
    assert body["usage"]["completion_tokens"] == 10


def test_streaming_sends_role_content_finish_usage_then_done(client: TestClient) -> None:
    whole = chat(client, "big", PROMPTS[1]).json()
    r = chat(client, "big", PROMPTS[1], stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert float(r.headers["x-replay-quality"]) == 0.89
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]]
    assert len(content) > 5  # spread over several chunks
    assert "".join(content) == whole["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])


def test_streaming_without_include_usage_has_no_usage(client: TestClient) -> None:
    chunks = sse(chat(client, "small", PROMPTS[1], stream=True).text)[:-1]
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_latency_follows_the_catalog_divided_by_speed(data: RoutingData) -> None:
    with TestClient(create_app(data, catalog=CATALOG, speed=10)) as client:
        started = time.perf_counter()
        r = chat(client, "big", PROMPTS[0], max_tokens=10)  # 800 ms + 10 tokens at 50/s = 1 s
        slow = time.perf_counter() - started
        assert r.headers["x-replay-latency-ms"] == "1000.0"
        started = time.perf_counter()
        chat(client, "small", PROMPTS[0], max_tokens=10)  # 300 ms + 10 at 100/s = 0.4 s
        fast = time.perf_counter() - started
    assert slow >= 0.1 and fast >= 0.04
    assert slow > fast


def test_replay_timing_and_speed(data: RoutingData) -> None:
    replay = UpstreamReplay(data, catalog=CATALOG)
    assert replay.timing("big") == (800.0, 50.0)
    assert replay.timing("small") == (300.0, 100.0)
    with pytest.raises(ValueError, match="speed"):
        UpstreamReplay(data, catalog=CATALOG, speed=0)


def test_faults_are_injected_listed_and_cleared(client: TestClient) -> None:
    r = client.post("/admin/faults", json={"model": "big", "error_rate": 1.0})
    assert r.json()["faults"] == [
        {"model": "big", "error_rate": 1.0, "kind": "500", "timeout_s": 30.0, "retry_after_s": 1.0}
    ]
    failed = chat(client, "big", PROMPTS[0])
    assert failed.status_code == 500 and failed.headers["x-replay-fault"] == "500"
    assert failed.json()["error"]["type"] == "server_error"
    assert chat(client, "small", PROMPTS[0]).status_code == 200
    client.post("/admin/faults", json={"model": "*", "error_rate": 1, "kind": "429"})
    limited = chat(client, "small", PROMPTS[0], stream=True)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert chat(client, "big", PROMPTS[0]).status_code == 500  # its own fault wins over "*"
    assert [f["model"] for f in client.get("/admin/faults").json()["faults"]] == ["*", "big"]
    client.post("/admin/faults", json={"model": "big", "error_rate": 0})
    assert chat(client, "big", PROMPTS[0]).status_code == 429
    assert client.post("/admin/faults", json={"model": "*", "error_rate": 0}).json() == {
        "faults": []
    }
    assert chat(client, "big", PROMPTS[0]).status_code == 200


def test_the_unknown_model_is_a_404_before_any_fault(client: TestClient) -> None:
    client.post("/admin/faults", json={"model": "*", "error_rate": 1})
    assert chat(client, "gpt-9", PROMPTS[0]).status_code == 404


def test_a_timeout_fault_waits_then_answers_504(client: TestClient) -> None:
    body = {"model": "small", "error_rate": 1, "kind": "timeout", "timeout_s": 0.2}
    client.post("/admin/faults", json=body)
    started = time.perf_counter()
    r = chat(client, "small", PROMPTS[0])
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    assert time.perf_counter() - started >= 0.2  # not divided by speed


def test_fault_draws_are_seeded(data: RoutingData) -> None:
    def pattern(seed: int) -> list[int]:
        fault = Fault(model="big", error_rate=0.5)
        with TestClient(
            create_app(data, catalog=CATALOG, speed=1000, seed=seed, faults=[fault])
        ) as c:
            return [chat(c, "big", PROMPTS[0]).status_code for _ in range(40)]

    first = pattern(7)
    assert first == pattern(7) and first != pattern(8)
    assert 8 <= first.count(500) <= 32 and set(first) == {200, 500}


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"error_rate": 0.5},
        {"model": "gpt-9", "error_rate": 0.5},
        {"model": "big", "error_rate": 1.5},
        {"model": "big", "error_rate": True},
        {"model": "big", "error_rate": 0.5, "kind": "503"},
        {"model": "big", "error_rate": 0.5, "timeout_s": -1},
        {"model": "big", "error_rate": 0.5, "color": "red"},
    ],
)
def test_bad_faults_are_400(client: TestClient, body: Any) -> None:
    r = client.post("/admin/faults", json=body)
    assert r.status_code == 400 and r.json()["error"]["message"]
    assert client.get("/admin/faults").json() == {"faults": []}


def test_fail_option_parsing() -> None:
    assert parse_fail_option("big=0.2") == Fault(model="big", error_rate=0.2)
    assert parse_fail_option("*=1:429").kind == "429"
    assert parse_fail_option("a=b=0.5:timeout", timeout_s=3) == Fault(
        model="a=b", error_rate=0.5, kind="timeout", timeout_s=3.0
    )
    for bad in ("big", "=0.2", "big=x", "big=0.2:503", "big=2"):
        with pytest.raises(ValueError, match="--fail"):
            parse_fail_option(bad)


def test_filler_text_is_deterministic_and_exact() -> None:
    assert filler_text("k", 0) == ""
    assert len(filler_text("k", 1234)) == 1234
    assert filler_text("k", 200) == filler_text("k", 300)[:200]
    assert filler_text("k", 200) != filler_text("j", 200)


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[CliRunner]:
    monkeypatch.setenv("LLMOPT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LLMOPT_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def test_cli_errors_are_one_line_and_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    csv = tmp_path / "r.csv"
    pd.DataFrame(rows()).to_csv(csv, index=False)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        cases = {
            "no such file": ["--data", str(tmp_path / "missing.parquet")],
            "missing column": ["--data", str(tmp_path / "bad.csv")],
            "MODEL=RATE": ["--data", str(csv), "--fail", "big"],
            "unknown model 'gpt-9'": ["--data", str(csv), "--fail", "gpt-9=0.5"],
            "--speed must be positive": ["--data", str(csv), "--speed", "0"],
            f"cannot listen on 127.0.0.1:{port}": ["--data", str(csv), "--port", port],
        }
        for expected, args in cases.items():
            out = runner.invoke(cli, ["upstream-replay", *args])
            assert out.exit_code == 2, (args, out.output)
            assert expected in out.output and "Traceback" not in out.output
            assert out.output.count("\n") == 1, out.output


def test_catalog_models_the_file_lacks_answer_as_their_price_rank_stand_in(
    data: RoutingData,
) -> None:
    from llmopt.catalog import load_catalog  # noqa: PLC0415

    catalog = load_catalog()
    with TestClient(create_app(data, catalog=catalog, speed=1000)) as c:
        cheap = min(
            catalog.ids, key=lambda m: catalog[m].input_per_mtok + catalog[m].output_per_mtok
        )
        dear = max(
            catalog.ids, key=lambda m: catalog[m].input_per_mtok + catalog[m].output_per_mtok
        )
        answers = {m: chat(c, m, PROMPTS[0]) for m in (cheap, dear)}
    assert all(r.status_code == 200 for r in answers.values())
    by_cost = sorted(data.models, key=lambda m: data.cost_usd[:, data.models.index(m)].mean())
    assert answers[cheap].headers["x-replay-answers-as"] == by_cost[0]
    assert answers[dear].headers["x-replay-answers-as"] == by_cost[-1]
