"""The OpenAI-compatible gateway: ``model="auto"`` routes, forwards, streams and measures.

``POST /v1/chat/completions`` takes an OpenAI Chat Completions body. ``"model": "auto"`` asks the
router (the same decision as ``/decide``: logged, with its propensity, under the tenant's budget
and guards); a catalog model id bypasses the choice but is still logged and measured. Routing
options ride in an ``llmopt`` object of the body (the OpenAI SDK's ``extra_body``): ``tenant``,
``willingness_to_pay``, ``latency_weight``, ``max_cost_usd``, ``max_latency_ms``, ``models``
(allowed), ``exclude_models``, ``task_hints``, ``conversation`` (its turns keep one model:
:mod:`serving.affinity`; the ``x-llmopt-session`` header names it too, the body's option wins).
The call is forwarded to the model's upstream
(:mod:`serving.upstreams`) with aiohttp; the answer comes back with ``model`` set to the chosen
model and the headers ``x-llmopt-decision-id``, ``x-llmopt-model``, ``x-llmopt-policy-version``.

- **Streaming** (``"stream": true``) passes the upstream's server-sent events through chunk by
  chunk (each chunk's ``model`` rewritten). Usage is asked for upstream
  (``stream_options.include_usage``) and measured; the usage chunk reaches the client only if
  it asked for it. Time to first token is measured at the first content chunk.
- **Measured, not asked**: latency, time to first token, tokens and cost (the catalog's price x
  the usage) are kept on the decision (written with it for a non-streamed answer, else
  :meth:`llmopt.event_log.EventLog.record_call`); the
  client's later ``POST /feedback`` with the decision id and a quality completes the reward
  with them. A failed call (5xx, 429, timeout, connection error) is fed back at once as an
  error (quality 0, cost 0: never charged), which the circuit breaker and the policy learn.
- **Fallback**: after a failure before any byte reached the client, the next-best eligible
  model is decided (a new logged decision, the failed models excluded) and tried, up to
  :data:`MAX_ATTEMPTS` models within ``LLMOPT_GATEWAY_TIMEOUT_S`` each. An upstream's 4xx other
  than 429 (the request is wrong) is passed to the client as is.
- **Capabilities**: a request that uses tools, images or JSON mode goes only to models whose
  catalog entry declares it (:func:`required_capabilities`); none allowed: a 400 naming them.
  Tool calls and content parts are passed through unchanged.
- **Response cache** (opt-in per tenant, ``LLMOPT_RESPONSE_CACHE_TENANTS``): a prompt similar
  enough to one the tenant asked before gets the stored answer, with a decision id of its own and
  ``x-llmopt-cache: hit``; the similarity threshold is learned from feedback
  (:mod:`serving.response_cache`; ``POST /feedback`` of a hit is answered by the cache).
- ``GET /v1/models`` lists ``auto`` and every model with an upstream.
- **Keys bound to tenants** (``LLMOPT_CLIENT_KEY_TENANTS``, :mod:`serving.http_guard`): a key
  may only name its tenants in ``llmopt.tenant`` (403 before any decision or upstream call);
  without ``llmopt.tenant`` a key bound to one tenant acts for it, any other for ``default``.

Errors use the project's shape, which OpenAI clients also read:
``{"error": {"code", "message", "field", "type", "param"}}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pydantic import ValidationError

from llmopt import fast_json
from llmopt.catalog import ModelCatalog
from llmopt.event_log import PendingWrites
from llmopt.loop import NoCandidateError
from llmopt.schemas import ErrorKind, Feedback, RequestContext
from serving.affinity import ConversationAffinity, conversation_key
from serving.errors import error_body
from serving.fast_path import read_body
from serving.guards import BudgetExceededError
from serving.health import RuntimeOfApp
from serving.http_guard import default_tenant, tenant_refusal
from serving.response_cache import (
    POLICY_VERSION,
    HitFeedbackConflict,
    Probe,
    ResponseCache,
    assemble,
    cacheable,
    replay,
)
from serving.upstreams import Upstream

log = logging.getLogger("llmopt.serving")

MAX_ATTEMPTS = 3
"""Models tried for one request (the first choice and up to two fallbacks)."""

OPTION_FIELDS = {
    "tenant": "tenant",
    "willingness_to_pay": "willingness_to_pay",
    "latency_weight": "latency_weight",
    "max_cost_usd": "max_cost_usd",
    "max_latency_ms": "max_latency_ms",
    "task_hints": "task_hints",
}
KNOWN_OPTIONS = {*OPTION_FIELDS, "models", "exclude_models", "conversation"}

Send = Callable[[Mapping[str, Any]], Awaitable[None]]


class GatewayError(Exception):
    """A refusal: HTTP status, message and the offending field."""

    def __init__(self, status: int, message: str, field: str | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.code = code or {400: "invalid_request", 402: "budget_exceeded", 404: "not_found"}.get(
            status, "upstream_error"
        )


def error_json(
    status: int, message: str, field: str | None = None, code: str | None = None
) -> bytes:
    """The error body: the project's shape plus OpenAI's ``type`` and ``param``."""
    kind = "invalid_request_error" if status < 500 else "api_error"
    return json.dumps(
        {
            "error": {
                "code": code or ("invalid_request" if status < 500 else "upstream_error"),
                "message": message,
                "field": field,
                "type": kind,
                "param": field,
            }
        }
    ).encode()


def prompt_text(messages: list[Any]) -> str:
    """The text of every message (string content or text parts), for the request features.

    >>> image = {"type": "image_url", "image_url": {"url": "x"}}
    >>> prompt_text([{"role": "system", "content": "Be brief."},
    ...              {"role": "user", "content": [{"type": "text", "text": "2 + 2?"}, image]}])
    'Be brief.\\n2 + 2?'
    """
    out = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [
                p["text"]
                for p in content
                if isinstance(p, dict)
                and p.get("type") == "text"
                and isinstance(p.get("text"), str)
            ]
    return "\n".join(out)


def required_capabilities(body: Mapping[str, Any]) -> frozenset[str]:
    """What a request uses beyond plain text (:data:`llmopt.catalog.CAPABILITIES`).

    >>> required_capabilities({"messages": [{"role": "user", "content": [
    ...     {"type": "image_url", "image_url": {"url": "data:..."}}]}],
    ...     "tools": [{"type": "function"}], "response_format": {"type": "json_object"}}) == {
    ...     "tools", "vision", "json_mode"}
    True
    """
    need = set()
    messages = body.get("messages") or []
    if (
        body.get("tools")
        or body.get("functions")
        or any(
            isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls"))
            for m in messages
        )
    ):
        need.add("tools")
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") in ("image_url", "input_image") for p in content
        ):
            need.add("vision")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        need.add("json_mode")
    return frozenset(need)


def parse_request(body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(body without the llmopt object, the llmopt options)``; :class:`GatewayError` (400)."""
    try:
        doc = json.loads(body or b"null")
    except ValueError as exc:
        raise GatewayError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise GatewayError(400, "the body must be a JSON object")
    messages = doc.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
    ):
        raise GatewayError(400, "messages must be a non-empty list of {role, content}", "messages")
    if not isinstance(doc.get("model"), str) or not doc["model"]:
        raise GatewayError(400, 'model must be "auto" or a model id', "model")
    if "stream" in doc and not isinstance(doc["stream"], bool):
        raise GatewayError(400, "stream must be true or false", "stream")
    options = doc.pop("llmopt", None) or {}
    if not isinstance(options, dict):
        raise GatewayError(400, "llmopt must be an object", "llmopt")
    unknown = sorted(set(options) - KNOWN_OPTIONS)
    if unknown:
        raise GatewayError(
            400,
            f"unknown llmopt option(s): {', '.join(unknown)}; "
            f"known: {', '.join(sorted(KNOWN_OPTIONS))}",
            f"llmopt.{unknown[0]}",
        )
    return doc, options


