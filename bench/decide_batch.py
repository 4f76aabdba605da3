"""``/decide_batch``'s own work, in-process: CPU per decision of a batch, three ways, alternating.

Runs the serving runtime in-process (embedded profile: SQLite event log with its spool and
group commit, Feast's SQLite online store open, the recommended policy over the default catalog)
and decides batches of 100 distinct prompts exactly as ``POST /decide_batch`` does (every request
through ``Router.decide`` inside the event log's ``deferred_writes``, then the wait for the commit
and the answer's JSON), without HTTP. Three modes, alternating over rounds (the machine's speed
drifts by a factor of two within minutes, so only same-round ratios mean much):

- ``one_by_one``: the rows submitted to the group-commit writer as each request is decided and
  every request worked out alone (the path before session 19);
- ``held``: the batch's rows held and written in one transaction at its end
  (``deferred_writes(hold=True)``);
- ``held_shared``: held, and the requests of one shape sharing their eligibility, live terms and
  penalty coefficients (``Router.decide(memo=...)``);
- ``held_shared_ahead``: also the later requests of a kind drawn by the policy together with the
  first (``BatchPlan``, ``pull_many``): what the service does.

Reported: process CPU per decision (every thread: the writer's SQLite work included) per round
and mode, the median per mode, and the median of the per-round ratios to ``one_by_one``.

Run: ``python -m bench decide_batch [--quick]`` -> ``bench/results/decide_batch.json``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench._common import ratio, serving_runtime

NAME = "decide_batch"
MODES = ("one_by_one", "held", "held_shared", "held_shared_ahead")
BATCH = 100


def _prompts(n: int) -> list[str]:
    return [
        f"Question {i}: what is {i * 7} + {i * 3}? Explain each step and check the answer."
        for i in range(n)
    ]


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """Every mode once per round, in a rotating order; per-round CPU per decision."""
    from llmopt.schemas import RequestContext  # noqa: PLC0415 - the runtime imports take seconds
    from serving.router import BATCH as PLAN  # noqa: PLC0415
    from serving.router import BatchPlan  # noqa: PLC0415
    from serving.service import batch_response_json  # noqa: PLC0415

    rounds, batches = (2, 3) if quick else (8, 30)
    samples: dict[str, list[float]] = {m: [] for m in MODES}
    with serving_runtime("llmopt-bench-batch-") as runtime:
        router = runtime.router
        requests = [RequestContext(tenant="acme", prompt=p) for p in _prompts(2_000)]
        cursor = 0

        def batch(mode: str) -> None:
            nonlocal cursor
            start = cursor % len(requests)
            cursor += BATCH
            chunk = requests[start:][:BATCH]
            memo: dict[Any, Any] | None = None
            if mode == "held_shared":
                memo = {}
            elif mode == "held_shared_ahead":
                memo = {PLAN: BatchPlan(chunk)}
            with router.event_log.deferred_writes(hold=mode != "one_by_one") as writes:
                routed = [router.decide(r, memo=memo) for r in chunk]
            writes.wait()
            batch_response_json(routed, [], runtime.features_state)

        for mode in MODES:  # warm-up: caches, the first pass over the prompts
            for _ in range(3):
                batch(mode)
        for k in range(rounds):
            order = MODES[k % len(MODES) :] + MODES[: k % len(MODES)]
            for mode in order:
                cpu = time.process_time()
                for _ in range(batches):
                    batch(mode)
                cpu = time.process_time() - cpu
                samples[mode].append(cpu / (batches * BATCH) * 1e6)
    base = samples["one_by_one"]
    results: list[dict[str, Any]] = [
        {
            "kind": "mode",
            "mode": mode,
            "batch": BATCH,
            "batches_per_round": batches,
            "rounds": rounds,
            "cpu_us_per_decision_median": round(statistics.median(v), 1),
            "cpu_us_per_decision_each": [round(x, 1) for x in v],
            "ratio_to_one_by_one_median": (
                None
                if mode == "one_by_one"
                else round(statistics.median(x / b for x, b in zip(v, base, strict=True)), 3)
            ),
        }
        for mode, v in samples.items()
    ]
    results.append(
        {
            "kind": "ratio",
            "held_shared_over_one_by_one": ratio(
                statistics.median(samples["held_shared"]), statistics.median(base)
            ),
            "held_shared_ahead_over_one_by_one": ratio(
                statistics.median(samples["held_shared_ahead"]), statistics.median(base)
            ),
        }
    )
    return results


def summary(results: list[dict[str, Any]]) -> list[str]:
    """One line per mode, and the overall ratio."""
    lines = []
    for r in results:
        if r["kind"] == "mode":
            per_round = r["ratio_to_one_by_one_median"]
            lines.append(
                f"{r['mode']:11} {r['cpu_us_per_decision_median']} us CPU per decision (median of "
                f"{r['rounds']} rounds: {r['cpu_us_per_decision_each']})"
                + (f"; per-round ratio to one_by_one, median {per_round}" if per_round else "")
            )
        else:
            lines.append(
                f"held_shared / one_by_one (medians): {r['held_shared_over_one_by_one']}; "
                f"held_shared_ahead / one_by_one: {r['held_shared_ahead_over_one_by_one']}"
            )
    return lines
