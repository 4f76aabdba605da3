"""``llmopt scenario``: the loop closes by itself, measured (issue 15).

A real decision service (``llmopt serve``) gets replayed real traffic over HTTP: each prompt of a
routing file is decided by the service, and its outcome (quality, cost) for the chosen model
comes from the file. The training and promotion flows (Prefect) run on an accelerated schedule
in this process. Nobody touches the service: no ``/admin`` call is made (``operator_actions``).

Four phases, in order, each a fraction of ``--minutes``:

1. ``baseline``: every model but one, held back;
2. ``degraded``: the favourite (the best model at the default willingness to pay among those
   offered) degrades: its outcomes are replaced by the weakest model's on the same prompt;
3. ``new_model``: the held-back model appears in the requests' model lists: the best model of
   the file at the default willingness to pay (real outcomes; it is not made up);
4. ``failing``: the model serving most traffic at the end of phase 3 starts failing: every
   call to it times out (an error, 30 s latency, no quality).

In phase 1 a deliberately bad version (a uniform-random policy) is registered as ``staging``,
as a faulty training run might: the autopilot must roll it back.

Measured: per change, the time and requests until traffic moves (``adaptation_s``): the
degraded model's share below half its share before the change; the new model's first
decision, its share at the end, and whether it is then the top choice; the failing model's
exclusion (its share at most 5% in every later second). The new model's niche is the whole
workload (every request may go to it), so "top choice" means the most chosen model. Quality
and cost per phase against the best fixed model of that phase (the same prompts, the phase's
outcomes); versions registered, promoted and rolled back; 5xx; feedback acknowledged but
missing from the event log.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llmopt.routing_data import DEMO_DATA, RoutingData, load_routing_data

Echo = Callable[[str], None]
PHASES = ("baseline", "degraded", "new_model", "failing")
PHASE_STARTS = (0.0, 0.3, 0.55, 0.8)
"""Start of each phase, as a fraction of the run."""
TENANT = "scenario"
FAIL_LATENCY_MS = 30_000.0


@dataclass(frozen=True)
class ScenarioConfig:
    """What to run: duration, request rate, data, seed, flow period, where to write."""

    out: Path
    minutes: float = 10.0
    rate: float = 50.0
    """Requests per second (decide + feedback each)."""
    data: Path = DEMO_DATA
    seed: int = 0
    willingness_to_pay: float = 0.05
    flow_every_s: float | None = None
    """Seconds between runs of the training and promotion flows (default: minutes x 4 s)."""
    profile: Literal["embedded", "production"] = "embedded"
    url: str | None = None
    """A running service to drive (production profile); None: start one (embedded)."""

    @property
    def seconds(self) -> float:
        return self.minutes * 60.0

    @property
    def flow_period_s(self) -> float:
        return self.flow_every_s if self.flow_every_s is not None else max(20.0, self.minutes * 4)


@dataclass
class Request:
    """One decide + feedback round trip, as the timeline records it."""

    t: float
    phase: str
    model: str | None
    version: str | None
    quality: float | None
    cost_usd: float
    reward: float | None
    status: int
    """200, or the HTTP status of the refusal (0: no answer)."""
    acknowledged: str | None = None
    """The decision id whose feedback the service acknowledged."""
    prompt: int = -1
    """Index of the prompt in the routing file."""


@dataclass
class Roles:
    """Which model plays which part, chosen from the data at the default willingness to pay."""

    held_back: str
    favourite: str
    weak: str
    failing: str | None = None


@dataclass
class ScenarioResult:
    """The contract of ``scenario.json`` (see the module docstring)."""

    adaptation_s: dict[str, float | None]
    adaptation_requests: dict[str, int | None]
    promoted_versions: list[str]
    rolled_back_versions: list[str]
    operator_actions: int
    errors_5xx: int
    lost_feedback: int
    timeline_png: str
    roles: dict[str, str | None]
    phases: dict[str, dict[str, Any]]
    registered_versions: list[str]
    rejected_versions: list[str]
    requests: int
    new_model_share_end: float | None
    """The new model's share of the last quarter of its phase."""
    new_model_top_choice: bool
    """It is the top choice at the end of its phase, or at the end of the run (the failing
    model's traffic left out, unless the new model is the one failing)."""
    seconds: float
    notes: list[str] = field(default_factory=list)


