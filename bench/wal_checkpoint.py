"""The group-commit writer's tail with SQLite's checkpoints in the commit or on their own thread.

A WAL-mode SQLite database copies its write-ahead log back into the database file (a
checkpoint, fsync included) inside whichever commit finds the log over 1,000 pages. With group
commit, every request waiting for that group waits for the checkpoint too. This benchmark writes
decisions at ``RATE`` per second through a group-commit event log on a SQLite file in the
repository's folder (the disk ``LLMOPT_HOME`` usually lives on), each awaited as ``/decide``
awaits it, once with SQLite's automatic checkpoint (``"in_commit"``, the behaviour before
:mod:`llmopt.wal_checkpoint`) and once with :class:`llmopt.wal_checkpoint.WalCheckpointer`
(``"own_thread"``), alternating over two rounds, and reports the commit time and the wait of
one decision: median, p99, p99.9 and max.

Run: ``python -m bench wal_checkpoint [--quick]`` -> ``bench/results/wal_checkpoint.json``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import ratio
from llmopt.event_log import EventLog
from llmopt.schemas import Decision, RequestContext

NAME = "wal_checkpoint"
RATE = 500.0
SECONDS = 30.0
MODES = ("in_commit", "own_thread")
REPO = Path(__file__).resolve().parents[1]


def _percentiles(ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "p50": round(float(np.percentile(a, 50)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "p999": round(float(np.percentile(a, 99.9)), 3),
        "max": round(float(a.max()), 3),
    }


def _run(mode: str, seconds: float, rate: float = RATE) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="llmopt-bench-wal-", dir=REPO) as tmp:
        log = EventLog(f"sqlite:///{tmp}/events.db", group_commit=True)
        if mode == "in_commit":  # as before: SQLite checkpoints inside a commit
            assert log.checkpointer is not None
            log.checkpointer.close()
            log.checkpointer = None
            log.engine.dispose()
        assert log.group is not None
        commits: list[float] = []
        flush = log.group._flush

        def timed(items: Any) -> Any:
            t = time.perf_counter()
            try:
                return flush(items)
            finally:
                commits.append((time.perf_counter() - t) * 1000)

        log.group._flush = timed
        ctx = RequestContext(tenant="acme", prompt="What is 2 + 2? " * 5)
        features = {f"emb_{i}": 0.01 * i for i in range(40)}
        scores = {f"m{i}": 0.1 for i in range(11)}
        waits: list[float] = []
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            d = Decision(model="gpt-4o-mini", propensity=0.5, policy_name="bench", scores=scores)
            t = time.perf_counter()
            with log.deferred_writes() as writes:
                log.record_decision(d, ctx, features=features)
            writes.wait()
            waits.append((time.perf_counter() - t) * 1000)
            n += 1
            time.sleep(max(0.0, start + n / rate - time.perf_counter()))
        runs = log.checkpointer.runs if log.checkpointer is not None else None
        log.close()
    return {
        "mode": mode,
        "decisions": n,
        "rate": rate,
        "seconds": seconds,
        "commit_ms": _percentiles(commits),
        "wait_ms": _percentiles(waits),
        "background_checkpoints": runs,
    }


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """Both modes, alternating over two rounds (the machine's speed drifts)."""
    seconds = 5.0 if quick else SECONDS
    results: list[dict[str, Any]] = []
    for round_ in range(2):
        for mode in MODES if round_ == 0 else tuple(reversed(MODES)):
            results.append({"kind": "mode", "round": round_, **_run(mode, seconds)})
    for round_ in range(2):
        by = {r["mode"]: r for r in results if r.get("round") == round_}
        results.append(
            {
                "kind": "ratio",
                "round": round_,
                **{
                    f"in_commit_over_own_thread_wait_{q}": ratio(
                        by["in_commit"]["wait_ms"][q], by["own_thread"]["wait_ms"][q]
                    )
                    for q in ("p99", "p999", "max")
                },
            }
        )
    return results


def summary(results: list[dict[str, Any]]) -> list[str]:
    """One line per run, and the ratios."""
    lines = []
    for r in results:
        if r["kind"] == "mode":
            c, w = r["commit_ms"], r["wait_ms"]
            lines.append(
                f"{r['mode']:10} round {r['round']}: {r['decisions']:,} decisions at "
                f"{r['rate']:g}/s; commit p50 {c['p50']:.2f} p99.9 {c['p999']:.2f} max "
                f"{c['max']:.1f} ms; wait p99 {w['p99']:.2f} p99.9 {w['p999']:.2f} max "
                f"{w['max']:.1f} ms"
            )
        else:
            lines.append(
                f"round {r['round']}: in-commit / own-thread wait: p99 "
                f"x{r['in_commit_over_own_thread_wait_p99']}, p99.9 "
                f"x{r['in_commit_over_own_thread_wait_p999']}, max "
                f"x{r['in_commit_over_own_thread_wait_max']}"
            )
    return lines


if __name__ == "__main__":
    print("run: python -m bench wal_checkpoint [--quick]", file=sys.stderr)
    raise SystemExit(2)
