"""PostgreSQL killed under load: decisions and feedback go on, the spool replays every one."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bench.traffic import spawn
from llmopt.app.processes import running_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]


def counts(url: str) -> tuple[int, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            d = conn.execute(sa.text("SELECT count(*) FROM decisions")).scalar()
            f = conn.execute(sa.text("SELECT count(*) FROM feedback")).scalar()
        return int(d or 0), int(f or 0)
    finally:
        engine.dispose()


def service_env(database_url: str) -> dict[str, str]:
    """The service of these tests: its event log on ``database_url``, nothing else moving."""
    return {
        "LLMOPT_DATABASE_URL": database_url,
        "LLMOPT_SERVING_MODEL_SOURCE": "fresh",
        "LLMOPT_SERVING_FEATURES": "off",
        "LLMOPT_SERVING_RATE_LIMIT_PER_S": "0",
        "LLMOPT_SERVING_POLL_S": "0",
    }


def replayed_counts(url: str, accepted: int, timeout_s: float) -> tuple[int, int]:
    """:func:`counts` once the spools replayed ``accepted`` feedback (every second per
    worker), or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while counts(url)[1] < accepted and time.monotonic() < deadline:
        time.sleep(0.5)
    return counts(url)


def test_postgres_killed_under_load_loses_nothing(tmp_path: Path, private_postgres: Any) -> None:
    pg = private_postgres
    env = service_env(pg.url)
    with running_service(tmp_path / "home", **env) as url:
        traffic = spawn(url, rate=40, seconds=15)
        time.sleep(4)
        pg.kill()
        time.sleep(5)
        pg.start()
        out, _ = traffic.communicate(timeout=120)
        result = json.loads(out)
        tally = result["tally"]
        decisions, feedback = replayed_counts(pg.url, result["accepted_feedback"], 30)
    print(json.dumps(result))
    assert result["server_errors"] == 0, tally
    assert set(tally) <= {"decide 200", "feedback stored", "feedback spooled"}, tally
    assert not any(k.startswith("transport") for k in tally), tally
    assert tally.get("feedback spooled", 0) > 20, tally  # the outage was real and long
    assert feedback == result["accepted_feedback"]
    assert decisions == tally["decide 200"]


def test_postgres_killed_with_delayed_feedback_on_two_workers_refuses_none(
    tmp_path: Path, private_postgres: Any
) -> None:
    """Issue 18's fault run: half the feedback comes 0.5-3 s after its decision, on either of
    two workers, while PostgreSQL is down for 10 s. None is refused (no 404 for a decision a
    sibling spooled), none lost, none stored twice."""
    pg = private_postgres
    env = service_env(pg.url)
    with running_service(tmp_path / "home", workers=2, **env) as url:
        traffic = spawn(url, rate=30, seconds=20, delayed=True)
        time.sleep(4)
        pg.kill()
        time.sleep(10)
        pg.start()
        out, _ = traffic.communicate(timeout=180)
        result = json.loads(out)
        tally = result["tally"]
        decisions, feedback = replayed_counts(pg.url, result["accepted_feedback"], 60)
    print(json.dumps(result))
    assert result["server_errors"] == 0, tally
    assert set(tally) <= {"decide 200", "feedback stored", "feedback spooled"}, tally
    assert tally.get("feedback spooled", 0) > 20, tally  # the outage was real and long
    assert feedback == result["accepted_feedback"], (feedback, tally)  # none lost, none twice
    assert decisions == tally["decide 200"]