@dataclass
class Call:
    """What one forwarded call measured."""

    latency_ms: float = 0.0
    ttft_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    error: ErrorKind | None = None
    detail: str = ""

    def record(self) -> dict[str, Any]:
        """What the decision keeps (:meth:`EventLog.record_call`)."""
        out: dict[str, Any] = {"latency_ms": round(self.latency_ms, 2), "source": "gateway"}
        for k in ("ttft_ms", "input_tokens", "output_tokens", "cost_usd"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        return out


class Gateway:
    """Forwarding, measuring and fallback for one worker (see the module docstring)."""

    def __init__(
        self,
        runtime: Any,
        upstreams: Mapping[str, Upstream],
        *,
        timeout_s: float = 60.0,
        client: aiohttp.ClientSession | None = None,
        cache: ResponseCache | None = None,
        affinity: ConversationAffinity | None = None,
    ) -> None:
        self.runtime = runtime
        self.upstreams = dict(upstreams)
        self.timeout_s = timeout_s
        self._client = client
        self.affinity = affinity if affinity is not None else ConversationAffinity()
        """One model per conversation (:mod:`serving.affinity`; shared in Redis or this
        worker's own)."""
        self.cache = cache
        """The semantic response cache (:mod:`serving.response_cache`; None: off)."""

    @property
    def catalog(self) -> ModelCatalog:
        return self.runtime.router.catalog  # type: ignore[no-any-return]

    def client(self) -> aiohttp.ClientSession:
        """The upstreams' HTTP client (made on the event loop at the first call).

        aiohttp, not httpx: httpx's connection pool checks every pooled connection's socket on
        every request (encode/httpcore#928, open), which cost the gateway ~2.9 ms of CPU per
        call with 32 in flight against ~0.15 ms for aiohttp (``bench/results/upstream_client``
        has the measurement). ``timeout_s`` bounds the connection's set-up (at most 5 s) and
        each read, as before; a stream may last longer as long as bytes keep coming.
        """
        if self._client is None or self._client.closed:
            self._client = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=min(5.0, self.timeout_s), sock_read=self.timeout_s
                ),
                connector=aiohttp.TCPConnector(limit=200, limit_per_host=0),
                auto_decompress=True,
                trust_env=False,
            )
        return self._client

    async def aclose(self) -> None:
        """Close the upstreams' client (at shutdown)."""
        if self._client is not None and not self._client.closed:
            await self._client.close()

    def models(self) -> dict[str, Any]:
        """The ``GET /v1/models`` body."""
        now = int(time.time())
        data = [{"id": "auto", "object": "model", "created": now, "owned_by": "llmopt"}]
        data += [
            {"id": m, "object": "model", "created": now, "owned_by": self.catalog[m].provider}
            for m in self.catalog.ids
            if m in self.upstreams
        ]
        return {"object": "list", "data": data}

    # -- the decision --------------------------------------------------------------------------
    def context(
        self, body: dict[str, Any], options: dict[str, Any], tried: set[str]
    ) -> RequestContext:
        """The request context of one attempt (models already tried left out)."""
        fields = {OPTION_FIELDS[k]: v for k, v in options.items() if k in OPTION_FIELDS}
        fields.setdefault("tenant", "default")
        routable = [m for m in self.catalog.ids if m in self.upstreams]
        if body["model"] != "auto":
            if body["model"] not in self.upstreams:
                raise GatewayError(
                    404,
                    f'model {body["model"]!r} is not served here; use "auto" or one of '
                    f"GET /v1/models",
                    "model",
                    code="model_not_found",
                )
            allowed = [body["model"]]
        else:
            allowed = options.get("models") or [m for m in routable if not self.catalog[m].legacy]
        excluded_list = options.get("exclude_models") or []
        if not isinstance(excluded_list, list) or not all(
            isinstance(m, str) for m in excluded_list
        ):
            raise GatewayError(
                400, "llmopt.exclude_models must be a list of model ids", "llmopt.exclude_models"
            )
        excluded = set(excluded_list)
        if not isinstance(allowed, list) or not all(isinstance(m, str) for m in allowed):
            raise GatewayError(400, "llmopt.models must be a list of model ids", "llmopt.models")
        unknown = [m for m in allowed if m not in self.upstreams]
        if unknown:
            raise GatewayError(
                400, f"models without an upstream here: {', '.join(unknown)}", "llmopt.models"
            )
        models = [m for m in allowed if m not in excluded and m not in tried]
        need = required_capabilities(body)
        if need:
            able = [m for m in models if need <= self.catalog[m].capabilities]
            if not able and models:
                raise GatewayError(
                    400,
                    "no allowed model supports what this request uses "
                    f"({', '.join(sorted(need))}); models that do: "
                    + (", ".join(m for m in self.upstreams if need <= self.catalog[m].capabilities)
                       or "none in the catalog"),
                    "model" if body["model"] != "auto" else "messages",
                    code="unsupported_capability",
                )  # fmt: skip
            models = able
        pinned = self._pinned(options, models)
        if pinned is not None:
            models = [pinned]
        if not models:
            raise GatewayError(
                400 if not tried else 502,
                "no model left to try" if tried else "every allowed model is excluded",
                "llmopt.exclude_models" if not tried else None,
                code="invalid_request" if not tried else "upstream_error",
            )
        try:
            return RequestContext(prompt=prompt_text(body["messages"]), models=models, **fields)
        except ValidationError as exc:
            e = exc.errors()[0]
            where = ".".join(str(x) for x in e["loc"])
            raise GatewayError(400, f"llmopt.{where}: {e['msg']}", f"llmopt.{where}") from None

    def _pinned(self, options: dict[str, Any], models: list[str]) -> str | None:
        """The conversation's model, if the request names one and it may serve this turn."""
        conversation = options.get("conversation")
        if conversation is None:
            return None
        if not isinstance(conversation, str) or not 0 < len(conversation) <= 200:
            raise GatewayError(
                400, "llmopt.conversation must be a string of 1 to 200 characters",
                "llmopt.conversation",
            )  # fmt: skip
        tenant = options.get("tenant")
        if not isinstance(tenant, str):  # refused when the context is built
            return None
        model = self.affinity.model(conversation_key(tenant, conversation))
        if model is None or model not in models or model in self.runtime.router.breaker.blocked():
            return None
        return model

    def decide(self, ctx: RequestContext) -> tuple[Any, PendingWrites]:
        """The router's decision for one attempt, refusals mapped to 4xx, and its log write,
        held back: the attempt releases it and waits for it (:meth:`Attempt.logged`) before
        the client sees a byte or the call is measured, so an answered decision is a logged
        one, as with /decide.

        A stream releases it once its upstream request is out, so the writer's work does not
        take the interpreter lock from the request's way, and it commits while the upstream
        works (the first byte waits for it only if the upstream is faster than a commit). A
        non-streamed call releases it with the answer, written with the call's measurements,
        one write instead of two (the decision's id is unknown outside until then)."""
        router = self.runtime.router
        try:
            with router.event_log.deferred_writes(hold=True) as writes:
                routed = router.decide(ctx)
        except BudgetExceededError as exc:
            raise GatewayError(402, str(exc), "llmopt.tenant") from None
        except NoCandidateError as exc:
            raise GatewayError(400, str(exc), "messages") from None
        return routed, writes

    # -- the response cache --------------------------------------------------------------------
    def cache_probe(
        self, body: dict[str, Any], options: dict[str, Any], ctx: RequestContext
    ) -> Probe | None:
        """The cache's look at a request whose context (checked: bad input is a 4xx, cached or
        not) is ``ctx`` (None: off for its tenant, or a request it does not take: tools,
        images, several choices, logprobs). A cache error is a miss, logged."""
        cache, tenant = self.cache, options.get("tenant")
        if cache is None or not isinstance(tenant, str) or not cache.enabled(tenant):
            return None
        if required_capabilities(body) & {"tools", "vision"} or not cacheable(body):
            return None
        try:
            key = cache.key(body, options, ctx.prompt or "", prompt_text)
            return cache.probe(tenant, key)
        except Exception:
            log.exception("response cache: the lookup failed; served as a miss")
            return Probe(tenant, None)

    def cache_answered(self, probe: Probe, a: Attempt) -> None:
        """Store a miss's answer and let its feedback teach the cache; never raises."""
        cache = self.cache
        if cache is None:
            return
        try:
            stored = (
                probe.key is not None
                and a.answer is not None
                and a.call.error is None
                and cache.store(probe.tenant, probe.key, a.model, a.answer, a.decision_id)
            )
            cache.served_miss(probe, a.decision_id, stored)
        except Exception:
            log.exception("response cache: could not store the answer of %s", a.decision_id)

    # -- measuring -----------------------------------------------------------------------------
    def cost(
        self, model: str, usage: Mapping[str, Any] | None
    ) -> tuple[int | None, int | None, float | None]:
        """Tokens and cost (catalog price x usage) of one answer."""
        if not isinstance(usage, Mapping):
            return None, None, None
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(pt, int) or not isinstance(ct, int):
            return None, None, None
        spec = self.catalog.get(model)
        return pt, ct, (spec.expected_cost_usd(pt, ct) if spec is not None else None)

    async def settle(self, decision_id: str, model: str, call: Call) -> None:
        """Keep the measurements (success) or feed the failure back (error, cost 0).

        The measurements join the event-log writer's next transaction (group commit: no
        thread hop, no transaction of their own, no second writer waiting for SQLite's lock)
        and are committed before this returns, so feedback posted as soon as the client has
        its answer finds them. Never raises: measuring must not fail an answer.
        """
        events = self.runtime.event_log
        try:
            if call.error is not None:
                await asyncio.to_thread(self._failed, decision_id, call)
            elif events.group is None:
                await asyncio.to_thread(events.record_call, decision_id, call.record())
            else:
                with events.deferred_writes() as writes:
                    events.record_call(decision_id, call.record())
                await writes.wait_async()
        except Exception:
            log.exception("gateway: could not record the call of %s (%s)", decision_id, model)

    def _failed(self, decision_id: str, call: Call) -> None:
        """The failed call's feedback: its error and latency, cost 0 (never charged)."""
        self.runtime.router.feedback(
            Feedback(
                decision_id=decision_id,
                error_kind=call.error,
                latency_ms=min(call.latency_ms, 3_600_000.0),
                cost_usd=0.0,
            )
        )


