"""The Evidently UI: a local workspace of report snapshots, its dashboard, and ``evidently ui``.

Every drift report run adds its snapshots to the project ``llm-auto-optimizer`` of a local
workspace (a folder; default ``<home>/monitoring/workspace``); ``evidently ui`` serves it,
offline, at ``http://127.0.0.1:<port>``. Its telemetry is switched off (``DO_NOT_TRACK``).

The project's dashboard (tab ``Router``, :func:`dashboard_panels`) plots, one point per run:

- the drift share of each drift report, from the run's ``drift-share`` snapshot (one row per
  report: the share of its tested columns that drifted);
- traffic share, mean reward, quality and cost per model, and traffic share and reward per
  policy version, from the run's ``outcomes`` snapshot of the current window
  (:func:`outcome_metrics`).

Per-model and per-version values are Evidently metrics whose labels name the model or version:
``UniqueValueCount(column="model")`` has one share per model (label ``label``), and
``GroupBy(MeanValue(column="reward"), "model")`` one mean per model. A panel selects one such
metric by its labels and draws one line per label, so models and versions that appear later
get their own lines with no change to the dashboard. (The UI matches each value of a panel to
the first of the panel's metrics that selects it, so each panel selects exactly one metric.)

Examples
--------
>>> cmd = ui_command("/tmp/ws", port=8123)
>>> cmd[1:]
['ui', '--host', '127.0.0.1', '--port', '8123', '--workspace', '/tmp/ws']
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmopt.settings import Settings
from monitoring.frames import OUTCOMES_BY_MODEL

PROJECT_NAME = "llm-auto-optimizer"
PROJECT_TAG = PROJECT_NAME
"""Every snapshot the reports add carries this tag."""
OUTCOMES_TAG = "outcomes"
"""Tag of the per-run snapshot of the current window's traffic and outcomes."""
DRIFT_SHARE_TAG = "drift-share"
"""Tag of the per-run snapshot of each drift report's drift share."""
DASHBOARD_TAB = "Router"
DEFAULT_PORT = 8000

TRAFFIC_COLUMNS: tuple[str, ...] = ("model", "policy_version", "version_model")
"""Columns of the outcome snapshot whose share of the traffic the dashboard plots."""
_WINDOW = " in the current window of each drift report run"
_OUTCOME_TITLES = {
    "reward": ("Reward per model", "Mean reward of the requests routed to each model" + _WINDOW),
    "quality": ("Quality per model", "Mean quality (0-1) of each model's answers" + _WINDOW),
    "cost_usd": (
        "Cost per request per model (USD)",
        "Mean cost of a request to each model" + _WINDOW,
    ),
}


def default_workspace(settings: Settings) -> Path:
    """The workspace of the embedded profile: ``<home>/monitoring/workspace``."""
    return settings.home / "monitoring" / "workspace"


def group_mean_labels(column: str, by: str) -> dict[str, str]:
    """Labels selecting ``GroupBy(MeanValue(column=column), by)``: the mean of ``column`` per
    value of ``by`` (the UI stores the inner metric's parameters as text, as here)."""
    from evidently.metrics import MeanValue  # noqa: PLC0415

    return {"column_name": by, "metric": str(MeanValue(column=column).dict(exclude_none=True))}


@dataclass(frozen=True)
class Panel:
    """One dashboard panel: one Evidently metric, selected by type and labels, one line per label.

    ``tag`` selects the snapshots (``outcomes`` or ``drift-share``); ``legend`` names each line
    (``{{label}}`` is the model, version or report).
    """

    title: str
    description: str
    plot: Literal["line", "bar"]
    tag: str
    metric: str
    labels: Mapping[str, str]
    legend: str = "{{label}}"
    size: Literal["full", "half"] = "half"


def dashboard_panels() -> tuple[Panel, ...]:
    """The panels of the project's ``Router`` tab, in order."""

    def share(column: str, title: str, description: str, legend: str = "{{label}}") -> Panel:
        labels = {"column": column, "value_type": "share"}
        return Panel(title, description, "bar", OUTCOMES_TAG, "UniqueValueCount", labels, legend)

    def mean(column: str, by: str, title: str, description: str, legend: str) -> Panel:
        labels = group_mean_labels(column, by)
        return Panel(title, description, "line", OUTCOMES_TAG, "GroupByMetric", labels, legend)

    window = _WINDOW
    return (
        Panel(
            "Drift share per report",
            "Share of each drift report's tested columns that drifted, per run (features and "
            "decisions flag drift at 0.5, per_model at any column)",
            "line",
            DRIFT_SHARE_TAG,
            "GroupByMetric",
            group_mean_labels("drift_share", "report"),
            size="full",
        ),
        share(
            "model",
            "Traffic share per model",
            "Share of the requests routed to each model" + window,
        ),
        *(
            mean(column, "model", *_OUTCOME_TITLES[column], "{{label}}")
            for column in OUTCOMES_BY_MODEL
        ),
        share(
            "policy_version",
            "Traffic share per policy version",
            "Share of the requests decided by each policy version" + window,
            "version {{label}}",
        ),
        mean(
            "reward",
            "policy_version",
            "Reward per policy version",
            "Mean reward of the requests each policy version decided" + window,
            "version {{label}}",
        ),
        share(
            "version_model",
            "Traffic share per policy version and model",
            "Share of the requests each policy version sent to each model" + window,
        ),
    )


