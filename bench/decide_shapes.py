"""Single decisions sharing per-shape work: CPU per ``/decide``, in-process, shared vs alone.

Runs the serving runtime in-process (embedded profile: SQLite event log with its spool and
group commit, Feast's SQLite online store open, the recommended policy over the default catalog)
and decides one request at a time exactly as ``POST /decide`` does (``Router.decide`` inside the
event log's ``deferred_writes``, then the wait for its commit, then the answer's JSON), with a
feedback after every ``FEEDBACK_EVERY`` decisions (the soak's 20 feedback for 500 decisions per
second): each feedback is learned, which empties what decisions shared. Two modes, alternating
over rounds (the machine's speed drifts within minutes, so only same-round ratios mean much):

- ``alone``: every decision works out its eligibility, live terms and penalty coefficients
  (``Router.shapes_ttl_s = 0``, the path before session 19);
- ``shared``: decisions of one shape share them until something is learned or
  ``SHAPES_TTL_S`` passes (what the service does).

Reported: process CPU per decision (every thread's) per round and mode, the median per mode and
the median of the per-round ratios.

Run: ``python -m bench decide_shapes [--quick]`` -> ``bench/results/decide_shapes.json``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench._common import serving_runtime

NAME = "decide_shapes"
MODES = ("alone", "shared")
FEEDBACK_EVERY = 25


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """Both modes once per round, in alternating order; per-round CPU per decision."""
    from llmopt.schemas import Feedback, RequestContext  # noqa: PLC0415 - imports take seconds
    from serving.router import SHAPES_TTL_S  # noqa: PLC0415
    from serving.service import response_json  # noqa: PLC0415

    rounds, n = (2, 200) if quick else (10, 2_000)
    samples: dict[str, list[float]] = {m: [] for m in MODES}
    with serving_runtime("llmopt-bench-shapes-") as runtime:
        router = runtime.router
        prompts = [
            f"Question {i}: what is {i * 7} + {i * 3}? Explain each step." for i in range(1000)
        ]
        requests = [RequestContext(tenant="acme", prompt=p) for p in prompts]
        cursor = 0

        def decisions(count: int) -> None:
            nonlocal cursor
            for _ in range(count):
                cursor += 1
                with router.event_log.deferred_writes() as writes:
                    routed = router.decide(requests[cursor % len(requests)])
                writes.wait()
                response_json(routed, runtime.features_state)
                if cursor % FEEDBACK_EVERY == 0:
                    router.feedback(Feedback(decision_id=routed.decision.decision_id, quality=0.7))

        for mode in MODES:  # warm-up: caches, the first pass over the prompts
            router.shapes_ttl_s = SHAPES_TTL_S if mode == "shared" else 0.0
            decisions(n // 2)
        for k in range(rounds):
            for mode in MODES if k % 2 == 0 else tuple(reversed(MODES)):
                router.shapes_ttl_s = SHAPES_TTL_S if mode == "shared" else 0.0
                cpu = time.process_time()
                decisions(n)
                samples[mode].append((time.process_time() - cpu) / n * 1e6)
    ratios = [s / a for s, a in zip(samples["shared"], samples["alone"], strict=True)]
    results: list[dict[str, Any]] = [
        {
            "kind": "mode",
            "mode": mode,
            "decisions_per_round": n,
            "feedback_every": FEEDBACK_EVERY,
            "rounds": rounds,
            "cpu_us_per_decision_median": round(statistics.median(v), 1),
            "cpu_us_per_decision_each": [round(x, 1) for x in v],
        }
        for mode, v in samples.items()
    ]
    results.append(
        {
            "kind": "ratio",
            "shared_over_alone_per_round_median": round(statistics.median(ratios), 3),
            "per_round": [round(r, 3) for r in ratios],
        }
    )
    return results


def summary(results: list[dict[str, Any]]) -> list[str]:
    """One line per mode, and the ratio."""
    lines = []
    for r in results:
        if r["kind"] == "mode":
            lines.append(
                f"{r['mode']:6} {r['cpu_us_per_decision_median']} us CPU per decision (median of "
                f"{r['rounds']} rounds of {r['decisions_per_round']:,}, a feedback every "
                f"{r['feedback_every']}: {r['cpu_us_per_decision_each']})"
            )
        else:
            lines.append(
                f"shared / alone, per round: median {r['shared_over_alone_per_round_median']} "
                f"({r['per_round']})"
            )
    return lines
