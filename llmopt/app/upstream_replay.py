"""``llmopt upstream-replay``: an OpenAI-compatible server that answers with recorded outcomes.

Tests and the demo need an LLM upstream that is real HTTP, fast, free and deterministic. This one
serves the OpenAI Chat Completions API under ``/v1`` (``GET /v1/models``, ``POST
/v1/chat/completions``, streaming or not, with ``usage``) and answers every request with the
outcome a routing file recorded for that prompt and model:

* the row is the last user message's text matched exactly against the file's prompts (an
  unknown prompt gets a row picked by a hash of its text, so any prompt works, always the same
  way); the column is the requested model, or for a catalog model the file lacks its stand-in,
  the file's model of the same price rank (:func:`stand_ins`; header ``x-replay-answers-as``),
  so ``llmopt serve --upstream`` can forward every catalog model here (a model neither knows
  is a 404, as OpenAI's);
* the file has no answer text, only its length: the answer is deterministic filler of the
  recorded ``output_chars``; ``usage`` counts 4 characters a token;
* the recorded outcome rides in headers, streaming or not: ``x-replay-quality``,
  ``x-replay-cost-usd``, ``x-replay-sample-id``, ``x-replay-matched`` (``true`` when the prompt
  was in the file) and ``x-replay-latency-ms`` (the modelled latency at speed 1), so a harness
  can post the quality as feedback;
* latency follows the catalog: ``ttft_ms`` to the first token, then ``tokens_per_second``, all
  divided by ``speed`` (models the catalog lacks: 300 ms and 100 tokens/s);
* faults on demand: ``POST /admin/faults`` with ``{"model": "<name or *>", "error_rate": 0.2,
  "kind": "500" | "429" | "timeout", "timeout_s": 30}`` replaces that model's fault (``"*"``:
  every model without its own); ``error_rate`` 0 removes it, and ``{"model": "*",
  "error_rate": 0}`` clears them all. A ``timeout`` waits ``timeout_s`` (not scaled by speed),
  then answers 504, so the caller's own timeout fires first.

Examples
--------
>>> import pandas as pd
>>> from starlette.testclient import TestClient
>>> from llmopt.catalog import ModelCatalog
>>> from llmopt.routing_data import routing_data_from_frame
>>> rows = [
...     dict(dataset="d", split="s", sample_id=f"p{i}", prompt=f"question {i}", model=m,
...          quality=q, cost_usd=c, input_chars=10, output_chars=40)
...     for i in range(2) for m, q, c in (("big", 0.9, 0.01), ("small", 0.5, 0.001))
... ]
>>> data = routing_data_from_frame(pd.DataFrame(rows))
>>> app = create_app(data, catalog=ModelCatalog([]), speed=1000)
>>> with TestClient(app) as client:
...     r = client.post("/v1/chat/completions", json={
...         "model": "big", "messages": [{"role": "user", "content": "question 1"}]})
>>> r.status_code, r.headers["x-replay-quality"], r.json()["usage"]["completion_tokens"]
(200, '0.9', 10)
>>> len(r.json()["choices"][0]["message"]["content"])
40
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import typer

if TYPE_CHECKING:  # the server's imports wait for the command: `llmopt --help` stays fast
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from llmopt.catalog import ModelCatalog
    from llmopt.routing_data import RoutingData

DEFAULT_TTFT_MS = 300.0
"""Time to first token of a model the catalog does not know."""
DEFAULT_TOKENS_PER_SECOND = 100.0
"""Generation speed of a model the catalog does not know."""
CHARS_PER_TOKEN = 4
MAX_STREAM_CHUNKS = 48
"""Content chunks of a streamed answer at most (one per ~4 tokens below that)."""
FaultKind = Literal["500", "429", "timeout"]
FAULT_KINDS: tuple[FaultKind, ...] = ("500", "429", "timeout")
_WORDS = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut "
    "labore et dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris "
    "nisi aliquip ex ea commodo consequat duis aute irure in reprehenderit voluptate velit esse "
    "cillum eu fugiat nulla pariatur excepteur sint occaecat cupidatat non proident sunt culpa qui "
    "officia deserunt mollit anim id est laborum"
).split()


class ReplayError(Exception):
    """An answer in OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.code, self.param, self.headers = code, param, headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI's clients parse."""
        error = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": {**error, "code": self.code}}


