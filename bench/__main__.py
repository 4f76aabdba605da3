"""Run the benchmarks: ``python -m bench [--quick] [NAME ...]`` (NAME: see ``--help``).

Writes ``bench/results/<benchmark>.json`` for each benchmark run and prints a short summary.
``--quick`` runs fewer iterations (a smoke run; its files say ``"quick": true`` and go to
``bench/results/quick/``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from bench import (
    _common,
    cascade,
    decide_batch,
    decide_shapes,
    decision_ids,
    event_log_writer,
    feature_store,
    features,
    feedback_tail,
    pacing,
    peer_speed,
    policies,
    protocol,
    replay,
    routing,
    training,
    tuning,
    upstream_client,
)

BENCHMARKS: dict[str, ModuleType] = {
    m.NAME: m
    for m in (
        features,
        policies,
        replay,
        routing,
        protocol,
        peer_speed,
        feature_store,
        training,
        pacing,
        cascade,
        tuning,
        upstream_client,
        decision_ids,
        event_log_writer,
        feedback_tail,
        decide_batch,
        decide_shapes,
    )
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected benchmarks (all by default); return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    for name in args.names or list(BENCHMARKS):
        module = BENCHMARKS[name]
        run: Callable[..., list[dict[str, Any]]] = module.run
        started = time.perf_counter()
        results = run(quick=args.quick)
        doc = _common.document(name, results, quick=args.quick)
        path = _common.write_document(doc)
        took = time.perf_counter() - started
        print(f"== {name} ({took:.1f} s) -> {_common.display_path(path)}")
        for line in module.summary(results):
            print(f"   {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
