"""FastPathMiddleware's routing: only ``POST /decide`` and ``POST /feedback`` reach the service's
``answer``, with the whole body however it was chunked; everything else, and everything before
the service exists, passes to the app behind."""

from __future__ import annotations

import asyncio
from typing import Any

from serving.fast_path import FastPathMiddleware


class Service:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    async def answer(self, path: str, raw: bytes) -> tuple[int, bytes]:
        self.calls.append((path, raw))
        return 201, b'{"ok": true}'


def _run(
    mw: FastPathMiddleware, method: str, path: str, chunks: list[bytes]
) -> list[dict[str, Any]]:
    inbox = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(mw(scope, receive, send))
    return sent


def _app_calls() -> tuple[FastPathMiddleware, list[str]]:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(f"{scope['method']} {scope['path']}")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})

    return FastPathMiddleware(app), seen


def test_decide_and_feedback_go_to_the_service_with_the_whole_body() -> None:
    mw, seen = _app_calls()
    mw.service = service = Service()
    sent = _run(mw, "POST", "/decide", [b'{"ten', b'ant": ', b'"acme"}'])
    _run(mw, "POST", "/feedback", [b"{}"])
    _run(mw, "POST", "/decide_batch", [b"{}"])
    assert service.calls == [
        ("/decide", b'{"tenant": "acme"}'),
        ("/feedback", b"{}"),
        ("/decide_batch", b"{}"),
    ]
    assert seen == []
    assert sent[0]["status"] == 201
    assert dict(sent[0]["headers"]) == {
        b"content-type": b"application/json",
        b"content-length": b"12",
    }
    assert sent[1]["body"] == b'{"ok": true}'


def test_everything_else_goes_to_the_app() -> None:
    mw, seen = _app_calls()
    mw.service = service = Service()
    _run(mw, "GET", "/decide", [b""])
    _run(mw, "POST", "/admin/reload", [b"{}"])
    _run(mw, "POST", "/decide/", [b"{}"])
    assert service.calls == []
    assert seen == ["GET /decide", "POST /admin/reload", "POST /decide/"]


def test_without_a_service_requests_pass_through() -> None:
    mw, seen = _app_calls()  # before start-up, or LLMOPT_SERVING_FAST_PATH=false
    sent = _run(mw, "POST", "/decide", [b"{}"])
    assert seen == ["POST /decide"] and sent[1]["body"] == b"app"