# -- roles and outcomes ---------------------------------------------------------------------
def choose_roles(data: RoutingData, w: float) -> Roles:
    """Held back: the best model at ``w``; weak: the worst; favourite: the best of the rest
    (a first guess: the run replaces it by the router's top choice when phase 2 starts)."""
    reward = (data.quality - data.cost_usd / w).mean(axis=0)
    order = np.argsort(-reward)
    quality = data.quality.mean(axis=0)
    return Roles(
        held_back=data.models[int(order[0])],
        favourite=data.models[int(order[1])],
        weak=data.models[int(np.argmin(quality))],
    )


def outcome(
    data: RoutingData, i: int, model: str, phase: str, roles: Roles
) -> tuple[float | None, float, bool]:
    """``(quality, cost, failed)`` of ``model`` on prompt ``i`` in ``phase``."""
    j = data.models.index(model)
    cost = float(data.cost_usd[i, j])
    if phase == "failing" and model == roles.failing:
        return None, 0.0, True
    quality = float(data.quality[i, j])
    if phase in ("degraded", "new_model", "failing") and model == roles.favourite:
        quality = float(data.quality[i, data.models.index(roles.weak)])
    return quality, cost, False


# -- the flows on an accelerated schedule ------------------------------------------------------
class FlowRunner:
    """Runs incremental training, then evaluate-and-promote, every ``period_s`` (a thread)."""

    def __init__(self, period_s: float, echo: Echo) -> None:
        self.period_s = period_s
        self.echo = echo
        self.runs: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scenario-flows", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=300)

    def _loop(self) -> None:
        from pipelines.evaluate_and_promote import evaluate_and_promote  # noqa: PLC0415
        from pipelines.incremental_training import incremental_training  # noqa: PLC0415

        while not self._stop.wait(self.period_s):
            started = time.monotonic()
            try:
                trained = incremental_training()
                promoted = evaluate_and_promote(eval_window=2000)
            except Exception as exc:  # a failed run is reported, the next one tries again
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                self.echo(f"  flows: failed ({self.errors[-1]})")
                continue
            self.runs.append(
                {
                    "at_s": started,
                    "trained_version": trained.get("version") if trained else None,
                    "after": promoted.get("after"),
                    "notes": promoted.get("notes"),
                }
            )
            self.echo(
                f"  flows: trained version {trained.get('version') if trained else None}; "
                f"aliases {promoted.get('after')}"
            )


# -- the run ----------------------------------------------------------------------------------
def service_env(cfg: ScenarioConfig) -> dict[str, str]:
    """The service's accelerated settings (the rules a user would set, made faster)."""
    step = max(10.0, cfg.seconds / 20)
    return {
        "LLMOPT_SERVING_POLL_S": "2",
        "LLMOPT_SERVING_FEATURES": "off",
        "LLMOPT_AUTOPILOT__START_PERCENT": "20",
        "LLMOPT_AUTOPILOT__STEPS": "[50]",
        "LLMOPT_AUTOPILOT__STEP_S": f"{step:g}",
        "LLMOPT_AUTOPILOT__MIN_FEEDBACK": "30",
        "LLMOPT_AUTOPILOT__PROD_WATCH_S": f"{max(30.0, cfg.seconds / 10):g}",
        "LLMOPT_AUTOPILOT__MAX_SAMPLES": f"{max(300, int(cfg.rate * cfg.seconds / 6))}",
        "LLMOPT_DEFAULT_WILLINGNESS_TO_PAY": f"{cfg.willingness_to_pay:g}",
    }


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def phase_at(elapsed: float, total: float) -> str:
    """The phase at ``elapsed`` seconds of a ``total``-second run."""
    frac = elapsed / total
    current = PHASES[0]
    for name, start in zip(PHASES, PHASE_STARTS, strict=True):
        if frac >= start:
            current = name
    return current


