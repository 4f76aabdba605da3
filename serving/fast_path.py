"""``POST /decide``, ``/decide_batch`` and ``/feedback`` answered in front of BentoML's machinery.

BentoML's path for a JSON endpoint costs about as much CPU as the decision itself (py-spy,
``python -m bench.decide_profile`` and ``make bench-serving``: the service answered ~0.65 of
what a bare Starlette endpoint doing the same decision work answers). Most of that is generic:
building a Starlette ``Request``, parsing the body into a dict, validating it into the input
model, calling the handler through its signature, serialising the returned model through
BentoML's IO descriptors, and OpenTelemetry's context. :class:`FastPathMiddleware` sits
innermost, behind the key/size/rate guard, the gateway and the error shape, and hands the raw
body of these endpoints to the service's :meth:`serving.service.DecisionService.answer`,
which validates it with the same input models, runs the same handlers (tenant checks, group
commit, metrics) and answers the same errors and the same response model.

Everything else, and these paths when ``LLMOPT_SERVING_FAST_PATH=false``, goes through
BentoML unchanged. The OpenAPI document is BentoML's (the endpoints are still declared there).
"""

from __future__ import annotations

from typing import Any, Protocol

from serving.errors import ASGIApp, Message, Receive, Scope, Send

PATHS = frozenset({"/decide", "/decide_batch", "/feedback"})
"""What the fast path answers (``POST`` only; anything else goes to BentoML)."""


class Answering(Protocol):
    """The service's side: a raw body in, a status and a JSON body out."""

    async def answer(self, path: str, raw: bytes) -> tuple[int, bytes]: ...


async def read_body(receive: Receive) -> bytes:
    """The whole request body (what arrived before a disconnect)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


_JSON = (b"content-type", b"application/json")


class FastPathMiddleware:
    """ASGI middleware: ``POST`` to :data:`PATHS` goes to the service's ``answer``.

    The service is found when the app's lifespan start-up completes (BentoML builds it then),
    so several apps in one process, as in tests, each use their own; until then, and when the
    service's settings turn the fast path off, requests pass through to BentoML.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.service: Answering | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            service = self.service
            if service is not None and scope["method"] == "POST" and scope["path"] in PATHS:
                status, body = await service.answer(scope["path"], await read_body(receive))
                length = (b"content-length", str(len(body)).encode())
                await send(
                    {"type": "http.response.start", "status": status, "headers": [_JSON, length]}
                )
                await send({"type": "http.response.body", "body": body})
                return
        elif scope["type"] == "lifespan":
            await self.app(scope, receive, self._watch(send))
            return
        await self.app(scope, receive, send)

    def _watch(self, send: Send) -> Send:
        async def watched(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.service = _fast_service()
            elif message["type"] == "lifespan.shutdown.complete":
                self.service = None
            await send(message)

        return watched


def _fast_service() -> Any:
    """This worker's service instance if its settings keep the fast path on (else None)."""
    import bentoml  # noqa: PLC0415 (already imported by the service)

    try:
        service = bentoml.get_current_service()
    except Exception:  # BentoMLException: "service isn't instantiated yet"
        return None
    runtime = getattr(service, "runtime", None)
    if runtime is None or not hasattr(service, "answer"):
        return None
    return service if runtime.settings.serving_fast_path else None
