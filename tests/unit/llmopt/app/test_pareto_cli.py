"""``llmopt pareto`` on a real SQLite event log: the table, the JSON, the plot, bad options."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmopt.app.cli import app
from llmopt.event_log import EventLog
from llmopt.schemas import Decision, Feedback, RequestContext
from llmopt.settings import get_settings

OUTCOMES = {"cheap": (0.6, 0.0005), "mid": (0.8, 0.003), "dominated": (0.5, 0.01)}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("LLMOPT_HOME", str(tmp_path))
    monkeypatch.delenv("LLMOPT_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    log = EventLog(f"sqlite:///{tmp_path}/events.db")
    for model, (quality, cost) in OUTCOMES.items():
        for _ in range(6):
            d = Decision(model=model, propensity=1.0, policy_name="p", policy_version="v")
            log.record_decision(d, RequestContext(tenant="t", task_hints=["code"]), features={})
            log.record_feedback(Feedback(decision_id=d.decision_id, quality=quality, cost_usd=cost))
    log.close()
    yield tmp_path
    get_settings.cache_clear()


def test_pareto_prints_the_front_and_the_choice(home: Path) -> None:
    out = CliRunner().invoke(app, ["pareto", "--task", "code", "--wtp", "1", "--json"])
    assert out.exit_code == 0, out.output
    view = json.loads(out.output)
    front = {c["model"] for c in view["candidates"] if c["on_front"]}
    assert front == {"cheap", "mid"} and view["choice"] == "mid"
    cheap = CliRunner().invoke(app, ["pareto", "--task", "code", "--wtp", "0.001", "--json"])
    assert json.loads(cheap.output)["choice"] == "cheap"
    table = CliRunner().invoke(app, ["pareto", "--task", "code", "--plot", str(home / "f.png")])
    assert table.exit_code == 0 and "choice" in table.output and "dominated" in table.output
    assert (home / "f.png").stat().st_size > 10_000


def test_pareto_of_a_task_without_feedback_says_which_tasks_exist(home: Path) -> None:
    out = CliRunner().invoke(app, ["pareto", "--task", "math", "--plot", str(home / "m.png")])
    assert out.exit_code == 0 and "'code': 18" in out.output and "no plot" in out.output
    assert not (home / "m.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--task", "poetry"], "--task"), (["--window", "0"], "--window"), (["--wtp", "-1"], "--wtp")],
)
def test_pareto_bad_options_are_clear_messages(home: Path, args: list[str], message: str) -> None:
    out = CliRunner().invoke(app, ["pareto", *args])
    assert out.exit_code == 2 and message in out.output and "Traceback" not in out.output
