"""Where a decision's CPU goes: py-spy flame summaries of the decide path, before/after.

Runs the serving runtime in-process (embedded profile: SQLite event log with its spool, Feast's
SQLite online store open, the recommended policy over the default catalog) under ``py-spy
record``, twice in the same run: one transaction per decision (``LLMOPT_SERVING_GROUP_COMMIT=
false``, the path before group commit) and group commit. Each run drives ``--concurrency``
asyncio tasks that decide exactly as ``POST /decide`` does (the router inside
``deferred_writes``, then ``await wait_async()``), without HTTP, so the profile shows the
decision's own work. Reported per mode: process CPU per decision, decisions per second, the
mean group size, and the share of the sampled CPU by part (the flame summary).

Run: ``python -m bench.decide_profile [--quick] [--database-url URL]`` (needs ``py-spy``, a dev
dependency, and the right to trace a child process). Results:
``bench/results/decide_profile.json`` (``decide_profile_postgresql.json`` with a database URL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import _common

NAME = "decide_profile"
BIN = Path(sys.executable).parent
MEASURED = "_measured"
"""The worker function whose samples are summarised (not start-up or warm-up)."""

RESULT = "decide_profile result: "
WARM = 200
"""Distinct prompts, all decided once before the measurement."""
IDLE_LEAVES = (
    "GroupCommit._run",
    "select (",
    "EpollSelector.select",
    "Event.wait",
    "Condition.wait",
)
"""Leaf frames that are a thread waiting (the writer's queue, the event loop's poll)."""

PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # first match wins, in this order (a frame name contained in the stack)
    (
        "event-log write (insert, JSON, commit)",
        ("_flush_writes", "insert_decision", "GroupCommit._run"),
    ),
    ("decision row (context dump, prompt hash)", ("decision_row",)),
    ("request features (embedding, markers)", ("request_features",)),
    ("policy pull", (".pull",)),
    ("penalties, eligibility, cost", ("penalties", "_eligible", "CostModel.predict")),
    ("tuned parameters", ("generation_parameters",)),
    ("response (to_response, JSON)", ("to_response", "model_dump_json")),
    ("waiting for the commit (event loop)", ("wait_async",)),
)


def _worker(n: int, concurrency: int) -> dict[str, Any]:
    """The measured process: decide ``n`` times from ``concurrency`` tasks; its figures."""
    from llmopt.schemas import RequestContext  # noqa: PLC0415
    from llmopt.settings import Settings  # noqa: PLC0415
    from serving.runtime import ServingRuntime  # noqa: PLC0415
    from serving.service import to_response  # noqa: PLC0415

    runtime = ServingRuntime(Settings())
    _common.wait_for_features(runtime)
    prompts = [f"What is {i} + {i}? Explain each step." for i in range(WARM)]
    # cycled, so the measured decisions find every word in the embedder's cache, as in serving
    ctxs = [RequestContext(tenant="acme", prompt=prompts[i % WARM]) for i in range(n + WARM)]
    log = runtime.event_log

    async def one(ctx: RequestContext) -> None:
        with log.deferred_writes() as writes:
            routed = runtime.router.decide(ctx)
        await writes.wait_async()
        to_response(routed, runtime.features_state).model_dump_json()

    async def drive(batch: list[RequestContext]) -> None:
        queue = list(reversed(batch))

        async def task() -> None:
            while queue:
                await one(queue.pop())

        await asyncio.gather(*(task() for _ in range(concurrency)))

    asyncio.run(drive(ctxs[:WARM]))  # warm-up: word cache, first cells
    groups0 = (log.group.groups, log.group.items) if log.group is not None else (0, 0)
    return _measured(runtime, ctxs[WARM:], drive, groups0)


def _measured(
    runtime: Any, ctxs: list[Any], drive: Any, groups0: tuple[int, int]
) -> dict[str, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(drive(ctxs))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    group = runtime.event_log.group
    groups = (group.groups - groups0[0], group.items - groups0[1]) if group is not None else None
    runtime.close()
    return {
        "decisions": len(ctxs),
        "cpu_ms_per_decision": round(cpu / len(ctxs) * 1000, 4),
        "decisions_per_s": round(len(ctxs) / wall, 1),
        "mean_group": round(groups[1] / groups[0], 2) if groups and groups[0] else None,
    }


def summarize_flame(path: Path) -> dict[str, float]:
    """Share of the measured samples by part (py-spy's raw format: ``frame;frame;... count``)."""
    parts: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or MEASURED not in stack and "GroupCommit._run" not in stack:
            continue
        leaf = stack.rsplit(";", 1)[-1]
        if leaf.startswith(IDLE_LEAVES):  # blocked in C (py-spy cannot tell it is idle)
            continue
        n = int(count)
        total += n
        for label, needles in PARTS:
            if any(needle in stack for needle in needles):
                parts[label] += n
                break
        else:
            parts["other (asyncio, router glue, ledger, notes)"] += n
    return {k: round(v / total, 3) for k, v in parts.most_common()} if total else {}


def run(*, quick: bool = False, database_url: str | None = None) -> list[dict[str, Any]]:
    """Profile both modes (on ``database_url``'s event log, else the embedded SQLite one);
    result rows."""
    n = 1500 if quick else 6000
    concurrency = 16
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llmopt-bench-profile-") as tmp:
        for mode, flag in (("one_transaction", "false"), ("group_commit", "true")):
            flame = Path(tmp) / f"{mode}.txt"
            env = {
                **os.environ,
                "LLMOPT_HOME": str(Path(tmp) / mode),
                "LLMOPT_SERVING_GROUP_COMMIT": flag,
                "LLMOPT_SERVING_POLL_S": "0",
            }
            env.pop("LLMOPT_DATABASE_URL", None)
            if database_url:
                env["LLMOPT_DATABASE_URL"] = database_url
            out = subprocess.run(
                [str(BIN / "py-spy"), "record", "-r", "400", "-f", "raw", "-o", str(flame)]
                + ["--", sys.executable, "-m", "bench.decide_profile", "--worker"]
                + ["--n", str(n), "--concurrency", str(concurrency)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            line = next(x for x in out.splitlines() if x.startswith(RESULT))
            figures = json.loads(line[len(RESULT) :])
            results.append(
                {
                    "kind": "mode",
                    "mode": mode,
                    "event_log": "postgresql" if database_url else "sqlite",
                    "concurrency": concurrency,
                    **figures,
                    "flame": summarize_flame(flame),
                }
            )
    by = {r["mode"]: r for r in results}
    results.append(
        {
            "kind": "ratio",
            "cpu_per_decision_group_vs_one": _common.ratio(
                by["group_commit"]["cpu_ms_per_decision"],
                by["one_transaction"]["cpu_ms_per_decision"],
            ),
            "throughput_group_vs_one": _common.ratio(
                by["group_commit"]["decisions_per_s"], by["one_transaction"]["decisions_per_s"]
            ),
        }
    )
    return results


def summary(results: list[dict[str, Any]]) -> list[str]:
    """One block per mode."""
    lines = []
    for r in results:
        if r["kind"] == "mode":
            lines.append(
                f"{r['mode']}: {r['cpu_ms_per_decision']} ms CPU per decision, "
                f"{r['decisions_per_s']}/s at {r['concurrency']} concurrent, mean group "
                f"{r['mean_group']}"
            )
            lines += [f"    {share:6.1%}  {part}" for part, share in r["flame"].items()]
        else:
            lines.append(
                f"group commit / one transaction: CPU per decision "
                f"{r['cpu_per_decision_group_vs_one']}, throughput {r['throughput_group_vs_one']}"
            )
    return lines


def main() -> int:
    """``python -m bench.decide_profile [--quick]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.decide_profile")
    parser.add_argument("--quick", action="store_true", help="1500 decisions instead of 6000")
    parser.add_argument(
        "--database-url",
        help="event log on this database (e.g. PostgreSQL) instead of the embedded SQLite file; "
        "results then go to decide_profile_postgresql.json",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=6000, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(RESULT + json.dumps(_worker(args.n, args.concurrency)), flush=True)
        return 0
    results = run(quick=args.quick, database_url=args.database_url)
    name = f"{NAME}_postgresql" if args.database_url else NAME
    doc = _common.document(name, results, quick=args.quick)
    path = _common.write_document(doc)
    print(f"== {name} -> {_common.display_path(path)}")
    for line in summary(results):
        print("  ", line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