def _failure(status: int) -> ErrorKind | None:
    if status == 429:
        return ErrorKind.RATE_LIMIT
    if status >= 500:
        return ErrorKind.SERVER_ERROR
    return None


def _headers(routed: Any, extra: Mapping[str, str] | None = None) -> list[tuple[bytes, bytes]]:
    d = routed.decision
    f = routed.features
    out = {
        "x-llmopt-decision-id": d.decision_id,
        "x-llmopt-model": d.model,
        "x-llmopt-policy-version": d.policy_version,
        # as /decide's features.state: the online features were read ("open"), or not ("off")
        "x-llmopt-features": ("degraded" if f.degraded else "open") if f is not None else "off",
        **(extra or {}),
    }
    return [(k.encode(), str(v).encode()) for k, v in out.items()]


async def _reply(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"application/json",
) -> None:
    hdrs = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": hdrs + (headers or [])})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Attempt:
    """One model tried for a request: its decision, where it goes, what it measured."""

    routed: Any
    model: str
    url: str
    payload: dict[str, Any]
    headers: dict[str, str]
    extra: dict[str, str]
    call: Call = field(default_factory=Call)
    started: float = field(default_factory=time.perf_counter)
    collect: bool = False
    """Keep the answer (for the response cache)."""
    answer: dict[str, Any] | None = None
    """The answer as one chat completion (streamed ones reassembled), when collected."""
    writes: PendingWrites | None = None
    """The decision's log write, until :meth:`logged` has waited for it."""

    async def logged(self, call: Mapping[str, Any] | None = None) -> None:
        """Write the decision (with ``call``, the call's measurements, if given) and wait
        until it is in the event log (before answering or measuring)."""
        if self.writes is not None:
            writes, self.writes = self.writes, None
            writes.release({self.decision_id: call} if call is not None else None)
            await writes.wait_async()

    @property
    def decision_id(self) -> str:
        return str(self.routed.decision.decision_id)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


