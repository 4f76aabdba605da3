"""The event log's group commit as its table grows: random decision ids vs time-ordered ones.

``decisions.decision_id`` is the table's primary key. At 500 decisions/s the table gains ~300 MB
in ten minutes; where in its index each commit's rows land decides how many pages a commit
dirties (and later checkpoints copy). This benchmark writes ``N`` realistic decision rows (a
prompt's context, 30 features, 11 scores) into a fresh SQLite event log in groups of 8, as the
group-commit writer does (``EventLog._flush_writes``), once with random 128-bit ids (what
``llmopt.schemas.new_decision_id`` issued before 2026-12-06) and once with its time-ordered
ids, and reports the time per group over the first and the last sixth of the run.

Run: ``python -m bench decision_ids [--quick]`` -> ``bench/results/decision_ids.json``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import ratio
from llmopt.event_log import EventLog
from llmopt.schemas import Decision, RequestContext, new_decision_id

NAME = "decision_ids"
ROWS = 300_000
GROUP = 8
IDS: dict[str, Callable[[], str]] = {
    "random": lambda: os.urandom(16).hex(),
    "time_ordered": new_decision_id,
}


def _run(make_id: Callable[[], str], n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="llmopt-bench-ids-") as tmp:
        log = EventLog(f"sqlite:///{tmp}/events.db")
        ctx = RequestContext(tenant="acme", prompt="What is 2 + 2? " * 5)
        decision = Decision(
            model="gpt-4o-mini",
            propensity=0.5,
            policy_name="bench",
            scores={f"m{i}": 0.1 for i in range(11)},
        )
        row = log.decision_row(decision, ctx, features={f"f{i}": 0.1 * i for i in range(30)})
        ms: list[float] = []
        for _ in range(n // GROUP):
            rows = [{**row, "decision_id": make_id()} for _ in range(GROUP)]
            t = time.perf_counter()
            log._flush_writes(rows)
            ms.append((time.perf_counter() - t) * 1000)
        log.close()
        size_mb = Path(f"{tmp}/events.db").stat().st_size / 1e6
    t = np.array(ms)
    k = max(len(t) // 6, 1)
    first, last = t[:k], t[-k:]
    return {
        "rows": n,
        "group": GROUP,
        "db_mb": round(size_mb, 1),
        "first_sixth_ms_mean": round(float(first.mean()), 4),
        "first_sixth_ms_p99": round(float(np.percentile(first, 99)), 3),
        "last_sixth_ms_mean": round(float(last.mean()), 4),
        "last_sixth_ms_p99": round(float(np.percentile(last, 99)), 3),
    }


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """Both id kinds, alternating over two rounds (the machine's speed drifts)."""
    n = 30_000 if quick else ROWS
    results: list[dict[str, Any]] = []
    for round_ in range(2):
        kinds = list(IDS) if round_ == 0 else list(reversed(IDS))
        for kind in kinds:
            results.append({"kind": "ids", "ids": kind, "round": round_, **_run(IDS[kind], n)})
    for round_ in range(2):
        by = {r["ids"]: r for r in results if r.get("round") == round_ and r["kind"] == "ids"}
        results.append(
            {
                "kind": "ratio",
                "round": round_,
                "random_over_ordered_last_mean": ratio(
                    by["random"]["last_sixth_ms_mean"], by["time_ordered"]["last_sixth_ms_mean"]
                ),
                "random_over_ordered_last_p99": ratio(
                    by["random"]["last_sixth_ms_p99"], by["time_ordered"]["last_sixth_ms_p99"]
                ),
            }
        )
    return results


def summary(results: list[dict[str, Any]]) -> list[str]:
    """One line per run, and the ratios."""
    lines = []
    for r in results:
        if r["kind"] == "ids":
            lines.append(
                f"{r['ids']:12} round {r['round']}: group of {r['group']} "
                f"{r['first_sixth_ms_mean']:.3f} ms (p99 {r['first_sixth_ms_p99']:.2f}) first "
                f"sixth, {r['last_sixth_ms_mean']:.3f} ms (p99 {r['last_sixth_ms_p99']:.2f}) "
                f"last, {r['rows']:,} rows, {r['db_mb']} MB"
            )
        else:
            lines.append(
                f"round {r['round']}: random / time-ordered, last sixth: mean "
                f"x{r['random_over_ordered_last_mean']}, p99 x{r['random_over_ordered_last_p99']}"
            )
    return lines


if __name__ == "__main__":
    print("run: python -m bench decision_ids [--quick]", file=sys.stderr)
    raise SystemExit(2)
