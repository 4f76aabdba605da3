"""``llmopt upstream-replay`` as a real process, called over HTTP with the official OpenAI client.

The server replays the shipped AlpacaEval file at speed 1 (the catalog's real latency), so the
requests are kept short with ``max_tokens`` except where the whole recorded answer is checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from llmopt.app.processes import free_port, stop_group
from llmopt.routing_data import DEMO_DATA, RoutingData, load_routing_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
FAST, SLOW, LIMITED = "gemma-2b-it", "claude-2.1", "vicuna-7b-v1.5"  # ttft 200 ms, 1300 ms


@pytest.fixture(scope="module")
def data() -> RoutingData:
    return load_routing_data(DEMO_DATA)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("replay-home")
    log = home / "server.log"
    port = free_port()
    env = {**os.environ, "LLMOPT_HOME": str(home)}
    env.pop("LLMOPT_DATABASE_URL", None)
    cmd = [sys.executable, "-m", "llmopt.app.cli", "upstream-replay", "--port", str(port)]
    cmd += ["--fail", f"{LIMITED}=1:429", "--seed", "3"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"upstream-replay did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        assert url in log.read_text().splitlines()  # it prints its base URL
        yield url
    finally:
        stop_group(proc)


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30) as c:
        yield c


def short_row(data: RoutingData, model: str) -> int:
    """A prompt whose recorded answer by ``model`` is short (100 to 400 characters)."""
    j = data.models.index(model)
    return next(i for i in range(data.n_prompts) if 100 <= data.output_chars[i, j] <= 400)


def test_models_lists_the_file_models(client: openai.OpenAI, data: RoutingData) -> None:
    assert sorted(m.id for m in client.models.list()) == sorted(data.models)


def test_a_completion_carries_the_recorded_outcome(
    client: openai.OpenAI, data: RoutingData
) -> None:
    i, j = short_row(data, FAST), data.models.index(FAST)
    raw = client.chat.completions.with_raw_response.create(
        model=FAST, messages=[{"role": "user", "content": data.prompts[i]}]
    )
    assert float(raw.headers["x-replay-quality"]) == data.quality[i, j]
    assert float(raw.headers["x-replay-cost-usd"]) == data.cost_usd[i, j]
    assert raw.headers["x-replay-sample-id"] == data.sample_ids[i]
    completion = raw.parse()
    content = completion.choices[0].message.content
    assert content is not None and len(content) == data.output_chars[i, j]
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == -(-len(content) // 4)
    assert completion.usage.prompt_tokens == -(-len(data.prompts[i]) // 4)
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_streaming_sends_chunks_then_usage(client: openai.OpenAI, data: RoutingData) -> None:
    i = short_row(data, FAST)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": data.prompts[i]}]
    whole = client.chat.completions.create(model=FAST, messages=messages)
    stream = client.chat.completions.create(
        model=FAST,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_latency_follows_the_catalog_s_time_to_first_token(
    client: openai.OpenAI, data: RoutingData
) -> None:
    def first_chunk_s(model: str) -> float:
        started = time.perf_counter()
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": data.prompts[0]}],
            stream=True,
            max_tokens=1,
        )
        next(iter(stream))
        elapsed = time.perf_counter() - started
        stream.close()
        return elapsed

    slow, fast = first_chunk_s(SLOW), first_chunk_s(FAST)
    assert 1.3 <= slow < 5.0 and 0.2 <= fast < slow - 0.5


def test_injected_errors_surface_as_the_client_s_exceptions(
    client: openai.OpenAI, base_url: str, data: RoutingData
) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": data.prompts[1]}]
    admin = base_url.replace("/v1", "/admin/faults")
    try:
        check_errors(client, admin, messages)
    finally:
        httpx.post(admin, json={"model": "*", "error_rate": 0}).raise_for_status()
    ok = client.chat.completions.create(model=FAST, messages=messages, max_tokens=2)
    assert ok.choices[0].finish_reason == "length"


def check_errors(
    client: openai.OpenAI, admin: str, messages: list[ChatCompletionMessageParam]
) -> None:
    assert [f["model"] for f in httpx.get(admin).json()["faults"]] == [LIMITED]
    with pytest.raises(openai.RateLimitError) as limited:  # --fail at start
        client.chat.completions.create(model=LIMITED, messages=messages)
    assert limited.value.response.headers["retry-after"] == "1"
    httpx.post(admin, json={"model": FAST, "error_rate": 1, "kind": "500"}).raise_for_status()
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=FAST, messages=messages, max_tokens=2)
    httpx.post(admin, json={"model": FAST, "error_rate": 1, "kind": "timeout", "timeout_s": 5})
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.5).chat.completions.create(
            model=FAST,
            messages=messages,
            max_tokens=2,
        )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=messages)