def drive(
    url: str,
    data: RoutingData,
    cfg: ScenarioConfig,
    roles: Roles,
    *,
    echo: Echo,
    on_phase: Callable[[str], None],
) -> list[Request]:
    """Send the traffic for ``cfg.seconds`` at ``cfg.rate``; every round trip recorded."""
    from llmopt.client import DecisionClient  # noqa: PLC0415

    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(data.n_prompts)
    records: list[Request] = []
    start = time.monotonic()
    phase = ""
    k = 0
    with DecisionClient(url, timeout=10.0) as client:
        while (elapsed := time.monotonic() - start) < cfg.seconds:
            now_phase = phase_at(elapsed, cfg.seconds)
            if now_phase != phase:
                phase = now_phase
                recent = elapsed - cfg.seconds * 0.05
                if phase == "degraded":  # the favourite: the router's top choice right now
                    roles.favourite = top_model(records, since=recent) or roles.favourite
                if phase == "failing":
                    roles.failing = top_model(records, since=recent)
                on_phase(phase)
                echo(f"[{elapsed:6.1f} s] phase {phase}")
            i = int(order[k % data.n_prompts])
            k += 1
            offered = (
                [m for m in data.models if m != roles.held_back]
                if phase in ("baseline", "degraded")
                else data.models
            )
            records.append(
                round_trip(
                    client, data, i, offered=offered, phase=phase, roles=roles, elapsed=elapsed
                )
            )
            pause = start + k / cfg.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    return records


def round_trip(
    client: Any,
    data: RoutingData,
    i: int,
    *,
    offered: list[str],
    phase: str,
    roles: Roles,
    elapsed: float,
) -> Request:
    """Decide prompt ``i`` among ``offered``, answer with the data's outcome; the record."""
    from llmopt.client import DecisionServiceError  # noqa: PLC0415

    try:
        d = client.decide(TENANT, data.prompts[i], models=offered)
    except DecisionServiceError as exc:
        return Request(elapsed, phase, None, None, None, 0.0, None, exc.status, prompt=i)
    except Exception:  # no answer at all (connection refused, timeout)
        return Request(elapsed, phase, None, None, None, 0.0, None, 0, prompt=i)
    model = d["model"]
    quality, cost, failed = outcome(data, i, model, phase, roles)
    body: dict[str, Any] = {"cost_usd": cost}
    if failed:
        body |= {"error_kind": "timeout", "latency_ms": FAIL_LATENCY_MS}
    else:
        body["quality"] = quality
    rec = Request(
        elapsed, phase, model, d.get("policy_version"), quality, cost, None, 200, prompt=i
    )
    try:
        fb = client.feedback(d["decision_id"], **body)
        rec.reward, rec.acknowledged = fb.get("reward"), d["decision_id"]
    except DecisionServiceError as exc:
        rec.status = exc.status
    except Exception:
        rec.status = 0
    return rec


def top_model(records: list[Request], since: float) -> str | None:
    """The model with the most decisions after ``since`` seconds."""
    counts = Counter(r.model for r in records if r.t >= since and r.model)
    return counts.most_common(1)[0][0] if counts else None


