"""Helpers shared by the benchmarks: data paths, timing statistics and the result documents."""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import sys
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
ROUTING_DATA_ENV = "LLMOPT_ROUTING_DATA_DIR"
"""Environment variable naming the folder of routing files (parquet, the ``llmopt bench replay``
format) that the routing benchmarks replay; unset, :data:`DEFAULT_ROUTING_DIR`."""
DEFAULT_ROUTING_DIR = BENCH_DIR / "data" / "routing"
"""The routing files shipped with the benchmarks (``bench/data/README.md``: sources, licences)."""
SHIPPED_DATA = BENCH_DIR.parent / "llmopt" / "data" / "alpaca_eval.parquet"
"""The AlpacaEval file shipped in the package (:data:`llmopt.routing_data.DEMO_DATA`, not imported
so that ``bench.soak`` starts without pandas): always replayed, unless the routing folder holds a
file of the same name, which then wins."""
NOT_SHIPPED: dict[str, str] = {
    "routerbench_arc_winogrande.parquet": (
        "RouterBench (Martian, https://github.com/withmartian/routerbench), its 0-shot"
        " ARC-Challenge and Winogrande subset as redistributed in"
        " https://github.com/shuhao02/RouterDC (datasets/routerbench_zs/)"
    ),
    "routerdc_mixed7_train.parquet": (
        "RouterDC (https://github.com/shuhao02/RouterDC), the train splits of"
        " datasets/split2_model7/*_train.json"
    ),
}
"""Routing files the benchmarks name but the repo does not ship (their sources carry no licence
file), with where to get them; ``bench/data/README.md`` says how to convert them."""

_noted: set[str] = set()


def routing_dir() -> Path:
    """The folder of routing files: ``$LLMOPT_ROUTING_DATA_DIR``, else ``bench/data/routing``.

    A folder that does not exist stops the run (``SystemExit``): a mistyped setting must not
    quietly shrink a benchmark to the shipped file.
    """
    value = os.environ.get(ROUTING_DATA_ENV, "").strip()
    folder = Path(value).expanduser() if value else DEFAULT_ROUTING_DIR
    if not folder.is_dir():
        raise SystemExit(f"{ROUTING_DATA_ENV}={folder}: no such folder")
    return folder


def _note(message: str) -> None:
    """Print ``message`` to stderr, once per process."""
    if message not in _noted:
        _noted.add(message)
        print(f"bench: {message}", file=sys.stderr)


def _missing(name: str, folder: Path, then: str) -> str:
    """The note for a routing file ``name`` missing from ``folder``."""
    where = NOT_SHIPPED.get(name)
    source = f" It is not shipped (no licence file upstream): get it from {where}," if where else ""
    return (
        f"{name} is not in {folder}; {then}.{source} convert it as bench/data/README.md says"
        f" and set {ROUTING_DATA_ENV} to the folder that holds it."
    )


def routing_files() -> list[Path]:
    """Every routing parquet of :func:`routing_dir`, and the shipped AlpacaEval file, by name.

    A file of :data:`NOT_SHIPPED` that is missing is skipped, with a note on stderr saying where
    to get it.
    """
    folder = routing_dir()
    files = {p.name: p for p in folder.glob("*.parquet")}
    files.setdefault(SHIPPED_DATA.name, SHIPPED_DATA)
    for name in NOT_SHIPPED:
        if name not in files:
            _note(_missing(name, folder, "skipped"))
    return [files[name] for name in sorted(files)]


def routing_file(name: str) -> Path:
    """The routing file ``name`` of :func:`routing_dir`; if missing, the shipped AlpacaEval file
    (with a note on stderr saying where to get ``name``)."""
    folder = routing_dir()
    path = folder / name
    if path.is_file():
        return path
    if name != SHIPPED_DATA.name:
        _note(_missing(name, folder, f"{SHIPPED_DATA.name} (shipped) is used instead"))
    return SHIPPED_DATA


def display_path(path: Path) -> str:
    """``path`` relative to the repository root, or ``$LLMOPT_ROUTING_DATA_DIR/NAME`` for a
    routing file outside the repo (so results hold no home directories)."""
    repo = BENCH_DIR.parent.resolve()
    resolved = path.resolve()
    if not resolved.is_relative_to(repo) and (
        value := os.environ.get(ROUTING_DATA_ENV, "").strip()
    ):
        folder = Path(value).expanduser().resolve()
        if resolved.is_relative_to(folder):
            return f"${ROUTING_DATA_ENV}/{resolved.relative_to(folder).as_posix()}"
    return os.path.relpath(resolved, repo)


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
    """Write ``doc`` to ``bench/results/<benchmark>.json``, or a quick run's (a smoke run,
    ``"quick": true``) to ``bench/results/quick/<benchmark>.json`` (not committed), so it
    never replaces the full run the docs quote; return the path.

    >>> import tempfile
    >>> from unittest import mock
    >>> with tempfile.TemporaryDirectory() as tmp, mock.patch(f"{__name__}.RESULTS_DIR", Path(tmp)):
    ...     full = write_document({"benchmark": "x", "quick": False})
    ...     quick = write_document({"benchmark": "x", "quick": True})
    ...     (full.relative_to(tmp).as_posix(), quick.relative_to(tmp).as_posix())
    ('x.json', 'quick/x.json')
    """
    path = result_path(doc["benchmark"], quick=bool(doc.get("quick")))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def result_path(name: str, *, quick: bool) -> Path:
    """Where :func:`write_document` writes benchmark ``name``'s document."""
    return (RESULTS_DIR / "quick" if quick else RESULTS_DIR) / f"{name}.json"


def wait_for_features(runtime: Any, timeout_s: float = 120.0) -> None:
    """Wait until ``runtime``'s online features are open or known unavailable (the first open
    of Feast's store takes seconds), at most ``timeout_s``."""
    import time  # noqa: PLC0415

    deadline = time.monotonic() + timeout_s
    while runtime.features_state not in ("open", "unavailable", "off"):
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)


@contextmanager
def serving_runtime(prefix: str, timeout_s: float = 120.0) -> Iterator[Any]:
    """A serving runtime in-process (embedded profile, the default settings) in a temporary
    home, once its online features are open (or known unavailable); closed afterwards."""
    import tempfile  # noqa: PLC0415

    from llmopt.settings import Settings  # noqa: PLC0415 - the runtime's imports take seconds
    from serving.runtime import ServingRuntime, settle_for_serving  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix=prefix) as home:
        runtime = ServingRuntime(Settings(home=Path(home)))
        try:
            wait_for_features(runtime, timeout_s)
            # As the service: else a full collection of the imported heap every few thousand
            # decisions doubles their CPU (and the figures swing by two between rounds).
            thresholds, switch = gc.get_threshold(), sys.getswitchinterval()
            settle_for_serving(runtime.settings)
            try:
                yield runtime
            finally:
                gc.unfreeze()
                gc.set_threshold(*thresholds)
                sys.setswitchinterval(switch)
        finally:
            runtime.close()