def _attempt(
    gateway: Gateway, body: dict[str, Any], routed: Any, n: int, writes: PendingWrites | None
) -> Attempt:
    model = routed.decision.model
    upstream = gateway.upstreams[model]
    payload = {**body, "model": upstream.upstream_model(model)}
    if body.get("stream"):
        asked = body.get("stream_options") or {}
        payload["stream_options"] = {**asked, "include_usage": True}
    headers = {"content-type": "application/json"}
    key = upstream.api_key()
    if key:
        headers["authorization"] = f"Bearer {key}"
    return Attempt(
        routed,
        model,
        f"{upstream.base_url}/chat/completions",
        payload,
        headers,
        {"x-llmopt-attempts": str(n)},
        writes=writes,
    )


async def handle_chat(
    gateway: Gateway, raw: bytes, send: Send, *, session: str | None = None
) -> None:
    """One ``POST /v1/chat/completions``: decide, forward (with fallback), answer, measure.

    ``session``: the ``x-llmopt-session`` header, the conversation when the body names none.
    """
    started = time.perf_counter()
    body, options = parse_request(raw)
    _name_conversation(options, session)
    tenant = options.setdefault("tenant", default_tenant())
    why = tenant_refusal(tenant) if isinstance(tenant, str) else None  # else: 400 below
    if why is not None:
        raise GatewayError(403, why, "llmopt.tenant", code="forbidden")
    tried: set[str] = set()
    first = gateway.context(body, options, tried)  # the first attempt's (bad input: a 4xx here)
    probe = gateway.cache_probe(body, options, first)
    if probe is not None and probe.entry is not None:
        await _serve_hit(gateway, probe, first, body, send, started=started)
        return
    last_error = "no attempt"
    for n in range(1, MAX_ATTEMPTS + 1):
        ctx = first if n == 1 else gateway.context(body, options, tried)
        # on the event loop, as /decide: no thread hop; the decision's write is held until
        # the upstream request is out (a stream) or the answer is in (written with its call)
        routed, writes = gateway.decide(ctx)
        a = _attempt(gateway, body, routed, n, writes)
        if probe is not None:
            a.extra.update(probe.headers())
            a.collect = True
        tried.add(a.model)
        try:
            if body.get("stream"):
                answered = await _stream(gateway, a, send, body)
            else:
                answered = await _once(gateway, a, send)
            if answered:
                if isinstance(options.get("conversation"), str):
                    key = conversation_key(str(options["tenant"]), options["conversation"])
                    gateway.affinity.pin(key, a.model)
                if probe is not None:
                    gateway.cache_answered(probe, a)
                return
            last_error = f"{a.model}: {a.call.detail}"
        except TimeoutError:  # aiohttp's connect and read timeouts are TimeoutErrors
            a.call.error, last_error = ErrorKind.TIMEOUT, f"{a.model}: upstream timed out"
        except aiohttp.ClientError as exc:
            a.call.error, last_error = ErrorKind.SERVER_ERROR, f"{a.model}: {type(exc).__name__}"
        except ValueError:  # an upstream answer that is not JSON
            a.call.error, last_error = ErrorKind.OTHER, f"{a.model}: upstream answer is not JSON"
        a.call.latency_ms = a.call.latency_ms or a.elapsed_ms()
        a.call.error = a.call.error or ErrorKind.SERVER_ERROR
        await a.logged()
        await gateway.settle(a.decision_id, a.model, a.call)
        log.warning("gateway: %s failed (%s); falling back", a.model, last_error)
    raise GatewayError(502, f"every attempt failed; last: {last_error}", code="upstream_error")


