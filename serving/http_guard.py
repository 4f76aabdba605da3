"""ASGI middleware in front of every endpoint: API keys, body size, rate limit, ``/metrics``.

- ``LLMOPT_CLIENT_KEYS`` / ``LLMOPT_ADMIN_KEYS`` (comma-separated) turn on authentication:
  ``Authorization: Bearer KEY``; no key or an unknown one -> 401; a client key on
  ``/admin/*`` -> 403. With neither set the service runs open and warns at start-up.
  Probes and docs (``/healthz``, ``/livez``, ``/readyz``, ``/metrics``, ``/docs.json``, ...)
  stay open; ``LLMOPT_METRICS_REQUIRE_KEY`` closes ``/metrics`` to all but admin keys.
- **Keys belong to tenants**: ``LLMOPT_CLIENT_KEY_TENANTS`` (JSON, a client key or its
  ``sha256:<hex>`` digest -> its tenants, ``"*"``: any) binds client keys to tenants
  (:class:`KeyRing`). The guard authenticates and puts the key's :class:`Grant` in a context
  variable; the places that learn the tenant (``/decide``, ``/decide_batch``, ``/feedback`` via
  the decision's tenant, ``/v1/chat/completions``, ``/pareto?tenant=``) ask
  :func:`tenant_refusal` / :func:`check_tenant`: another tenant -> 403 ``forbidden``. The rule
  lives here; the handlers only say which tenant a request is for, from the body they parse
  anyway (the guard does not parse bodies: no second JSON parse on the hot path). Admin keys act
  for every tenant; once the mapping is set, an unlisted client key acts for none.
- Bodies larger than ``serving_max_body_bytes`` -> 413 (by ``Content-Length`` or, for
  chunked bodies, by counting).
- A POST whose ``Content-Type`` is not JSON -> 415 (none at all is read as JSON). BentoML
  would parse forms too, and answered a malformed ``multipart/form-data`` body with a 500.
- ``serving_rate_limit_per_s`` per key (per client address when open): a token bucket with a
  burst of twice the rate; beyond it -> 429 with ``Retry-After``. Per worker process, or, with
  ``serving_shared_state=redis``, one limit over every worker and replica (GCRA in Redis,
  :class:`serving.shared_state.RedisTokenBucket`: one Redis round trip per request; Redis down:
  each worker's own bucket, with a warning, retried every 5 s).
- **Keys' own limits**: ``LLMOPT_CLIENT_KEY_LIMITS`` (JSON, a key or its ``sha256:<hex>``
  digest -> ``{"daily_budget_usd": ..., "rate_per_s": ...}``, both optional; parsed by
  :func:`parse_key_limits`). A key's ``rate_per_s`` replaces the global rate for it (a bucket of
  its own, in Redis too under shared state; 0: no limit). For a key with a ``daily_budget_usd``
  the guard names the key (its digest) to the router (:func:`serving.key_limits.use_key`),
  which makes its decisions fit the key's budget as well as the tenant's
  (:mod:`serving.key_limits`).
- ``GET /metrics`` answers from :mod:`serving.metrics`.

Refusals have the one error body of :mod:`serving.errors`. Settings are read when the app is
built (in each worker), not at import.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from llmopt.settings import Settings
from serving.errors import ApiError, error_body
from serving.guards import TokenBucket
from serving.key_limits import LIMIT_FIELDS, KeyLimit, reset_key, short, use_key
from serving.metrics import get_metrics
from serving.shared_state import SharedState

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


ANY_TENANT = "*"
"""In ``LLMOPT_CLIENT_KEY_TENANTS``: the key may act for every tenant."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class KeyConfigError(ValueError):
    """The keys' settings do not hold together (the service does not start)."""


def _entry_digest(entry: str, setting: str = "LLMOPT_CLIENT_KEY_TENANTS") -> str:
    """The digest of one mapping entry (a key or ``sha256:<hex>``); :class:`KeyConfigError`."""
    if not entry.strip():
        raise KeyConfigError(f"{setting}: an empty key")
    if not entry.startswith("sha256:"):
        return key_digest(entry.strip())
    digest = entry.removeprefix("sha256:").strip().lower()
    if not _SHA256.match(digest):
        raise KeyConfigError(f"{setting}: {entry[:16]!r}... is not sha256:<64 hex digits>")
    return digest


