"""The Evidently UI dashboard: three drift report runs on a real SQLite event log fill its panels.

One module-scoped world: five models and two policy versions. Version 1 decides everything at
first, then version 2 (which prefers ``gamma``) takes a growing share; ``rare`` answers one
request in 25 and ``delta`` few, so the per-model drift report must leave them out and say why.
A drift report runs after each of three batches of traffic, into one workspace. The panels are
read back the way ``evidently ui`` reads them (its own storage classes on the workspace
folder), and every value is checked against the events of that run's current window.
"""

from __future__ import annotations

import asyncio
import re
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmopt.event_log import EventLog, LoggedEvent
from llmopt.schemas import Decision, Feedback, RequestContext
from monitoring.reports import DriftSummary, drift_report_from_log
from monitoring.workspace import DASHBOARD_TAB, PROJECT_NAME, ensure_project

pytestmark = pytest.mark.integration

WINDOW = 200
MIN_MODEL_ROWS = 30
# quality mean, cost per request (USD): what each model's feedback looks like
MODELS = {
    "alpha": (0.80, 0.010),
    "beta": (0.60, 0.002),
    "gamma": (0.70, 0.005),
    "delta": (0.50, 0.001),
    "rare": (0.90, 0.050),
}
PREFERENCES = {  # traffic share of each model under each policy version (rare is forced apart)
    "1": {"alpha": 0.38, "beta": 0.30, "gamma": 0.25, "delta": 0.07},
    "2": {"alpha": 0.20, "beta": 0.22, "gamma": 0.50, "delta": 0.08},
}
V2_SHARE = (0.25, 0.6, 1.0)  # version 2's share of the traffic before each report

PANELS = {  # title -> (plot type, metric selected, its labels besides the GroupBy inner metric)
    "Drift share per report": ("line", "GroupByMetric", {"column_name": "report"}),
    "Traffic share per model": ("bar", "UniqueValueCount", {"column": "model"}),
    "Reward per model": ("line", "GroupByMetric", {"column_name": "model"}),
    "Quality per model": ("line", "GroupByMetric", {"column_name": "model"}),
    "Cost per request per model (USD)": ("line", "GroupByMetric", {"column_name": "model"}),
    "Traffic share per policy version": ("bar", "UniqueValueCount", {"column": "policy_version"}),
    "Reward per policy version": ("line", "GroupByMetric", {"column_name": "policy_version"}),
    "Traffic share per policy version and model": (
        "bar",
        "UniqueValueCount",
        {"column": "version_model"},
    ),
}
INNER = {  # the column each GroupBy panel averages
    "Drift share per report": "drift_share",
    "Reward per model": "reward",
    "Quality per model": "quality",
    "Cost per request per model (USD)": "cost_usd",
    "Reward per policy version": "reward",
}


@dataclass
class Run:
    summary: DriftSummary
    reference: list[LoggedEvent]
    current: list[LoggedEvent]


@dataclass
class World:
    root: Path
    workspace: Path
    out: Path
    runs: list[Run]