async def _serve_hit(
    gateway: Gateway,
    probe: Probe,
    ctx: RequestContext,
    body: dict[str, Any],
    send: Send,
    *,
    started: float,
) -> None:
    """Answer with the cached entry of ``probe`` (the request's context: ``ctx``): a decision
    id of its own, awaiting feedback."""
    entry = probe.entry
    assert entry is not None and gateway.cache is not None
    tradeoff = gateway.runtime.router.lineup.champion.loop.tradeoff_for(ctx)
    decision_id = gateway.cache.served_hit(
        probe,
        latency_ms=(time.perf_counter() - started) * 1000,
        willingness_to_pay=tradeoff.willingness_to_pay,
        latency_weight=tradeoff.latency_weight,
    )
    log.info(
        "response cache hit %s: tenant %s, %s's answer of %s, similarity %.4f, threshold %s "
        "(propensity %.4f)",
        decision_id, probe.tenant, entry.model, entry.decision_id, probe.similarity or 0.0,
        probe.arm, probe.propensity or 0.0,
    )  # fmt: skip
    headers = [
        (k.encode(), v.encode())
        for k, v in {
            "x-llmopt-decision-id": decision_id,
            "x-llmopt-model": entry.model,
            "x-llmopt-policy-version": POLICY_VERSION,
            "x-llmopt-features": "off",
            **probe.headers(),
        }.items()
    ]
    completion_id = f"chatcmpl-{decision_id}"
    if not body.get("stream"):
        data = {**entry.answer, "id": completion_id, "created": int(time.time())}
        data["model"] = entry.model
        await _reply(send, 200, fast_json.dumps_bytes(data), headers)
        return
    wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    chunks = replay(entry.answer, entry.model, completion_id, include_usage=wants_usage)
    start = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": start + headers})
    for chunk in chunks:
        out = b"data: " + fast_json.dumps_bytes(chunk) + b"\n\n"
        await send({"type": "http.response.body", "body": out, "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _pass_on(gateway: Gateway, a: Attempt, send: Send, status: int, body: bytes) -> bool:
    """An upstream 4xx other than 429 (the request is wrong): the client gets it as is."""
    await a.logged()
    await gateway.settle(a.decision_id, a.model, a.call)
    await _reply(send, status, body, _headers(a.routed, a.extra))
    return True


async def _once(gateway: Gateway, a: Attempt, send: Send) -> bool:
    """A non-streamed call; True once the client has its answer, False: fall back."""
    async with gateway.client().post(a.url, json=a.payload, headers=a.headers) as r:
        status, content = r.status, await r.read()
    a.call.latency_ms = a.elapsed_ms()
    a.call.error = _failure(status)
    if a.call.error is not None:
        a.call.detail = f"upstream answered {status}"
        return False
    if status >= 400:
        return await _pass_on(gateway, a, send, status, content)
    data = fast_json.loads(content)
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise ValueError("not a chat completion")  # fall back: this upstream answered nonsense
    data["model"] = a.model
    if a.collect:
        a.answer = data
    tokens = gateway.cost(a.model, data.get("usage"))
    a.call.input_tokens, a.call.output_tokens, a.call.cost_usd = tokens
    await a.logged(a.call.record())  # the decision (held back) and its call in one write
    await _reply(send, 200, fast_json.dumps_bytes(data), _headers(a.routed, a.extra))
    return True


async def _request_then_write(gateway: Gateway, a: Attempt) -> aiohttp.ClientResponse:
    """The upstream's response to a streamed attempt; its decision's write (held) is released
    once the request is out, so the writer's work overlaps the upstream's, not the request's
    way out (the first byte still waits for the commit: :meth:`Attempt.logged`)."""
    sending = asyncio.ensure_future(gateway.client().post(a.url, json=a.payload, headers=a.headers))
    try:
        try:
            await asyncio.sleep(0)  # the request goes out (a pooled connection: no wait) ...
        finally:
            if a.writes is not None:  # ... then the decision's write, while the upstream works
                a.writes.release()  # (a decision made is logged, even if the client left)
        return await sending
    except BaseException:
        sending.cancel()
        raise


async def _stream(gateway: Gateway, a: Attempt, send: Send, body: dict[str, Any]) -> bool:
    """Pass one streamed answer through; True once bytes reached the client (a stream that
    breaks later is not retried), False when the attempt failed before any byte."""
    wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    call = a.call
    async with await _request_then_write(gateway, a) as r:
        if r.status >= 400:
            content = await r.read()
            call.latency_ms = a.elapsed_ms()
            call.error = _failure(r.status)
            call.detail = f"upstream answered {r.status}"
            if call.error is None:
                return await _pass_on(gateway, a, send, r.status, content)
            return False
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
                *_headers(a.routed, a.extra),
            ],
        }
        await a.logged()
        await send(start)
        usage: Any = None
        parts: list[Any] = []
        try:
            async for raw in r.content:  # one line at a time
                line = raw.decode().rstrip("\r\n")
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = fast_json.loads(data)
                if not isinstance(chunk, dict):
                    raise ValueError("not a chat completion chunk")
                chunk["model"] = a.model
                usage = chunk.get("usage") or usage
                if a.collect:
                    parts.append(chunk)
                if call.ttft_ms is None and any(
                    (c.get("delta") or {}).get("content") for c in chunk.get("choices") or []
                ):
                    call.ttft_ms = round(a.elapsed_ms(), 2)
                if not chunk.get("choices") and chunk.get("usage") and not wants_usage:
                    continue  # asked for by the gateway, not by the client
                out = b"data: " + fast_json.dumps_bytes(chunk) + b"\n\n"
                await send({"type": "http.response.body", "body": out, "more_body": True})
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            call.error, call.detail = ErrorKind.SERVER_ERROR, f"stream broke: {type(exc).__name__}"
        # The measurements are kept before the stream ends, so feedback posted as soon as the
        # client sees [DONE] finds them (no race with a fast client).
        call.latency_ms = a.elapsed_ms()
        call.input_tokens, call.output_tokens, call.cost_usd = gateway.cost(a.model, usage)
        if a.collect and call.error is None:
            a.answer = assemble(parts, a.model, usage)
        await gateway.settle(a.decision_id, a.model, call)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
    return True


