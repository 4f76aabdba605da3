"""Helpers shared by the benchmarks: data paths, timing statistics and the result documents."""

from __future__ import annotations

import gc
import json
import math
import os
import platform
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

SEED = 0
"""Seed of every random choice the benchmarks make (prompt samples and orders, policies)."""

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = Path(os.environ.get("LLMOPT_BENCH_RESULTS") or BENCH_DIR / "results")
"""Where result documents go (``LLMOPT_BENCH_RESULTS`` redirects them, e.g. in tests)."""
SHARED_ROUTING_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "routing"
"""The project's shared routing data (``../shared/data/routing`` from the repo root)."""
SHIPPED_DATA = BENCH_DIR.parent / "llmopt" / "data" / "alpaca_eval.parquet"
"""Fallback when the shared data is absent: the routing file shipped in the package."""


def routing_files() -> list[Path]:
    """Every shared routing parquet, or the shipped one alone if the shared folder is missing."""
    if SHARED_ROUTING_DIR.is_dir():
        files = sorted(SHARED_ROUTING_DIR.glob("*.parquet"))
        if files:
            return files
    return [SHIPPED_DATA]


def routing_file(name: str) -> Path:
    """The shared routing file ``name``, or the shipped one if it is missing."""
    path = SHARED_ROUTING_DIR / name
    return path if path.exists() else SHIPPED_DATA


def display_path(path: Path) -> str:
    """``path`` relative to the repository root (so results hold no home directories)."""
    return os.path.relpath(path, BENCH_DIR.parent)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Collect, then keep the cyclic GC off while timing (as ``timeit`` does)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def stats_us(durations_ns: Sequence[int] | np.ndarray) -> dict[str, float | int]:
    """p50, p99 and mean of durations in nanoseconds, in microseconds, with the count."""
    us = np.asarray(durations_ns, dtype=float) / 1000.0
    return {
        "iterations": int(us.size),
        "p50_us": round(float(np.percentile(us, 50)), 3),
        "p99_us": round(float(np.percentile(us, 99)), 3),
        "mean_us": round(float(us.mean()), 3),
    }


def ratio(subject: float, baseline: float) -> float:
    """``subject / baseline`` rounded (NaN if the baseline took no time)."""
    return round(subject / baseline, 3) if baseline > 0 else math.nan


def timer_overhead_ns(n: int = 10_000) -> int:
    """Median cost of two back-to-back ``perf_counter_ns`` calls (included in per-call times)."""
    from time import perf_counter_ns  # noqa: PLC0415

    samples = np.empty(n, dtype=np.int64)
    for k in range(n):
        t0 = perf_counter_ns()
        samples[k] = perf_counter_ns() - t0
    return int(np.median(samples))


def document(name: str, results: list[dict[str, Any]], *, quick: bool) -> dict[str, Any]:
    """The result document of one benchmark."""
    return {
        "benchmark": name,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "results": results,
    }


def write_document(doc: dict[str, Any]) -> Path:
    """Write ``doc`` to ``bench/results/<benchmark>.json``; return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{doc['benchmark']}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path