@dataclass(frozen=True)
class Fault:
    """Errors injected into one model's answers (``"*"``: every model without its own)."""

    model: str
    error_rate: float
    kind: FaultKind = "500"
    timeout_s: float = 30.0
    retry_after_s: float = 1.0


@dataclass(frozen=True)
class ChatRequest:
    """What the replay uses of a Chat Completions body (the rest, e.g. tools, is ignored)."""

    model: str
    prompt: str
    input_chars: int
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None


@dataclass(frozen=True)
class Outcome:
    """The recorded outcome that answers a request."""

    sample_id: str
    matched: bool
    quality: float
    cost_usd: float
    output_chars: int


@dataclass(frozen=True)
class Answer:
    """What the replay answers: the outcome, the text, its finish reason and usage."""

    outcome: Outcome
    text: str
    finish_reason: str
    usage: dict[str, int]


def _bad(message: str, param: str | None = None) -> ReplayError:
    return ReplayError(400, message, param=param)


def _text(content: Any, where: str) -> str:
    """A message's text: a string, or the ``text`` parts of a list (others ignored)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or a list of content parts", where)
    texts = []
    for k, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(f"{where}[{k}] must be an object with a type", f"{where}[{k}]")
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise _bad(f"{where}[{k}].text must be a string", f"{where}[{k}].text")
            texts.append(part["text"])
    return "\n".join(texts)


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a Chat Completions body; a :class:`ReplayError` (400) names what is wrong.

    >>> parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).prompt
    'hi'
    >>> parse_chat_request({"model": "m", "messages": []})
    Traceback (most recent call last):
    ...
    llmopt.app.upstream_replay.ReplayError: messages must be a non-empty list
    """
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model must be a non-empty string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    texts: list[tuple[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise _bad(f"messages[{i}] must be an object with a string role", f"messages[{i}]")
        texts.append((msg["role"], _text(msg.get("content"), f"messages[{i}].content")))
    users = [text for role, text in texts if role == "user"]
    stream, options = body.get("stream", False), body.get("stream_options")
    if not isinstance(stream, bool | None):
        raise _bad("stream must be a boolean", "stream")
    if options is not None and (
        not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool)
    ):
        raise _bad("stream_options.include_usage must be a boolean", "stream_options")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise _bad("max_tokens must be a positive integer", "max_tokens")
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 2
    ):
        raise _bad("temperature must be a number between 0 and 2", "temperature")
    if body.get("n") not in (None, 1):
        raise _bad("the replay answers n=1 only", "n")
    return ChatRequest(
        model=model,
        prompt=users[-1] if users else texts[-1][1],
        input_chars=sum(len(t) for _, t in texts),
        stream=bool(stream),
        include_usage=bool(options and options.get("include_usage")),
        max_tokens=limit,
    )


def parse_fault(body: Any) -> Fault:
    """Validate a fault (``POST /admin/faults``'s body); ValueError names what is wrong.

    >>> parse_fault({"model": "*", "error_rate": 0.5, "kind": "429"})
    Fault(model='*', error_rate=0.5, kind='429', timeout_s=30.0, retry_after_s=1.0)
    """
    if not isinstance(body, dict):
        raise ValueError("the fault must be a JSON object")
    unknown = sorted(set(body) - {"model", "error_rate", "kind", "timeout_s", "retry_after_s"})
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")
    model, kind = body.get("model"), body.get("kind", "500")
    if not isinstance(model, str) or not model:
        raise ValueError("model must be a model name or *")
    if kind not in FAULT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")

    def number(key: str, default: float | None, high: float) -> float:
        value = body.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= high:
            raise ValueError(f"{key} must be a number in [0, {high:g}], got {value!r}")
        return float(value)

    return Fault(
        model=model,
        error_rate=number("error_rate", None, 1.0),
        kind=cast(FaultKind, kind),
        timeout_s=number("timeout_s", 30.0, 3600.0),
        retry_after_s=number("retry_after_s", 1.0, 3600.0),
    )


