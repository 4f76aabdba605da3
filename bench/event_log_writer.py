"""The group-commit writer: CPU per decision logged, one row per transaction and 100.

At low load every decision is a group of its own, so what a transaction costs besides its row
is paid by every decision; a ``/decide_batch`` of 100 is one transaction of 100 rows. This
benchmark logs decisions through ``EventLog.record_decision`` with group commit on (a SQLite
file, realistic rows: a prompt's context, 30 features, 11 scores), waiting for the commit as
``/decide`` does (one row per transaction) or as ``/decide_batch`` does (100 rows held, then
written in one), and reports the process CPU per decision in three modes, alternating over
rounds (the machine's speed drifts):

- ``held``: the writer keeps one connection between its transactions (what the event log does
  since session 14, ``EventLog._write_group``) and inserts the rows compiled once, through the
  columns' bind processors, in one DBAPI ``executemany`` (since session 21, ``_RowInsert``);
- ``held_sqlalchemy_insert``: the same connection, the rows through
  ``conn.execute(decisions.insert(), rows)`` (sessions 14-20): SQLAlchemy's per-row parameter
  processing;
- ``pooled``: a connection checked out of SQLAlchemy's pool for each transaction and rolled
  back when it goes back, and SQLAlchemy's insert (before session 14).

Run: ``python -m bench event_log_writer [--quick]`` -> ``bench/results/event_log_writer.json``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from bench._common import ratio
from llmopt.event_log import EventLog, decisions
from llmopt.schemas import Decision, RequestContext

NAME = "event_log_writer"
MODES = ("held", "held_sqlalchemy_insert", "pooled")
GROUPS = (1, 100)


class _SqlAlchemyInsert:
    """The writer's insert before session 21: ``conn.execute(decisions.insert(), rows)``."""

    @staticmethod
    def execute(conn: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        conn.execute(decisions.insert(), list(rows))


def _cpu_us_per_decision(mode: str, n: int, group: int) -> tuple[float, float]:
    """CPU per decision (us) and the mean rows per transaction."""
    with tempfile.TemporaryDirectory(prefix="llmopt-bench-writer-") as tmp:
        log = EventLog(f"sqlite:///{tmp}/events.db", group_commit=True)
        log._hold_writer_conn = mode != "pooled"  # the mode measured (the module docstring)
        if mode != "held":
            log._decision_rows = _SqlAlchemyInsert()  # type: ignore[assignment]
        ctx = RequestContext(tenant="acme", prompt="What is 2 + 2? " * 5)
        features = {f"f{i}": 0.1 * i for i in range(30)}
        scores = {f"m{i}": 0.1 for i in range(11)}

        def some() -> None:
            with log.deferred_writes(hold=True) as writes:
                for _ in range(group):
                    d = Decision(
                        model="gpt-4o-mini", propensity=0.5, policy_name="bench", scores=scores
                    )
                    log.record_decision(d, ctx, features=features)
            writes.wait()  # one transaction of ``group`` rows

        for _ in range(max(1, 200 // group)):  # warm-up: the connection, the statement cache
            some()
        assert log.group is not None
        before = log.group.groups
        cpu = time.process_time()
        for _ in range(n // group):
            some()
        cpu = time.process_time() - cpu
        transactions = log.group.groups - before  # a held group is one queue entry
        log.close()  # (GroupCommit.submit_many): never split between two transactions
    assert transactions >= n // group
    return cpu / n * 1e6, n / transactions


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """Every mode and group size, alternating, ``rounds`` times; medians and ratios."""
    rounds, n = (2, 500) if quick else (6, 2000)
    samples: dict[tuple[str, int], list[float]] = {(m, g): [] for g in GROUPS for m in MODES}
    sizes: dict[tuple[str, int], list[float]] = {key: [] for key in samples}
    for k in range(rounds):
        for group in GROUPS:
            for mode in MODES if k % 2 == 0 else tuple(reversed(MODES)):
                cpu, size = _cpu_us_per_decision(mode, n, group)
                samples[mode, group].append(cpu)
                sizes[mode, group].append(size)
    results: list[dict[str, Any]] = [
        {
            "kind": "mode",
            "mode": mode,
            "rows_per_transaction": group,
            "decisions_per_round": n,
            "rounds": rounds,
            "cpu_us_per_decision_median": round(statistics.median(v), 1),
            "cpu_us_per_decision_each": [round(x, 1) for x in v],
            "rows_per_transaction_mean": round(statistics.mean(sizes[mode, group]), 1),
        }
        for (mode, group), v in samples.items()
    ]

    def median(mode: str, group: int) -> float:
        return statistics.median(samples[mode, group])

    def paired(mode: str, other: str, group: int) -> float:
        """The median of the per-round ratios (each round's pair ran minutes apart at most)."""
        each = zip(samples[mode, group], samples[other, group], strict=True)
        return round(statistics.median(a / b for a, b in each), 3)

    for group in GROUPS:
        results.append(
            {
                "kind": "ratio",
                "rows_per_transaction": group,
                "held_over_pooled": ratio(median("held", group), median("pooled", group)),
                "insert_over_sqlalchemy_insert_paired": paired(
                    "held", "held_sqlalchemy_insert", group
                ),
            }
        )
    return results


def summary(results: list[dict[str, Any]]) -> list[str]:
    """One line per mode and group size, and the ratios."""
    lines = []
    for r in results:
        if r["kind"] == "mode":
            lines.append(
                f"{r['mode']:22} {r['rows_per_transaction']:>3} row(s) per transaction: "
                f"{r['cpu_us_per_decision_median']} us CPU per decision (median of "
                f"{r['rounds']} rounds of {r['decisions_per_round']:,}: "
                f"{r['cpu_us_per_decision_each']})"
            )
        else:
            lines.append(
                f"{r['rows_per_transaction']:>3} row(s): held / pooled {r['held_over_pooled']}; "
                f"insert / SQLAlchemy's (paired) {r['insert_over_sqlalchemy_insert_paired']}"
            )
    return lines
