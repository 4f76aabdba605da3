"""The OpenAI-compatible gateway under load (issue 17): added latency, time to first byte,
fallback from a failing upstream, and feedback of which none may be lost.

Real processes on loopback, as a deployment has them:

- the upstream, ``llmopt upstream-replay --speed 20`` (the shipped AlpacaEval outcomes at the
  catalog's latency / 20: a 16-token gpt-4o-mini answer takes ~24 ms);
- the decision service with its gateway, ``llmopt serve`` (BentoML, 1 worker, the embedded
  profile: SQLite event log and online store in a temporary ``LLMOPT_HOME``), started twice:

  * **A**, every catalog model forwarded to the upstream *as gpt-4o-mini*
    (``LLMOPT_UPSTREAMS_FILE``: ``default: {base_url, model: gpt-4o-mini}``), so that a call
    costs the upstream the same work whichever model ``auto`` chooses;
  * **B**, ``llmopt serve --upstream URL``: each catalog model answered by its price-rank
    stand-in, with its own latency and recorded quality (fallback and feedback).

Measured:

1. **Overhead** (A): open loop (:mod:`bench.loadgen`, in its own process) at 200 requests/s
   (the target's rate) and at 50 (below saturation), non-streamed, in 5-second slices rotating
   over: direct to the upstream, through the gateway with the model id (bypass: no choice,
   still logged and measured) and with ``model: "auto"`` (the router's choice over the 12
   served models); 30 s of each. Everything the gateway does per request is in: the decision
   and its event-log write, the forwarded call, and the call's measurements written onto the
   decision before the answer. Added latency = the gateway's percentile minus the direct one
   (requests are not paired). Each slice also reports the CPU time the gateway's and the
   upstream's process trees spent per request, which other load on the machine does not
   change.
2. **Streaming** (A): time to the first SSE ``data:`` line, direct vs bypass vs auto,
   interleaved request by request (:func:`interleaved`), open loop at 30 requests/s; each
   gateway answer's feedback is posted as soon as its stream ends, as a client would.
3. **Fallback** (B): ``model: "auto"`` at 25 requests/s over the file's prompts, each answer's
   quality posted to ``/feedback``; after 60 s of learning and a 20 s baseline, the model auto
   chose most gets a 20% 500 fault (the upstream's ``/admin/faults``); 60 s more. Reported:
   client-visible failures, that model's share of first attempts per 2-second window, and the
   time until it falls below half its baseline share.
4. **Feedback** (A's streams, B): the event log (SQLite under the temporary home) must hold, for
   every answered decision, exactly one feedback with the quality posted; for every failed
   attempt, the gateway's own error feedback; nothing else. The quality posted is the file's
   outcome of the model that answered (computed here: the gateway does not pass the upstream's
   ``x-replay-quality`` header on).

The load generator, the gateway and the upstream share the machine's cores (and whatever else
runs on it: the CPU used by other processes during each phase is reported).
Run: ``make bench-gateway`` or ``python -m bench.gateway [--quick]``; results in
``bench/results/gateway.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import numpy as np
import psutil  # type: ignore[import-untyped]

from bench import _common, loadgen
from llmopt.app.processes import free_port, stop_group

NAME = "gateway"
REPO = Path(__file__).resolve().parents[1]
SPEED = 20.0
"""The upstream's time runs this much faster than the catalog says."""
MODEL = "gpt-4o-mini"
"""The model of the overhead and streaming phases (service A answers every model as it)."""
PROMPT = "What is 2 + 2?"
MAX_TOKENS = 16
RATE = 200.0
STREAM_RATE = 30.0
FALLBACK_RATE = 25.0
IN_FLIGHT = 64
"""Requests the bench's own httpx client has in flight at most: more wait (their latency still
counts from their due time) instead of queueing in httpx's pool, whose bookkeeping grows with
the queue (a client spinning there stops sending)."""
DRAIN_S = 60.0
"""How long requests still in flight after the last send may take before they count as failed."""
FAULT_RATE = 0.2
WINDOW_S = 2.0
FALL_WITHIN_S = 10.0
TARGET_ADDED_P99_MS = 5.0
TARGET_TTFB_MS = 2.0
LOW_RATE = 50.0
"""A second rate of the overhead phase, below where the gateway saturates on a shared machine."""
MODES = ("direct", "bypass", "auto")


