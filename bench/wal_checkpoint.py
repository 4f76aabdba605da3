"""The served p99 with the event log's WAL checkpoints on a thread of their own, or in commits.

SQLite checkpoints its write-ahead log inside the commit that finds it longer than 1,000 pages:
at 500 decisions/s that was a ~10 ms stall every ~0.3 s, and every answer waiting for that
commit waited with it (:mod:`llmopt.wal_checkpoint`). Two services run at once, as a user starts
them (``llmopt serve``, embedded profile, live features from Feast's SQLite online store):

- ``thread``: the default, ``LLMOPT_SERVING_WAL_CHECKPOINT_S=0.5``;
- ``in_commit``: ``LLMOPT_SERVING_WAL_CHECKPOINT_S=0``, SQLite's own checkpoint.

Open-loop ``/decide`` at 500 requests/s (:mod:`bench.loadgen`, its own process) goes to one,
then the other, over several rounds (the machine's speed drifts; the idle one costs nothing).
Reported per mode: p50 and p99 of each round and their medians, and the ratio of the medians.

Run: ``make bench-checkpoint`` or ``python -m bench.wal_checkpoint [--quick]``
-> ``bench/results/wal_checkpoint.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import _common
from bench.serving import _env, _start, _stop, _wait_features, load
from llmopt.app.processes import free_port

NAME = "wal_checkpoint"
MODES = {"thread": "0.5", "in_commit": "0"}
"""Mode -> ``LLMOPT_SERVING_WAL_CHECKPOINT_S``."""
RATE = 500.0


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """Both services up, then ``rounds`` alternating loads; one row per mode and the ratio."""
    rounds, seconds = (2, 3.0) if quick else (5, 10.0)
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="llmopt-bench-wal-") as tmp, ExitStack() as stack:
        urls: dict[str, str] = {}
        for mode, interval in MODES.items():
            home, port = Path(tmp) / mode, free_port()
            urls[mode] = f"http://127.0.0.1:{port}"
            env = _env(
                home,
                LLMOPT_SERVING_WAL_CHECKPOINT_S=interval,
                LLMOPT_SERVING_MODEL_SOURCE="local",
            )
            cmd = [sys.executable, "-m", "llmopt.app.cli", "serve", "--port", str(port)]
            proc = _start(cmd, env, Path(tmp) / f"{mode}.log", urls[mode])
            stack.callback(_stop, proc)
        features = {m: _wait_features(u) for m, u in urls.items()}
        for url in urls.values():
            load(url, rate=RATE, seconds=seconds / 2)  # warm-up: the log has pages to move
        for _ in range(rounds):
            for mode, url in urls.items():
                rows[mode].append(load(url, rate=RATE, seconds=seconds))
    results: list[dict[str, Any]] = []
    for mode, runs in rows.items():
        results.append(
            {
                "kind": "mode",
                "mode": mode,
                "wal_checkpoint_s": float(MODES[mode]),
                "features": features[mode],
                "rate": RATE,
                "rounds": len(runs),
                "seconds": seconds,
                "failed": sum(r["failed"] for r in runs),
                "p50_ms_each": [r["p50_ms"] for r in runs],
                "p99_ms_each": [r["p99_ms"] for r in runs],
                "p50_ms_median": statistics.median(r["p50_ms"] for r in runs),
                "p99_ms_median": statistics.median(r["p99_ms"] for r in runs),
            }
        )
    by = {r["mode"]: r for r in results}
    results.append(
        {
            "kind": "ratio",
            "p99_thread_over_in_commit": _common.ratio(
                by["thread"]["p99_ms_median"], by["in_commit"]["p99_ms_median"]
            ),
            "p50_thread_over_in_commit": _common.ratio(
                by["thread"]["p50_ms_median"], by["in_commit"]["p50_ms_median"]
            ),
        }
    )
    return results


def summary(results: list[dict[str, Any]]) -> list[str]:
    """One line per mode and one for the ratio."""
    lines = []
    for r in results:
        if r["kind"] == "mode":
            lines.append(
                f"{r['mode']:9} ({r['wal_checkpoint_s']:g} s) at {r['rate']:g}/s: p99 median "
                f"{r['p99_ms_median']:.2f} ms {r['p99_ms_each']}, p50 median "
                f"{r['p50_ms_median']:.2f} ms, failed {r['failed']}"
            )
        else:
            lines.append(
                f"thread / in_commit: p99 x{r['p99_thread_over_in_commit']}, "
                f"p50 x{r['p50_thread_over_in_commit']}"
            )
    return lines


def main() -> int:
    """``python -m bench.wal_checkpoint [--quick]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.wal_checkpoint", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s")
    args = parser.parse_args()
    results = run(quick=args.quick)
    path = _common.write_document(_common.document(NAME, results, quick=args.quick))
    print(f"== {NAME} -> {_common.display_path(path)}")
    for line in summary(results):
        print(f"   {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
