"""The group-commit writer at low load: one decision per transaction, CPU per decision.

At low load every decision is a group of its own, so what a transaction costs besides its row
is paid by every decision. This benchmark logs decisions one after the other through
``EventLog.record_decision`` with group commit on (a SQLite file, realistic rows: a prompt's
context, 30 features, 11 scores), each waiting for its commit as ``/decide`` does, and reports
the process CPU per decision in two modes, alternating over rounds (the machine's speed drifts):

- ``held``: the writer keeps one connection between its transactions (what the event log does
  since session 14, ``EventLog._write_group``);
- ``pooled``: a connection checked out of SQLAlchemy's pool for each transaction and rolled
  back when it goes back (the earlier behaviour).

Run: ``python -m bench event_log_writer [--quick]`` -> ``bench/results/event_log_writer.json``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

from bench._common import ratio
from llmopt.event_log import EventLog
from llmopt.schemas import Decision, RequestContext

NAME = "event_log_writer"
MODES = ("held", "pooled")


def _cpu_us_per_decision(hold: bool, n: int) -> float:
    with tempfile.TemporaryDirectory(prefix="llmopt-bench-writer-") as tmp:
        log = EventLog(f"sqlite:///{tmp}/events.db", group_commit=True)
        log._hold_writer_conn = hold  # the mode measured (see the module docstring)
        ctx = RequestContext(tenant="acme", prompt="What is 2 + 2? " * 5)
        features = {f"f{i}": 0.1 * i for i in range(30)}
        scores = {f"m{i}": 0.1 for i in range(11)}

        def one() -> None:
            d = Decision(model="gpt-4o-mini", propensity=0.5, policy_name="bench", scores=scores)
            log.record_decision(d, ctx, features=features)  # waits for its commit

        for _ in range(200):  # warm-up: the connection, the statement cache
            one()
        cpu = time.process_time()
        for _ in range(n):
            one()
        cpu = time.process_time() - cpu
        assert log.group is not None and log.group.items == log.group.groups  # one per group
        log.close()
    return cpu / n * 1e6


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """Both modes, alternating, ``rounds`` times; the median of each and their ratio."""
    rounds, n = (2, 500) if quick else (6, 2000)
    samples: dict[str, list[float]] = {m: [] for m in MODES}
    for k in range(rounds):
        for mode in MODES if k % 2 == 0 else tuple(reversed(MODES)):
            samples[mode].append(_cpu_us_per_decision(mode == "held", n))
    results: list[dict[str, Any]] = [
        {
            "kind": "mode",
            "mode": mode,
            "decisions_per_round": n,
            "rounds": rounds,
            "cpu_us_per_decision_median": round(statistics.median(v), 1),
            "cpu_us_per_decision_each": [round(x, 1) for x in v],
        }
        for mode, v in samples.items()
    ]
    results.append(
        {
            "kind": "ratio",
            "held_over_pooled": ratio(
                statistics.median(samples["held"]), statistics.median(samples["pooled"])
            ),
        }
    )
    return results


def summary(results: list[dict[str, Any]]) -> list[str]:
    """One line per mode, and the ratio."""
    lines = []
    for r in results:
        if r["kind"] == "mode":
            lines.append(
                f"{r['mode']:7} one decision per transaction: {r['cpu_us_per_decision_median']} "
                f"us CPU per decision (median of {r['rounds']} rounds of "
                f"{r['decisions_per_round']:,}: {r['cpu_us_per_decision_each']})"
            )
        else:
            lines.append(f"held / pooled: {r['held_over_pooled']}")
    return lines
