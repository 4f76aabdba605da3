"""Sustained load: the decision service for minutes at a rate it holds; errors, tail, memory.

The real service (``bentoml serve``, 1 worker, online features from the embedded store, SQLite
event log) gets, from two other processes on loopback for the whole run:

- ``POST /decide`` at ``--rate`` requests/s, open loop (:mod:`bench.loadgen`), in slices of
  ``--slice`` seconds, so latency and memory are reported per slice;
- decide-then-feedback round trips at ``--feedback-rate``/s (:mod:`bench.traffic`), so the
  event log, the learner, the drift detectors and the feature pusher all work as in production.

Memory is the resident set of the server's whole process tree after each slice. "Does not grow"
is checked as: the last slice's RSS is within ``--max-growth`` (10% by default) of the RSS
after the first slice (warm-up: imports, caches, the feature store). Results go to
``bench/results/soak.json``.

Run: ``make soak`` (10 minutes at 300/s) or ``python -m bench.soak --minutes 1 --rate 200``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

from bench import _common
from bench.serving import BIN, _env, _free_port, _start, _stop, _wait_features

NAME = "soak"
REPO = Path(__file__).resolve().parents[1]


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 1e6


def run(
    *, minutes: float, rate: float, feedback_rate: float, slice_s: float, max_growth: float
) -> dict[str, Any]:
    """The soak run; a result document's ``results`` plus the verdict."""
    seconds = minutes * 60
    n_slices = max(int(seconds // slice_s), 2)
    slices: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llmopt-soak-") as tmp:
        root = Path(tmp)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = _env(
            root / "svc",
            LLMOPT_SERVING_MODEL_SOURCE="fresh",
            LLMOPT_SERVING_POLL_S="0",
            LLMOPT_SERVING_FEATURES="embedded",
        )
        proc = _start(
            [str(BIN / "bentoml"), "serve", "serving.service:DecisionService"]
            + ["--host", "127.0.0.1", "--port", str(port)],
            env,
            root / "server.log",
            url,
        )
        try:
            features = _wait_features(url)
            traffic = subprocess.Popen(
                [sys.executable, "-m", "bench.traffic", "--url", url]
                + ["--rate", str(feedback_rate), "--seconds", str(n_slices * slice_s)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(n_slices):
                out = subprocess.run(
                    [sys.executable, "-m", "bench.loadgen", "--url", f"{url}/decide"]
                    + ["--rate", str(rate), "--seconds", str(slice_s)],
                    cwd=REPO,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                row = json.loads(out)
                row["slice"] = i
                row["rss_mb"] = round(tree_rss_mb(proc.pid), 1)
                slices.append(row)
                print(
                    f"slice {i + 1}/{n_slices}: {row['requests_per_s']} req/s, p99 "
                    f"{row['p99_ms']} ms, failed {row['failed']}, rss {row['rss_mb']} MB",
                    flush=True,
                )
            traffic_out, _ = traffic.communicate(timeout=slice_s * 2 + 60)
            feedback = json.loads(traffic_out)
        finally:
            _stop(proc)
    base, last = slices[0]["rss_mb"], slices[-1]["rss_mb"]
    growth = (last - base) / base if base else 0.0
    p99s = [s["p99_ms"] for s in slices]
    return {
        "minutes": minutes,
        "rate": rate,
        "feedback_rate": feedback_rate,
        "features": features,
        "slices": slices,
        "feedback_traffic": feedback,
        "decide_requests": sum(s["requests"] for s in slices),
        "decide_failed": sum(s["failed"] for s in slices),
        "feedback_server_errors": feedback["server_errors"],
        "p99_ms_worst_slice": max(p99s),
        "p99_ms_median_slice": sorted(p99s)[len(p99s) // 2],
        "rss_mb_after_warmup": base,
        "rss_mb_end": last,
        "rss_growth": round(growth, 4),
        "memory_ok": growth <= max_growth,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.soak [--minutes M] [--rate R]``; exit 1 on errors or memory growth."""
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=300.0, help="decide requests per second")
    p.add_argument("--feedback-rate", type=float, default=20.0, help="round trips per second")
    p.add_argument("--slice", type=float, default=30.0, help="seconds per measured slice")
    p.add_argument("--max-growth", type=float, default=0.10)
    args = p.parse_args(argv)
    result = run(
        minutes=args.minutes,
        rate=args.rate,
        feedback_rate=args.feedback_rate,
        slice_s=args.slice,
        max_growth=args.max_growth,
    )
    doc = _common.document(NAME, [result], quick=args.minutes < 10)
    path = _common.write_document(doc)
    print(
        f"== {NAME} -> {_common.display_path(path)}: {result['decide_requests']} decisions "
        f"({result['decide_failed']} failed), feedback 5xx {result['feedback_server_errors']}, "
        f"p99 median/worst slice {result['p99_ms_median_slice']}/{result['p99_ms_worst_slice']} "
        f"ms, RSS {result['rss_mb_after_warmup']} -> {result['rss_mb_end']} MB "
        f"({result['rss_growth']:+.1%})"
    )
    ok = result["decide_failed"] == 0 and result["feedback_server_errors"] == 0
    return 0 if ok and result["memory_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
