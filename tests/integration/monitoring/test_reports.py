"""Drift reports of a real replay (AlpacaEval, 15 LLMs): steady traffic passes, drift is flagged.

One module-scoped world: a policy warmed up on the shipped demo data, then

- log ``steady``: the warmed policy, frozen and exploring at random a quarter of the time,
  routes every prompt once in a random order (one stationary process: its two halves must not
  be flagged);
- log ``drifted``: ``steady`` plus 400 events where only the longest prompts arrive, the most
  chosen model's quality drops by 0.4 and the (now learning) policy moves away from it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmopt.event_log import EventLog
from monitoring.reports import DriftSummary, drift_report_from_log
from monitoring.windows import ChampionWindow

pytestmark = pytest.mark.integration

WINDOW = 400
REPO = Path(__file__).resolve().parents[3]


class Frozen:
    """A trained policy that no longer learns, exploring uniformly with probability ``epsilon``.

    Every decision comes from one fixed distribution: a stationary router.
    """

    def __init__(self, policy: Any, *, epsilon: float = 0.25, seed: int = 0) -> None:
        self._policy = policy
        self._epsilon = epsilon
        self._rng = np.random.default_rng(seed)
        self.cost_aware = getattr(policy, "cost_aware", False)

    def pull(self, arm_ids: Sequence[str], context: Any = None, **kwargs: Any) -> Any:
        greedy = self._policy.pull(arm_ids, context, **kwargs)
        arm = greedy.model
        if self._rng.random() < self._epsilon:
            arm = arm_ids[int(self._rng.integers(len(arm_ids)))]
        p = self._epsilon / len(arm_ids) + (1 - self._epsilon) * (arm == greedy.model)
        return greedy.model_copy(update={"model": arm, "propensity": p})

    def update(self, arm_id: str, context: Any, reward: float) -> Frozen:
        return self


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class UI:
    proc: subprocess.Popen[Any]
    port: int
    workspace: Path


@pytest.fixture(scope="module", autouse=True)
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    """``evidently ui`` on the (still empty) workspace the drift reports fill.

    Started before everything else: its ~10 s start-up overlaps the replay.
    """
    from monitoring.workspace import start_ui, stop  # noqa: PLC0415

    workspace = tmp_path_factory.mktemp("workspace")
    port = _free_port()
    proc = start_ui(workspace, port=port, quiet=True)
    yield UI(proc, port, workspace)
    stop(proc)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """SQLite event logs ``steady`` and ``drifted`` (see the module docstring)."""
    from llmopt.catalog import load_catalog  # noqa: PLC0415
    from llmopt.replay import compute_features, replay_policy  # noqa: PLC0415
    from llmopt.routing_data import DEMO_DATA, load_routing_data  # noqa: PLC0415
    from models.kinds import RECOMMENDED, make_policy  # noqa: PLC0415

    root = tmp_path_factory.mktemp("drift-logs")
    routing = load_routing_data(DEMO_DATA)
    catalog, features = load_catalog(), compute_features(routing)
    rng = np.random.default_rng(0)
    policy = make_policy(RECOMMENDED, seed=0)

    def replay(data: Any, pol: Any, order: list[int], log: EventLog | None) -> Any:
        return replay_policy(
            data, pol, 0.05, order=order, features=features, catalog=catalog, event_log=log
        )

    replay(routing, policy, rng.permutation(routing.n_prompts).tolist(), None)  # warm-up
    steady = EventLog(f"sqlite:///{root / 'steady.db'}")
    point = replay(routing, Frozen(policy), rng.permutation(routing.n_prompts).tolist(), steady)
    steady.close()
    shutil.copyfile(root / "steady.db", root / "drifted.db")

    top = max(point.model_share, key=point.model_share.__getitem__)
    j = routing.models.index(top)
    quality = routing.quality.copy()
    quality[:, j] = np.clip(quality[:, j] - 0.4, 0.0, 1.0)
    longest = np.argsort([len(p) for p in routing.prompts])[-300:]
    drifted = EventLog(f"sqlite:///{root / 'drifted.db'}")
    replay(
        dataclasses.replace(routing, quality=quality),
        policy,
        rng.choice(longest, WINDOW).tolist(),
        drifted,
    )
    drifted.close()
    return {"steady": root / "steady.db", "drifted": root / "drifted.db", "top_model": top}


def _report(db: Path, out: Path, **kwargs: Any) -> DriftSummary:
    log = EventLog(f"sqlite:///{db}")
    try:
        return drift_report_from_log(log, out, window=WINDOW, **kwargs)
    finally:
        log.close()


@pytest.fixture(scope="module")
def drifted_summary(
    logs: dict[str, Any], ui_server: UI, tmp_path_factory: pytest.TempPathFactory
) -> DriftSummary:
    out = tmp_path_factory.mktemp("drifted-reports")
    champion = ChampionWindow("7", 0, 802, "data_window='feedback (0, 802]'")
    return _report(logs["drifted"], out, champion=champion, workspace=ui_server.workspace)


def test_stationary_traffic_is_not_flagged(logs: dict[str, Any], tmp_path: Path) -> None:
    s = _report(logs["steady"], tmp_path / "reports", champion_note="no champion in this test")
    assert s.reference.kind == "split" and "no champion in this test" in s.reference.description
    assert (s.reference_window.n_rows, s.current_window.n_rows) == (400, 400)
    assert not s.drift_detected, s.describe()
    assert [r.name for r in s.reports] == ["features", "per_model", "decisions"]
    assert len(s.report("features").columns) >= 15
    assert len(s.report("features").drifted_columns) <= 2, s.describe()
    # Files: one folder per run, HTML + Evidently JSON per report, our summary, the index.
    for r in s.reports:
        assert r.html.stat().st_size > 100_000 and json.loads(r.snapshot_json.read_text())
        assert r.html.parent == s.folder
    summary = json.loads(s.summary_json.read_text())
    assert summary["reference"]["kind"] == "split" and summary["current"]["n_rows"] == 400
    assert summary["current"]["first_received_at"] and summary["reference"]["feedback_ids"]
    assert summary["reports"]["features"]["html"] == "features.html"
    assert "script_arabic" in summary["reports"]["features"]["skipped_columns"]  # all zero
    assert s.folder.name in s.index.read_text()


def test_drift_is_flagged_per_report_against_the_champion_window(
    drifted_summary: DriftSummary, logs: dict[str, Any]
) -> None:
    s = drifted_summary
    top = logs["top_model"]
    assert s.reference.kind == "champion" and s.reference.champion_version == "7"
    assert (s.reference_window.after_id, s.reference_window.until_id) == (402, 802)
    assert (s.current_window.after_id, s.current_window.until_id) == (802, 1202)
    assert s.drift_detected
    features = s.report("features")
    assert features.drift_detected, s.describe()
    assert {"input_tokens", "len_chars", "quality"} <= set(features.drifted_columns)
    assert f"quality[{top}]" in s.report("per_model").drifted_columns, s.describe()
    assert "model" in s.report("decisions").drifted_columns
    assert "champion" in s.describe() and "DRIFT" in s.describe()


def test_evidently_ui_serves_the_workspace(drifted_summary: DriftSummary, ui_server: UI) -> None:
    from monitoring.workspace import PROJECT_NAME, wait_until_serving  # noqa: PLC0415

    base = f"http://127.0.0.1:{ui_server.port}"
    assert wait_until_serving(f"{base}/", timeout=90, proc=ui_server.proc)
    projects: list[dict[str, Any]] = []
    deadline = time.monotonic() + 15  # the UI watches the folder: new projects show up live
    while not projects and time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base}/api/projects", timeout=5) as resp:
            projects = json.loads(resp.read())
        time.sleep(0.2)
    assert [p["name"] for p in projects] == [PROJECT_NAME]

    # The dashboard has its panels, and the server feeds them from the run's snapshots.
    project = projects[0]["id"]
    with urllib.request.urlopen(f"{base}/api/v2/dashboards/{project}", timeout=10) as resp:
        dashboard = json.loads(resp.read())
    titles = [p["title"] for p in dashboard["panels"]]
    assert titles[:2] == ["Drift share per report", "Traffic share per model"], titles
    traffic = next(p for p in dashboard["panels"] if p["title"] == "Traffic share per model")
    body = {
        "series_filter": [
            {k: v[k] for k in ("metric", "tags", "metadata", "metric_labels")}
            for v in traffic["values"]
        ]
    }
    request = urllib.request.Request(  # noqa: S310 - local URL
        f"{base}/api/v2/snapshots/{project}/data_series_batch",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - local URL
        series = json.loads(resp.read())
    assert drifted_summary.outcomes is not None
    shares = {s["params"]["label"]: s["values"][-1] for s in series["series"]}
    expected = {m: v["share"] for m, v in drifted_summary.outcomes.by_model.items()}
    assert shares.keys() >= expected.keys()
    assert {m: round(shares[m], 6) for m in expected} == expected


def test_cli_writes_reports_and_explains_an_empty_log(
    logs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner  # noqa: PLC0415

    from llmopt.app.cli import app  # noqa: PLC0415
    from llmopt.settings import get_settings  # noqa: PLC0415

    for var in ("LLMOPT_DATABASE_URL", "LLMOPT_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(logs["steady"], home / "events.db")
    monkeypatch.setenv("LLMOPT_HOME", str(home))
    get_settings.cache_clear()
    out = tmp_path / "out"
    res = runner.invoke(app, ["monitor", "report", "--out", str(out), "--window", "400"])
    assert res.exit_code == 0, res.output
    assert "features" in res.output and "reference" in res.output
    assert list(out.glob("*/features.html")) and list(out.glob("*/summary.json"))
    assert (out / "index.html").exists() and list((home / "monitoring" / "workspace").iterdir())

    monkeypatch.setenv("LLMOPT_HOME", str(tmp_path / "empty"))
    get_settings.cache_clear()
    res = runner.invoke(app, ["monitor", "report", "--out", str(out), "--skip-workspace"])
    get_settings.cache_clear()
    assert res.exit_code == 2
    assert "error: no event log at" in res.output and "0 feedback events" in res.output
    assert not (tmp_path / "empty" / "events.db").exists()
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