class GatewayMiddleware(RuntimeOfApp):
    """ASGI middleware serving ``/v1/models`` and ``/v1/chat/completions`` (inside the guard)."""

    def gateway(self) -> Gateway | None:
        return getattr(self.runtime, "gateway", None) if self.runtime is not None else None

    async def lifespan(self, scope: Any, receive: Any, send: Any) -> None:
        """As the base's, and the upstreams' client is closed when the app shuts down."""
        started: list[Gateway | None] = []

        async def closing(message: Any) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.append(self.gateway())
            elif message["type"] == "lifespan.shutdown.complete" and started and started[0]:
                await started[0].aclose()
            await send(message)

        await super().lifespan(scope, receive, closing)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(scope, receive, send)
            return
        path = scope.get("path") if scope["type"] == "http" else None
        if path == "/feedback" and scope["method"] == "POST":
            gateway = self.gateway()
            if gateway is not None and gateway.cache is not None:
                await _cache_feedback(gateway.cache, self.app, scope, receive, send)
                return
        if path not in ("/v1/models", "/v1/chat/completions"):
            await self.app(scope, receive, send)
            return
        method = "GET" if path == "/v1/models" else "POST"
        if scope["method"] != method:
            await _reply(send, 405, error_json(405, f"{path} answers {method} only"))
            return
        gateway = self.gateway()
        if gateway is None:
            await _reply(
                send,
                404,
                error_json(
                    404,
                    "the gateway is not configured: set LLMOPT_UPSTREAM_URL (llmopt serve "
                    "--upstream URL) or LLMOPT_UPSTREAMS_FILE",
                    code="not_found",
                ),
            )
            return
        if path == "/v1/models":
            await _reply(send, 200, json.dumps(gateway.models()).encode())
            return
        raw = await read_body(receive)
        try:
            await handle_chat(gateway, raw, send, session=_header(scope, SESSION_HEADER))
        except GatewayError as exc:
            await _reply(send, exc.status, error_json(exc.status, exc.message, exc.field, exc.code))


