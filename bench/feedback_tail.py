"""What feedback traffic costs the decisions' tail, in-process (no HTTP, no load generator).

Each run is a fresh process with the serving runtime of the embedded profile (SQLite event log
with group commit, Feast's SQLite online store open, the recommended policy, its background
threads): one thread decides at 500/s on a fixed schedule, each decision waiting for its commit
as ``/decide`` does, its latency measured from its due time (a stall counts in every decision
it delays); a second thread makes 20 decisions/s and posts a feedback for each, as a client
that runs the model first would. Modes, alternating over rounds (the machine's speed drifts):

- ``no_feedback``: the second thread decides only (the same decisions, no feedback);
- ``push_thread``: feedback, the online features pushed by a thread of the process
  (``LLMOPT_SERVING_PUSH_PROCESS=false``) and parameter tuning's TPE work on its thread
  (``LLMOPT_SERVING_TUNING_PROCESS=false``): before session 17;
- ``push_process``: feedback, pushed by the child process (:mod:`serving.feature_push`), TPE
  still on its thread: before session 18;
- ``tuning_process``: feedback, both in child processes (:mod:`serving.tuning_process`): the
  defaults.

Reported per mode: the decisions' p50 / p99 / p99.9 (median over rounds), and the p99 ratios.
Run: ``python -m bench feedback_tail [--quick]`` -> ``bench/results/feedback_tail.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench._common import ratio, wait_for_features

NAME = "feedback_tail"
MODES = ("no_feedback", "push_thread", "push_process", "tuning_process")
RATE = 500.0
FEEDBACK_RATE = 20.0
RESULT = "feedback_tail result: "
REPO = Path(__file__).resolve().parents[1]


def _runtime(idle_s: float) -> Any:
    """A serving runtime with its features open and its start-up done, the collector set up
    as the service sets it after its start."""
    import time  # noqa: PLC0415

    from llmopt.settings import Settings  # noqa: PLC0415
    from serving.runtime import ServingRuntime, settle_for_serving  # noqa: PLC0415

    rt = ServingRuntime(Settings())
    wait_for_features(rt)
    time.sleep(idle_s)  # start-up threads (Feast's open, the first reads) done
    settle_for_serving(rt.settings)  # as the service
    return rt


def _quantiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(1000 * x for x in seconds)

    def q(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p * len(ms)))], 3)

    return {"p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999), "max_ms": round(ms[-1], 3)}


def _measure(mode: str, seconds: float, idle_s: float) -> dict[str, Any]:
    """The child's side: one run of ``mode``; its figures."""
    import random  # noqa: PLC0415
    import threading  # noqa: PLC0415
    import time  # noqa: PLC0415

    from llmopt.schemas import Feedback, RequestContext  # noqa: PLC0415

    rt = _runtime(idle_s)
    router, log = rt.router, rt.event_log

    def decide(i: int) -> Any:
        with log.deferred_writes() as writes:
            routed = router.decide(RequestContext(tenant="acme", prompt=f"What is {i % 300} + 1?"))
        writes.wait()
        return routed

    stop = threading.Event()
    feedback = 0

    def feeder() -> None:
        nonlocal feedback
        start, j = time.perf_counter(), 0
        while not stop.is_set():
            wait = start + j / FEEDBACK_RATE - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            routed = decide(100_000 + j)
            if mode != "no_feedback":
                fb = Feedback(decision_id=routed.decision.decision_id, quality=random.random())
                router.feedback(fb)
                feedback += 1
            j += 1

    lat: list[float] = []
    t = threading.Thread(target=feeder, daemon=True)
    t.start()
    start, i = time.perf_counter(), 0
    while i / RATE < seconds:
        due = start + i / RATE
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        decide(i)
        lat.append(time.perf_counter() - due)
        i += 1
    stop.set()
    t.join()
    pushed = router.features.pushed_events if router.features is not None else 0
    rt.close()
    return {
        "mode": mode,
        "decisions": len(lat),
        "feedback": feedback,
        "pushed_events": pushed,
        **_quantiles(lat),
    }


def _run_child(mode: str, seconds: float, idle_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="llmopt-bench-fbtail-") as home:
        env = {
            **os.environ,
            "LLMOPT_HOME": home,
            "LLMOPT_SERVING_RATE_LIMIT_PER_S": "0",
            "LLMOPT_SERVING_FEATURES": "embedded",
            "LLMOPT_SERVING_PUSH_PROCESS": "false" if mode == "push_thread" else "true",
            "LLMOPT_SERVING_TUNING_PROCESS": "true" if mode == "tuning_process" else "false",
        }
        for key in ("LLMOPT_DATABASE_URL", "LLMOPT_CLIENT_KEYS", "LLMOPT_ADMIN_KEYS"):
            env.pop(key, None)
        code = (
            "import json; from bench.feedback_tail import _measure, RESULT; "
            f"print(RESULT + json.dumps(_measure({mode!r}, {seconds}, {idle_s})))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        ).stdout
    line = next(x for x in out.splitlines() if x.startswith(RESULT))
    result: dict[str, Any] = json.loads(line[len(RESULT) :])
    return result


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """Every mode, alternating, ``rounds`` times; the medians and p99 ratios."""
    rounds, seconds, idle_s = (1, 6.0, 5.0) if quick else (3, 20.0, 15.0)
    runs: list[dict[str, Any]] = []
    for k in range(rounds):
        for mode in MODES if k % 2 == 0 else tuple(reversed(MODES)):
            row = _run_child(mode, seconds, idle_s)
            print(f"  round {k + 1} {mode}: p99 {row['p99_ms']} ms", flush=True)
            runs.append({"round": k + 1, **row})
    medians: dict[str, dict[str, float]] = {}
    for mode in MODES:
        rows = [r for r in runs if r["mode"] == mode]
        medians[mode] = {
            key: statistics.median(r[key] for r in rows) for key in ("p50_ms", "p99_ms", "p999_ms")
        }
    return [
        *runs,
        {
            "kind": "summary",
            "rate": RATE,
            "feedback_rate": FEEDBACK_RATE,
            "seconds": seconds,
            "rounds": rounds,
            "median": medians,
            "p99_push_process_vs_thread": ratio(
                medians["push_process"]["p99_ms"], medians["push_thread"]["p99_ms"]
            ),
            "p99_tuning_process_vs_push_process": ratio(
                medians["tuning_process"]["p99_ms"], medians["push_process"]["p99_ms"]
            ),
            "p99_tuning_process_vs_no_feedback": ratio(
                medians["tuning_process"]["p99_ms"], medians["no_feedback"]["p99_ms"]
            ),
        },
    ]


def summary(results: list[dict[str, Any]]) -> list[str]:
    s = next(r for r in results if r.get("kind") == "summary")
    m = s["median"]
    return [
        f"decisions at {s['rate']:.0f}/s + {s['feedback_rate']:.0f} feedback/s, in-process, "
        f"median of {s['rounds']} round(s): p99 "
        + ", ".join(f"{mode} {m[mode]['p99_ms']} ms" for mode in MODES)
        + f"; push process / thread x{s['p99_push_process_vs_thread']}; tuning process / "
        f"thread x{s['p99_tuning_process_vs_push_process']}"
    ]