def run_scenario(cfg: ScenarioConfig, echo: Echo | None = None) -> ScenarioResult:
    """Run the scenario; write ``scenario.json`` and ``timeline.png`` under ``cfg.out``."""
    from llmopt.app.processes import running_service  # noqa: PLC0415
    from llmopt.settings import Settings, get_settings  # noqa: PLC0415
    from pipelines.runtime import configure_environment  # noqa: PLC0415

    say = echo or (lambda _line: None)
    if cfg.profile == "embedded" and (cfg.out / "home").exists():
        raise ValueError(
            f"{cfg.out / 'home'} holds an earlier run's state (event log, registry): its "
            "figures would mix with this run's; choose a new --out or delete that folder"
        )
    cfg.out.mkdir(parents=True, exist_ok=True)
    data = load_routing_data(cfg.data)
    roles = choose_roles(data, cfg.willingness_to_pay)
    say(
        f"scenario: {cfg.data.name}, {cfg.minutes:g} min at {cfg.rate:g} req/s; held back "
        f"{roles.held_back}, favourite {roles.favourite}, weak {roles.weak}"
    )
    home = (cfg.out / "home").resolve()
    env = service_env(cfg)
    if cfg.profile == "embedded":
        env |= {"LLMOPT_HOME": str(home), "LLMOPT_DATABASE_URL": ""}
        for key in ("LLMOPT_MLFLOW_TRACKING_URI", "LLMOPT_MLFLOW_ARTIFACTS_URI"):
            env[key] = ""
    with _environment(env):
        get_settings.cache_clear()
        settings = Settings()
        settings.ensure_home()
        configure_environment(settings)
        flows = FlowRunner(cfg.flow_period_s, say)
        injected: list[str] = []
        stop_injector = threading.Event()

        def on_phase(phase: str) -> None:
            if phase == "degraded":
                threading.Thread(
                    target=lambda: injected.append(
                        inject_bad_version(settings, say, stop=stop_injector)
                    ),
                    name="scenario-injector",
                    daemon=True,
                ).start()

        started = time.time()
        if cfg.url is None:
            with running_service(home, port=None, timeout_s=180.0, workers=1, **env) as url:
                flows.start()
                records = drive(url, data, cfg, roles, echo=say, on_phase=on_phase)
                stop_injector.set()
                flows.stop()
        else:
            flows.start()
            records = drive(cfg.url, data, cfg, roles, echo=say, on_phase=on_phase)
            stop_injector.set()
            flows.stop()
        result = measure(records, data, cfg, roles, settings=settings, started=started)
        result.notes += [f"flow run failed: {e}" for e in flows.errors]
        result.notes += [n for n in injected if n]
    get_settings.cache_clear()
    plot_timeline(records, cfg, roles, Path(result.timeline_png))
    (cfg.out / "scenario.json").write_text(json.dumps(asdict(result), indent=2, default=str))
    (cfg.out / "requests.jsonl").write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))
    return result


def inject_bad_version(settings: Any, echo: Echo, *, stop: threading.Event) -> str:
    """Register a uniform-random policy as ``staging`` once a ``prod`` version exists and no A/B
    test is running (a test needs a champion, and a running test is not cut short: newer
    versions queue behind it): a faulty version the loop must drop by itself."""
    from models.kinds import make_policy  # noqa: PLC0415
    from pipelines.evaluate_and_promote import RETIRED  # noqa: PLC0415
    from registry import mlflow_registry as registry  # noqa: PLC0415

    def test_running_or_no_prod() -> bool:
        prod = registry.version_for_alias(client, "prod")
        staging = registry.version_for_alias(client, "staging")
        if prod is None:
            return True
        if staging is None or staging == prod:
            return False
        mv = registry.client_model_version(client, staging, registry.MODEL_NAME)
        return (mv.tags or {}).get("validation_status", "") not in RETIRED

    try:
        client = registry.configure(settings)
        while test_running_or_no_prod():
            if stop.wait(2.0):
                return "bad version not injected: no prod version, or a test ran to the end"
        version = registry.register_policy(
            make_policy("random", seed=0),
            settings=settings,
            aliases=("staging",),
            tags={"source_flow": "scenario-fault-injection"},
            experiment="scenario",
            run_name="deliberately-bad-version",
        )
    except Exception as exc:  # the registry may be busy: the scenario says so
        return f"bad version not injected: {type(exc).__name__}: {exc}"
    echo(f"  injected a deliberately bad version {version} as staging")
    return f"deliberately bad version {version} injected as staging"