SESSION_HEADER = b"x-llmopt-session"
"""Names the request's conversation (as ``llmopt.conversation``): its turns keep one model."""


def _name_conversation(options: dict[str, Any], session: str | None) -> None:
    """The session header names the conversation unless the body's options do."""
    if session is not None:
        options.setdefault("conversation", session)


def _header(scope: Any, name: bytes) -> str | None:
    """A request header's value (the first), or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _feedback_of(raw: bytes) -> Feedback | None:
    """The feedback in a ``/feedback`` body (None: not valid; the service says why)."""
    try:
        return Feedback.model_validate_json(raw or b"null")
    except (ValidationError, ValueError):
        return None


async def _hit_feedback(cache: ResponseCache, fb: Feedback, tenant: str, send: Send) -> bool:
    """Answer a hit's feedback (True), or leave it to the service (False: forgotten since)."""
    why = tenant_refusal(
        tenant,
        message=f"decision {fb.decision_id!r} is another tenant's: this key may not act for it",
    )
    if why is not None:
        await _reply(send, 403, error_body(403, why, code="forbidden", field="decision_id"))
        return True
    try:
        stored, reward = cache.hit_feedback(fb)
    except HitFeedbackConflict as exc:
        await _reply(send, 409, error_body(409, str(exc), code="conflicting_feedback"))
    except KeyError:  # forgotten since: the service answers (404)
        return False
    except Exception as exc:
        log.exception("response cache: could not learn the feedback of %s", fb.decision_id)
        why = f"cannot store feedback right now: {type(exc).__name__}"
        await _reply(send, 503, error_body(503, why, code="unavailable"))
    else:
        doc = {"status": stored, "decision_id": fb.decision_id, "reward": reward}
        await _reply(send, 200, json.dumps({**doc, "feedback_id": None}).encode())
    return True


