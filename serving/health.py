"""``GET /healthz`` and ``GET /readyz``: alive, and ready (or degraded, and why).

``/healthz`` (and BentoML's ``/livez``) answers 200 while the process serves HTTP: a restart
would not fix anything it could report, so it depends on nothing else.

``/readyz`` says whether this worker can decide, and how well:

- ``503 {"status": "starting"}`` until the service is built (the router cannot decide yet);
- ``200 {"status": "ok", "reasons": []}`` when every part answers;
- ``200 {"status": "degraded", "reasons": [...]}`` when it decides, but with a part down: the
  event log's database (decisions and feedback are then kept in the durable local spool,
  :mod:`llmopt.spool`, and replayed when it returns: nothing is lost), no learned policy
  (the static default answers), or the shared state's Redis (``LLMOPT_SERVING_SHARED_STATE=
  redis``: budgets and circuit breakers are then this worker's own, :mod:`serving.shared_state`;
  as for the spool, what its last calls saw, not a probe).

**Why degraded is 200, not 503.** A readiness probe that fails takes the replica out of the
load balancer. The event log's database is shared by every replica, so its outage degrades
every replica at the same moment: a 503 would take all of them out and turn a database outage,
which the spool absorbs, into a full outage of routing. 200 keeps them serving; the body, the
``status`` field and the logs say what is wrong, for people and for alerts (a probe that wants
to act on it reads ``status``). 503 is kept for "cannot decide at all".

The outage state is what the spool's writes last saw (:attr:`llmopt.spool.SpooledEventLog.
outage_since`), not a probe of the database: a probe could hang on an unreachable server for
longer than the load balancer waits. With ``LLMOPT_SERVING_SPOOL=false`` there is no spool
and no outage state: decisions fail (503) while the database is down and ``/readyz`` cannot
tell.

Examples
--------
>>> Readiness("degraded", ("event log unavailable",)).body()
{'status': 'degraded', 'reasons': ['event log unavailable']}
>>> Readiness("degraded", ()).http_status, Readiness("starting", ()).http_status
(200, 503)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

from llmopt.spool import SpooledEventLog

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Status = Literal["ok", "degraded", "starting"]


@dataclass(frozen=True)
class Readiness:
    """What ``/readyz`` answers: a status and the reasons for it."""

    status: Status
    reasons: tuple[str, ...] = ()

    @property
    def http_status(self) -> int:
        """200 while the worker can decide (``ok`` or ``degraded``), 503 before it can."""
        return 503 if self.status == "starting" else 200

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {"status": self.status, "reasons": list(self.reasons)}


def readiness(runtime: Any) -> Readiness:
    """The readiness of a :class:`serving.runtime.ServingRuntime` (None: not built yet)."""
    if runtime is None:
        return Readiness("starting", ("the service is starting: it cannot decide yet",))
    reasons: list[str] = []
    event_log = runtime.event_log
    if isinstance(event_log, SpooledEventLog) and event_log.outage_since is not None:
        since = event_log.outage_since.isoformat(timespec="seconds")
        pending = event_log.spooled_records()
        reasons.append(
            f"event log unavailable since {since}: decisions and feedback are spooled "
            f"({pending} pending), replayed when it returns"
        )
    if runtime.fallback:
        reasons.append("no learned policy: the static default policy answers")
    shared = getattr(runtime, "shared_state_degraded", None)
    if shared is not None:
        reasons.append(shared)
    return Readiness("degraded" if reasons else "ok", tuple(reasons))


class RuntimeOfApp:
    """Base of the middlewares that need their app's runtime: captured when the app's lifespan
    start-up completes (so several apps in one process, as in tests, each find their own)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.runtime: Any = None

    async def lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watched(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.runtime = _current_runtime()
            elif message["type"] == "lifespan.shutdown.complete":
                self.runtime = None
            await send(message)

        await self.app(scope, receive, watched)


def _current_runtime() -> Any:
    """The runtime of this worker's service instance (None until BentoML has built it)."""
    import bentoml  # noqa: PLC0415 (already imported by the service)

    try:
        service = bentoml.get_current_service()
    except Exception:  # BentoMLException: "service isn't instantiated yet"
        return None
    return getattr(service, "runtime", None)


class ProbeMiddleware:
    """ASGI middleware answering ``GET /healthz`` and ``GET /readyz`` with a JSON body.

    BentoML's own probes answer an empty text body and a plain 200/503; these say why.
    ``runtime`` returns the worker's runtime (default: that of the service instance the app's
    start-up built, captured when the lifespan's start-up completes, so that several apps in
    one process, as in tests, each report their own).
    """

    def __init__(self, app: ASGIApp, runtime: Callable[[], Any] | None = None) -> None:
        self.app = app
        self.runtime = runtime or self._started
        self._runtime: Any = None

    def _started(self) -> Any:
        return self._runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._watch_lifespan(send))
            return
        path = scope.get("path") if scope["type"] == "http" else None
        if path not in ("/healthz", "/readyz") or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if path == "/healthz":
            status, body = 200, {"status": "alive"}
        else:
            ready = readiness(self.runtime())
            status, body = ready.http_status, ready.body()
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    def _watch_lifespan(self, send: Send) -> Send:
        async def watched(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self._runtime = _current_runtime()  # BentoML built the instance during start-up
            elif message["type"] == "lifespan.shutdown.complete":
                self._runtime = None
            await send(message)

        return watched
