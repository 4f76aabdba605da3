"""The baseline of ``bench/serving.py``: bare uvicorn + starlette doing the same policy work.

``POST /decide`` validates the body, decides through the same :class:`serving.router.Router`
(the same policy, guards, online features and event-log write) and returns the same response
model, with the same garbage-collector settings as the service; only BentoML is missing. Run with
``uvicorn --factory bench.serving_bare:build``.
"""

from __future__ import annotations

import gc

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmopt.schemas import RequestContext
from llmopt.settings import Settings
from serving.runtime import ServingRuntime
from serving.service import to_response


def build() -> Starlette:
    """The app (a factory: nothing happens at import)."""
    runtime = ServingRuntime(Settings())  # poller off by env; online features as the service

    async def decide(request: Request) -> Response:
        ctx = RequestContext.model_validate_json(await request.body())
        body = to_response(runtime.router.decide(ctx), runtime.features_state).model_dump_json()
        return Response(body, media_type="application/json")

    async def readyz(_: Request) -> Response:
        return Response("ok")

    app = Starlette(routes=[Route("/decide", decide, methods=["POST"]), Route("/readyz", readyz)])
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    return app
