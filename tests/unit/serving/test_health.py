"""``/readyz`` and ``/healthz``: the readiness of a runtime, and the probe middleware's answers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from llmopt.schemas import Feedback, RequestContext
from llmopt.settings import Settings
from llmopt.spool import SpooledEventLog
from serving.health import ProbeMiddleware, readiness
from serving.runtime import ServingRuntime

CTX = RequestContext(tenant="acme", prompt="What is 2 + 2?")


def runtime_on_folder(tmp_path: Path) -> tuple[ServingRuntime, Path]:
    db = tmp_path / "db"
    db.mkdir()
    settings = Settings(
        home=tmp_path / "h",
        database_url=f"sqlite:///{db / 'events.db'}",
        serving_model_source="fresh",
        serving_features="off",
    )
    return ServingRuntime(settings, background=False), db


def test_an_event_log_outage_is_degraded_with_the_reason_then_ok_again(
    tmp_path: Path, sqlite_outage: Any
) -> None:
    rt, db = runtime_on_folder(tmp_path)
    log = rt.event_log
    assert isinstance(log, SpooledEventLog)
    try:
        assert readiness(rt).body() == {"status": "ok", "reasons": []}
        outage = sqlite_outage(db, log)
        outage.start()
        try:
            assert readiness(rt).status == "ok"  # not a probe: nothing was written yet
            d = rt.router.decide(CTX).decision  # the first write finds the database down
            assert rt.router.feedback(Feedback(decision_id=d.decision_id, quality=0.7)).status == (
                "spooled"
            )
            ready = readiness(rt)
            assert ready.status == "degraded" and ready.http_status == 200
            (reason,) = ready.reasons
            assert log.outage_since is not None and not log.available
            assert f"since {log.outage_since.isoformat(timespec='seconds')}" in reason
            assert "spooled (2 pending)" in reason
            assert rt.replay_spool() == 0  # still down
            assert readiness(rt).status == "degraded"
        finally:
            outage.end()
        assert rt.replay_spool() == 2  # the replay reaches the database: ready again
        assert readiness(rt).body() == {"status": "ok", "reasons": []} and log.available
        assert log.counts() == {"decisions": 1, "feedback": 1}
    finally:
        rt.close()


def test_a_write_that_reaches_the_database_ends_the_outage(
    tmp_path: Path, sqlite_outage: Any
) -> None:
    rt, db = runtime_on_folder(tmp_path)
    try:
        outage = sqlite_outage(db, rt.event_log)
        outage.start()
        rt.router.decide(CTX)
        outage.end()
        assert readiness(rt).status == "degraded"
        rt.router.decide(CTX)  # stored: the database answers again (the spool replays later)
        assert readiness(rt).status == "ok"
    finally:
        rt.close()


def test_the_static_default_answering_is_degraded() -> None:
    ready = readiness(SimpleNamespace(event_log=None, fallback=True))
    assert ready.status == "degraded" and ready.http_status == 200
    assert ready.reasons == ("no learned policy: the static default policy answers",)


def probe_client(runtime: Any) -> TestClient:
    inner = Starlette(routes=[Route("/other", lambda _: PlainTextResponse("inner"))])
    return TestClient(ProbeMiddleware(inner, runtime=lambda: runtime))


def test_the_probes_answer_json_and_starting_is_503() -> None:
    client = probe_client(None)
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "starting"
    assert r.headers["content-type"] == "application/json"
    alive = client.get("/healthz")
    assert alive.status_code == 200 and alive.json() == {"status": "alive"}
    assert client.get("/other").text == "inner"  # everything else passes through


def test_the_probe_reports_a_runtime(tmp_path: Path) -> None:
    rt, _ = runtime_on_folder(tmp_path)
    try:
        r = probe_client(rt).get("/readyz")
        assert r.status_code == 200 and r.json() == {"status": "ok", "reasons": []}
    finally:
        rt.close()
