"""Production profile end to end: event log, MLflow backend and Prefect server on PostgreSQL.

A real ``prefect server`` (its database on PostgreSQL) and ``llmopt flows run`` in a separate
process pointed at it, with the event log and the MLflow backend store in their own PostgreSQL
databases.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from llmopt.settings import Settings

from ..conftest import fill_log

pytestmark = [pytest.mark.integration, pytest.mark.services, pytest.mark.slow]
BIN = Path(sys.executable).parent


@pytest.fixture
def fresh_db(postgres_url: str) -> Iterator[Callable[[str], str]]:
    """``make(prefix)`` creates an empty database on the test server; all dropped afterwards."""
    server, _, _ = postgres_url.rpartition("/")
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def make(prefix: str) -> str:
        name = f"llmopt_{prefix}_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return name

    yield make
    with admin.connect() as conn:
        for name in made:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_flow_runs_against_a_prefect_server_on_postgresql(
    fresh_db: Callable[[str], str], postgres_url: str, tmp_path: Path
) -> None:
    server = postgres_url.rpartition("/")[0]
    events_url = f"{server}/{fresh_db('events')}"
    mlflow_url = f"{server}/{fresh_db('mlflow')}"
    prefect_db = fresh_db("prefect")
    prefect_url = server.replace("postgresql+psycopg", "postgresql+asyncpg") + f"/{prefect_db}"
    settings = Settings(home=tmp_path / "home", database_url=events_url)
    total = fill_log(settings, 60)

    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": prefect_url,
        "PREFECT_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        api = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prefect server did not start"
            assert proc.poll() is None, "prefect server exited"
            time.sleep(1)
        run_env = {
            **env,
            "PREFECT_API_URL": api,
            "LLMOPT_HOME": str(tmp_path / "home"),
            "LLMOPT_DATABASE_URL": events_url,
            "LLMOPT_MLFLOW_TRACKING_URI": mlflow_url,
            "LLMOPT_MLFLOW_ARTIFACTS_URI": (tmp_path / "artifacts").as_uri(),
            "LLMOPT_REGISTER_MIN_EVENTS": str(total),  # register from this small log
        }
        out = subprocess.run(
            [str(BIN / "llmopt"), "flows", "run", "incremental-training"],
            env=run_env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert '"n_events": ' + str(total) in out.stdout
        assert '"registration_reason": "min_events"' in out.stdout
        listed = subprocess.run(
            [str(BIN / "llmopt"), "registry", "list"],
            env=run_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert "llm-router version 1  aliases: dev" in listed.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # The flow run is recorded in the Prefect server's PostgreSQL database.
    engine = sa.create_engine(f"{server}/{prefect_db}")
    with engine.connect() as conn:
        states = conn.execute(sa.text("SELECT state_type FROM flow_run")).scalars().all()
    engine.dispose()
    assert [str(s).upper() for s in states] == ["COMPLETED"]
    assert not (tmp_path / "home" / "mlflow.db").exists()