def outcome_metrics() -> list[Any]:
    """The Evidently metrics of the ``outcomes`` snapshot (rows: :func:`~.frames.outcomes_frame`).

    Events in the window, the share of each model, version and (version, model) pair, the mean
    reward, quality and cost per model, and the mean reward per version.
    """
    from evidently.metrics import GroupBy, MeanValue, RowCount, UniqueValueCount  # noqa: PLC0415

    return [
        RowCount(),
        *(UniqueValueCount(column=c) for c in TRAFFIC_COLUMNS),
        *(GroupBy(MeanValue(column=c), "model") for c in OUTCOMES_BY_MODEL),
        GroupBy(MeanValue(column="reward"), "policy_version"),
    ]


def drift_share_metrics() -> list[Any]:
    """The Evidently metrics of the ``drift-share`` snapshot (one row per drift report)."""
    from evidently.metrics import GroupBy, MeanValue  # noqa: PLC0415

    return [GroupBy(MeanValue(column="drift_share"), "report")]


def _evidently_panel(panel: Panel) -> Any:
    from evidently.sdk.models import PanelMetric  # noqa: PLC0415
    from evidently.sdk.panels import bar_plot_panel, line_plot_panel  # noqa: PLC0415

    value = PanelMetric(
        legend=panel.legend,
        tags=[panel.tag],
        metric=panel.metric,
        metric_labels=dict(panel.labels),
    )
    if panel.plot == "bar":
        return bar_plot_panel(
            panel.title, [value], description=panel.description, size=panel.size, stacked=True
        )
    return line_plot_panel(panel.title, [value], description=panel.description, size=panel.size)


def _same(a: Any, b: Any) -> bool:
    fields = ("title", "subtitle", "size", "values", "plot_params")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def ensure_dashboard(ws: Any, project_id: Any) -> bool:
    """Give the project's dashboard the ``Router`` tab of :func:`dashboard_panels`.

    Panels in other tabs (a user's own) are kept; the ``Router`` tab's panels are replaced when
    they differ from :func:`dashboard_panels`. Returns whether the dashboard was rewritten.
    """
    from evidently.sdk.models import DashboardTabModel  # noqa: PLC0415

    model = ws.get_dashboard(project_id)
    wanted = [_evidently_panel(p) for p in dashboard_panels()]
    tab = next((t for t in model.tabs if t.title == DASHBOARD_TAB), None)
    by_id = {p.id: p for p in model.panels}
    ours = [by_id[i] for i in tab.panels if i in by_id] if tab is not None else []
    if len(ours) == len(wanted) and all(_same(a, b) for a, b in zip(ours, wanted, strict=True)):
        return False
    if tab is None:
        tab = DashboardTabModel(title=DASHBOARD_TAB, panels=[])
        model.tabs.insert(0, tab)
    old = set(tab.panels)
    tab.panels = [p.id for p in wanted]
    model.panels = [*wanted, *(p for p in model.panels if p.id not in old)]
    ws.save_dashboard(project_id, model)
    return True


def ensure_project(path: Path | str, project: str = PROJECT_NAME) -> tuple[Any, Any]:
    """The workspace at ``path`` (created if missing) and its ``project`` with its dashboard."""
    from evidently.ui.workspace import Workspace  # noqa: PLC0415

    Path(path).mkdir(parents=True, exist_ok=True)
    ws = Workspace.create(str(path))
    found = ws.search_project(project)
    proj = (
        found[0]
        if found
        else ws.create_project(
            project,
            description="The router's traffic, outcomes per model and version, and drift",
        )
    )
    ensure_dashboard(ws, proj.id)
    return ws, proj


def add_snapshots(path: Path | str, snapshots: Iterable[Any], project: str = PROJECT_NAME) -> str:
    """Add Evidently snapshots to ``project`` of the workspace at ``path``; return its id.

    The project and its dashboard are created (or brought up to date) first.
    """
    ws, proj = ensure_project(path, project)
    for snap in snapshots:
        ws.add_run(proj.id, snap)
    return str(proj.id)


def evidently_executable() -> str:
    """The ``evidently`` command of this environment (next to the interpreter, else on PATH)."""
    here = Path(sys.executable).parent / "evidently"
    if here.exists():
        return str(here)
    found = shutil.which("evidently")
    if found is None:
        raise FileNotFoundError("the `evidently` command is not installed in this environment")
    return found


def ui_command(
    workspace: Path | str, *, port: int = DEFAULT_PORT, host: str = "127.0.0.1"
) -> list[str]:
    """The command line serving ``workspace`` with the Evidently UI."""
    return [
        evidently_executable(),
        "ui",
        "--host",
        host,
        "--port",
        str(port),
        "--workspace",
        str(workspace),
    ]


def start_ui(
    workspace: Path | str, *, port: int = DEFAULT_PORT, host: str = "127.0.0.1", quiet: bool = False
) -> subprocess.Popen[bytes]:
    """Start ``evidently ui`` on ``workspace`` (created if missing); the caller stops it."""
    Path(workspace).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DO_NOT_TRACK": "1"}
    out = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(  # noqa: S603 - our own executable and arguments
        ui_command(workspace, port=port, host=host), env=env, stdout=out, stderr=out
    )


def wait_until_serving(
    url: str, *, timeout: float = 60.0, proc: subprocess.Popen[Any] | None = None
) -> bool:
    """Poll ``url`` until it answers HTTP 200 (True), ``timeout`` passes or ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - local URL
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    return False


def stop(proc: subprocess.Popen[Any], *, timeout: float = 10.0) -> None:
    """Stop a process started by :func:`start_ui` (terminate, then kill)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