async def _cache_feedback(
    cache: ResponseCache, app: Any, scope: Any, receive: Any, send: Any
) -> None:
    """``POST /feedback`` while the response cache is on. A hit's feedback is answered here
    (:meth:`ResponseCache.hit_feedback`: a hit is no model's decision, the event log and the
    policies never see it); a routed decision the cache waits for goes to the service as usual,
    and once stored its reward teaches the cache too; any other passes through untouched."""
    raw = await read_body(receive)
    fb = _feedback_of(raw)
    tenant, watched = None, False
    try:
        if fb is not None:
            tenant, watched = cache.lookup(fb.decision_id)
    except Exception:  # the cache must never fail a feedback: the service takes it
        log.exception("response cache: could not look up the decision of a feedback")
    if fb is not None and tenant is not None and await _hit_feedback(cache, fb, tenant, send):
        return
    replayed = False

    async def replay_body() -> Mapping[str, Any]:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()  # type: ignore[no-any-return]

    if fb is None or not watched:
        await app(scope, replay_body, send)
        return
    status = 0
    answer: list[bytes] = []

    async def watch(message: Mapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body":
            answer.append(message.get("body", b""))
        await send(message)

    await app(scope, replay_body, watch)
    if status != 200:
        return
    try:
        out = json.loads(b"".join(answer))
        if out.get("status") == "stored" and isinstance(out.get("reward"), int | float):
            cache.routed_feedback(fb.decision_id, fb.normalized_quality(), float(out["reward"]))
    except Exception:  # the cache must never fail a feedback
        log.exception("response cache: could not learn the feedback of %s", fb.decision_id)
