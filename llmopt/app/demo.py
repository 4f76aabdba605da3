"""``llmopt demo`` as a function: the whole loop on shipped data, returning a typed result.

:func:`run_demo` replays the AlpacaEval prompts (``llmopt.routing_data.DEMO_DATA``) through
decide -> feedback -> learn with the recommended policy, writing every event to the event log;
pushes that feedback through the feature store; registers the trained policy in the MLflow
registry (aliases ``dev``, ``staging``, ``prod``); starts the decision service, which loads that
version, and drives real prompts through it over HTTP; reports drift of the served traffic
against what the champion learned from; and sweeps the willingness to pay against every single
model, uniform random, the zero router and the oracle (plot + JSON).

Each leg's figures come back in a :class:`DemoResult`; tests assert on it, and the CLI prints
:meth:`DemoResult.lines` (``echo`` streams each leg's line as it finishes).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmopt.settings import Settings

Echo = Callable[[str], None]


@dataclass(frozen=True)
class DataSummary:
    """The replayed file: its name and shape."""

    name: str
    n_prompts: int
    n_models: int
    dropped_prompts: int
    """Prompts left out because some model's outcome is missing."""

    def line(self) -> str:
        return (
            f"data: {self.name}: {self.n_prompts} prompts x {self.n_models} models "
            f"({self.dropped_prompts} prompts dropped: not every model's outcome present)"
        )


@dataclass(frozen=True)
class LiveLoop:
    """The replay through the learning loop, logged event by event."""

    event_log_url: str
    decisions_added: int
    feedback_added: int
    willingness_to_pay: float
    avg_quality: float
    avg_cost_usd: float
    avg_latency_ms_modelled: float | None
    first_feedback_id: int
    last_feedback_id: int

    def line(self) -> str:
        latency = self.avg_latency_ms_modelled
        return (
            f"event log ({self.event_log_url}): +{self.decisions_added} decisions, "
            f"+{self.feedback_added} feedback; live loop at willingness to pay "
            f"{self.willingness_to_pay:g} USD/quality: quality {self.avg_quality:.4f}, cost "
            f"{self.avg_cost_usd:.6f} USD/prompt, modelled latency "
            f"{latency if latency is not None else float('nan'):.0f} ms"
        )


@dataclass(frozen=True)
class FeatureStoreLeg:
    """The feedback pushed through Feast and read back."""

    repo: str
    accepted: int
    push_events_per_s: float | None
    online_models: int
    read_ms: float
    training_rows: int

    def line(self) -> str:
        return (
            f"feature store ({self.repo}): {self.accepted} feedback events pushed "
            f"({self.push_events_per_s or 0:.0f}/s), online read of {self.online_models} models "
            f"in {self.read_ms:.1f} ms, point-in-time training set of {self.training_rows} rows"
        )


@dataclass(frozen=True)
class RegistryLeg:
    """The trained policy as a registry version."""

    uri: str
    version: str
    aliases: tuple[str, ...]
    """The aliases that point at ``version`` after registration, read back from the registry."""

    def line(self) -> str:
        return f"registry ({self.uri}): llm-router version {self.version} aliased " + ", ".join(
            self.aliases
        )


