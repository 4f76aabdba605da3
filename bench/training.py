"""Incremental training throughput and time to load a registry version by alias.

Setup: a synthetic event log (SQLite, in a temporary ``LLMOPT_HOME``) of decisions over 11
models with 64 dense request features (63 random + bias), bulk-inserted, and their feedback.

1. Throughput of :func:`pipelines.training.incremental_update` in feedback events per second:
   keyset-paginated reads from the log, ``learn_many`` of the recommended policy and one
   checkpoint (policy state + cursor, one transaction) per batch. Fixed orchestration overhead
   (a Prefect flow run of ``incremental-training`` minus its learning time: the engine, MLflow
   run, model logging and registration) is reported separately, as is the first flow of a
   process (Prefect's ephemeral API starting). Baseline: the same policy's ``learn_many`` on
   the same events already in memory (the learning alone).
2. Time to load ``models:/llm-router@prod`` for that policy (11 arms x 64 features): warm (the
   same process, repeated) and first load in a fresh process (imports included, and excluded),
   through ``mlflow.pyfunc.load_model`` and through :func:`registry.mlflow_registry.load_policy`
   (the state file read directly).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import SEED, ratio

NAME = "training"
N_ARMS, N_FEATURES = 11, 64
FULL_EVENTS, QUICK_EVENTS = 20_000, 3_000
BATCH_SIZE = 5000
WARM_LOADS = 20


def _fill(url: str, n: int) -> list[str]:
    """Bulk-insert ``n`` decisions with feedback; return the arm names."""
    from llmopt.event_log import EventLog, decisions, feedback  # noqa: PLC0415

    log = EventLog(url)
    rng = np.random.default_rng(SEED)
    arms = [f"model-{k:02d}" for k in range(N_ARMS)]
    names = ["bias"] + [f"f{j:02d}" for j in range(N_FEATURES - 1)]
    weights = rng.normal(0, 0.1, (N_ARMS, N_FEATURES))
    now = datetime.now(UTC)
    dec_rows, fb_rows = [], []
    for i in range(n):
        x = np.concatenate([[1.0], rng.random(N_FEATURES - 1)])
        a = int(rng.integers(N_ARMS))
        q = float(np.clip(0.5 + weights[a] @ x * 0.2 + rng.normal(0, 0.1), 0, 1))
        did = uuid.uuid4().hex
        dec_rows.append(
            {
                "decision_id": did,
                "created_at": now,
                "tenant": "bench",
                "model": arms[a],
                "parameters": {},
                "propensity": 1.0 / N_ARMS,
                "policy_name": "random",
                "policy_version": "0",
                "scores": dict.fromkeys(arms, 0.0),
                "context": {"willingness_to_pay": 0.05, "input_tokens": 100},
                "features": dict(zip(names, x.tolist(), strict=True)),
            }
        )
        fb_rows.append(
            {
                "feedback_id": i + 1,
                "decision_id": did,
                "received_at": now,
                "quality": q,
                "reward": q - 0.01,
                "cost_usd": 0.0005,
                "payload": {},
                "payload_sha256": "",
            }
        )
    with log.engine.begin() as conn:
        conn.execute(decisions.insert(), dec_rows)
        conn.execute(feedback.insert(), fb_rows)
    log.close()
    return arms


def _load_fresh_process(kind: str) -> dict[str, float]:
    """Import + first load of ``models:/llm-router@prod`` in a new interpreter (seconds)."""
    code = f"""
import json, time
t0 = time.perf_counter()
import mlflow, mlflow.pyfunc
from llmopt.settings import get_settings
from registry import mlflow_registry as registry
client = registry.configure(get_settings())
t1 = time.perf_counter()
if {kind!r} == "pyfunc":
    mlflow.pyfunc.load_model("models:/llm-router@prod")
else:
    registry.load_policy(client, "prod")