def parse_fail_option(text: str, *, timeout_s: float = 30.0) -> Fault:
    """A fault from the CLI's ``--fail MODEL=RATE[:KIND]``.

    >>> parse_fail_option("gpt-4o=0.25:timeout", timeout_s=5)
    Fault(model='gpt-4o', error_rate=0.25, kind='timeout', timeout_s=5.0, retry_after_s=1.0)
    """
    model, sep, rest = text.rpartition("=")
    rate, _, kind = rest.partition(":")
    try:
        number = float(rate)
    except ValueError:
        number = math.nan
    if not sep or not model or math.isnan(number):
        raise ValueError(f"--fail {text!r}: expected MODEL=RATE[:KIND], e.g. gpt-4o=0.2:429")
    body = {"model": model, "error_rate": number, "kind": kind or "500", "timeout_s": timeout_s}
    try:
        return parse_fault(body)
    except ValueError as exc:
        raise ValueError(f"--fail {text!r}: {exc}") from None


def _hash(*parts: str) -> int:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def filler_text(key: str, n_chars: int) -> str:
    """Deterministic lorem-ipsum sentences, exactly ``n_chars`` long, seeded by ``key``.

    >>> filler_text("q", 30) == filler_text("q", 30), len(filler_text("q", 30))
    (True, 30)
    """
    rng = random.Random(_hash(key))
    sentences: list[str] = []
    size = 0
    while size < n_chars:
        words = rng.choices(_WORDS, k=rng.randint(6, 14))
        sentence = " ".join(words).capitalize() + "."
        sentences.append(sentence)
        size += len(sentence) + 1
    return " ".join(sentences)[:n_chars]


def _tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def stand_ins(data: RoutingData, catalog: ModelCatalog) -> dict[str, str]:
    """For each catalog model the file lacks, the file's model that answers for it, matched by
    price rank: the catalog's cheapest gets the file's cheapest (by mean recorded cost), its
    dearest the file's dearest, the others spread in between. So a service that forwards every
    catalog model here (``llmopt serve --upstream``) meets models that differ the way the
    file's do: deterministic, and dearer ones usually better.

    >>> import pandas as pd
    >>> from llmopt.catalog import load_catalog
    >>> from llmopt.routing_data import routing_data_from_frame
    >>> rows = [dict(dataset="d", split="s", sample_id="p", prompt="q", model=m, quality=0.5,
    ...              cost_usd=c, input_chars=1, output_chars=1)
    ...         for m, c in (("a", 1.0), ("b", 0.1))]
    >>> pairs = stand_ins(routing_data_from_frame(pd.DataFrame(rows)), load_catalog())
    >>> pairs["o3-mini"] in ("a", "b"), len(set(pairs.values()))
    (True, 2)
    """
    import numpy as np  # noqa: PLC0415

    by_cost = [data.models[j] for j in np.argsort(data.cost_usd.mean(axis=0), kind="stable")]
    missing = sorted(
        (m for m in catalog.ids if m not in set(data.models)),
        key=lambda m: (catalog[m].input_per_mtok + catalog[m].output_per_mtok, m),
    )
    if not missing or not by_cost:
        return {}
    last = max(len(missing) - 1, 1)
    return {m: by_cost[round(k * (len(by_cost) - 1) / last)] for k, m in enumerate(missing)}