def parse_key_tenants(
    mapping: Mapping[str, list[str]], client_keys: frozenset[str], admin_keys: frozenset[str]
) -> dict[str, frozenset[str] | None]:
    """Each bound client key's digest -> its tenants (None: any); :class:`KeyConfigError`.

    Every entry must be a key of ``client_keys`` (digests): the mapping scopes keys, it does not
    create them, so a mistyped digest stops the start instead of leaving its key unbound. An
    admin key may not be bound (admin keys act for every tenant), nor may a key have no tenant.

    >>> ring = parse_key_tenants({"k": ["acme", "beta"]}, frozenset({key_digest("k")}), frozenset())
    >>> sorted(ring[key_digest("k")])
    ['acme', 'beta']
    >>> parse_key_tenants({"k": ["*"]}, frozenset({key_digest("k")}), frozenset())[key_digest("k")]
    >>> parse_key_tenants({"x": ["acme"]}, frozenset(), frozenset())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    serving.http_guard.KeyConfigError: LLMOPT_CLIENT_KEY_TENANTS: key #1 is not in ...
    """
    out: dict[str, frozenset[str] | None] = {}
    for n, (entry, tenants) in enumerate(mapping.items(), start=1):
        digest = _entry_digest(entry)
        where = f"LLMOPT_CLIENT_KEY_TENANTS: key #{n}"
        if digest in admin_keys:
            raise KeyConfigError(f"{where} is an admin key: admin keys act for every tenant")
        if digest not in client_keys:
            raise KeyConfigError(
                f"{where} is not in LLMOPT_CLIENT_KEYS (bind only client keys; list the key or "
                "its sha256:<hex> there too)"
            )
        if digest in out:
            raise KeyConfigError(f"{where} is listed twice (as a key and as its digest)")
        if not isinstance(tenants, list) or not tenants:
            raise KeyConfigError(f'{where} has no tenant (give a list of tenants, or ["*"])')
        bad = [t for t in tenants if not isinstance(t, str) or not t or len(t) > 200]
        if bad:
            raise KeyConfigError(f"{where}: {bad[0]!r} is not a tenant id (1 to 200 characters)")
        out[digest] = None if ANY_TENANT in tenants else frozenset(tenants)
    return out


def _limit(value: Any, where: str, name: str) -> float:
    """One limit: a finite number >= 0 (JSON true/false are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise KeyConfigError(f"{where}: {name} must be a number, not {value!r}")
    if value < 0:
        raise KeyConfigError(f"{where}: {name} is negative ({value!r})")
    return float(value)


def parse_key_limits(
    mapping: Mapping[str, Any], client_keys: frozenset[str], admin_keys: frozenset[str]
) -> dict[str, KeyLimit]:
    """Each limited key's digest -> its :class:`serving.key_limits.KeyLimit`;
    :class:`KeyConfigError` naming the entry (by position and digest prefix, never the key).

    Every entry must be a key of ``client_keys`` or ``admin_keys`` (digests), give at least
    one of ``daily_budget_usd`` and ``rate_per_s``, nothing else, each a number >= 0.

    >>> d = key_digest("k")
    >>> parse_key_limits({"k": {"rate_per_s": 5}}, frozenset({d}), frozenset())[d]
    KeyLimit(daily_budget_usd=None, rate_per_s=5.0)
    >>> parse_key_limits({"k": {"rate": 5}}, frozenset({d}), frozenset())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    serving.http_guard.KeyConfigError: LLMOPT_CLIENT_KEY_LIMITS: key #1 (8254c329...): unknown ...
    """
    setting = "LLMOPT_CLIENT_KEY_LIMITS"
    out: dict[str, KeyLimit] = {}
    for n, (entry, limits) in enumerate(mapping.items(), start=1):
        digest = _entry_digest(entry, setting)
        where = f"{setting}: key #{n} ({short(digest)})"
        if digest not in client_keys and digest not in admin_keys:
            raise KeyConfigError(
                f"{where} is not in LLMOPT_CLIENT_KEYS or LLMOPT_ADMIN_KEYS (limits apply to "
                "known keys; list the key or its sha256:<hex> there too)"
            )
        if digest in out:
            raise KeyConfigError(f"{where} is listed twice (as a key and as its digest)")
        if not isinstance(limits, dict):
            raise KeyConfigError(
                f'{where}: give an object, e.g. {{"daily_budget_usd": 2.0, "rate_per_s": 5}}'
            )
        unknown = sorted(str(f) for f in limits if f not in LIMIT_FIELDS)
        if unknown:
            raise KeyConfigError(
                f"{where}: unknown field {unknown[0]!r} (known: {', '.join(LIMIT_FIELDS)})"
            )
        if not limits:
            raise KeyConfigError(f"{where} sets no limit ({' or '.join(LIMIT_FIELDS)})")
        budget, rate = (_limit(limits[f], where, f) if f in limits else None for f in LIMIT_FIELDS)
        out[digest] = KeyLimit(daily_budget_usd=budget, rate_per_s=rate)
    return out


def key_limits(s: Settings) -> dict[str, KeyLimit]:
    """The keys' own limits of the settings (:func:`parse_key_limits`), by digest."""
    return parse_key_limits(
        s.client_key_limits, key_digests(s.client_keys), key_digests(s.admin_keys)
    )


