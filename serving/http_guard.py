"""ASGI middleware in front of every endpoint: API keys, body size, rate limit, ``/metrics``.

- ``LLMOPT_CLIENT_KEYS`` / ``LLMOPT_ADMIN_KEYS`` (comma-separated) turn on authentication:
  ``Authorization: Bearer KEY``; no key or an unknown one -> 401; a client key on
  ``/admin/*`` -> 403. With neither set the service runs open and warns at start-up.
  Probes and docs (``/healthz``, ``/livez``, ``/readyz``, ``/metrics``, ``/docs.json``, ...)
  stay open.
- Bodies larger than ``serving_max_body_bytes`` -> 413 (by ``Content-Length`` or, for
  chunked bodies, by counting).
- A POST whose ``Content-Type`` is not JSON -> 415 (none at all is read as JSON). BentoML
  would parse forms too, and answered a malformed ``multipart/form-data`` body with a 500.
- ``serving_rate_limit_per_s`` per key (per client address when open): a token bucket with a
  burst of twice the rate; beyond it -> 429 with ``Retry-After``.
- ``GET /metrics`` answers from :mod:`serving.metrics`.

Refusals have the one error body of :mod:`serving.errors`. Settings are read when the app is
built (in each worker), not at import.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from llmopt.settings import Settings
from serving.errors import error_body
from serving.metrics import get_metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("llmopt.serving")

OPEN_PATHS = frozenset(
    {"/", "/healthz", "/livez", "/readyz", "/metrics", "/docs.json", "/schema.json", "/docs"}
)
OPEN_PREFIXES = ("/static_content/", "/assets/")


def parse_keys(raw: str) -> frozenset[str]:
    """Keys from a comma-separated string (blanks dropped).

    >>> sorted(parse_keys(" a, b,,"))
    ['a', 'b']
    """
    return frozenset(k.strip() for k in raw.split(",") if k.strip())


def key_digest(key: str) -> str:
    """SHA-256 hex of a key: what the service keeps and compares (never the key itself)."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_digests(raw: str) -> frozenset[str]:
    """Digests of the keys in ``raw``; an entry ``sha256:<hex>`` is a digest already.

    Operators may put only digests in ``LLMOPT_CLIENT_KEYS`` / ``LLMOPT_ADMIN_KEYS``
    (``python -c "import hashlib; print(hashlib.sha256(b'KEY').hexdigest())"``), so that the
    keys are hashed at rest in the deployment's secrets as well as in memory.

    >>> key_digests("sha256:" + key_digest("k")) == key_digests("k")
    True
    """
    return frozenset(
        k.removeprefix("sha256:").lower() if k.startswith("sha256:") else key_digest(k)
        for k in parse_keys(raw)
    )


class TokenBucket:
    """Requests per second with a burst; thread-safe enough (one event loop per worker)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if allowed, else the seconds to wait."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


async def _reply(
    send: Send, status: int, body: bytes, *, content_type: bytes = b"application/json", **hdr: str
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    headers += [(k.replace("_", "-").encode(), v.encode()) for k, v in hdr.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _content_type(scope: Scope) -> str | None:
    """The request's media type, lower case, without parameters (``None``: no header)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            raw: bytes = value
            return raw.decode("latin-1").split(";", 1)[0].strip().lower()
    return None


def _is_json(media_type: str | None) -> bool:
    """``application/json``, ``application/*+json``, or no header at all."""
    return media_type is None or media_type == "application/json" or media_type.endswith("+json")


class GuardMiddleware:
    """The middleware (see the module docstring); options come from :class:`Settings`."""

    def __init__(self, app: ASGIApp, settings: Settings | None = None) -> None:
        self.app = app
        s = settings or Settings()
        # Only digests are kept: a heap dump or a log of this object shows no key.
        self.client_keys = key_digests(s.client_keys)
        self.admin_keys = key_digests(s.admin_keys)
        self.auth = bool(self.client_keys or self.admin_keys)
        self.max_body = s.serving_max_body_bytes
        rate = s.serving_rate_limit_per_s
        self.bucket = TokenBucket(rate, 2 * rate) if rate > 0 else None
        self.metrics = get_metrics()

    def _key(self, scope: Scope) -> str | None:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                return token.strip() if scheme.lower() == "bearer" else None
        return None

    @staticmethod
    def _known(digest: str, digests: frozenset[str]) -> bool:
        return any(hmac.compare_digest(digest, d) for d in digests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == "/metrics" and scope["method"] == "GET":
            await _reply(
                send,
                200,
                self.metrics.render(),
                content_type=b"text/plain; version=0.0.4; charset=utf-8",
            )
            return
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        endpoint = path.rsplit("/", 1)[-1] or "/"
        ident = self._client_ident(scope)
        if self.auth:
            key = self._key(scope)
            digest = key_digest(key) if key is not None else ""
            is_admin = key is not None and self._known(digest, self.admin_keys)
            if key is None or not (is_admin or self._known(digest, self.client_keys)):
                self.metrics.refusals.labels(endpoint, "401").inc()
                why = "missing" if key is None else "unknown"
                await _reply(
                    send,
                    401,
                    error_body(401, f"{why} API key: send Authorization: Bearer KEY"),
                    www_authenticate="Bearer",
                )
                return
            if path.startswith("/admin/") and not is_admin:
                self.metrics.refusals.labels(endpoint, "403").inc()
                await _reply(send, 403, error_body(403, "this endpoint needs an admin key"))
                return
            ident = digest  # rate limits per key, kept by digest
        if self.bucket is not None:
            wait = self.bucket.take(ident)
            if wait > 0:
                self.metrics.refusals.labels(endpoint, "429").inc()
                await _reply(
                    send,
                    429,
                    error_body(429, "rate limit exceeded"),
                    retry_after=str(max(1, round(wait + 0.5))),
                )
                return
        await self._limited(scope, receive, send, endpoint)

    def _client_ident(self, scope: Scope) -> str:
        client = scope.get("client")
        return f"addr:{client[0]}" if client else "addr:?"

    async def _limited(self, scope: Scope, receive: Receive, send: Send, endpoint: str) -> None:
        media_type = _content_type(scope)
        if scope["method"] == "POST" and not _is_json(media_type):
            self.metrics.refusals.labels(endpoint, "415").inc()
            why = f"unsupported content type {media_type!r}: send Content-Type: application/json"
            await _reply(send, 415, error_body(415, why))
            return
        length = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
                break
        if length is not None and length > self.max_body:
            self.metrics.refusals.labels(endpoint, "413").inc()
            await _reply(send, 413, error_body(413, f"request body above {self.max_body} bytes"))
            return
        if length is not None or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        # No Content-Length (chunked): read the body here, counting, then replay it.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                self.metrics.refusals.labels(endpoint, "413").inc()
                await _reply(
                    send, 413, error_body(413, f"request body above {self.max_body} bytes")
                )
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