def _emit(log: EventLog, rng: np.random.Generator, n: int, v2_share: float, start: int) -> None:
    for i in range(start, start + n):
        version = "2" if rng.random() < v2_share else "1"
        prefs = PREFERENCES[version]
        if i % 25 == 0:
            model, propensity = "rare", 0.04
        else:
            names = list(prefs)
            k = int(rng.choice(len(names), p=list(prefs.values())))
            model, propensity = names[k], prefs[names[k]]
        decision = Decision(
            model=model, propensity=propensity, policy_name="linucb", policy_version=version
        )
        log.record_decision(
            decision,
            RequestContext(tenant=str(rng.choice(["acme", "globex"]))),
            features={"len_chars": float(rng.random()), "code": float(rng.random() < 0.3)},
        )
        quality_mean, cost = MODELS[model]
        quality = float(np.clip(rng.normal(quality_mean, 0.1), 0.0, 1.0))
        cost_usd = round(cost * float(rng.uniform(0.5, 1.5)), 6)
        log.record_feedback(
            Feedback(decision_id=decision.decision_id, quality=quality, cost_usd=cost_usd),
            reward=quality - 10 * cost_usd,
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("dashboard")
    log = EventLog(f"sqlite:///{root / 'events.db'}")
    rng = np.random.default_rng(7)
    _emit(log, rng, 2 * WINDOW, 0.0, 0)
    runs = []
    try:
        for k, share in enumerate(V2_SHARE):
            _emit(log, rng, WINDOW, share, (2 + k) * WINDOW)
            summary = drift_report_from_log(
                log,
                root / "reports",
                window=WINDOW,
                min_model_rows=MIN_MODEL_ROWS,
                workspace=root / "workspace",
                champion_note="no champion in this test",
            )
            ref, cur = summary.reference_window, summary.current_window
            runs.append(
                Run(
                    summary,
                    log.feedback_since(ref.after_id, until_id=ref.until_id),
                    log.feedback_since(cur.after_id, until_id=cur.until_id),
                )
            )
    finally:
        log.close()
    return World(root, root / "workspace", root / "reports", runs)


def _dashboard(world: World) -> tuple[Any, Any]:
    ws, project = ensure_project(world.workspace)
    return project, ws.get_dashboard(project.id)


@pytest.fixture(scope="module")
def served(world: World) -> tuple[Any, Any, Any]:
    """What ``evidently ui`` loads from the workspace folder: its project manager (Evidently's
    own storage classes), the project and its dashboard."""
    from evidently.ui.service.storage.local import create_local_project_manager  # noqa: PLC0415

    project, dashboard = _dashboard(world)
    return create_local_project_manager(str(world.workspace), autorefresh=False), project, dashboard


def _series(served: tuple[Any, Any, Any], title: str) -> tuple[int, dict[str, list[float | None]]]:
    """A panel's data as ``evidently ui`` serves it: the number of runs, values per line label."""
    from evidently.ui.service.base import SeriesFilter  # noqa: PLC0415
    from evidently.ui.service.type_aliases import ZERO_UUID  # noqa: PLC0415

    manager, project, dashboard = served
    panel = next(p for p in dashboard.panels if p.title == title)
    filters = [
        SeriesFilter(
            tags=v.tags, metadata=v.metadata, metric=v.metric, metric_labels=v.metric_labels
        )
        for v in panel.values
    ]
    got = asyncio.run(manager.get_data_series(ZERO_UUID, project.id, filters, None, None))
    lines: dict[str, list[float | None]] = {}
    for s in got.series:
        assert s.params["label"] not in lines, f"{title}: two lines for {s.params}"
        lines[s.params["label"]] = s.values + [None] * (len(got.sources) - len(s.values))
    return len(got.sources), lines


def _share(events: Sequence[LoggedEvent], key: Callable[[LoggedEvent], str]) -> dict[str, float]:
    counts = Counter(key(e) for e in events)
    return {k: n / len(events) for k, n in counts.items()}


def _mean(
    events: Sequence[LoggedEvent], key: Callable[[LoggedEvent], str], value: str
) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for e in events:
        groups.setdefault(key(e), []).append(float(getattr(e, value)))
    return {k: statistics.fmean(v) for k, v in groups.items()}


def _model(e: LoggedEvent) -> str:
    return e.model


def _version(e: LoggedEvent) -> str:
    return e.policy_version


def _pair(e: LoggedEvent) -> str:
    return f"v{e.policy_version} {e.model}"


def test_the_project_dashboard_has_the_panels_and_what_each_selects(world: World) -> None:
    project, dashboard = _dashboard(world)
    assert project.name == PROJECT_NAME
    tab = next(t for t in dashboard.tabs if t.title == DASHBOARD_TAB)
    by_id = {p.id: p for p in dashboard.panels}
    panels = [by_id[i] for i in tab.panels]
    assert [p.title for p in panels] == list(PANELS)
    for panel in panels:
        plot, metric, labels = PANELS[panel.title]
        assert panel.plot_params["plot_type"] == plot, panel.title
        assert panel.subtitle, panel.title
        [value] = panel.values  # one metric per panel: one line per model, version or report
        assert value.metric == f"evidently:metric_v2:{metric}", panel.title
        assert labels.items() <= value.metric_labels.items(), panel.title
        if metric == "UniqueValueCount":
            assert value.metric_labels["value_type"] == "share"
            assert value.tags == ["outcomes"]
        else:
            inner = value.metric_labels["metric"]
            assert "MeanValue" in inner and f"'column': '{INNER[panel.title]}'" in inner
            expected_tag = "drift-share" if panel.title.startswith("Drift") else "outcomes"
            assert value.tags == [expected_tag]
        assert "{{label}}" in value.legend
    # Three runs, one dashboard: re-running does not duplicate or rewrite it.
    ws, again = ensure_project(world.workspace)
    assert [p.id for p in ws.get_dashboard(again.id).panels] == [p.id for p in dashboard.panels]


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Traffic share per model", lambda cur: _share(cur, _model)),
        ("Reward per model", lambda cur: _mean(cur, _model, "reward")),
        ("Quality per model", lambda cur: _mean(cur, _model, "quality")),
        ("Cost per request per model (USD)", lambda cur: _mean(cur, _model, "cost_usd")),
        ("Traffic share per policy version", lambda cur: _share(cur, _version)),
        ("Reward per policy version", lambda cur: _mean(cur, _version, "reward")),
        ("Traffic share per policy version and model", lambda cur: _share(cur, _pair)),
    ],
)
def test_each_run_feeds_the_panels_with_the_event_logs_values(
    world: World,
    served: tuple[Any, Any, Any],
    title: str,
    expected: Callable[[list[LoggedEvent]], dict[str, float]],
) -> None:
    n_runs, lines = _series(served, title)
    assert n_runs == len(world.runs) == 3
    for i, run in enumerate(world.runs):
        want = expected(run.current)
        got = {label: v[i] for label, v in lines.items() if v[i] is not None}
        # A share panel also lists, at 0, what only the reference window had.
        assert {k for k, v in got.items() if k not in want} <= {k for k, v in got.items() if v == 0}
        assert want.keys() <= got.keys(), (title, i)
        for label, value in want.items():
            assert got[label] == pytest.approx(value, rel=1e-9, abs=1e-12), (title, i, label)
    # The story the panels tell: version 2 takes over, and with it gamma's traffic grows.
    if title == "Traffic share per policy version":
        v2 = [float(v or 0) for v in lines["2"]]
        assert v2[0] < v2[1] < v2[2] == 1.0
        assert lines["1"][2] == 0.0  # version 1 decided none of the last window
    if title == "Traffic share per model":
        assert float(lines["gamma"][0] or 0) < float(lines["gamma"][2] or 0)
        assert set(lines) == set(MODELS)


