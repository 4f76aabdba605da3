"""The baseline of ``bench/serving.py``: bare uvicorn + starlette doing the same policy work.

``POST /decide`` validates the body, decides through the same :class:`serving.router.Router`
(the same policy, guards, online features and event-log write) and returns the same response
model, with the same garbage-collector settings as the service; only BentoML is missing. Run with
``uvicorn --factory bench.serving_bare:build``; ``bench.serving_bare:build_constant`` is the
issue's yardstick (parse the body, answer a constant).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmopt.schemas import RequestContext
from llmopt.settings import Settings
from serving.runtime import ServingRuntime, settle_for_serving
from serving.service import to_response


def build() -> Starlette:
    """The app (a factory: nothing happens at import)."""
    runtime = ServingRuntime(Settings())  # poller off by env; online features as the service

    async def decide(request: Request) -> Response:
        ctx = RequestContext.model_validate_json(await request.body())
        with runtime.event_log.deferred_writes() as writes:  # as the service: group commit
            routed = runtime.router.decide(ctx)
        await writes.wait_async()
        body = to_response(routed, runtime.features_state).model_dump_json()
        return Response(body, media_type="application/json")

    async def readyz(_: Request) -> Response:
        return Response("ok")

    app = Starlette(routes=[Route("/decide", decide, methods=["POST"]), Route("/readyz", readyz)])
    settle_for_serving(runtime.settings)  # as the service
    return app


CONSTANT = (
    b'{"decision_id":"0","model":"gpt-4o-mini","parameters":{},"propensity":1.0,'
    b'"policy_version":"constant","features":{"state":"off"}}'
)


def build_constant() -> Starlette:
    """The issue's yardstick: a bare endpoint that parses the body and answers a constant."""

    async def decide(request: Request) -> Response:
        RequestContext.model_validate_json(await request.body())
        return Response(CONSTANT, media_type="application/json")

    async def readyz(_: Request) -> Response:
        return Response("ok")

    return Starlette(routes=[Route("/decide", decide, methods=["POST"]), Route("/readyz", readyz)])