class UpstreamReplay:
    """The replay's state: the recorded outcomes, the latency model and the faults.

    Parameters
    ----------
    data
        The routing file whose outcomes answer.
    catalog
        Latency of each model (``ttft_ms``, ``tokens_per_second``); default: the settings'.
    speed
        Time runs this many times faster than the catalog says.
    seed
        Seed of the fault draws.
    """

    def __init__(
        self,
        data: RoutingData,
        *,
        catalog: ModelCatalog | None = None,
        speed: float = 1.0,
        seed: int = 0,
    ) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed}")
        if catalog is None:
            from llmopt.catalog import load_catalog  # noqa: PLC0415

            catalog = load_catalog()
        self.data, self.catalog, self.speed = data, catalog, speed
        self._rows: dict[str, int] = {}
        for i, prompt in enumerate(data.prompts):
            self._rows.setdefault(prompt, i)
        self._columns = {m: j for j, m in enumerate(data.models)}
        self._stand_ins = stand_ins(data, catalog)
        self._rng = random.Random(seed)
        self._faults: dict[str, Fault] = {}

    def column(self, model: str) -> str | None:
        """The file's model whose outcomes answer for ``model``: itself, or the stand-in of a
        catalog model the file lacks (:func:`stand_ins`); None: unknown."""
        return model if model in self._columns else self._stand_ins.get(model)

    def outcome(self, prompt: str, model: str) -> Outcome:
        """The recorded outcome of ``model`` on ``prompt`` (any prompt; a 404 for a model
        neither the file nor the catalog knows)."""
        column = self.column(model)
        j = self._columns.get(column) if column is not None else None
        if j is None:
            raise ReplayError(
                404,
                f"The model `{model}` does not exist (this replay serves "
                f"{', '.join(self.data.models)}).",
                code="model_not_found",
                param="model",
            )
        i = self._rows.get(prompt)
        matched = i is not None
        if i is None:
            i = _hash(prompt) % self.data.n_prompts
        return Outcome(
            sample_id=self.data.sample_ids[i],
            matched=matched,
            quality=float(self.data.quality[i, j]),
            cost_usd=float(self.data.cost_usd[i, j]),
            output_chars=round(float(self.data.output_chars[i, j])),
        )

    def timing(self, model: str) -> tuple[float, float]:
        """``(ttft_ms, tokens_per_second)`` of ``model`` at speed 1."""
        spec = self.catalog.get(model)
        if spec is None:
            return DEFAULT_TTFT_MS, DEFAULT_TOKENS_PER_SECOND
        return spec.ttft_ms, spec.tokens_per_second

    def set_fault(self, fault: Fault) -> None:
        """Replace ``fault.model``'s fault; rate 0 removes it (for ``*``: removes every one)."""
        if fault.model != "*" and self.column(fault.model) is None:
            raise ValueError(f"unknown model {fault.model!r}")
        if fault.error_rate > 0:
            self._faults[fault.model] = fault
        elif fault.model == "*":
            self._faults.clear()
        else:
            self._faults.pop(fault.model, None)

    def faults(self) -> list[Fault]:
        """The faults in force, by model."""
        return [self._faults[m] for m in sorted(self._faults)]

    def draw_fault(self, model: str) -> Fault | None:
        """The fault to inject into this request of ``model``, if the seeded draw says so."""
        fault = self._faults.get(model) or self._faults.get("*")
        if fault is not None and self._rng.random() < fault.error_rate:
            return fault
        return None


def _answer(replay: UpstreamReplay, req: ChatRequest) -> Answer:
    """The outcome, the answer's text (cut at ``max_tokens``), its finish reason and usage."""
    outcome = replay.outcome(req.prompt, req.model)
    text = filler_text(f"{req.model}\x1f{req.prompt}", outcome.output_chars)
    finish = "stop"
    if req.max_tokens is not None and _tokens(len(text)) > req.max_tokens:
        text, finish = text[: req.max_tokens * CHARS_PER_TOKEN], "length"
    prompt_tokens, completion_tokens = max(1, _tokens(req.input_chars)), _tokens(len(text))
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return Answer(outcome, text, finish, usage)