def test_the_drift_share_panel_has_each_reports_share_per_run(
    world: World, served: tuple[Any, Any, Any]
) -> None:
    n_runs, lines = _series(served, "Drift share per report")
    assert n_runs == 3 and set(lines) == {"features", "per_model", "decisions"}
    for i, run in enumerate(world.runs):
        for report in run.summary.reports:
            drifted = sum(c.drifted for c in report.columns)
            assert lines[report.name][i] == pytest.approx(drifted / len(report.columns))


def test_snapshots_carry_the_windows_and_the_policy_versions(
    world: World, served: tuple[Any, Any, Any]
) -> None:
    manager, project, _ = served
    state = manager.project_metadata.state
    snapshots = sorted(state.snapshots[project.id].values(), key=lambda s: s.timestamp)
    assert len(snapshots) == 3 * 5  # features, per_model, decisions, outcomes, drift share
    for run in world.runs:
        cur = run.summary.current_window
        mine = [s for s in snapshots if s.metadata["current_ids"] == cur.feedback_ids]
        assert len(mine) == 5
        outcomes = next(s for s in mine if "outcomes" in s.tags)
        versions = {e.policy_version for e in run.current}
        assert {t for t in outcomes.tags if t.startswith("policy_version=")} == {
            f"policy_version={v}" for v in versions
        }
        for s in mine:
            assert s.metadata["current_events"] == str(len(run.current)) == str(WINDOW)
            assert s.metadata["reference_ids"] == run.summary.reference_window.feedback_ids


def test_the_per_model_report_covers_every_model_with_enough_events(world: World) -> None:
    for run in world.runs:
        ref, cur = Counter(e.model for e in run.reference), Counter(e.model for e in run.current)
        qualifying = {m for m in ref | cur if min(ref[m], cur[m]) >= MIN_MODEL_ROWS}
        s = run.summary
        assert len(qualifying) >= 3 and set(s.per_model_models) == qualifying
        tested = {c.column for c in s.report("per_model").columns}
        assert tested == {f"{o}[{m}]" for m in qualifying for o in ("quality", "reward")}
        assert set(s.left_out_models) == set(ref | cur) - qualifying >= {"rare"}
        for m, why in s.left_out_models.items():
            assert f"{ref[m]} event" in why and f"and {cur[m]} in the current" in why
        coverage = s.to_dict()["per_model_coverage"]
        assert set(coverage["models"]) == qualifying and coverage["left_out"] == s.left_out_models


def _text(html: str) -> str:
    """The page's visible header as plain text."""
    start = html.index('<header id="llmopt-windows"')
    return re.sub(r"\s+", " ", re.sub("<[^>]+>", " ", html[start : html.index("</header>", start)]))