# -- measures ---------------------------------------------------------------------------------
def _buckets(records: list[Request], start: float, end: float, width: float) -> list[list[Request]]:
    n = max(int(np.ceil((end - start) / width)), 1)
    out: list[list[Request]] = [[] for _ in range(n)]
    for r in records:
        if start <= r.t < end:
            out[min(int((r.t - start) / width), n - 1)].append(r)
    return out


def phase_bounds(cfg: ScenarioConfig) -> dict[str, tuple[float, float]]:
    """Start and end (seconds) of each phase."""
    ends = [*PHASE_STARTS[1:], 1.0]
    return {
        p: (s * cfg.seconds, e * cfg.seconds)
        for p, s, e in zip(PHASES, PHASE_STARTS, ends, strict=True)
    }


def degraded_adaptation(
    records: list[Request], bounds: dict[str, tuple[float, float]], model: str
) -> tuple[float | None, int | None, float]:
    """Seconds and requests until ``model``'s share falls below half of what it was."""
    t0, t1 = bounds["degraded"]
    before = [r for r in records if t0 - (t1 - t0) / 2 <= r.t < t0 and r.model]
    pre = sum(r.model == model for r in before) / max(len(before), 1)
    after = [r for r in records if t0 <= r.t < t1 and r.model]
    window = 100
    for k in range(window, len(after) + 1):
        chunk = after[k - window : k]
        if sum(r.model == model for r in chunk) / window <= pre / 2:
            return chunk[-1].t - t0, k, pre
    return None, None, pre


def failing_exclusion(
    records: list[Request], bounds: dict[str, tuple[float, float]], model: str | None
) -> tuple[float | None, int | None]:
    """Seconds and requests until ``model`` gets at most 5% of every later second."""
    t0, t1 = bounds["failing"]
    if model is None:
        return None, None
    buckets = _buckets([r for r in records if r.model], t0, t1, 1.0)
    share = [sum(r.model == model for r in b) / max(len(b), 1) for b in buckets]
    for k in range(len(share)):
        if all(s <= 0.05 for s in share[k:]):
            n = sum(len(b) for b in buckets[:k])
            return float(k), n
    return None, None


def phase_report(
    records: list[Request], data: RoutingData, cfg: ScenarioConfig, roles: Roles
) -> dict[str, dict[str, Any]]:
    """Per phase: the router's quality and cost against the best fixed model of the phase."""
    out: dict[str, dict[str, Any]] = {}
    for p in PHASES:
        rs = [r for r in records if r.phase == p and r.model is not None]
        if not rs:
            out[p] = {"requests": 0}
            continue
        offered = [
            m for m in data.models if p not in ("baseline", "degraded") or m != roles.held_back
        ]
        best, best_q, best_c, best_r = None, 0.0, 0.0, -np.inf
        for m in offered:
            qs, cs = [], []
            for i in (r.prompt for r in rs):
                q, c, failed = outcome(data, i, m, p, roles)
                qs.append(0.0 if failed or q is None else q)
                cs.append(c)
            mq, mc = float(np.mean(qs)), float(np.mean(cs))
            if mq - mc / cfg.willingness_to_pay > best_r:
                best, best_q, best_c, best_r = m, mq, mc, mq - mc / cfg.willingness_to_pay
        q = float(np.mean([r.quality if r.quality is not None else 0.0 for r in rs]))
        c = float(np.mean([r.cost_usd for r in rs]))
        out[p] = {
            "requests": len(rs),
            "quality": q,
            "cost_usd": c,
            "reward": q - c / cfg.willingness_to_pay,
            "best_fixed_model": best,
            "best_fixed_quality": best_q,
            "best_fixed_cost_usd": best_c,
            "best_fixed_reward": best_r,
            "top_models": Counter(r.model for r in rs).most_common(3),
        }
    return out


