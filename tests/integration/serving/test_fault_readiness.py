"""The event log's database goes away under the running service: /readyz says degraded and why.

The service (its ASGI app, lifespan and background threads, as ``bentoml serve`` runs it) keeps
deciding through the outage, its decisions spooled; ``/readyz`` stays 200 (a load balancer
must not take every replica out over the shared database) with ``status: degraded`` and the
reason, and returns to ``ok`` once the spool has replayed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import bentoml
import pytest
from starlette.testclient import TestClient

from llmopt.event_log import EventLog
from serving.schemas import EXAMPLE_DECIDE

pytestmark = pytest.mark.integration


def test_readyz_is_degraded_while_the_event_log_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_outage: Any
) -> None:
    db = tmp_path / "db"
    db.mkdir()
    url = f"sqlite:///{db / 'events.db'}"
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    monkeypatch.setenv("LLMOPT_HOME", str(tmp_path / "llmopt"))
    monkeypatch.setenv("LLMOPT_DATABASE_URL", url)
    for key, value in {
        "SERVING_MODEL_SOURCE": "fresh",
        "SERVING_FEATURES": "off",
        "SERVING_POLL_S": "0",
        "SERVING_RATE_LIMIT_PER_S": "0",
    }.items():
        monkeypatch.setenv(f"LLMOPT_{key}", value)
    for key in ("LLMOPT_CLIENT_KEYS", "LLMOPT_ADMIN_KEYS"):
        monkeypatch.delenv(key, raising=False)
    from serving.service import DecisionService  # noqa: PLC0415

    with TestClient(DecisionService.to_asgi()) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ok", "reasons": []}
        event_log = bentoml.get_current_service().runtime.event_log
        outage = sqlite_outage(db, event_log)
        outage.start()
        try:
            decided = [client.post("/decide", json=EXAMPLE_DECIDE) for _ in range(3)]
            assert [r.status_code for r in decided] == [200] * 3  # decisions go on
            fb = client.post(
                "/feedback", json={"decision_id": decided[0].json()["decision_id"], "quality": 0.8}
            )
            assert fb.status_code == 200 and fb.json()["status"] == "spooled"
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            body = ready.json()
            assert body["status"] == "degraded"
            (reason,) = body["reasons"]
            assert reason.startswith("event log unavailable since ")
            assert "spooled (4 pending)" in reason
            assert client.get("/healthz").json() == {"status": "alive"}  # liveness unaffected
        finally:
            outage.end()
        deadline = time.monotonic() + 10  # the runtime replays its spool every second
        while client.get("/readyz").json()["status"] != "ok" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get("/readyz").json() == {"status": "ok", "reasons": []}
    assert EventLog(url).counts() == {"decisions": 3, "feedback": 1}  # nothing lost