def _window_text(events: Sequence[LoggedEvent], after: int, until: int) -> str:
    first, last = (e.received_at.strftime("%Y-%m-%d %H:%M:%S") for e in (events[0], events[-1]))
    return f"feedback ids ({after}, {until}], {len(events)} events, received {first} to {last} UTC"


def test_every_page_names_the_windows_it_compares(world: World) -> None:
    for run in world.runs:
        s = run.summary
        ref = _window_text(run.reference, s.reference_window.after_id, s.reference_window.until_id)
        cur = _window_text(run.current, s.current_window.after_id, s.current_window.until_id)
        pages = [r.html for r in s.reports]
        assert s.outcomes is not None
        pages.append(s.outcomes.html)
        assert [p.name for p in pages] == [
            "features.html",
            "per_model.html",
            "decisions.html",
            "outcomes.html",
        ]
        for page in pages:
            header = _text(page.read_text(encoding="utf-8"))
            assert f"Reference (split) : {ref}" in header, (page, header)
            assert f"Current : {cur}" in header, (page, header)
        per_model = _text(s.report("per_model").html.read_text(encoding="utf-8"))
        for m in s.left_out_models:
            assert f"Left out: {m}:" in per_model
        assert ", ".join(s.per_model_models) in per_model
    index = world.out / "index.html"
    text = re.sub(r"\s+", " ", re.sub("<[^>]+>", " ", index.read_text(encoding="utf-8")))
    latest = world.runs[-1]
    assert f"latest run ({latest.summary.folder.name}) compares" in _text(index.read_text())
    assert f"Current : {_window_text(latest.current, 800, 1000)}" in _text(index.read_text())
    for run in world.runs:  # and each run's row its own windows
        s = run.summary
        assert (
            _window_text(run.current, s.current_window.after_id, s.current_window.until_id) in text
        )
        assert f"{s.folder.name}/outcomes.html" in index.read_text()


def test_the_dashboard_keeps_a_users_own_tab(tmp_path: Path) -> None:
    from evidently.sdk.models import PanelMetric  # noqa: PLC0415
    from evidently.sdk.panels import text_panel  # noqa: PLC0415

    from monitoring.workspace import ensure_dashboard  # noqa: PLC0415

    ws, project = ensure_project(tmp_path / "ws")
    mine = text_panel("my notes")
    project.dashboard.add_panel(mine, tab="Mine")
    assert not ensure_dashboard(ws, project.id)  # already up to date: not rewritten
    dashboard = ws.get_dashboard(project.id)
    router = next(t for t in dashboard.tabs if t.title == DASHBOARD_TAB)
    stale = next(p for p in dashboard.panels if p.id == router.panels[0])
    stale.values = [PanelMetric(metric="RowCount")]  # an older definition of a panel
    ws.save_dashboard(project.id, dashboard)
    assert ensure_dashboard(ws, project.id)
    dashboard = ws.get_dashboard(project.id)
    assert [t.title for t in dashboard.tabs] == [DASHBOARD_TAB, "Mine"]
    assert mine.id in {p.id for p in dashboard.panels}
    assert len(dashboard.panels) == len(PANELS) + 1
    assert (
        next(p for p in dashboard.panels if p.title == "Drift share per report")
        .values[0]
        .metric.endswith("GroupByMetric")
    )


def test_monitor_ui_sets_up_the_dashboard_then_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``llmopt monitor ui`` on an empty workspace: the project and its panels exist before the
    UI starts (no "Please add a monitoring panel"); the server itself is faked here (the real one
    runs in ``test_reports.py``)."""
    from typer.testing import CliRunner  # noqa: PLC0415

    from llmopt.app.cli import app  # noqa: PLC0415
    from monitoring import workspace  # noqa: PLC0415

    started: list[Path] = []

    class Done:
        def wait(self) -> int:
            return 0

        def poll(self) -> int:
            return 0

    def fake_start(path: Path, **kwargs: Any) -> Done:
        started.append(Path(path))
        return Done()

    monkeypatch.setattr(workspace, "start_ui", fake_start)
    res = CliRunner().invoke(app, ["monitor", "ui", "--workspace", str(tmp_path / "ws")])
    assert res.exit_code == 0, res.output
    assert started == [tmp_path / "ws"] and "Evidently UI on http://127.0.0.1:8000" in res.output
    ws, project = ensure_project(tmp_path / "ws")
    assert [p.title for p in ws.get_dashboard(project.id).panels] == list(PANELS)