def _headers(replay: UpstreamReplay, model: str, outcome: Outcome, tokens: int) -> dict[str, str]:
    ttft_ms, tps = replay.timing(model)
    return {
        "x-replay-quality": repr(outcome.quality),
        "x-replay-cost-usd": repr(outcome.cost_usd),
        "x-replay-sample-id": outcome.sample_id,
        "x-replay-matched": "true" if outcome.matched else "false",
        "x-replay-latency-ms": f"{ttft_ms + tokens / tps * 1000:.1f}",
        "x-replay-answers-as": replay.column(model) or model,
    }


def _pieces(text: str) -> list[str]:
    """``text`` in nearly equal consecutive slices, one per ~4 tokens, at most 48."""
    if not text:
        return []
    n = max(1, min(MAX_STREAM_CHUNKS, math.ceil(_tokens(len(text)) / 4)))
    bounds = [round(k * len(text) / n) for k in range(n + 1)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def create_app(
    data: RoutingData,
    *,
    catalog: ModelCatalog | None = None,
    speed: float = 1.0,
    seed: int = 0,
    faults: Sequence[Fault] = (),
) -> Starlette:
    """The replay upstream as an ASGI app (Starlette); see the module's docstring."""
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.exceptions import HTTPException  # noqa: PLC0415
    from starlette.responses import JSONResponse  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    replay = UpstreamReplay(data, catalog=catalog, speed=speed, seed=seed)
    for fault in faults:
        replay.set_fault(fault)

    def error(exc: ReplayError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def json_body(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            raise _bad("the body is not valid JSON") from None

    async def models(request: Request) -> Response:
        listing = [
            {"id": m, "object": "model", "created": 0, "owned_by": "llmopt-upstream-replay"}
            for m in data.models
        ]
        return JSONResponse({"object": "list", "data": listing})

    async def chat(request: Request) -> Response:
        try:
            req = parse_chat_request(await json_body(request))
            answer = _answer(replay, req)
            fault = replay.draw_fault(req.model)
            if fault is not None:
                await _inject(fault)
        except ReplayError as exc:
            return error(exc)
        return await _completion(replay, req, answer)

    async def get_faults(request: Request) -> Response:
        return JSONResponse({"faults": [asdict(f) for f in replay.faults()]})

    async def post_faults(request: Request) -> Response:
        try:
            replay.set_fault(parse_fault(await json_body(request)))
        except ReplayError as exc:
            return error(exc)
        except ValueError as exc:
            return error(_bad(str(exc)))
        return await get_faults(request)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "prompts": data.n_prompts, "models": data.models})

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = exc.detail if isinstance(exc, HTTPException) else "internal error"
        return error(ReplayError(status, f"{message}: {request.method} {request.url.path}"))

    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/admin/faults", get_faults, methods=["GET"]),
        Route("/admin/faults", post_faults, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes, exception_handlers={HTTPException: http_error, Exception: http_error}
    )
    app.state.replay = replay
    return app


async def _completion(replay: UpstreamReplay, req: ChatRequest, answer: Answer) -> Response:
    """The answer, after the modelled latency: a chat.completion, or its chunks as SSE."""
    from starlette.responses import JSONResponse, StreamingResponse  # noqa: PLC0415

    outcome, text, finish, usage = answer.outcome, answer.text, answer.finish_reason, answer.usage
    headers = _headers(replay, req.model, outcome, usage["completion_tokens"])
    ttft_ms, tps = replay.timing(req.model)
    ttft_s = ttft_ms / 1000 / replay.speed
    generation_s = usage["completion_tokens"] / tps / replay.speed
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": "llmopt-upstream-replay",
    }
    if not req.stream:
        await asyncio.sleep(ttft_s + generation_s)
        message = {"role": "assistant", "content": text, "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        body = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
        return JSONResponse(body, headers=headers)

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        extra = {"usage": usage} if req.include_usage else {}
        return _sse({**base, "object": "chat.completion.chunk", "choices": choices, **extra})

    def delta(content: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish_reason}
        return chunk([choice])

    async def events() -> AsyncIterator[str]:
        await asyncio.sleep(ttft_s)
        yield delta({"role": "assistant", "content": "", "refusal": None})
        pieces = _pieces(text)
        for piece in pieces:
            await asyncio.sleep(generation_s / len(pieces))
            yield delta({"content": piece})
        yield delta({}, finish)
        if req.include_usage:
            yield chunk([], usage)
        yield _sse("[DONE]")

    headers |= {"cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def _inject(fault: Fault) -> None:
    """Raise the injected error (after the wait of a ``timeout``)."""
    headers: dict[str, str] = {"x-replay-fault": fault.kind}
    if fault.kind == "429":
        headers["retry-after"] = f"{fault.retry_after_s:g}"
        raise ReplayError(
            429,
            "Rate limit reached (injected by llmopt upstream-replay).",
            type="requests",
            code="rate_limit_exceeded",
            headers=headers,
        )
    if fault.kind == "timeout":
        await asyncio.sleep(fault.timeout_s)
        raise ReplayError(
            504,
            "The upstream timed out (injected).",
            type="timeout",
            code="timeout",
            headers=headers,
        )
    raise ReplayError(
        500,
        "The server had an error while processing your request (injected by llmopt "
        "upstream-replay).",
        type="server_error",
        headers=headers,
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0: any free port); OSError when it is busy."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(app: Starlette, sock: socket.socket) -> None:
    """Serve ``app`` with uvicorn on a bound socket until SIGINT/SIGTERM."""
    import uvicorn  # noqa: PLC0415

    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])


