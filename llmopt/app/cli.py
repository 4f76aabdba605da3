"""``llmopt``: the command line. Wires the packages together, importing each lazily."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from llmopt.policy import Policy

app = typer.Typer(
    name="llmopt",
    help="LLM Auto-Optimizer: learn which LLM to use for each request.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks on real routing data.", no_args_is_help=True)
db_app = typer.Typer(help="The event log database.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(db_app, name="db")
flows_app = typer.Typer(
    help="Prefect flows: training, HPO, promotion, drift.", no_args_is_help=True
)
registry_app = typer.Typer(
    help="The MLflow model registry: versions, aliases, promotion.", no_args_is_help=True
)
app.add_typer(flows_app, name="flows")
app.add_typer(registry_app, name="registry")
from llmopt.app.monitor_cli import app as monitor_app  # noqa: E402 - typer only; commands import lazily
from llmopt.app.pareto_cli import pareto_cmd  # noqa: E402 - typer only; imports lazily
from llmopt.app.upstream_replay import upstream_replay_cmd  # noqa: E402 - typer only; lazily

app.add_typer(monitor_app, name="monitor")
app.command("pareto")(pareto_cmd)
app.command("upstream-replay")(upstream_replay_cmd)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Turn the domain's known errors into one clear line and exit code 2, never a traceback."""
    from pydantic import ValidationError  # noqa: PLC0415

    from llmopt.catalog import CatalogError  # noqa: PLC0415
    from llmopt.event_log import EventLogError  # noqa: PLC0415
    from llmopt.routing_data import RoutingDataError  # noqa: PLC0415

    try:
        yield
    except (CatalogError, EventLogError, RoutingDataError) as exc:
        raise _fail(str(exc)) from None
    except ValidationError as exc:
        env = exc.title == "Settings"  # an LLMOPT_* environment variable, not the input
        problems = "; ".join(f"{_where(e['loc'], env)}: {e['msg']}" for e in exc.errors())
        raise _fail(f"invalid {'setting' if env else 'input'}: {problems}") from None
    except ValueError as exc:  # pydantic-settings' SettingsError too (a value that is not JSON)
        cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        raise _fail(f"{exc}{cause}") from None
    except OSError as exc:  # e.g. a directory or an unreadable file where a file was expected
        raise _fail(str(exc)) from None


def _where(loc: tuple[int | str, ...], env: bool) -> str:
    """``a.b.0`` of a validation error; a setting's first part as its environment variable."""
    parts = [str(p) for p in loc]
    if env and parts:
        parts[0] = f"LLMOPT_{parts[0].upper()}"
    return ".".join(parts) or "input"


@app.callback()
def _settings_first() -> None:
    # Every command reads the settings: a bad LLMOPT_* value is one line, never a traceback.
    from llmopt.settings import get_settings  # noqa: PLC0415

    with _clear_errors():
        get_settings()


def _policy_factories(names: list[str]) -> dict[str, Callable[[int], Policy]]:
    from models.kinds import make_policy  # noqa: PLC0415

    def factory(name: str) -> Callable[[int], Policy]:
        make_policy(name)  # validates the name with a clear message

        def build(seed: int) -> Policy:
            return make_policy(name, seed=seed)

        return build

    return {name: factory(name) for name in names}