@dataclass(frozen=True)
class ServiceLeg:
    """Prompts sent through the running decision service over HTTP."""

    url: str
    requests: int
    failed: int
    avg_quality: float
    avg_cost_usd: float
    round_trip_p50_ms: float
    round_trip_p99_ms: float
    policy_versions: dict[str, int]
    features: dict[str, int]
    """How many answers read the online features, by state (``open``: read and used)."""
    top_models: list[tuple[str, int]]

    @classmethod
    def from_summary(cls, http: dict[str, Any]) -> ServiceLeg:
        """From :func:`llmopt.app.processes.drive_gateway`'s summary."""
        return cls(
            url=http["url"],
            requests=http["requests"],
            failed=http["failed"],
            avg_quality=http["avg_quality"],
            avg_cost_usd=http["avg_cost_usd"],
            round_trip_p50_ms=http["round_trip_p50_ms"],
            round_trip_p99_ms=http["round_trip_p99_ms"],
            policy_versions=dict(http["policy_versions"]),
            features=dict(http["features"]),
            top_models=[(str(m), int(n)) for m, n in http["top_models"]],
        )

    def line(self) -> str:
        top = ", ".join(f"{m} {n}" for m, n in self.top_models)
        return (
            f"decision service ({self.url}, {', '.join(self.policy_versions)}): "
            f"{self.requests} chat completions + feedback, {self.failed} failed; "
            f"quality {self.avg_quality:.4f}, cost {self.avg_cost_usd:.6f} USD/prompt; "
            f"round trip p50 {self.round_trip_p50_ms:.1f} ms, "
            f"p99 {self.round_trip_p99_ms:.1f} ms; online features {self.features}; "
            f"top models: {top}"
        )


@dataclass(frozen=True)
class DriftLeg:
    """The Evidently drift report of the served traffic."""

    folder: Path
    reference_kind: str
    drift_detected: bool
    text: str
    """The report's own summary (:meth:`monitoring.reports.DriftReport.describe`)."""

    def line(self) -> str:
        return self.text


@dataclass(frozen=True)
class DemoResult:
    """Every leg of the demo, then the willingness-to-pay sweep (``sweep``, the replay JSON)."""

    data: DataSummary
    live: LiveLoop
    feature_store: FeatureStoreLeg
    registry: RegistryLeg
    service: ServiceLeg
    drift: DriftLeg
    sweep: dict[str, Any]
    plot: Path
    report: Path
    recommended: str

    def lines(self) -> list[str]:
        """The legs' summary lines, in order (what ``llmopt demo`` prints before the table)."""
        return [
            self.data.line(),
            self.live.line(),
            self.feature_store.line(),
            self.registry.line(),
            self.service.line(),
            self.drift.line(),
        ]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the libraries' own chatter (Feast, MLflow, dask warnings) around a block."""
    buffer = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(buffer),
            contextlib.redirect_stderr(buffer),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _register(settings: Settings, policy: Any, first_id: int, last_id: int) -> RegistryLeg:
    """Register ``policy`` as ``dev``, ``staging`` and ``prod``; the aliases read back."""
    from registry import ALIASES  # noqa: PLC0415
    from registry.mlflow_registry import (  # noqa: PLC0415
        configure,
        list_versions,
        register_policy,
    )

    with quiet():
        version = register_policy(
            policy,
            settings=settings,
            tags={  # the events it learned from: the drift report's reference window
                "data_window": f"feedback ({first_id}, {last_id}]",
                "last_feedback_id": str(last_id),
                "n_events": str(last_id - first_id),
            },
        )
        info = {v.version: v for v in list_versions(configure(settings))}[str(version)]
    aliases = tuple(a for a in ALIASES if a in info.aliases)
    return RegistryLeg(settings.mlflow_uri, str(version), aliases)