def upstream_replay_cmd(  # noqa: PLR0917 - typer: every option is a parameter
    data: Annotated[
        Path | None,
        typer.Option(help="Routing file (parquet/CSV) to replay; default: AlpacaEval, shipped."),
    ] = None,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")
    ] = 8001,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    speed: Annotated[
        float,
        typer.Option(help="Time runs this many times faster than the catalog's latency says."),
    ] = 1.0,
    fail: Annotated[
        list[str] | None,
        typer.Option(
            help="Inject errors from the start: MODEL=RATE[:KIND], KIND 500 (default), 429 or "
            "timeout, MODEL * for every model (repeatable); later: POST /admin/faults."
        ),
    ] = None,
    timeout_s: Annotated[
        float, typer.Option(min=0.0, help="Seconds a 'timeout' fault waits before its 504.")
    ] = 30.0,
    seed: Annotated[int, typer.Option(help="Seed of the fault draws.")] = 0,
) -> None:
    """Serve an OpenAI-compatible upstream at http://HOST:PORT/v1 that answers with the
    outcomes a routing file recorded (quality and cost in x-replay-* headers), at the catalog's
    latency, with errors injected on demand."""
    from llmopt.catalog import CatalogError, load_catalog  # noqa: PLC0415
    from llmopt.routing_data import DEMO_DATA, RoutingDataError, load_routing_data  # noqa: PLC0415

    def fail_with(message: str) -> typer.Exit:
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        return typer.Exit(code=2)

    if not speed > 0:
        raise fail_with(f"--speed must be positive, got {speed:g}")
    try:
        faults = [parse_fail_option(text, timeout_s=timeout_s) for text in fail or []]
    except ValueError as exc:
        raise fail_with(str(exc)) from None
    try:
        routing, catalog = load_routing_data(data or DEMO_DATA), load_catalog()
    except (CatalogError, RoutingDataError) as exc:
        raise fail_with(str(exc)) from None
    try:
        app = create_app(routing, catalog=catalog, speed=speed, seed=seed, faults=faults)
    except ValueError as exc:  # a --fail naming a model the file does not have
        raise fail_with(f"--fail: {exc}") from None
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise fail_with(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    typer.echo(
        f"replaying {routing.n_prompts} prompts x {len(routing.models)} models from "
        f"{routing.source} at speed {speed:g}",
        err=True,
    )
    typer.echo(f"http://{shown}:{bound}/v1")
    serve(app, sock)
