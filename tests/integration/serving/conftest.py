"""What the in-process service tests share: the service as an ASGI app with settings from the
environment, and the replay upstream the gateway forwards to."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import uvicorn
from starlette.testclient import TestClient

from llmopt.app.processes import free_port
from llmopt.app.upstream_replay import create_app
from llmopt.routing_data import DEMO_DATA, load_routing_data

CLEARED = (
    "LLMOPT_CLIENT_KEYS",
    "LLMOPT_ADMIN_KEYS",
    "LLMOPT_CLIENT_KEY_TENANTS",
    "LLMOPT_CLIENT_KEY_LIMITS",
    "LLMOPT_METRICS_REQUIRE_KEY",
    "LLMOPT_DATABASE_URL",
    "LLMOPT_UPSTREAM_URL",
    "LLMOPT_UPSTREAMS_FILE",
    "LLMOPT_RESPONSE_CACHE_TENANTS",
    "LLMOPT_RESPONSE_CACHE_TTL_S",
    "LLMOPT_RESPONSE_CACHE_MAX_ENTRIES",
    "LLMOPT_RESPONSE_CACHE_SHARED",
)
"""Settings a test's service never inherits from the environment (or from a module fixture)."""


@contextmanager
def asgi_service(tmp: Path, **env: str) -> Iterator[TestClient]:
    """The decision service as an ASGI app (``Service.to_asgi()`` + a TestClient; the `with`
    block runs its lifespan), its settings from ``env`` (read when the app is built)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BENTOML_HOME", str(tmp / "bentoml"))
    mp.setenv("LLMOPT_HOME", str(tmp / "llmopt"))
    mp.setenv("LLMOPT_SERVING_POLL_S", "0")
    mp.setenv("LLMOPT_SERVING_MODEL_SOURCE", "local")
    for key in CLEARED:
        mp.delenv(key, raising=False)
    for key, value in env.items():
        mp.setenv(key, value)
    try:
        from serving.service import DecisionService  # noqa: PLC0415

        with TestClient(DecisionService.to_asgi()) as client:
            yield client
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """``llmopt upstream-replay``'s app on a free port (uvicorn in a thread), at speed 50."""
    port = free_port()
    app = create_app(load_routing_data(DEMO_DATA), speed=50.0, seed=0)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the replay upstream did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix of the test's own; its keys are deleted afterwards."""
    p = f"llmopt:test:{uuid.uuid4().hex[:12]}:"
    yield p
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{p}*"))
    if keys:
        client.delete(*keys)
    client.close()