def run_demo(
    settings: Settings,
    *,
    out_dir: Path | None = None,
    seed: int = 0,
    served: int = 300,
    progress: bool = False,
    echo: Echo | None = None,
) -> DemoResult:
    """Run the demo with ``settings`` (state under ``settings.home``); its typed result.

    ``echo`` receives each leg's summary line as soon as the leg ends (the CLI prints them);
    ``served`` prompts go through the running service; ``out_dir`` (default
    ``<home>/demo``) receives ``frontier.png`` and ``result.json``.
    """
    import numpy as np  # noqa: PLC0415

    from feature_store.demo import demo_roundtrip  # noqa: PLC0415
    from llmopt.app.processes import (  # noqa: PLC0415
        drive_gateway,
        running_service,
        running_upstream,
    )
    from llmopt.catalog import load_catalog  # noqa: PLC0415
    from llmopt.event_log import EventLog  # noqa: PLC0415
    from llmopt.plot import plot_frontier  # noqa: PLC0415
    from llmopt.replay import compute_features, replay_policy, run_replay  # noqa: PLC0415
    from llmopt.routing_data import DEMO_DATA, load_routing_data  # noqa: PLC0415
    from models.kinds import RECOMMENDED, make_policy  # noqa: PLC0415
    from monitoring.reports import drift_report  # noqa: PLC0415

    say = echo or (lambda _line: None)
    home = settings.ensure_home()
    out = out_dir or home / "demo"
    catalog = load_catalog(settings.catalog_path)
    routing = load_routing_data(DEMO_DATA)
    data = DataSummary(
        DEMO_DATA.name, routing.n_prompts, len(routing.models), routing.dropped_prompts
    )
    say(data.line())

    # 1. The live loop: every prompt decided, answered (the data set's outcome) and learned.
    log = EventLog(settings.event_log_url)
    before = log.counts()
    first_id = log.last_feedback_id()
    order = np.random.default_rng(seed).permutation(routing.n_prompts).tolist()
    live_policy = make_policy(RECOMMENDED, seed=seed)
    point = replay_policy(
        routing,
        live_policy,
        settings.default_willingness_to_pay,
        order=order,
        features=compute_features(routing),
        catalog=catalog,
        event_log=log,
    )
    after = log.counts()
    last_id = log.last_feedback_id()
    live = LiveLoop(
        settings.event_log_url,
        after["decisions"] - before["decisions"],
        after["feedback"] - before["feedback"],
        point.willingness_to_pay,
        point.avg_quality,
        point.avg_cost_usd,
        point.avg_latency_ms_modelled,
        first_id,
        last_id,
    )
    say(live.line())

    # 2. The feedback through the feature store: windowed model statistics pushed to the online
    # and offline stores, read back for every model, and a point-in-time training set.
    with quiet():
        fs = demo_roundtrip(log.feedback_since(0), settings=settings)
    log.close()
    store = FeatureStoreLeg(
        fs["repo"],
        fs["accepted"],
        fs["push_events_per_s"],
        len(fs["online"]),
        fs["read_ms"],
        int((fs["training_set"] or {}).get("rows", 0)),
    )
    say(store.line())

    # 3. The trained policy becomes a registry version aliased dev, staging and prod.
    registered = _register(settings, live_policy, first_id, last_id)
    say(registered.line())

    # 4. The service loads that version (alias prod) and serves real prompts over HTTP, through
    # its OpenAI-compatible gateway to a replay of the data (`llmopt upstream-replay`).
    say(
        f"decision service: starting `llmopt upstream-replay` and `llmopt serve --upstream` "
        f"({served} prompts through the gateway with the openai client) ..."
    )
    with (
        running_upstream(DEMO_DATA, home / "upstream") as upstream,
        running_service(home, LLMOPT_UPSTREAM_URL=upstream) as url,
    ):
        service = ServiceLeg.from_summary(drive_gateway(url, routing, n=served, seed=seed + 1))
    say(service.line())

    # 5. Drift of the served traffic against what the champion learned from (Evidently).
    with quiet():
        report = drift_report(settings=settings, window=served)
    drift = DriftLeg(
        report.folder,
        report.reference.kind,
        any(r.drift_detected for r in report.reports),
        report.describe(),
    )
    say(drift.line())

    # 6. The willingness-to-pay sweep against every single model, random, zero router, oracle.
    def factory(name: str) -> Callable[[int], Any]:
        return lambda seed: make_policy(name, seed=seed)

    factories = {name: factory(name) for name in (RECOMMENDED, "epsilon_greedy")}
    sweep = run_replay(routing, factories, seed=seed, catalog=catalog, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(sweep, indent=2))
    plot_frontier(sweep, out / "frontier.png", title="Demo: AlpacaEval, 15 LLMs, bandit feedback")
    return DemoResult(
        data=data,
        live=live,
        feature_store=store,
        registry=registered,
        service=service,
        drift=drift,
        sweep=sweep,
        plot=out / "frontier.png",
        report=out / "result.json",
        recommended=RECOMMENDED,
    )
