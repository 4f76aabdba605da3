"""The ``llmopt`` CLI through typer's runner: contract fields and clear errors, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from llmopt.app.cli import app
from models.kinds import RECOMMENDED

pytestmark = pytest.mark.integration
DEMO = Path(__file__).resolve().parents[4] / "llmopt" / "data" / "alpaca_eval.parquet"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    monkeypatch.setenv("LLMOPT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LLMOPT_DATABASE_URL", raising=False)
    from llmopt.settings import get_settings  # noqa: PLC0415

    get_settings.cache_clear()
    return CliRunner()


def test_help_lists_the_commands(runner: CliRunner) -> None:
    out = runner.invoke(app, ["--help"]).output
    for command in ("demo", "bench", "catalog", "decide", "feedback", "db"):
        assert command in out


def test_bench_replay_writes_the_contract_json_and_plot(runner: CliRunner, tmp_path: Path) -> None:
    out, plot = tmp_path / "r.json", tmp_path / "f.png"
    res = runner.invoke(
        app,
        [
            "bench",
            "replay",
            "--data",
            str(DEMO),
            "--out",
            str(out),
            "--plot",
            str(plot),
            "--seed",
            "3",
            "--wtp",
            "0.01",
            "--wtp",
            "0.1",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    (name,) = doc["policies"]
    assert name == RECOMMENDED  # the recommended policy when none is named
    assert [p["willingness_to_pay"] for p in doc["policies"][name]["points"]] == [0.01, 0.1]
    for p in doc["policies"][name]["points"]:
        assert {"willingness_to_pay", "avg_quality", "avg_cost_usd"} <= set(p)
    assert len(doc["baselines"]["single_models"]) == 15
    assert {"avg_quality", "avg_cost_usd"} == set(doc["baselines"]["single_models"]["claude-2"])
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"
    assert "best model" in res.output


def test_bench_replay_named_policy(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = runner.invoke(
        app,
        [
            "bench",
            "replay",
            "--data",
            str(DEMO),
            "--out",
            str(out),
            "--policy",
            "epsilon_greedy",
            "--wtp",
            "0.05",
        ],
    )
    assert res.exit_code == 0, res.output
    assert list(json.loads(out.read_text())["policies"]) == ["epsilon_greedy"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["quality"]), "missing column(s): quality"),
        (lambda f: f.assign(cost_usd=-1.0), "cost_usd"),
    ],
)
def test_malformed_data_file_is_a_clear_error(
    runner: CliRunner,
    tmp_path: Path,
    mutate,
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    bad = tmp_path / "bad.parquet"
    mutate(pd.read_parquet(DEMO)).to_parquet(bad)
    res = runner.invoke(
        app, ["bench", "replay", "--data", str(bad), "--out", str(tmp_path / "o.json")]
    )
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o.json").exists()


def test_unknown_policy_and_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "bench",
            "replay",
            "--data",
            str(DEMO),
            "--out",
            str(tmp_path / "o.json"),
            "--policy",
            "magic",
        ],
    )
    assert res.exit_code == 2 and "unknown policy 'magic'" in res.output
    res = runner.invoke(
        app,
        [
            "bench",
            "replay",
            "--data",
            str(tmp_path / "none.parquet"),
            "--out",
            str(tmp_path / "o.json"),
        ],
    )
    assert res.exit_code == 2 and "no such file" in res.output


def test_decide_then_feedback_and_its_errors(runner: CliRunner) -> None:
    res = runner.invoke(app, ["decide", '{"tenant": "acme", "prompt": "Write a haiku"}'])
    assert res.exit_code == 0, res.output
    decision = json.loads(res.output)
    assert decision["propensity"] > 0 and decision["model"]
    fb = json.dumps({"decision_id": decision["decision_id"], "quality": 0.8, "cost_usd": 0.001})
    first = runner.invoke(app, ["feedback", fb])
    assert first.exit_code == 0 and json.loads(first.output)["status"] == "stored"
    again = runner.invoke(app, ["feedback", fb])
    assert json.loads(again.output)["status"] == "duplicate"
    cases = [
        (["feedback", '{"decision_id": "nope", "quality": 0.5}'], "unknown decision_id 'nope'"),
        (
            ["feedback", json.dumps({"decision_id": decision["decision_id"], "quality": 1.7})],
            "quality: Input should be less than or equal to 1",
        ),
        (["feedback", "{not json"], "not valid JSON"),
        (["decide", '{"prompt": "no tenant"}'], "tenant: Field required"),
    ]
    for args, message in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert message in res.output and "Traceback" not in res.output
    stats = runner.invoke(app, ["db", "stats"])
    assert json.loads(stats.output) == {"decisions": 1, "feedback": 1}


def test_catalog_command_shows_price_sources(runner: CliRunner) -> None:
    res = runner.invoke(app, ["catalog"])
    assert res.exit_code == 0 and "genai-prices" in res.output and "override" in res.output


def test_unreachable_database_is_a_clear_error(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmopt.settings import get_settings  # noqa: PLC0415

    monkeypatch.setenv("LLMOPT_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    get_settings.cache_clear()
    res = runner.invoke(app, ["db", "upgrade"])
    assert res.exit_code == 2 and "cannot open the event log" in res.output
    get_settings.cache_clear()


def _equal_cost_file(tmp_path: Path) -> Path:
    """A small mixed workload where every model costs the same (only context can help)."""
    frame = pd.read_parquet(DEMO)
    frame = frame[frame["sample_id"].isin(frame["sample_id"].unique()[:120])]
    path = tmp_path / "equal.parquet"
    frame.assign(cost_usd=0.0001).to_parquet(path)
    return path


def test_bench_replay_seeds_and_warm_start_score_only_the_rest(
    runner: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "r.json"
    data = _equal_cost_file(tmp_path)
    args = ["bench", "replay", "--data", str(data), "--out", str(out), "--wtp", "0.01"]
    res = runner.invoke(app, [*args, "--wtp", "0.1", "--seeds", "3", "--warm-start", "0.25"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["seeds"] == [0, 1, 2]
    assert doc["warm_start"]["prompts"] == 30 and doc["warm_start"]["scored_prompts"] == 90
    pol = doc["policies"][RECOMMENDED]
    assert [p["willingness_to_pay"] for p in pol["points"]] == [0.01, 0.1]
    assert len(pol["points_by_seed"]) == 3
    # every point is the mean of the seeds' points
    for k, point in enumerate(pol["points"]):
        runs = [run[k]["avg_quality"] for run in pol["points_by_seed"]]
        assert point["avg_quality"] == pytest.approx(sum(runs) / 3)
    proto = pol["summary"]["protocol"]
    assert set(proto) == {"mean_margin", "best_point_lift", "cost_fraction_to_95pct_best"}
    assert len(proto["mean_margin"]["per_seed"]) == 3 and proto["mean_margin"]["sd"] is not None
    assert "mean margin over the zero router" in res.output
    # the baselines are those of the scored prompts only
    assert doc["baselines"]["single_models"]  # equal costs: a one-point zero router
    assert (
        len({round(v["avg_cost_usd"], 12) for v in doc["baselines"]["single_models"].values()}) == 1
    )


def test_bench_replay_refuses_a_warm_start_of_everything(runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        ["bench", "replay", "--data", str(DEMO), "--out", str(tmp_path / "o.json")]
        + ["--warm-start", "1.5"],
    )
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_train_from_evals_registers_a_warm_started_version(
    runner: CliRunner, tmp_path: Path
) -> None:
    data = _equal_cost_file(tmp_path)
    res = runner.invoke(app, ["train", "--from-evals", str(data)])
    assert res.exit_code == 0, res.output
    assert "learnt 1800 outcomes of 120 prompts x 15 models" in res.output
    assert "registered llm-router version 1 as dev, staging and prod" in res.output
    from llmopt.settings import get_settings  # noqa: PLC0415
    from registry import mlflow_registry as registry  # noqa: PLC0415

    client = registry.configure(get_settings())
    version, policy = registry.load_policy(client, "prod")
    tags = client.get_model_version(registry.MODEL_NAME, version).tags
    assert tags["warm_start_evals"] == "equal.parquet"
    assert tags["warm_start_evals_prompts"] == "120" and len(tags["warm_start_evals_sha256"]) == 64
    assert tags["embedding"].startswith("wordllama-")
    assert policy.n_updates == 1800
    # a second warm start goes to dev, through the gates
    res = runner.invoke(app, ["train", "--from-evals", str(data), "--no-event-log"])
    assert res.exit_code == 0 and "as dev" in res.output


def test_train_from_a_missing_file_is_a_clear_error(runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--from-evals", str(tmp_path / "none.parquet")])
    assert res.exit_code == 2 and "no such file" in res.output and "Traceback" not in res.output