# -- pure helpers (tests/unit/bench/test_gateway_bench.py) ------------------------------------
def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """Count, p50, p90 and p99 (ms, numpy's linear interpolation) of ``values``.

    >>> percentiles([1.0, 2.0, 3.0])["p50_ms"]
    2.0
    """
    a = np.asarray(values, dtype=float)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(a, q)), 3) if a.size else None

    return {"n": int(a.size), "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99)}


def added(subject: Mapping[str, Any], direct: Mapping[str, Any]) -> dict[str, float | None]:
    """Added latency at p50 and p99 (subject's percentile minus the direct one) and the ratios.

    >>> added({"p50_ms": 12.0, "p99_ms": 20.0}, {"p50_ms": 10.0, "p99_ms": 15.0})
    {'added_p50_ms': 2.0, 'added_p99_ms': 5.0, 'ratio_p50': 1.2, 'ratio_p99': 1.333}
    """
    out: dict[str, float | None] = {}
    pairs = {q: (subject.get(f"{q}_ms"), direct.get(f"{q}_ms")) for q in ("p50", "p99")}
    for q, (s, d) in pairs.items():
        out[f"added_{q}_ms"] = round(s - d, 3) if s is not None and d is not None else None
    for q, (s, d) in pairs.items():
        out[f"ratio_{q}"] = _common.ratio(s, d) if s is not None and d is not None else None
    return out


def window_shares(
    times: Sequence[float], hits: Sequence[bool], *, start: float, end: float, width: float
) -> list[dict[str, float | int | None]]:
    """Share of ``hits`` among the events of each window ``[start + k*width, start + (k+1)*width)``
    up to ``end`` (an event at ``times[i]``; a window without events has share None).

    >>> [w["share"] for w in window_shares([0.5, 1.5, 2.5, 3.5], [True, False, False, False],
    ...                                    start=0, end=4, width=2)]
    [0.5, 0.0]
    """
    n = max(int(np.ceil((end - start) / width - 1e-9)), 0)
    counts = np.zeros(n, dtype=int)
    positives = np.zeros(n, dtype=int)
    for t, hit in zip(times, hits, strict=True):
        k = int((t - start) // width)
        if 0 <= k < n and t < end:
            counts[k] += 1
            positives[k] += int(hit)
    return [
        {
            "t_start_s": round(k * width, 3),
            "t_end_s": round((k + 1) * width, 3),
            "requests": int(counts[k]),
            "hits": int(positives[k]),
            "share": round(float(positives[k] / counts[k]), 4) if counts[k] else None,
        }
        for k in range(n)
    ]


def time_to_fall(
    windows: Sequence[Mapping[str, Any]], baseline: float, fraction: float = 0.5
) -> float | None:
    """End (seconds after the windows' start) of the first window whose share is below
    ``fraction`` x ``baseline``; None if none is.

    >>> time_to_fall([{"t_end_s": 2.0, "share": 0.3}, {"t_end_s": 4.0, "share": 0.1}], 0.4)
    4.0
    """
    for w in windows:
        share = w.get("share")
        if share is not None and share < fraction * baseline:
            return float(w["t_end_s"])
    return None


def stays_below(
    windows: Sequence[Mapping[str, Any]], after_s: float | None, limit: float
) -> float | None:
    """Share of the windows ending after ``after_s`` (the fall) whose share stays below
    ``limit``: 1.0 means the model never came back above it.

    >>> stays_below([{"t_end_s": 2.0, "share": 0.1}, {"t_end_s": 4.0, "share": 0.3}], 0.0, 0.2)
    0.5
    """
    if after_s is None:
        return None
    later = [w["share"] for w in windows if w["t_end_s"] >= after_s and w["share"] is not None]
    return round(sum(s < limit for s in later) / len(later), 3) if later else None


def interleaved(modes: Sequence[str], rounds: int, *, seed: int) -> list[str]:
    """``rounds`` blocks of every mode once, each block in a seeded random order: each mode
    follows each other as often, so none always lands on the tail of another's work.

    >>> order = interleaved(("a", "b", "c"), 4, seed=0)
    >>> len(order), sorted(order[:3]), order.count("b")
    (12, ['a', 'b', 'c'], 4)
    """
    rng = np.random.default_rng(seed)
    return [modes[int(k)] for _ in range(rounds) for k in rng.permutation(len(modes))]


# -- processes -------------------------------------------------------------------------------
def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "LLMOPT_HOME": str(home),
        "BENTOML_HOME": str(home / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        **extra,
    }
    for key in ("LLMOPT_CLIENT_KEYS", "LLMOPT_ADMIN_KEYS", "LLMOPT_DATABASE_URL"):
        env.pop(key, None)
    for key in ("LLMOPT_UPSTREAM_URL", "LLMOPT_UPSTREAMS_FILE"):
        if key not in extra:
            env.pop(key, None)
    return env


@contextmanager
def _process(cmd: list[str], env: dict[str, str], log: Path, ready: str) -> Iterator[int]:
    """``cmd`` in its own process group until ``ready`` answers 200; yields its pid."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(ready, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[3]} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield proc.pid
    finally:
        stop_group(proc, timeout_s=20)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmopt.app.cli", *args]


def _wait_features(url: str, timeout_s: float = 180.0) -> str:
    """Wait until decisions see the online store (its first open takes seconds)."""
    deadline = time.monotonic() + timeout_s
    state = "?"
    with httpx.Client(base_url=url, timeout=10) as http:
        while time.monotonic() < deadline:
            r = http.post("/decide", json={"tenant": "bench-warmup", "prompt": PROMPT})
            state = str((r.json().get("features") or {}).get("state"))
            if state in ("open", "off", "unavailable"):
                break
            time.sleep(0.5)
    return state


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its descendants, reaped children included;
    0 if it is gone."""
    try:
        root = psutil.Process(pid)
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += float(t.user + t.system + t.children_user + t.children_system)
        return total
    except psutil.NoSuchProcess:
        return 0.0


def machine_busy_s() -> float:
    """CPU seconds every core of the machine spent busy since boot."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


class CpuMeter:
    """CPU seconds of the whole machine and of this process's tree (the upstream, the services
    and the load generator are its descendants) over a phase: the noise report."""

    def __init__(self) -> None:
        self._start = self._read()

    def _read(self) -> tuple[float, float, float]:
        return time.monotonic(), machine_busy_s(), tree_cpu_s(os.getpid())

    def report(self) -> dict[str, float]:
        """Cores used on average since the start: by the machine, by us, by everything else."""
        (t0, busy0, ours0), (t1, busy1, ours1) = self._start, self._read()
        wall = max(t1 - t0, 1e-9)
        machine, ours = (busy1 - busy0) / wall, (ours1 - ours0) / wall
        return {
            "wall_s": round(wall, 1),
            "machine_cores_busy": round(machine, 2),
            "bench_cores": round(ours, 2),
            "other_cores": round(max(machine - ours, 0.0), 2),
            "loadavg_1m_end": round(os.getloadavg()[0], 2),
        }


# -- 1. overhead: open-loop slices in a load-generator process -------------------------------
def load_worker(plan: Mapping[str, Any]) -> dict[str, Any]:
    """Run ``plan["slices"]`` one after the other with :func:`bench.loadgen.run_load`: each
    slice's summary with the CPU the watched process trees (``plan["watch"]``: name -> pid) and
    everything else used meanwhile, and every latency of the measured slices pooled by
    ``"<rate>/<mode>"``."""
    slices: list[dict[str, Any]] = []
    pooled: dict[str, list[float]] = {}
    watch: dict[str, int] = dict(plan.get("watch") or {})
    for s in plan["slices"]:
        before = {name: tree_cpu_s(pid) for name, pid in watch.items()}
        busy0, me0, t0 = machine_busy_s(), tree_cpu_s(os.getpid()), time.monotonic()
        # loadgen keeps its latencies to itself: watch them go into its summary
        with mock.patch.object(loadgen, "summarize", wraps=loadgen.summarize) as spy:
            summary = asyncio.run(
                loadgen.run_load(
                    s["url"],
                    s["body"].encode(),
                    rate=s["rate"],
                    seconds=s["seconds"],
                    connections=s["connections"],
                )
            )
        wall = time.monotonic() - t0
        used = {name: tree_cpu_s(pid) - before[name] for name, pid in watch.items()}
        used["loadgen"] = tree_cpu_s(os.getpid()) - me0
        other = machine_busy_s() - busy0 - sum(used.values())
        cpu = {f"{name}_cpu_s": round(v, 3) for name, v in used.items()}
        if not s.get("warmup"):
            pooled.setdefault(f"{s['rate']:g}/{s['mode']}", []).extend(spy.call_args.args[0])
        slices.append(
            {
                "mode": s["mode"],
                "rate": s["rate"],
                "warmup": bool(s.get("warmup")),
                **summary,
                **cpu,
                "other_cores": round(max(other, 0.0) / wall, 2),
            }
        )
    return {"slices": slices, "latencies_ms": pooled}


def _bodies(upstream: str, gateway: str) -> dict[str, tuple[str, str]]:
    ask = {"max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": PROMPT}]}
    return {
        "direct": (f"{upstream}/chat/completions", json.dumps({"model": MODEL, **ask})),
        "bypass": (f"{gateway}/v1/chat/completions", json.dumps({"model": MODEL, **ask})),
        "auto": (f"{gateway}/v1/chat/completions", json.dumps({"model": "auto", **ask})),
    }


def overhead(
    upstream: str,
    gateway: str,
    *,
    rounds: int,
    slice_s: float,
    watch: Mapping[str, int],
    rates: Sequence[float] = (RATE, LOW_RATE),
) -> list[dict[str, Any]]:
    """Phase 1: the rotation of slices; rows per rate and mode, the added latency, its spread
    over rounds, and the CPU each request cost the gateway and the upstream."""
    bodies = _bodies(upstream, gateway)
    plan: list[dict[str, Any]] = []
    for warm in (True, *([False] * rounds)):
        for rate in rates[:1] if warm else rates:
            for mode in MODES:
                url, body = bodies[mode]
                plan.append(
                    {
                        "mode": mode,
                        "url": url,
                        "body": body,
                        "rate": rate,
                        "seconds": 2.0 if warm else slice_s,
                        "connections": 64,
                        "warmup": warm,
                    }
                )
    meter = CpuMeter()
    out = subprocess.run(
        [sys.executable, "-m", "bench.gateway", "--load-worker"],
        input=json.dumps({"slices": plan, "watch": dict(watch)}),
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    cpu = meter.report()
    doc = json.loads(out)
    measured = [s for s in doc["slices"] if not s["warmup"]]
    rows: list[dict[str, Any]] = []
    for rate in rates:
        stats: dict[str, dict[str, Any]] = {}
        of = {m: [s for s in measured if s["mode"] == m and s["rate"] == rate] for m in MODES}
        for mode, mine in of.items():
            stats[mode] = percentiles(doc["latencies_ms"][f"{rate:g}/{mode}"])
            n, secs = sum(s["requests"] for s in mine), sum(s["seconds"] for s in mine)
            per_request = {
                f"{name}_cpu_ms_per_request": round(
                    1000 * sum(s[f"{name}_cpu_s"] for s in mine) / n, 3
                )
                for name in (*watch, "loadgen")
            }
            rows.append(
                {
                    "kind": "overhead",
                    "mode": mode,
                    "rate": rate,
                    "seconds": round(secs, 1),
                    "requests_per_s": round(n / secs, 1),
                    "failed": sum(s["failed"] for s in mine),
                    **stats[mode],
                    "slice_p99_ms": [s["p99_ms"] for s in mine],
                    **per_request,
                    "other_cores_by_slice": [s["other_cores"] for s in mine],
                }
            )
        for mode in ("bypass", "auto"):
            per_round = [
                round(g["p99_ms"] - d["p99_ms"], 3)
                for g, d in zip(of[mode], of["direct"], strict=True)
            ]
            rows.append(
                {
                    "kind": "added_latency",
                    "mode": mode,
                    "rate": rate,
                    **added(stats[mode], stats["direct"]),
                    "per_round_added_p99_ms": per_round,
                    "target_p99_ms": TARGET_ADDED_P99_MS,
                }
            )
    rows.append({"kind": "cpu", "phase": "overhead", **cpu})
    return rows


# -- 2. streaming: time to first byte ---------------------------------------------------------
@dataclass
class Streamed:
    mode: str
    ttfb_ms: float | None = None
    total_ms: float = 0.0
    status: int = 0
    decision_id: str | None = None
    model: str | None = None
    feedback: str | None = None


async def _streams(
    upstream: str, gateway: str, *, per_mode: int, quality: float, tenant: str = "bench-stream"
) -> list[Streamed]:
    ask = {"max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": PROMPT}]}
    llmopt = {"llmopt": {"tenant": tenant}}
    bodies = {
        "direct": (f"{upstream}/chat/completions", {"model": MODEL, "stream": True, **ask}),
        "bypass": (
            f"{gateway}/v1/chat/completions",
            {"model": MODEL, "stream": True, **ask, **llmopt},
        ),
        "auto": (
            f"{gateway}/v1/chat/completions",
            {"model": "auto", "stream": True, **ask, **llmopt},
        ),
    }
    results: list[Streamed] = []
    limits = httpx.Limits(max_connections=IN_FLIGHT + 8, max_keepalive_connections=IN_FLIGHT + 8)
    slots = asyncio.Semaphore(IN_FLIGHT)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one(mode: str, due: float) -> None:
            async with slots:
                await one_call(mode, due)

        async def one_call(mode: str, due: float) -> None:
            url, body = bodies[mode]
            s = Streamed(mode)
            try:
                async with client.stream("POST", url, json=body) as r:
                    s.status = r.status_code
                    async for line in r.aiter_lines():
                        if s.ttfb_ms is None and line.startswith("data:"):
                            s.ttfb_ms = (time.perf_counter() - due) * 1000
                    s.decision_id = r.headers.get("x-llmopt-decision-id")
                    s.model = r.headers.get("x-llmopt-model")
                s.total_ms = (time.perf_counter() - due) * 1000
                if s.decision_id and s.status == 200:  # as a client: feedback once it has it all
                    fb = await client.post(
                        f"{gateway}/feedback",
                        json={"decision_id": s.decision_id, "quality": quality},
                    )
                    s.feedback = (
                        str(fb.json().get("status"))
                        if fb.status_code == 200
                        else str(fb.status_code)
                    )
            except httpx.HTTPError as exc:
                s.feedback = s.feedback or type(exc).__name__
            results.append(s)

        tasks: list[asyncio.Task[None]] = []
        t0 = time.perf_counter() + 0.05
        for i, mode in enumerate(interleaved(MODES, per_mode, seed=_common.SEED)):
            due = t0 + i / STREAM_RATE
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(mode, due)))
        unfinished = await _drain(tasks)
    results += [Streamed("unfinished") for _ in range(unfinished)]
    return results


def streaming(
    upstream: str, gateway: str, *, per_mode: int, quality: float
) -> tuple[list[dict[str, Any]], list[Streamed]]:
    """Phase 2: rows of TTFB per mode and the added TTFB; the raw results (feedback audit)."""
    asyncio.run(_streams(upstream, gateway, per_mode=10, quality=quality, tenant="bench-warmup"))
    meter = CpuMeter()
    results = asyncio.run(_streams(upstream, gateway, per_mode=per_mode, quality=quality))
    cpu = meter.report()
    rows: list[dict[str, Any]] = []
    stats: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        mine = [s for s in results if s.mode == mode]
        ok = [s for s in mine if s.status == 200 and s.ttfb_ms is not None]
        stats[mode] = percentiles([s.ttfb_ms for s in ok if s.ttfb_ms is not None])
        rows.append(
            {
                "kind": "streaming_ttfb",
                "mode": mode,
                "rate": STREAM_RATE,
                "failed": len(mine) - len(ok),
                "unfinished_in_phase": sum(s.mode == "unfinished" for s in results),
                **stats[mode],
                "total_p50_ms": percentiles([s.total_ms for s in ok])["p50_ms"],
            }
        )
    for mode in ("bypass", "auto"):
        rows.append(
            {
                "kind": "added_ttfb",
                "mode": mode,
                **added(stats[mode], stats["direct"]),
                "target_ms": TARGET_TTFB_MS,
            }
        )
    rows.append({"kind": "cpu", "phase": "streaming", **cpu})
    return rows, results


# -- 3. fallback ------------------------------------------------------------------------------
@dataclass
class Answered:
    t_s: float
    status: int
    model: str | None = None
    attempts: int = 0
    decision_id: str | None = None
    quality: float | None = None
    latency_ms: float = 0.0
    feedback: str | None = None
    error: str | None = None


@dataclass
class FallbackRun:
    records: list[Answered] = field(default_factory=list)
    failing: str | None = None
    fault_at_s: float = 0.0
    baseline_counts: dict[str, int] = field(default_factory=dict)
    unfinished: int = 0


async def _fallback_drive(
    gateway: str,
    admin: str,
    prompts: Sequence[str],
    quality_of: Callable[[str, str], float],
    *,
    rate: float,
    learn_s: float,
    baseline_s: float,
    fault_s: float,
) -> FallbackRun:
    run = FallbackRun()
    rng = np.random.default_rng(_common.SEED)
    total = int(rate * (learn_s + baseline_s + fault_s))
    order = rng.integers(0, len(prompts), size=total)
    limits = httpx.Limits(max_connections=IN_FLIGHT + 8, max_keepalive_connections=IN_FLIGHT + 8)
    slots = asyncio.Semaphore(IN_FLIGHT)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        t0 = time.perf_counter() + 0.05

        async def one(prompt: str, due: float) -> None:
            async with slots:
                await one_call(prompt, due)

        async def one_call(prompt: str, due: float) -> None:
            a = Answered(t_s=due - t0, status=0)
            body = {
                "model": "auto",
                "max_tokens": 64,
                "messages": [{"role": "user", "content": prompt}],
                "llmopt": {"tenant": "bench-fallback"},
            }
            try:
                r = await client.post(f"{gateway}/v1/chat/completions", json=body)
                a.latency_ms = (time.perf_counter() - due) * 1000
                a.status = r.status_code
                if r.status_code == 200:
                    a.model = r.headers["x-llmopt-model"]
                    a.attempts = int(r.headers["x-llmopt-attempts"])
                    a.decision_id = r.headers["x-llmopt-decision-id"]
                    a.quality = float(quality_of(prompt, a.model))
                    fb = await client.post(
                        f"{gateway}/feedback",
                        json={"decision_id": a.decision_id, "quality": a.quality},
                    )
                    a.feedback = (
                        str(fb.json().get("status"))
                        if fb.status_code == 200
                        else str(fb.status_code)
                    )
                else:
                    a.error = r.text[:300]
            except httpx.HTTPError as exc:
                a.error = type(exc).__name__
            run.records.append(a)

        async def inject() -> None:
            await asyncio.sleep(max(t0 + learn_s + baseline_s - time.perf_counter(), 0))
            counts = Counter(
                r.model
                for r in run.records
                if r.model is not None and learn_s <= r.t_s < learn_s + baseline_s
            )
            run.baseline_counts = dict(counts.most_common())
            run.failing = counts.most_common(1)[0][0]
            fault = {"model": run.failing, "error_rate": FAULT_RATE, "kind": "500"}
            (await client.post(f"{admin}/admin/faults", json=fault)).raise_for_status()
            run.fault_at_s = time.perf_counter() - t0

        injector = asyncio.create_task(inject())
        tasks: list[asyncio.Task[None]] = []
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(prompts[int(order[i])], due)))
        run.unfinished = await _drain(tasks)
        await injector
    return run


async def _drain(tasks: Sequence[asyncio.Task[None]]) -> int:
    """Wait up to :data:`DRAIN_S` for ``tasks``; cancel the rest; how many were cancelled."""
    if not tasks:
        return 0
    _, pending = await asyncio.wait(tasks, timeout=DRAIN_S)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return len(pending)


def fallback_rows(
    run: FallbackRun, *, learn_s: float, baseline_s: float, fault_s: float, rate: float
) -> list[dict[str, Any]]:
    """Phase 3's rows from the raw answers."""
    failing = run.failing or ""
    recs = sorted(run.records, key=lambda r: r.t_s)
    # only the failing model has a fault: a request with a fallback went to it first
    first_hit = [r.model == failing or r.attempts > 1 for r in recs]
    times = [r.t_s for r in recs]
    base = window_shares(times, first_hit, start=learn_s, end=learn_s + baseline_s, width=WINDOW_S)
    base_n = sum(int(w["requests"] or 0) for w in base)
    baseline = sum(int(w["hits"] or 0) for w in base) / base_n if base_n else 0.0
    after = window_shares(
        times,
        first_hit,
        start=run.fault_at_s,
        end=learn_s + baseline_s + fault_s,
        width=WINDOW_S,
    )
    fall = time_to_fall(after, baseline, 0.5)
    last = [
        w for w in after if w["t_start_s"] is not None and float(w["t_start_s"]) >= fault_s - 20
    ]
    last_n = sum(int(w["requests"] or 0) for w in last)
    after_fault = [r for r in recs if r.t_s >= run.fault_at_s]
    failed = [r for r in recs if r.status != 200]
    return [
        {
            "kind": "fallback",
            "rate": rate,
            "learn_s": learn_s,
            "baseline_s": baseline_s,
            "fault_s": fault_s,
            "failing_model": failing,
            "fault": f"{FAULT_RATE:.0%} HTTP 500",
            "fault_at_s": round(run.fault_at_s, 2),
            "requests": len(recs) + run.unfinished,
            "client_failures": len(failed) + run.unfinished,
            "client_failures_by": dict(
                Counter(str(r.status) for r in failed) + Counter({"unfinished": run.unfinished})
            ),
            "failure_examples": [r.error for r in failed[:3]],
            "requests_after_fault": len(after_fault),
            "fallbacks": sum(r.attempts > 1 for r in recs),
            "attempts_by": dict(Counter(str(r.attempts) for r in recs if r.status == 200)),
            "baseline_share": round(baseline, 4),
            "baseline_models": run.baseline_counts,
            "time_to_half_share_s": fall,
            "stays_below_half_after": stays_below(after, fall, 0.5 * baseline),
            "last_20s_share": round(sum(int(w["hits"] or 0) for w in last) / last_n, 4)
            if last_n
            else None,
            "latency_p50_ms": percentiles([r.latency_ms for r in recs if r.status == 200])[
                "p50_ms"
            ],
            "latency_p99_ms": percentiles([r.latency_ms for r in recs if r.status == 200])[
                "p99_ms"
            ],
            "baseline_windows": base,
            "windows_after_fault": after,
        }
    ]


# -- 4. feedback audit ------------------------------------------------------------------------
def feedback_audit(
    db: Path, tenant: str, answered: Mapping[str, float], post_status: Mapping[str, str]
) -> dict[str, Any]:
    """Compare the event log's decisions and feedback of ``tenant`` with what the client saw:
    ``answered`` (decision id -> quality posted) and each post's answer (``post_status``)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute(
            "SELECT d.decision_id, f.quality, f.error_kind, f.output_tokens, f.latency_ms, "
            "(SELECT COUNT(*) FROM feedback g WHERE g.decision_id = d.decision_id) "
            "FROM decisions d LEFT JOIN feedback f ON f.decision_id = d.decision_id "
            "WHERE d.tenant = ?",
            (tenant,),
        ).fetchall()
    by_id = {r[0]: r for r in rows}
    lost = [d for d in answered if d not in by_id or by_id[d][5] == 0]
    wrong = [
        d
        for d, q in answered.items()
        if d in by_id
        and by_id[d][5]
        and (by_id[d][2] is not None or by_id[d][1] is None or abs(by_id[d][1] - q) > 1e-9)
    ]
    others = [r for d, r in by_id.items() if d not in answered]
    unmeasured = [d for d in answered if d in by_id and by_id[d][5] and by_id[d][3] is None]
    return {
        "kind": "feedback",
        "tenant": tenant,
        "answered_decisions": len(answered),
        "feedback_posts": dict(Counter(post_status.values())),
        "logged_decisions": len(rows),
        "lost": len(lost),
        "duplicated": sum(int(r[5] > 1) for r in rows)
        + sum(s == "duplicate" for s in post_status.values()),
        "wrong_quality_or_kind": len(wrong),
        "failed_attempt_decisions": len(others),
        "failed_attempts_with_error_feedback": sum(
            int(r[5] == 1 and r[2] is not None) for r in others
        ),
        "decisions_without_feedback": sum(int(r[5] == 0) for r in rows),
        "answered_without_measured_tokens": len(unmeasured),
    }


# -- the run ----------------------------------------------------------------------------------
def _replay_outcomes() -> tuple[list[str], Callable[[str, str], float]]:
    """The file's prompts, and ``(prompt, model) -> quality`` as the replay upstream answers it
    (its ``x-replay-quality`` header)."""
    from llmopt.app.upstream_replay import UpstreamReplay  # noqa: PLC0415
    from llmopt.catalog import load_catalog  # noqa: PLC0415
    from llmopt.routing_data import DEMO_DATA, load_routing_data  # noqa: PLC0415

    replay = UpstreamReplay(load_routing_data(DEMO_DATA), catalog=load_catalog())

    def quality(prompt: str, model: str) -> float:
        return replay.outcome(prompt, model).quality

    return list(replay.data.prompts), quality


@dataclass(frozen=True)
class Plan:
    """How long each phase runs (``--quick``: a smoke run)."""

    rounds: int = 6
    slice_s: float = 5.0
    per_mode: int = 300
    learn_s: float = 60.0
    baseline_s: float = 20.0
    fault_s: float = 60.0
    fallback_rate: float = FALLBACK_RATE


QUICK = Plan(
    rounds=1,
    slice_s=3.0,
    per_mode=40,
    learn_s=10.0,
    baseline_s=6.0,
    fault_s=16.0,
    fallback_rate=20.0,
)


def _same_work_phases(root: Path, upstream: str, up_pid: int, plan: Plan) -> list[dict[str, Any]]:
    """Service A (every model answered as :data:`MODEL`): overhead, streaming, their audit."""
    same = root / "same-model-upstreams.yaml"
    same.write_text(json.dumps({"default": {"base_url": upstream, "model": MODEL}}))
    home, port = root / "a", free_port()
    gateway = f"http://127.0.0.1:{port}"
    env = _env(home, LLMOPT_UPSTREAMS_FILE=str(same))
    with _process(
        _cli("serve", "--port", str(port)), env, root / "service-a.log", f"{gateway}/readyz"
    ) as svc_pid:
        features = _wait_features(gateway)
        watch = {"gateway": svc_pid, "upstream": up_pid}
        print(f"   overhead ({plan.rounds} x {plan.slice_s:g} s per mode) ...", file=sys.stderr)
        rows = overhead(upstream, gateway, rounds=plan.rounds, slice_s=plan.slice_s, watch=watch)
        results = [{**r, "features": features} for r in rows]
        print(f"   streaming ({plan.per_mode} per mode) ...", file=sys.stderr)
        _, quality_of = _replay_outcomes()
        q = quality_of(PROMPT, MODEL)
        rows, streamed = streaming(upstream, gateway, per_mode=plan.per_mode, quality=q)
        results += rows
        time.sleep(1.0)
        ok = [s for s in streamed if s.decision_id and s.status == 200]
        audit = feedback_audit(
            home / "events.db",
            "bench-stream",
            {str(s.decision_id): q for s in ok},
            {str(s.decision_id): str(s.feedback) for s in ok},
        )
        results.append({**audit, "service": "A (streamed answers)"})
    return results


def _fallback_phase(root: Path, upstream: str, up_pid: int, plan: Plan) -> list[dict[str, Any]]:
    """Service B (``llmopt serve --upstream``): the fault, the fallback and its audit."""
    home, port = root / "b", free_port()
    gateway = f"http://127.0.0.1:{port}"
    cmd = _cli("serve", "--port", str(port), "--upstream", upstream)
    with _process(cmd, _env(home), root / "service-b.log", f"{gateway}/readyz") as svc_pid:
        _wait_features(gateway)
        total_s = plan.learn_s + plan.baseline_s + plan.fault_s
        print(f"   fallback ({total_s:g} s at {plan.fallback_rate:g}/s) ...", file=sys.stderr)
        prompts, quality_of = _replay_outcomes()
        meter, gateway_cpu_s = CpuMeter(), tree_cpu_s(svc_pid)
        fb_run = asyncio.run(
            _fallback_drive(
                gateway,
                upstream.removesuffix("/v1"),
                prompts,
                quality_of,
                rate=plan.fallback_rate,
                learn_s=plan.learn_s,
                baseline_s=plan.baseline_s,
                fault_s=plan.fault_s,
            )
        )
        cpu = meter.report()
        gateway_cpu_s = tree_cpu_s(svc_pid) - gateway_cpu_s
        results = fallback_rows(
            fb_run,
            learn_s=plan.learn_s,
            baseline_s=plan.baseline_s,
            fault_s=plan.fault_s,
            rate=plan.fallback_rate,
        )
        results[0]["gateway_cpu_ms_per_request_with_feedback"] = round(
            1000 * gateway_cpu_s / max(len(fb_run.records), 1), 3
        )
        results.append({"kind": "cpu", "phase": "fallback", **cpu})
        time.sleep(1.0)
        ok = [r for r in fb_run.records if r.decision_id and r.quality is not None]
        audit = feedback_audit(
            home / "events.db",
            "bench-fallback",
            {str(r.decision_id): float(r.quality or 0.0) for r in ok},
            {str(r.decision_id): str(r.feedback) for r in ok},
        )
        audit["fallback_warnings_in_log"] = (
            (root / "service-b.log").read_text(errors="replace").count("falling back")
        )
        results.append({**audit, "service": "B (fallback run)"})
    return results


def _provenance() -> dict[str, Any]:
    """The commit measured, and the serving code's files that differ from it (the working tree
    is what runs)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    dirty = git("status", "--porcelain", "--", "serving", "llmopt", "models", "feature_store")
    return {"commit": git("rev-parse", "HEAD"), "uncommitted": dirty.splitlines()}


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """Every phase; result rows."""
    plan = QUICK if quick else Plan()
    results: list[dict[str, Any]] = [
        {
            "kind": "machine",
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "nice": os.nice(0),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "speed": SPEED,
            "model": MODEL,
            "max_tokens": MAX_TOKENS,
            **_provenance(),
        }
    ]
    with tempfile.TemporaryDirectory(prefix="llmopt-bench-gateway-") as tmp:
        root = Path(tmp)
        port = free_port()
        upstream = f"http://127.0.0.1:{port}/v1"
        cmd = _cli("upstream-replay", "--port", str(port), "--speed", f"{SPEED:g}")
        with _process(
            [*cmd, "--seed", str(_common.SEED)],
            _env(root / "upstream"),
            root / "upstream.log",
            f"http://127.0.0.1:{port}/healthz",
        ) as up_pid:
            results += _same_work_phases(root, upstream, up_pid, plan)
            results += _fallback_phase(root, upstream, up_pid, plan)
    results[0]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results.append(targets(results))
    return results