def new_model_uptake(
    records: list[Request], cfg: ScenarioConfig, roles: Roles
) -> tuple[float | None, int | None, float | None, bool]:
    """Seconds and requests to the new model's first decision, its share of the last quarter
    of its phase, and whether it is then (or at the end of the run) the most chosen model."""
    t2, t3 = phase_bounds(cfg)["new_model"]
    new = [r for r in records if t2 <= r.t < t3 and r.model == roles.held_back]
    new_s = new[0].t - t2 if new else None
    new_n = (
        sum(1 for r in records if t2 <= r.t < t3 and r.model and r.t <= new[0].t) if new else None
    )
    # Its niche is the whole workload: is it the top choice by the end of its phase, or of the
    # run (the failing phase may be what finally moves it; its traffic is left out there)?
    windows: list[tuple[float, float, str | None]] = [(t3 - (t3 - t2) / 4, t3, None)]
    if roles.failing != roles.held_back:  # if it is the one failing, its phase end says it all
        windows.append((cfg.seconds * 0.95, cfg.seconds, roles.failing))
    shares = []
    for lo, hi, left_out in windows:
        tail = [r for r in records if lo <= r.t < hi and r.model and r.model != left_out]
        if tail:
            share = sum(r.model == roles.held_back for r in tail) / len(tail)
            shares.append((share, top_model(tail, since=-1.0) == roles.held_back))
    share_end = shares[0][0] if shares else None
    return new_s, new_n, share_end, any(top for _, top in shares)


def registry_summary(settings: Any) -> dict[str, list[str]]:
    """Versions registered, ever promoted to prod, rolled back and rejected."""
    from registry import mlflow_registry as registry  # noqa: PLC0415

    client = registry.configure(settings)
    versions = registry.list_versions(client)
    prod = registry.version_for_alias(client, "prod")
    promoted = [*registry.prod_history(client), *([prod] if prod else [])]
    status = {v.version: v.tags.get("validation_status", "") for v in versions}
    return {
        "registered": [v.version for v in versions],
        "promoted": list(dict.fromkeys(promoted)),
        "rolled_back": [v for v, s in status.items() if s == "rolled_back"],
        "rejected": [v for v, s in status.items() if s == "rejected_ab"],
    }


def lost_feedback(records: list[Request], settings: Any) -> int:
    """Feedback the service acknowledged that the event log does not hold."""
    from llmopt.event_log import EventLog  # noqa: PLC0415

    acked = {r.acknowledged for r in records if r.acknowledged}
    log = EventLog(settings.event_log_url)
    try:
        stored = {e.decision_id for e in log.feedback_since(0)}
    finally:
        log.close()
    return len(acked - stored)


def measure(
    records: list[Request],
    data: RoutingData,
    cfg: ScenarioConfig,
    roles: Roles,
    *,
    settings: Any,
    started: float,
) -> ScenarioResult:
    """Every figure of :class:`ScenarioResult` from the recorded traffic and the stores."""
    bounds = phase_bounds(cfg)
    deg_s, deg_n, pre = degraded_adaptation(records, bounds, roles.favourite)
    new_s, new_n, share_end, top_end = new_model_uptake(records, cfg, roles)
    fail_s, fail_n = failing_exclusion(records, bounds, roles.failing)
    reg = registry_summary(settings)
    notes = []
    if pre < 0.1:
        notes.append(
            f"the favourite {roles.favourite} had only {pre:.0%} of the traffic before it "
            "degraded: its adaptation time says little"
        )
    return ScenarioResult(
        adaptation_s={"degraded": deg_s, "new_model": new_s, "failing": fail_s},
        adaptation_requests={"degraded": deg_n, "new_model": new_n, "failing": fail_n},
        promoted_versions=reg["promoted"],
        rolled_back_versions=reg["rolled_back"],
        operator_actions=0,  # the scenario never calls /admin or the registry's aliases
        errors_5xx=sum(1 for r in records if r.status >= 500),
        lost_feedback=lost_feedback(records, settings),
        timeline_png=str((cfg.out / "timeline.png").resolve()),
        roles=asdict(roles),
        phases=phase_report(records, data, cfg, roles),
        registered_versions=reg["registered"],
        rejected_versions=reg["rejected"],
        requests=len(records),
        new_model_share_end=share_end,
        new_model_top_choice=top_end,
        seconds=time.time() - started,
        notes=notes,
    )