@dataclass(frozen=True)
class Grant:
    """The tenants the request's key may act for (``None``: any) and its endpoint."""

    tenants: frozenset[str] | None = None
    endpoint: str = ""

    def allows(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants


ANY = Grant()
_GRANT: ContextVar[Grant] = ContextVar("llmopt_grant", default=ANY)
"""Set by :class:`GuardMiddleware` around the request (the default: no keys, no restriction)."""


def current_grant() -> Grant:
    """The :class:`Grant` of the request being served."""
    return _GRANT.get()


def default_tenant(fallback: str = "default") -> str:
    """The tenant a request naming none acts for: the key's only tenant, else ``fallback``."""
    tenants = _GRANT.get().tenants
    if tenants is not None and len(tenants) == 1:
        return next(iter(tenants))
    return fallback


def tenant_refusal(tenant: str, *, message: str | None = None) -> str | None:
    """``None`` if the request's key may act for ``tenant``, else why not (a 403, counted)."""
    grant = _GRANT.get()
    if grant.allows(tenant):
        return None
    get_metrics().refusals.labels(grant.endpoint or "?", "403").inc()
    if message is not None:
        return message
    mine = sorted(grant.tenants or ())
    hint = (
        f"it may act for {', '.join(repr(t) for t in mine)}"
        if mine
        else "it is bound to no tenant (LLMOPT_CLIENT_KEY_TENANTS)"
    )
    return f"this key may not act for tenant {tenant!r}: {hint}"


class TenantForbiddenError(ApiError):
    """403: the request's key may not act for the tenant the request is for."""

    error_code = HTTPStatus.FORBIDDEN
    code = "forbidden"


def check_tenant(tenant: str, *, field: str = "tenant", message: str | None = None) -> None:
    """:class:`TenantForbiddenError` unless the request's key may act for ``tenant``."""
    why = tenant_refusal(tenant, message=message)
    if why is not None:
        raise TenantForbiddenError(why, field=field)


@dataclass(frozen=True)
class KeyRing:
    """The keys of the settings, as digests, checked together (:meth:`from_settings`)."""

    client: frozenset[str] = frozenset()
    admin: frozenset[str] = frozenset()
    tenants: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    metrics_require_key: bool = False
    limits: Mapping[str, KeyLimit] = field(default_factory=dict)
    """Keys' own rate limits and daily budgets (``LLMOPT_CLIENT_KEY_LIMITS``), by digest."""

    @classmethod
    def from_settings(cls, s: Settings) -> KeyRing:
        """:class:`KeyConfigError` when they do not hold together."""
        client, admin = key_digests(s.client_keys), key_digests(s.admin_keys)
        tenants = parse_key_tenants(s.client_key_tenants, client, admin)
        limits = parse_key_limits(s.client_key_limits, client, admin)
        if s.metrics_require_key and not admin:
            raise KeyConfigError("LLMOPT_METRICS_REQUIRE_KEY needs LLMOPT_ADMIN_KEYS")
        return cls(client, admin, tenants, s.metrics_require_key, limits)

    @property
    def auth(self) -> bool:
        return bool(self.client or self.admin)

    @property
    def unbound(self) -> int:
        """Client keys that act for no tenant (the mapping is set and does not list them)."""
        return len(self.client - self.admin - set(self.tenants)) if self.tenants else 0

    def grant(self, digest: str, *, admin: bool, endpoint: str) -> Grant:
        """What a known key may do: admin keys and, with no mapping, every key: any tenant."""
        if admin or not self.tenants:
            return ANY
        tenants = self.tenants.get(digest, frozenset())
        return ANY if tenants is None else Grant(tenants, endpoint)


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
        self.keys = KeyRing.from_settings(s)
        self.client_keys = self.keys.client
        self.admin_keys = self.keys.admin
        self.auth = self.keys.auth
        self.max_body = s.serving_max_body_bytes
        rate = s.serving_rate_limit_per_s
        own = {d: lim.rate_per_s for d, lim in self.keys.limits.items() if lim.rate_per_s}
        self.shared_state = SharedState.from_settings(s) if rate > 0 or own else None
        self.bucket = self._bucket(rate)
        self.key_buckets: dict[str, TokenBucket | None] = {
            d: self._bucket(lim.rate_per_s)
            for d, lim in self.keys.limits.items()
            if lim.rate_per_s is not None
        }
        """Keys with a rate of their own (0: none): their bucket replaces :attr:`bucket`."""
        self.budgeted = frozenset(
            d for d, lim in self.keys.limits.items() if lim.daily_budget_usd is not None
        )
        """Keys with a daily budget of their own: named to the router (:func:`use_key`)."""
        self.metrics = get_metrics()

    def _bucket(self, rate: float) -> TokenBucket | None:
        """A bucket of ``rate`` per second, burst twice that (in Redis under shared state)."""
        if rate <= 0:
            return None
        if self.shared_state is not None:
            return self.shared_state.rate_limit(rate, 2 * rate)
        return TokenBucket(rate, 2 * rate)

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
            if not self.keys.metrics_require_key or await self._admin_only(scope, send):
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
        grant = ANY
        bucket = self.bucket
        budgeted: str | None = None
        if self.auth:
            known = await self._authenticate(scope, send, endpoint)
            if known is None:
                return
            digest, is_admin = known
            if path.startswith("/admin/") and not is_admin:
                self.metrics.refusals.labels(endpoint, "403").inc()
                await _reply(send, 403, error_body(403, "this endpoint needs an admin key"))
                return
            ident = digest  # rate limits per key, kept by digest
            grant = self.keys.grant(digest, admin=is_admin, endpoint=endpoint)
            if digest in self.key_buckets:  # the key's own rate
                bucket, ident = self.key_buckets[digest], f"key:{digest}"
            budgeted = digest if digest in self.budgeted else None
        if bucket is not None:
            wait = bucket.take(ident)
            if wait > 0:
                self.metrics.refusals.labels(endpoint, "429").inc()
                await _reply(
                    send,
                    429,
                    error_body(429, "rate limit exceeded"),
                    retry_after=str(max(1, round(wait + 0.5))),
                )
                return
        token = _GRANT.set(grant)
        key_token = use_key(budgeted) if budgeted is not None else None
        try:
            await self._limited(scope, receive, send, endpoint)
        finally:
            if key_token is not None:
                reset_key(key_token)
            _GRANT.reset(token)

    async def _authenticate(
        self, scope: Scope, send: Send, endpoint: str
    ) -> tuple[str, bool] | None:
        """``(digest, is_admin)`` of a known key; else a 401 is sent and None returned."""
        key = self._key(scope)
        digest = key_digest(key) if key is not None else ""
        is_admin = key is not None and self._known(digest, self.admin_keys)
        if key is not None and (is_admin or self._known(digest, self.client_keys)):
            return digest, is_admin
        self.metrics.refusals.labels(endpoint, "401").inc()
        why = "missing" if key is None else "unknown"
        await _reply(
            send,
            401,
            error_body(401, f"{why} API key: send Authorization: Bearer KEY"),
            www_authenticate="Bearer",
        )
        return None

    async def _admin_only(self, scope: Scope, send: Send) -> bool:
        """``LLMOPT_METRICS_REQUIRE_KEY``: True for an admin key, else 401/403 sent."""
        known = await self._authenticate(scope, send, "metrics")
        if known is None:
            return False
        if not known[1]:
            self.metrics.refusals.labels("metrics", "403").inc()
            await _reply(send, 403, error_body(403, "/metrics needs an admin key"))
            return False
        return True

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