t2 = time.perf_counter()
print(json.dumps({{"imports_s": t1 - t0, "first_load_s": t2 - t1}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """Throughput of incremental training, orchestration overhead, load times by alias."""
    n = QUICK_EVENTS if quick else FULL_EVENTS
    with tempfile.TemporaryDirectory(prefix="llmopt-bench-training-") as tmp:
        saved = {k: os.environ.get(k) for k in ("LLMOPT_HOME", "LLMOPT_DATABASE_URL")}
        os.environ["LLMOPT_HOME"] = str(Path(tmp) / "home")
        os.environ.pop("LLMOPT_DATABASE_URL", None)
        for key, value in {
            "PREFECT_HOME": str(Path(tmp) / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }.items():
            os.environ.setdefault(key, value)
        try:
            return _run(n, quick=quick)
        finally:
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old
            from llmopt.settings import get_settings  # noqa: PLC0415

            get_settings.cache_clear()


def _run(n: int, *, quick: bool) -> list[dict[str, Any]]:
    from llmopt.event_log import EventLog  # noqa: PLC0415
    from llmopt.settings import get_settings  # noqa: PLC0415
    from models.kinds import RECOMMENDED, make_policy  # noqa: PLC0415
    from pipelines.checkpoint import CheckpointStore  # noqa: PLC0415
    from pipelines.training import incremental_update, training_target  # noqa: PLC0415

    get_settings.cache_clear()
    settings = get_settings()
    settings.ensure_home()
    _fill(settings.event_log_url, n)
    log = EventLog(settings.event_log_url)

    # Baseline: learning alone, events already in memory.
    events = [e for b in log.training_batches(0, BATCH_SIZE) for e in b]
    base = make_policy(RECOMMENDED, seed=SEED)
    examples = [(e.model, e.features, training_target(base, e)) for e in events]
    t0 = time.perf_counter()
    base.learn_many(examples)
    learn_only_s = time.perf_counter() - t0

    # Incremental training from the log, checkpointing every batch (the first half: the
    # flow below learns the second half).
    half = n // 2
    store = CheckpointStore(log.engine)
    result = incremental_update(
        log,
        store,
        name="incremental",
        initial=lambda: (make_policy(RECOMMENDED, seed=SEED), 0, 0),
        batch_size=BATCH_SIZE,
        until_id=half,
    )
    log.close()
    rate = result.n_events / result.learn_seconds
    rows: list[dict[str, Any]] = [
        {
            "case": "incremental_update (read + learn + checkpoint per batch)",
            "n_events": result.n_events,
            "n_arms": N_ARMS,
            "n_features": N_FEATURES,
            "batch_size": BATCH_SIZE,
            "seconds": round(result.learn_seconds, 4),
            "events_per_s": round(rate, 1),
            "baseline_learn_many_events_per_s": round(n / learn_only_s, 1),
            "ratio_time_per_event_vs_learn_many": ratio(1 / rate, learn_only_s / n),
            "target_events_per_s": 10_000,
            "met": rate >= 10_000,
        }
    ]

    # The flow: the second half, plus Prefect + MLflow around it.
    from pipelines.incremental_training import incremental_training  # noqa: PLC0415

    t0 = time.perf_counter()
    from prefect.testing.utilities import prefect_test_harness  # noqa: PLC0415

    with prefect_test_harness(server_startup_timeout=120):
        started_api = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = incremental_training(batch_size=BATCH_SIZE)
        flow_s = time.perf_counter() - t0
    rows.append(
        {
            "case": "incremental-training flow (Prefect + MLflow around the same work)",
            "n_events": out["n_events"],
            "flow_seconds": round(flow_s, 3),
            "learn_seconds": out["learn_seconds"],
            "fixed_overhead_s": round(flow_s - out["learn_seconds"], 3),
            "events_per_s_inside_flow": round(out["n_events"] / out["learn_seconds"], 1),
            "ephemeral_api_start_s": round(started_api, 2),
            "note": "overhead: flow engine, initial state load, MLflow run, log_model, register",
        }
    )

    # Load by alias: the version the flow registered, aliased prod.
    from registry import mlflow_registry as registry  # noqa: PLC0415

    client = registry.configure(settings)
    registry.set_alias(client, str(out["version"]), "prod")
    state = registry.load_state(client, "prod")[1]["state"]
    shape = {"arms": len(state["arms"]), "features": len(state["features"])}
    import mlflow.pyfunc  # noqa: PLC0415

    for kind in ("pyfunc", "direct"):
        times = []
        for _ in range(WARM_LOADS + 1):
            t0 = time.perf_counter()
            if kind == "pyfunc":
                mlflow.pyfunc.load_model("models:/llm-router@prod")
            else:
                registry.load_policy(client, "prod")
            times.append(time.perf_counter() - t0)
        warm = times[1:]
        fresh = [_load_fresh_process(kind) for _ in range(1 if quick else 3)]
        rows.append(
            {
                "case": f"load models:/llm-router@prod ({kind})",
                **shape,
                "warm_p50_ms": round(statistics.median(warm) * 1000, 2),
                "warm_max_ms": round(max(warm) * 1000, 2),
                "first_load_fresh_process_ms": round(
                    statistics.median(f["first_load_s"] for f in fresh) * 1000, 1
                ),
                "imports_fresh_process_s": round(
                    statistics.median(f["imports_s"] for f in fresh), 2
                ),
                "target_ms": 100,
                "met_warm": statistics.median(warm) <= 0.1,
            }
        )
    return rows


def summary(results: list[dict[str, Any]]) -> list[str]:
    """One line per case."""
    lines = []
    for r in results:
        if "events_per_s" in r:
            lines.append(
                f"{r['case']}: {r['events_per_s']:,.0f} events/s ({r['n_events']} events, "
                f"{r['n_arms']} arms x {r['n_features']} features; learn_many alone "
                f"{r['baseline_learn_many_events_per_s']:,.0f}/s) target 10,000: "
                f"{'met' if r['met'] else 'NOT met'}"
            )
        elif "flow_seconds" in r:
            lines.append(
                f"{r['case']}: {r['flow_seconds']} s for {r['n_events']} events, fixed overhead "
                f"{r['fixed_overhead_s']} s, ephemeral API start {r['ephemeral_api_start_s']} s"
            )
        else:
            lines.append(
                f"{r['case']} ({r['arms']} arms x {r['features']} features): warm p50 "
                f"{r['warm_p50_ms']} ms, first load in a fresh process "
                f"{r['first_load_fresh_process_ms']} ms + {r['imports_fresh_process_s']} s imports"
            )
    return lines
