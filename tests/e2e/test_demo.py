"""`llmopt demo` as a user runs it: a fresh folder, the installed entry point, real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
LLMOPT = Path(sys.executable).with_name("llmopt")


def run_demo(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "160", **env}
    full_env.pop("LLMOPT_HOME", None)
    full_env.pop("LLMOPT_SERVING_FEATURES", None)  # as a user runs it: online features on
    return subprocess.run(
        [str(LLMOPT), "demo"],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_demo_on_embedded_defaults(tmp_path: Path) -> None:
    proc = run_demo(tmp_path, **{"LLMOPT_DATABASE_URL": ""})
    assert proc.returncode == 0, proc.stderr
    assert "best model (claude-2)" in proc.stdout and "oracle" in proc.stdout
    assert "+802 decisions, +802 feedback" in proc.stdout
    home = tmp_path / ".llmopt"
    result = json.loads((home / "demo" / "result.json").read_text())
    assert (
        result["data"]["n_prompts"] == 802 and result["data"]["dropped_prompts_missing_models"] == 3
    )
    assert (home / "demo" / "frontier.png").stat().st_size > 10_000
    engine = sa.create_engine(f"sqlite:///{home / 'events.db'}")
    with engine.connect() as conn:
        n = conn.execute(
            sa.text(
                "SELECT count(*) FROM feedback f JOIN decisions d "
                "USING (decision_id) WHERE f.reward IS NOT NULL"
            )
        ).scalar()
    assert n == 802 + 300  # the replay, then 300 prompts through the running service
    # The service loaded the registered version and served real prompts over HTTP.
    assert "300 decide+feedback round trips, 0 failed" in proc.stdout
    assert "decision service (http://127.0.0.1:" in proc.stdout
    assert "llm-router/1)" in proc.stdout
    assert "online features {'open': 300}" in proc.stdout
    # ... and its run ends with a drift report of the served traffic
    assert "drift report " in proc.stdout and "reference = champion" in proc.stdout
    reports = home / "monitoring" / "reports"
    assert (reports / "index.html").exists()
    assert list(reports.glob("*/*.html")) and list(reports.glob("*/*.json"))
    # The feedback went through the feature store and the policy into the registry as prod.
    assert "802 feedback events pushed" in proc.stdout
    assert "online read of 15 models" in proc.stdout
    mlflow_db = sa.create_engine(f"sqlite:///{home / 'mlflow.db'}")
    with mlflow_db.connect() as conn:
        aliases = dict(
            conn.execute(
                sa.text(
                    "SELECT alias, version FROM registered_model_aliases WHERE name = 'llm-router'"
                )
            ).all()
        )
    assert set(aliases) == {"dev", "staging", "prod"}


@pytest.mark.services
def test_demo_with_the_event_log_in_postgresql(tmp_path: Path, postgres_url: str) -> None:
    proc = run_demo(tmp_path, LLMOPT_DATABASE_URL=postgres_url)
    assert proc.returncode == 0, proc.stderr
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM feedback")).scalar() >= 802
    engine.dispose()
    assert not (tmp_path / ".llmopt" / "events.db").exists()