def plot_timeline(records: list[Request], cfg: ScenarioConfig, roles: Roles, path: Path) -> Path:
    """Traffic share per model (stacked), mean reward, phase changes and policy versions."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    width = max(cfg.seconds / 120, 2.0)
    buckets = _buckets([r for r in records if r.model], 0.0, cfg.seconds, width)
    top = [m for m, _ in Counter(r.model for r in records if r.model).most_common(7)]
    xs = np.arange(len(buckets)) * width
    shares = {
        m: np.array([sum(r.model == m for r in b) / max(len(b), 1) for b in buckets]) for m in top
    }
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, height_ratios=(3, 1))
    ax.stackplot(xs, *shares.values(), labels=list(shares), alpha=0.85)
    for name, (t0, _) in phase_bounds(cfg).items():
        ax.axvline(t0, color="black", lw=1, ls="--")
        ax.text(t0 + 1, 1.01, name, fontsize=8)
    first_seen: dict[str, float] = {}
    for r in records:
        if r.version and r.version not in first_seen:
            first_seen[r.version] = r.t
    for label, t in first_seen.items():
        ax2.axvline(t, color="grey", lw=0.8)
        ax2.text(t, 0.0, label.split("/")[-1], fontsize=7, rotation=90, va="bottom")
    rewards = [np.mean([r.reward for r in b if r.reward is not None] or [np.nan]) for b in buckets]
    ax2.plot(xs, rewards, color="tab:red")
    ax.set_ylabel("traffic share")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    ax2.set_ylabel("mean reward")
    ax2.set_xlabel("seconds (grey lines: first decision of each policy version)")
    ax.set_title(
        f"scenario: degraded {roles.favourite}, new {roles.held_back}, failing {roles.failing}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(result: ScenarioResult) -> list[str]:
    """The printed summary, one line per figure."""
    a, n = result.adaptation_s, result.adaptation_requests

    def sec(x: float | None) -> str:
        return "never" if x is None else f"{x:.1f} s"

    lines = [
        f"degraded model: traffic moved in {sec(a['degraded'])} ({n['degraded']} requests)",
        f"new model: first traffic after {sec(a['new_model'])}; share at the end "
        f"{(result.new_model_share_end or 0):.0%}; top choice: {result.new_model_top_choice}",
        f"failing model: excluded after {sec(a['failing'])}",
        f"versions: registered {len(result.registered_versions)}, promoted "
        f"{result.promoted_versions}, rolled back {result.rolled_back_versions}, rejected "
        f"{result.rejected_versions}",
        f"operator actions {result.operator_actions}, 5xx {result.errors_5xx}, lost feedback "
        f"{result.lost_feedback}, {result.requests} requests in {result.seconds:.0f} s",
    ]
    for p, r in result.phases.items():
        if r.get("requests"):
            lines.append(
                f"  {p:<10} quality {r['quality']:.4f} cost {r['cost_usd']:.6f} reward "
                f"{r['reward']:+.4f} | best fixed {r['best_fixed_model']}: quality "
                f"{r['best_fixed_quality']:.4f} cost {r['best_fixed_cost_usd']:.6f} reward "
                f"{r['best_fixed_reward']:+.4f}"
            )
    return lines