@bench_app.command("replay")
def bench_replay(
    data: Annotated[Path, typer.Option(help="Routing data file (parquet or CSV).")],
    out: Annotated[Path, typer.Option(help="Where to write the result JSON.")],
    plot: Annotated[Path | None, typer.Option(help="Where to write the cost-quality plot.")] = None,
    policy: Annotated[
        list[str] | None,
        typer.Option(help="Policy to replay (repeatable); default: the recommended one."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the prompt order and the policies.")] = 0,
    seeds: Annotated[
        int,
        typer.Option(
            min=1, help="Runs with seeds seed .. seed+N-1; points are their mean, with the spread."
        ),
    ] = 1,
    warm_start: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.99,
            help="Fraction of the prompts first learnt with every model's outcome; only the "
            "rest are scored.",
        ),
    ] = 0.0,
    wtp: Annotated[
        list[float] | None,
        typer.Option(help="Willingness to pay (USD per unit quality) to sweep (repeatable)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Replay real per-prompt outcomes with bandit feedback; report the cost-quality frontier.

    The request features include the prompt's embedding. Every policy's summary carries the
    protocol's figures (mean margin over the zero router across all willingness-to-pay points,
    best-point lift, cost to reach 95% of the best model's quality) as mean and spread over
    the seeds.
    """
    from llmopt.catalog import load_catalog  # noqa: PLC0415
    from llmopt.plot import plot_frontier  # noqa: PLC0415
    from llmopt.replay import DEFAULT_WTP_SWEEP, run_replay  # noqa: PLC0415
    from llmopt.routing_data import load_routing_data  # noqa: PLC0415
    from models.kinds import RECOMMENDED  # noqa: PLC0415

    with _clear_errors():
        routing = load_routing_data(data)
        factories = _policy_factories(policy or [RECOMMENDED])
        result = run_replay(
            routing,
            factories,
            wtps=tuple(wtp) if wtp else DEFAULT_WTP_SWEEP,
            seed=seed,
            seeds=seeds,
            warm_start=warm_start,
            catalog=load_catalog(),
            progress=progress and sys.stderr.isatty(),
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    if plot is not None:
        plot_frontier(result, plot)
    _print_table(result)
    for name, pol in result["policies"].items():
        proto = pol["summary"]["protocol"]
        figures = []
        for key, label in (
            ("mean_margin", "mean margin over the zero router"),
            ("best_point_lift", "best-point lift"),
            ("cost_fraction_to_95pct_best", "cost to 95% of the best model"),
        ):
            f = proto[key]
            figures.append(
                f"{label} {'-' if f['mean'] is None else format(f['mean'], '+.4f')}"
                + (f" (sd {f['sd']:.4f})" if seeds > 1 and f["sd"] is not None else "")
            )
        typer.echo(f"{name} over {seeds} seed(s): " + "; ".join(figures))
    typer.echo(f"wrote {out}" + (f" and {plot}" if plot else "") + f" in {result['elapsed_s']} s")


def _print_table(result: dict[str, Any], policies: list[str] | None = None) -> None:
    """Policy vs best single model vs oracle: quality, cost, saving (and the zero router)."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from llmopt.frontier import quality_at_cost  # noqa: PLC0415

    base = result["baselines"]
    best_name = base["best_single_model"]
    best = base["single_models"][best_name]
    table = Table(
        title=f"{result['data']['n_prompts']} prompts, {len(base['single_models'])} models"
    )
    for col in (
        "router",
        "wtp USD/q",
        "quality",
        "zero router @cost",
        "cost USD",
        "q vs best",
        "saving vs best",
    ):
        table.add_column(col, justify="right" if col != "router" else "left")

    hull = [(h["avg_cost_usd"], h["avg_quality"]) for h in base["zero_router"]["hull"]]

    def row(name: str, wtp: str, q: float, c: float) -> None:
        zq = quality_at_cost(hull, c)
        table.add_row(
            name,
            wtp,
            f"{q:.4f}",
            "-" if zq is None else f"{zq:.4f}",
            f"{c:.6f}",
            f"{(q / best['avg_quality'] - 1) * 100:+.1f}%" if best["avg_quality"] else "n/a",
            f"{(1 - c / best['avg_cost_usd']) * 100:.1f}%" if best["avg_cost_usd"] else "n/a",
        )

    row(f"best model ({best_name})", "-", best["avg_quality"], best["avg_cost_usd"])
    rnd = base["uniform_random"]
    row("uniform random", "-", rnd["avg_quality"], rnd["avg_cost_usd"])
    for name, pol in result["policies"].items():
        if policies is not None and name not in policies:
            continue
        for p in pol["points"]:
            row(name, f"{p['willingness_to_pay']:g}", p["avg_quality"], p["avg_cost_usd"])
    mq = base["oracle"]["max_quality"]
    row("oracle (hindsight)", "-", mq["avg_quality"], mq["avg_cost_usd"])
    Console(width=140).print(table)


@app.command()
def demo(
    out_dir: Annotated[Path | None, typer.Option(help="Where to write the plot and JSON.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the prompt order and the policies.")] = 0,
    served: Annotated[
        int, typer.Option(help="Prompts sent through the running decision service over HTTP.")
    ] = 300,
) -> None:
    """The whole loop on real data shipped with the repo (AlpacaEval: 805 prompts x 15 LLMs).

    1. replays every prompt through decide -> feedback -> learn, recording each decision and
    feedback in the event log (SQLite under LLMOPT_HOME), at the default willingness to pay;
    pushes that feedback through the feature store and registers the trained policy in the
    MLflow registry (aliases dev, staging, prod); starts the decision service (`llmopt serve`),
    which loads that version, and sends `served` prompts through it over HTTP (decide, then
    feedback with the data set's outcome of the chosen model), and ends that leg with an
    Evidently drift report of the served traffic against the events the champion learned from
    (HTML dashboards + JSON under LLMOPT_HOME/monitoring/reports);
    2. sweeps the willingness to pay and compares the learned router with every single model,
    uniform random, the zero router and the oracle; writes a plot and a JSON report.
    """
    from llmopt.app.demo import run_demo  # noqa: PLC0415
    from llmopt.settings import get_settings  # noqa: PLC0415

    settings = get_settings()
    with _clear_errors():
        result = run_demo(
            settings,
            out_dir=out_dir,
            seed=seed,
            served=served,
            progress=sys.stderr.isatty(),
            echo=typer.echo,
        )
    _print_table(result.sweep, [result.recommended])
    typer.echo(f"wrote {result.plot} and {result.report} (all policies)")


@app.command()
def scenario(
    out: Annotated[Path, typer.Option(help="Folder for scenario.json, timeline.png, state.")],
    minutes: Annotated[float, typer.Option(min=0.5, help="Length of the run.")] = 10.0,
    rate: Annotated[float, typer.Option(min=1, help="Requests per second.")] = 50.0,
    profile: Annotated[
        str, typer.Option(help="embedded (starts its own service) or production (--url).")
    ] = "embedded",
    url: Annotated[
        str | None, typer.Option(help="A running service to drive (production profile).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Routing file to replay (default: AlpacaEval, shipped).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the prompt order.")] = 0,
) -> None:
    """Replay real traffic through the service while a model degrades, a new one appears and
    one fails; the flows run on an accelerated schedule; nobody touches anything. Measures
    how fast traffic moves, versions promoted and rolled back, 5xx and lost feedback."""
    from llmopt.app.scenario import ScenarioConfig, run_scenario, table  # noqa: PLC0415
    from llmopt.routing_data import DEMO_DATA  # noqa: PLC0415

    if profile not in ("embedded", "production"):
        raise _fail(f"--profile must be embedded or production, got {profile!r}")
    if profile == "production" and url is None:
        raise _fail("--profile production drives a running service: give its --url (make up)")
    cfg = ScenarioConfig(
        out=out,
        minutes=minutes,
        rate=rate,
        data=data or DEMO_DATA,
        seed=seed,
        profile=profile,  # type: ignore[arg-type]
        url=url,
    )
    with _clear_errors():
        result = run_scenario(cfg, echo=typer.echo)
    for line in table(result):
        typer.echo(line)
    typer.echo(f"wrote {out / 'scenario.json'} and {result.timeline_png}")


@app.command()
def train(
    from_evals: Annotated[
        Path,
        typer.Option(
            help="Routing-format file (parquet/CSV) where every model answered each prompt."
        ),
    ],
    policy: Annotated[
        str | None, typer.Option(help="Policy; default: the recommended one.")
    ] = None,
    event_log: Annotated[
        bool, typer.Option(help="Also learn the event log's logged feedback, after the file.")
    ] = True,
    register: Annotated[
        bool,
        typer.Option(
            help="Register the result in the MLflow registry: 'prod' when there is none yet "
            "(a first deployment), else 'dev' (through the promotion gates)."
        ),
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the policy.")] = 0,
) -> None:
    """Warm-start a policy from your own evaluations (full information) and your logs."""
    from llmopt.event_log import EventLog  # noqa: PLC0415
    from llmopt.routing_data import load_routing_data  # noqa: PLC0415
    from llmopt.settings import get_settings  # noqa: PLC0415
    from models.kinds import RECOMMENDED, make_policy  # noqa: PLC0415
    from pipelines.warm_start import learn_evals  # noqa: PLC0415

    settings = get_settings()
    name = policy or RECOMMENDED
    with _clear_errors():
        data = load_routing_data(from_evals)
        learner = make_policy(name, seed=seed)
        warm = learn_evals(learner, data, willingness_to_pay=settings.default_willingness_to_pay)
        typer.echo(
            f"learnt {warm.n_outcomes} outcomes of {warm.n_prompts} prompts x "
            f"{len(data.models)} models from {from_evals.name} ({name})"
        )
        tags = warm.tags()
        n_logged = 0
        if event_log:
            from pipelines.training import rebuild  # noqa: PLC0415

            settings.ensure_home()
            log = _open_log(settings.event_log_url, EventLog)
            try:
                result = rebuild(log, learner)
            finally:
                log.close()
            n_logged = result.n_events
            tags |= {"warm_start_events": str(n_logged), "data_window": result.data_window}
            tags |= {"last_feedback_id": str(result.last_feedback_id), "n_events": str(n_logged)}
            typer.echo(f"then {n_logged} logged feedback events from the event log")
    if not register:
        return
    from llmopt.app.demo import quiet  # noqa: PLC0415

    with _clear_errors(), quiet():
        from llmopt.embeddings import embedding_version  # noqa: PLC0415
        from registry import mlflow_registry as registry  # noqa: PLC0415

        client = registry.configure(settings)
        first = registry.version_for_alias(client, "prod") is None
        tags["embedding"] = embedding_version()
        version = registry.register_policy(
            learner,
            settings=settings,
            aliases=registry.ALIASES if first else ("dev",),
            tags=tags,
            params={"warm_start_evals": warm.source},
            metrics={"warm_start_outcomes": float(warm.n_outcomes), "logged_events": n_logged},
            experiment="warm-start",
            run_name=f"warm-start-{warm.source}",
        )
    typer.echo(
        f"registered {registry.MODEL_NAME} version {version} as "
        f"{'dev, staging and prod (first version)' if first else 'dev'}"
    )


@app.command("catalog")
def catalog_cmd(
    path: Annotated[Path | None, typer.Option(help="Catalog YAML (default: settings).")] = None,
) -> None:
    """List the model catalog: providers, prices (and where they come from), latency figures."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from llmopt.catalog import load_catalog  # noqa: PLC0415

    with _clear_errors():
        cat = load_catalog(path)
    table = Table(title=f"{len(cat)} models")
    for col in (
        "model",
        "provider",
        "USD/1M in",
        "USD/1M out",
        "price from",
        "context",
        "TTFT ms",
        "tok/s",
    ):
        table.add_column(col)
    for s in cat:
        table.add_row(
            s.id,
            s.provider,
            f"{s.input_per_mtok:g}",
            f"{s.output_per_mtok:g}",
            s.price_source,
            str(s.context_window),
            f"{s.ttft_ms:g}",
            f"{s.tokens_per_second:g}",
        )
    Console(width=140).print(table)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the event log schema (LLMOPT_DATABASE_URL, default SQLite)."""
    url, counts = _log_counts()
    typer.echo(f"event log at the latest revision: {url} {counts}")


@db_app.command("stats")
def db_stats() -> None:
    """Count decisions and feedback in the event log."""
    typer.echo(json.dumps(_log_counts()[1]))


def _log_counts() -> tuple[str, dict[str, int]]:
    """Open (and so migrate) the settings' event log; return its URL and row counts."""
    from llmopt.event_log import EventLog  # noqa: PLC0415
    from llmopt.settings import get_settings  # noqa: PLC0415

    settings = get_settings()
    if not settings.database_url:
        settings.ensure_home()
    with _clear_errors():
        log = _open_log(settings.event_log_url, EventLog)
        counts = log.counts()
        log.close()
    return settings.event_log_url, counts


def _open_log(url: str, cls: Any) -> Any:
    from sqlalchemy.exc import ArgumentError, OperationalError  # noqa: PLC0415

    try:
        return cls(url)
    except OperationalError as exc:
        raise _fail(f"cannot open the event log at {url}: {exc.orig}") from None
    except ArgumentError as exc:  # not a URL, or an unknown dialect / driver
        raise _fail(f"cannot open the event log at {url}: {exc}") from None


def _local_loop() -> Any:
    """The embedded profile's loop: policy state in LLMOPT_HOME, event log from settings."""
    import pickle  # noqa: PLC0415

    from llmopt.catalog import load_catalog  # noqa: PLC0415
    from llmopt.event_log import EventLog  # noqa: PLC0415
    from llmopt.loop import LearningLoop  # noqa: PLC0415
    from llmopt.reward import TradeOff  # noqa: PLC0415
    from llmopt.settings import get_settings  # noqa: PLC0415
    from models.kinds import RECOMMENDED, make_policy  # noqa: PLC0415

    settings = get_settings()
    settings.ensure_home()
    catalog = load_catalog(settings.catalog_path)
    state = settings.policy_state_path
    policy = pickle.loads(state.read_bytes()) if state.exists() else make_policy(RECOMMENDED)
    return LearningLoop(
        policy,
        catalog.ids,
        catalog=catalog,
        event_log=_open_log(settings.event_log_url, EventLog),
        default_tradeoff=TradeOff(
            willingness_to_pay=settings.default_willingness_to_pay,
            latency_weight=settings.default_latency_weight,
        ),
    )


def _save_policy(loop: Any) -> None:
    import pickle  # noqa: PLC0415

    from llmopt.settings import get_settings  # noqa: PLC0415

    path = get_settings().policy_state_path
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(loop.policy))
    tmp.replace(path)  # atomic: a crash never leaves a torn state file


def _read_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(f"not valid JSON: {exc}") from None


@app.command()
def decide(
    context: Annotated[
        str,
        typer.Argument(help='Request context as JSON, e.g. \'{"tenant": "acme", "prompt": "hi"}\''),
    ],
) -> None:
    """Choose a model for one request (embedded profile); prints the decision as JSON."""
    from llmopt.schemas import RequestContext  # noqa: PLC0415

    with _clear_errors():
        ctx = RequestContext.model_validate(_read_json(context))
        loop = _local_loop()
        decision = loop.decide(ctx)
        _save_policy(loop)
    typer.echo(decision.model_dump_json(indent=2))


@app.command()
def feedback(
    payload: Annotated[
        str,
        typer.Argument(help='Feedback as JSON, e.g. \'{"decision_id": "...", "quality": 0.8}\''),
    ],
) -> None:
    """Record the outcome of a decision and learn from it (embedded profile)."""
    from llmopt.schemas import Feedback  # noqa: PLC0415

    with _clear_errors():
        fb = Feedback.model_validate(_read_json(payload))
        loop = _local_loop()
        outcome = loop.feedback(fb)
        if outcome.status == "stored":
            _save_policy(loop)
    typer.echo(
        json.dumps(
            {
                "status": outcome.status,
                "decision_id": outcome.decision_id,
                "reward": outcome.reward,
                "feedback_id": outcome.feedback_id,
            }
        )
    )


# -- pipelines: flows and the model registry (issue #5) ---------------------------------------
def _pipeline_settings() -> Any:
    """Settings, with the process environment Prefect and MLflow read set from them."""
    from llmopt.settings import get_settings  # noqa: PLC0415
    from pipelines.runtime import configure_environment  # noqa: PLC0415

    settings = get_settings()
    settings.ensure_home()
    configure_environment(settings)
    return settings


def _parse_params(pairs: list[str], allowed: set[str]) -> dict[str, Any]:
    """``k=v`` pairs; values are JSON when they parse (numbers, booleans), else strings."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise _fail(f"--param expects key=value, got {pair!r}")
        if key not in allowed:
            takes = ", ".join(sorted(allowed)) or "no parameters"
            raise _fail(f"unknown parameter {key!r}; this flow takes: {takes}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


@flows_app.command("list")
def flows_list() -> None:
    """Every flow with its schedule."""
    from pipelines.deployments import FLOWS  # noqa: PLC0415

    for spec in FLOWS.values():
        typer.echo(f"{spec.name:22} {spec.schedule:28} {spec.description}")


@flows_app.command("run")
def flows_run(
    name: Annotated[str, typer.Argument(help="Flow name, e.g. incremental-training.")],
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Flow parameter key=value.")
    ] = None,
) -> None:
    """Run one flow once (Prefect's local ephemeral API unless PREFECT_API_URL is set)."""
    from pipelines.deployments import get_spec  # noqa: PLC0415

    with _clear_errors():
        spec = get_spec(name)
    _pipeline_settings()
    flow = spec.load()
    allowed = set(flow.parameters.properties)
    params = _parse_params(param or [], allowed)
    try:
        result = flow(**params)
    except Exception as exc:  # a failed flow run: one line, the details are in Prefect's log
        typer.secho(f"flow {spec.name} failed: {type(exc).__name__}: {exc}", err=True, fg="red")
        raise typer.Exit(code=1) from None
    typer.echo(json.dumps(result, indent=2, default=str))


@flows_app.command("serve")
def flows_serve(
    limit: Annotated[int | None, typer.Option(help="Most concurrent flow runs.")] = None,
) -> None:
    """Serve every deployment with its schedule until interrupted.

    For the Prefect UI, first run `prefect server start --host 127.0.0.1` and export
    PREFECT_API_URL=http://127.0.0.1:4200/api.
    """
    _pipeline_settings()
    from pipelines.deployments import serve_all  # noqa: PLC0415

    serve_all(limit=limit)


@contextmanager
def _registry_client() -> Iterator[Any]:
    """An MLflow client on the settings' store; registry and MLflow errors as one line."""
    settings = _pipeline_settings()
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    from registry.mlflow_registry import configure  # noqa: PLC0415

    with _clear_errors():
        try:
            yield configure(settings)
        except MlflowException as exc:
            raise _fail(str(exc.message).splitlines()[0]) from None


@registry_app.command("list")
def registry_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every version of llm-router, newest first, with its aliases and tags."""
    from dataclasses import asdict  # noqa: PLC0415

    from registry.mlflow_registry import MODEL_NAME, list_versions  # noqa: PLC0415

    with _registry_client() as client:
        versions = list_versions(client)
    if as_json:
        typer.echo(json.dumps([asdict(v) for v in versions], indent=2))
        return
    if not versions:
        typer.echo(f"{MODEL_NAME}: no versions yet")
        return
    keys = ("validation_status", "data_window", "source_flow", "code_version", "artifact_sha256")
    for v in versions:
        aliases = ",".join(v.aliases) or "-"
        tags = " ".join(
            f"{k}={v.tags[k][:16] if k.endswith('sha256') else v.tags[k]}"
            for k in keys
            if k in v.tags
        )
        typer.echo(f"{MODEL_NAME} version {v.version}  aliases: {aliases}  {tags}")


@registry_app.command("promote")
def registry_promote(
    version: Annotated[str, typer.Argument(help="Model version number.")],
    alias: Annotated[str, typer.Option(help="dev, staging or prod.")],
    force: Annotated[bool, typer.Option(help="Skip the gates.")] = False,
    margin: Annotated[float, typer.Option(help="OPE gate margin (reward units).")] = 0.01,
    alpha: Annotated[float, typer.Option(help="A/B gate significance level.")] = 0.05,
    min_samples: Annotated[int, typer.Option(help="A/B gate: decisions per version.")] = 100,
) -> None:
    """Move an alias to a version through its gate (staging: OPE; prod: online A/B)."""
    from llmopt.catalog import load_catalog  # noqa: PLC0415
    from llmopt.event_log import EventLog  # noqa: PLC0415
    from pipelines.promotion import PromotionPolicy, promote  # noqa: PLC0415

    if alias not in ("dev", "staging", "prod"):
        raise _fail(f"unknown alias {alias!r}; choose one of: dev, staging, prod")
    if not version.isdigit():
        raise _fail(f"VERSION must be a version number, got {version!r}")
    with _registry_client() as client:
        settings = _pipeline_settings()
        log = _open_log(settings.event_log_url, EventLog)
        try:
            outcome = promote(
                client,
                version,
                alias,
                log=log,
                catalog=load_catalog(settings.catalog_path),
                rules=PromotionPolicy(margin=margin, alpha=alpha, min_samples=min_samples),
                force=force,
            )
        finally:
            log.close()
    verdict = "promoted" if outcome.moved else "refused"
    typer.echo(f"{verdict}: version {version} -> {alias}: {outcome.gate.reason}")
    if not outcome.moved:
        raise typer.Exit(code=1)


@registry_app.command("rollback")
def registry_rollback() -> None:
    """Point prod back at the previous prod version (instant: an alias move)."""
    from registry.mlflow_registry import rollback  # noqa: PLC0415

    with _registry_client() as client:
        old, new = rollback(client)
    typer.echo(f"rolled back: prod {old} -> {new}")


# -- serving: the decision service (issue #6) ----------------------------------------------
def shared_state_warning(shared_state: str, workers: int) -> str | None:
    """What several workers without shared state keep apart (None: nothing to say).

    >>> shared_state_warning("redis", 2) is None, shared_state_warning("local", 1) is None
    (True, True)
    >>> shared_state_warning("local", 2).split(":")[0]
    '2 workers with LLMOPT_SERVING_SHARED_STATE=local'
    """
    if workers < 2 or shared_state != "local":  # noqa: PLR2004 - one worker shares nothing
        return None
    return (
        f"{workers} workers with LLMOPT_SERVING_SHARED_STATE=local: each keeps its own budget "
        "reservations, rate limits, circuit breaker and conversation pins, so a tenant's "
        "budget can be overshot by what the others spend between two reads of the event log, "
        f"a key's budget and rate limit allow {workers} x theirs, and a response-cache hit "
        "rated through another worker is refused (404). The learned policy and the canary's "
        "statistics are shared through the event log. Set LLMOPT_SERVING_SHARED_STATE=redis "
        "and LLMOPT_REDIS_URL to share the rest (serving/README.md)."
    )


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 1,
    upstream: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible base URL every catalog model is forwarded to by the gateway "
            "(/v1/chat/completions), e.g. http://127.0.0.1:8001/v1 (LLMOPT_UPSTREAM_URL)."
        ),
    ] = None,
) -> None:
    """Start the decision service (BentoML) with the embedded profile; Ctrl-C stops it.

    Same as `bentoml serve serving.service:DecisionService` from the repository root. The
    champion comes from the registry (alias prod), else the local policy file, else a fresh
    recommended policy warmed on the event log. Several workers learn each other's feedback
    from the event log every second (LLMOPT_SERVING_SYNC_LOG_S).
    """
    import os  # noqa: PLC0415

    from llmopt.settings import get_settings  # noqa: PLC0415

    home = get_settings().ensure_home().resolve()
    os.environ["LLMOPT_HOME"] = str(home)  # workers resolve the same state directory
    warning = shared_state_warning(get_settings().serving_shared_state, workers)
    if warning is not None:
        typer.echo(f"warning: {warning}", err=True)
    if upstream is not None:
        from llmopt.catalog import load_catalog  # noqa: PLC0415
        from serving.upstreams import UpstreamConfigError, from_url  # noqa: PLC0415

        try:  # a wrong URL is a message here, not a worker's traceback
            from_url(upstream, load_catalog(get_settings().catalog_path))
        except UpstreamConfigError as exc:
            raise _fail(str(exc)) from None
        os.environ["LLMOPT_UPSTREAM_URL"] = upstream
    os.environ.setdefault("BENTOML_HOME", str(home / "bentoml"))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    if workers > 1:
        os.environ.setdefault("LLMOPT_SERVING_SYNC_LOG_S", "1")
        # BentoML >= 1.2 ignores ``api_workers`` for new-style services: the worker count is
        # the service's config (its decorator says workers=1), overridden here (as infra/up.sh).
        os.environ.setdefault(
            "BENTOML_CONFIG_OVERRIDES",
            json.dumps({"services": {"llmopt-router": {"workers": workers}}}),
        )
    import bentoml  # noqa: PLC0415

    repo = Path(__file__).resolve().parents[2]
    typer.echo(f"llmopt decision service on http://{host}:{port} (docs: /docs.json)")
    bentoml.serve(
        "serving.service:DecisionService",
        host=host,
        port=port,
        working_dir=str(repo),
        api_workers=workers,
        blocking=True,
    )


if __name__ == "__main__":  # pragma: no cover
    app()
