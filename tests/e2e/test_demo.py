"""`llmopt demo` as a user runs it: a fresh folder, the installed entry point, real data."""

from __future__ import annotations

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


def test_demo_on_embedded_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo as a function, on the embedded defaults: every leg's figures, typed."""
    from llmopt.app.demo import run_demo  # noqa: PLC0415
    from llmopt.event_log import EventLog  # noqa: PLC0415
    from llmopt.settings import get_settings  # noqa: PLC0415
    from registry import mlflow_registry  # noqa: PLC0415

    home = tmp_path / ".llmopt"
    monkeypatch.setenv("LLMOPT_HOME", str(home))
    monkeypatch.setenv("LLMOPT_DATABASE_URL", "")
    monkeypatch.delenv("LLMOPT_SERVING_FEATURES", raising=False)  # online features on
    monkeypatch.delenv("LLMOPT_MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    lines: list[str] = []
    result = run_demo(settings, echo=lines.append)
    get_settings.cache_clear()

    assert result.data.n_prompts == 802 and result.data.dropped_prompts == 3
    assert result.data.n_models == 15
    assert result.live.decisions_added == 802 and result.live.feedback_added == 802
    assert result.sweep["data"]["n_prompts"] == 802
    assert result.sweep["data"]["dropped_prompts_missing_models"] == 3
    assert result.plot.stat().st_size > 10_000 and result.report.is_file()
    # The feedback went through the feature store, read back for every model.
    assert result.feature_store.accepted == 802 and result.feature_store.online_models == 15
    # The policy went into the registry as dev, staging and prod (read back through the adapter).
    assert result.registry.version == "1"
    assert result.registry.aliases == ("dev", "staging", "prod")
    client = mlflow_registry.configure(settings)
    assert mlflow_registry.version_for_alias(client, "prod") == "1"
    # The service loaded that version and served real prompts over HTTP, through its
    # OpenAI-compatible gateway to the replay upstream, every decision with online features
    # (read fresh, or flagged degraded when the store answered late on this busy machine).
    assert result.service.url.startswith("http://127.0.0.1:")
    assert result.service.requests == 300 and result.service.failed == 0
    assert set(result.service.policy_versions) == {"llm-router/1"}
    assert set(result.service.features) <= {"open", "degraded"}
    assert result.service.features.get("open", 0) >= 270
    # The replay, then the served prompts, all with their reward in the event log.
    log = EventLog(settings.event_log_url)
    assert log.counts()["feedback"] == 802 + 300
    log.close()
    # ... and the run ends with a drift report of the served traffic against the champion's data.
    assert result.drift.reference_kind == "champion"
    assert any(result.drift.folder.glob("*.html")) and any(result.drift.folder.glob("*.json"))
    assert (home / "monitoring" / "reports" / "index.html").exists()
    # The served traffic is named by its registry version, as /decide and MLflow name it.
    assert any("policy versions: llm-router/1 " in line for line in lines), lines
    # The CLI prints exactly these lines; each leg's line went out as the leg ended.
    assert [line for line in lines if not line.startswith("decision service: starting")] == (
        result.lines()
    )


@pytest.mark.services
def test_demo_with_the_event_log_in_postgresql(tmp_path: Path, postgres_url: str) -> None:
    """`llmopt demo` as a user runs it (the installed entry point), events in PostgreSQL."""
    proc = run_demo(tmp_path, LLMOPT_DATABASE_URL=postgres_url)
    assert proc.returncode == 0, proc.stderr
    # Every leg's line, then the sweep's table.
    assert "+802 decisions, +802 feedback" in proc.stdout
    assert "300 chat completions + feedback, 0 failed" in proc.stdout
    assert "reference = champion" in proc.stdout
    assert "best model (claude-2)" in proc.stdout and "oracle" in proc.stdout
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM feedback")).scalar() >= 802
    engine.dispose()
    assert not (tmp_path / ".llmopt" / "events.db").exists()