def targets(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Issue 17's targets, met or not, from the rows."""
    by = {
        (r["kind"], r.get("mode")): r
        for r in results
        if r["kind"] not in ("overhead", "added_latency") or r["rate"] == RATE
    }
    auto, bypass = by["added_latency", "auto"], by["added_latency", "bypass"]
    ttfb = [by["added_ttfb", m] for m in ("bypass", "auto")]
    fb = by["fallback", None]
    audits = [r for r in results if r["kind"] == "feedback"]
    lost = sum(
        int(a["lost"]) + int(a["duplicated"]) + int(a["wrong_quality_or_kind"]) for a in audits
    )
    fall = fb["time_to_half_share_s"]
    return {
        "kind": "targets",
        "added_p99_le_5ms_auto": auto["added_p99_ms"] is not None
        and auto["added_p99_ms"] <= TARGET_ADDED_P99_MS,
        "added_p99_le_5ms_bypass": bypass["added_p99_ms"] is not None
        and bypass["added_p99_ms"] <= TARGET_ADDED_P99_MS,
        "ttfb_le_2ms_p50": all(
            t["added_p50_ms"] is not None and t["added_p50_ms"] <= TARGET_TTFB_MS for t in ttfb
        ),
        "ttfb_le_2ms_p99": all(
            t["added_p99_ms"] is not None and t["added_p99_ms"] <= TARGET_TTFB_MS for t in ttfb
        ),
        "fallback_zero_client_failures": fb["client_failures"] == 0,
        "failing_model_halves_within_10s": fall is not None and fall <= FALL_WITHIN_S,
        "zero_lost_feedback": lost == 0,
    }


def summary(results: list[dict[str, Any]]) -> list[str]:
    """One line per measurement."""
    lines = []
    for r in results:
        k = r["kind"]
        if k == "overhead":
            lines.append(
                f"{r['rate']:4.0f}/s {r['mode']:7} {r['requests_per_s']:6.1f} req/s  "
                f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  failed {r['failed']}  "
                f"gateway CPU {r.get('gateway_cpu_ms_per_request', 0):.2f} ms/req"
            )
        elif k in ("added_latency", "added_ttfb"):
            what = f"added latency at {r['rate']:g}/s" if k == "added_latency" else "added TTFB"
            lines.append(
                f"{what} {r['mode']:6}: p50 {r['added_p50_ms']:+.2f} ms  "
                f"p99 {r['added_p99_ms']:+.2f} ms  (ratio p99 {r['ratio_p99']})"
            )
        elif k == "streaming_ttfb":
            lines.append(
                f"TTFB {r['mode']:7} p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                f"failed {r['failed']}"
            )
        elif k == "fallback":
            lines.append(
                f"fallback: {r['failing_model']} {r['fault']}; {r['client_failures']} client "
                f"failures of {r['requests']}, {r['fallbacks']} fallbacks; share "
                f"{r['baseline_share']:.3f} -> last 20 s {r['last_20s_share']}, "
                f"below half after {r['time_to_half_share_s']} s"
            )
        elif k == "feedback":
            lines.append(
                f"feedback {r['tenant']}: {r['answered_decisions']} answered, lost "
                f"{r['lost']}, duplicated {r['duplicated']}, wrong {r['wrong_quality_or_kind']}, "
                f"failed attempts {r['failed_attempt_decisions']} "
                f"({r['failed_attempts_with_error_feedback']} with error feedback), "
                f"answered without measured tokens {r['answered_without_measured_tokens']}"
            )
        elif k == "cpu":
            lines.append(
                f"cpu {r['phase']}: machine {r['machine_cores_busy']} cores, bench "
                f"{r['bench_cores']}, other processes {r['other_cores']}"
            )
        elif k == "targets":
            lines.append(
                "targets: "
                + ", ".join(f"{n} {'met' if v else 'NOT met'}" for n, v in r.items() if n != "kind")
            )
    return lines


def main() -> int:
    """``python -m bench.gateway [--quick]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of about 2 minutes")
    parser.add_argument("--load-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_worker:  # the load generator's process (phase 1): plan on stdin, JSON out
        json.dump(load_worker(json.load(sys.stdin)), sys.stdout)
        return 0
    results = run(quick=args.quick)
    doc = _common.document(NAME, results, quick=args.quick)
    path = _common.write_document(doc)
    print(f"== {NAME} -> {_common.display_path(path)}")
    for line in summary(results):
        print(f"   {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
