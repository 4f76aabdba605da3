"""Sustained load: the decision service for minutes at a rate it holds; errors, tail, memory.

By default the real service (``bentoml serve``, 1 worker, online features from the embedded
store, SQLite event log) is started here. With ``--url`` (repeatable or comma-separated) the
load goes to services that already run instead, e.g. the replicas of ``make up REPLICAS=2``
(``make soak URLS=http://127.0.0.1:3000,http://127.0.0.1:3001``). For the whole run they get,
from this process and a second one, on loopback:

- ``POST /decide`` at ``--rate`` requests/s, open loop (as :mod:`bench.loadgen`: latency from
  each request's due time), spread round-robin over the URLs, in slices of ``--slice`` seconds,
  so latency and memory are reported per slice and per replica;
- decide-then-feedback round trips at ``--feedback-rate``/s (as :mod:`bench.traffic`), so the
  event log, the learner, the drift detectors and the feature pusher all work as in production.
  Round ``i`` decides at URL ``i mod n`` and sends its feedback to URL ``i + 1 mod n``: with
  several replicas every feedback reaches a replica that did not make its decision (it finds
  the decision in the shared event log, and settles its budget reservation in the shared state).

Afterwards every feedback a service acknowledged (200 ``stored`` or ``spooled``) is looked up in
the event log (the started service's SQLite file, or ``--database-url``, by default
``$LLMOPT_DATABASE_URL``: what ``source .llmopt/infra/env.sh`` sets): ``feedback_lost`` counts
the acknowledged ones that are not there (after up to a minute for spools to replay),
``feedback_duplicated`` the extra rows for one decision.

Memory is the resident set of each server's whole process tree after each slice (a running
service is found by the process listening on its port; on another machine it is not measured).
"Does not grow" is checked as: the last slice's RSS is within ``--max-growth`` (10% by default)
of the RSS after the first slice (warm-up: imports, caches, the feature store). Results go to
``bench/results/soak.json`` (started service) or ``bench/results/soak_replicas.json`` (URLs).

Run: ``make soak`` (10 minutes at 500/s) or ``python -m bench.soak --minutes 1 --rate 200``.

Example
-------
>>> split_urls(["http://a:1/,http://b:2", "http://c:3"])
['http://a:1', 'http://b:2', 'http://c:3']
>>> feedback_url(["A", "B"], 0), feedback_url(["A", "B"], 1), feedback_url(["A"], 5)
('B', 'A', 'A')
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

from bench import _common
from bench.loadgen import _Conn, summarize
from bench.serving import BIN, _env, _free_port, _start, _stop, _wait_features
from bench.traffic import accepted_feedback
from bench.traffic import decide as post_decide

NAME = "soak"
NAME_URLS = "soak_replicas"
REPO = Path(__file__).resolve().parents[1]
BODY = b'{"tenant": "acme", "prompt": "What is 2 + 2?"}'
"""The decide load's request (bench.loadgen's default)."""
CHECK_TIMEOUT_S = 60.0
"""How long acknowledged feedback may take to appear in the event log (a spool replaying)."""


def split_urls(values: Sequence[str]) -> list[str]:
    """URLs given repeated and/or comma-separated, without trailing slashes, in order."""
    return [u.strip().rstrip("/") for v in values for u in v.split(",") if u.strip()]


def feedback_url(urls: Sequence[str], i: int) -> str:
    """Where round ``i``'s feedback goes: the replica after the one that decided."""
    return urls[(i + 1) % len(urls)]


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 1e6


def listening_pid(url: str) -> int | None:
    """The process serving ``url`` on this machine (the top one of those listening on its
    port, e.g. BentoML's arbiter above its workers); None if not found or not ours to see."""
    port = urlsplit(url).port or 80
    try:
        pids = {
            c.pid
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
        }
    except psutil.AccessDenied:
        return None
    roots = []
    for pid in pids:
        try:
            if psutil.Process(pid).ppid() not in pids:
                roots.append(pid)
        except psutil.NoSuchProcess:
            continue
    return min(roots) if roots else None


# -- decide load: open loop, round-robin over the URLs ------------------------------------------
async def round_robin_load(
    urls: Sequence[str],
    body: bytes,
    *,
    rate: float,
    seconds: float,
    connections: int = 32,
    timeout_s: float = 5.0,
) -> dict[str, Any]:
    """Request ``i`` is due at ``t0 + i / rate`` and goes to ``urls[i % n]`` on a free
    keep-alive connection of that URL; bench.loadgen's summary of all requests, with the same
    summary per URL under ``replicas``."""
    n = len(urls)
    payloads: list[bytes] = []
    pools: list[asyncio.Queue[_Conn]] = []
    for url in urls:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        payloads.append(
            f"POST {parts.path or ''}/decide HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        idle: asyncio.Queue[_Conn] = asyncio.Queue()
        for _ in range(max(connections // n, 8)):
            idle.put_nowait(_Conn(host, port))
        pools.append(idle)
    latencies: list[list[float]] = [[] for _ in urls]
    failed: list[Counter[str]] = [Counter() for _ in urls]
    total = int(rate * seconds)
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05

    async def one(k: int, due: float) -> None:
        conn = await pools[k].get()
        try:
            status = await asyncio.wait_for(conn.request(payloads[k]), timeout_s)
            if not 200 <= status < 300:
                failed[k][str(status)] += 1
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            conn.close()
            failed[k][type(exc).__name__] += 1
        finally:
            pools[k].put_nowait(conn)
        latencies[k].append((loop.time() - due) * 1000)

    tasks: list[asyncio.Task[None]] = []
    for i in range(total):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i % n, due)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - t0
    for idle in pools:
        while not idle.empty():
            idle.get_nowait().close()
    result = summarize(
        [x for lat in latencies for x in lat], seconds=elapsed, failed=sum(failed, Counter())
    )
    result["replicas"] = [
        {"url": url, **summarize(latencies[k], seconds=elapsed, failed=failed[k])}
        for k, url in enumerate(urls)
    ]
    return result


def load_slice(urls: Sequence[str], *, rate: float, seconds: float) -> dict[str, Any]:
    """One slice of decide load (in this process: the round trips run in another)."""
    started = time.perf_counter()
    row = asyncio.run(round_robin_load(urls, BODY, rate=rate, seconds=seconds))
    row["target_rate"] = rate
    row["wall_s"] = round(time.perf_counter() - started, 2)
    return row


# -- decide-then-feedback round trips, feedback to another replica ------------------------------
def one_round(decide: httpx.Client, feedback: httpx.Client, i: int) -> tuple[list[str], str | None]:
    """Round ``i``: decide with ``decide``, feedback with ``feedback``; what was seen (the
    tally's keys) and the decision id if its feedback was acknowledged."""
    seen: list[str] = []
    try:
        decision_id = post_decide(decide, i, seen)
        if decision_id is not None:
            f = feedback.post(
                "/feedback", json={"decision_id": decision_id, "quality": (i % 10) / 10}
            )
            status = f.json()["status"] if f.status_code == 200 else f.status_code
            seen.append(f"feedback {status}")
            if status in ("stored", "spooled"):
                return seen, decision_id
    except httpx.HTTPError as exc:
        seen.append(f"transport {type(exc).__name__}")
    return seen, None


def round_trips(
    urls: Sequence[str], *, rate: float, seconds: float, threads: int = 4
) -> dict[str, Any]:
    """bench.traffic's round trips and tally, spread over ``urls``: round ``i`` decides at
    ``urls[i % n]``, its feedback goes to :func:`feedback_url`. Also per URL: decisions made
    there (``decided``) and feedback acknowledged there (``feedback_accepted``); and, for the
    event-log check, the ids of the acknowledged feedback's decisions (``accepted_ids``)."""
    tally: Counter[str] = Counter()
    decided: Counter[str] = Counter()
    accepted_at: Counter[str] = Counter()
    accepted_ids: list[str] = []
    lock = threading.Lock()
    total = int(rate * seconds)
    next_round = iter(range(total))
    t0 = time.monotonic()
    slow: list[float] = []

    def worker() -> None:
        clients = {u: httpx.Client(base_url=u, timeout=10.0) for u in dict.fromkeys(urls)}
        for i in next_round:
            due = t0 + i / rate
            if (delay := due - time.monotonic()) > 0:
                time.sleep(delay)
            at, to = urls[i % len(urls)], feedback_url(urls, i)
            started = time.monotonic()
            seen, accepted = one_round(clients[at], clients[to], i)
            elapsed = time.monotonic() - started
            with lock:
                tally.update(seen)
                decided[at] += int("decide 200" in seen)
                if accepted is not None:
                    accepted_at[to] += 1
                    accepted_ids.append(accepted)
                if elapsed > 1.0:
                    slow.append(round(elapsed, 2))
        for http in clients.values():
            http.close()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return {
        "rounds": total,
        "seconds": round(time.monotonic() - t0, 2),
        "tally": dict(tally),
        "accepted_feedback": accepted_feedback(tally),
        "server_errors": sum(n for k, n in tally.items() if k.split()[-1].startswith("5")),
        "rounds_over_1s": len(slow),
        "by_replica": [
            {"url": u, "decided": decided[u], "feedback_accepted": accepted_at[u]} for u in urls
        ],
        "accepted_ids": accepted_ids,
    }


def _round_trips_child(queue: Any, urls: list[str], rate: float, seconds: float) -> None:
    try:
        queue.put(round_trips(urls, rate=rate, seconds=seconds))
    except Exception as exc:  # reported to the parent, not lost in a child's stderr
        queue.put({"error": repr(exc)})


@contextmanager
def round_trips_process(urls: list[str], *, rate: float, seconds: float) -> Iterator[Any]:
    """:func:`round_trips` in a second process (it would compete with the decide load's event
    loop for this one's interpreter lock); yields a function that waits for its result."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    proc = ctx.Process(target=_round_trips_child, args=(queue, urls, rate, seconds))
    proc.start()

    def result() -> dict[str, Any]:
        got: dict[str, Any] = queue.get()  # before join: a big result would block the child
        proc.join(60)
        if "error" in got:
            raise RuntimeError(f"round trips failed: {got['error']}")
        return got

    try:
        yield result
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join(10)


# -- every acknowledged feedback in the event log, once -----------------------------------------
def check_feedback(
    database_url: str, decision_ids: Sequence[str], *, timeout_s: float = CHECK_TIMEOUT_S
) -> dict[str, Any]:
    """Rows of the event log's ``feedback`` table for ``decision_ids``: how many are there,
    lost (none) and duplicated (more than one), waiting up to ``timeout_s`` for the missing."""
    import sqlalchemy as sa  # noqa: PLC0415 - only when checking

    wanted = list(dict.fromkeys(decision_ids))
    query = sa.text(
        "SELECT decision_id, count(*) FROM feedback WHERE decision_id IN :ids GROUP BY decision_id"
    ).bindparams(sa.bindparam("ids", expanding=True))
    engine = sa.create_engine(database_url)
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    try:
        while True:
            counts: dict[str, int] = {}
            with engine.connect() as conn:
                for k in range(0, len(wanted), 1000):
                    rows = conn.execute(query, {"ids": wanted[k : k + 1000]}).all()
                    counts.update({str(r[0]): int(r[1]) for r in rows})
            if len(counts) == len(wanted) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    finally:
        engine.dispose()
    return {
        "database": (
            engine.url.render_as_string(hide_password=True)
            if engine.url.get_backend_name() != "sqlite"
            else "sqlite (the started service's)"
        ),
        "acknowledged": len(decision_ids),
        "in_log": len(counts),
        "lost": len(wanted) - len(counts),
        "duplicated": sum(c - 1 for c in counts.values()),
        "waited_s": round(time.monotonic() - started, 1),
    }


# -- the run -------------------------------------------------------------------------------------
def _median(values: Sequence[float]) -> float:
    return sorted(values)[len(values) // 2]


def _growth(base: float | None, last: float | None) -> float | None:
    if base is None or last is None or not base:
        return None
    return round((last - base) / base, 4)


def soak(
    urls: list[str],
    pids: list[int | None],
    *,
    minutes: float,
    rate: float,
    feedback_rate: float,
    slice_s: float,
    max_growth: float,
    database_url: str | None,
) -> dict[str, Any]:
    """The load against running services (``pids``: their process trees, for memory)."""
    seconds = minutes * 60
    n_slices = max(int(seconds // slice_s), 2)
    features = [_wait_features(u) for u in urls]
    slices: list[dict[str, Any]] = []
    with round_trips_process(urls, rate=feedback_rate, seconds=n_slices * slice_s) as traffic:
        for i in range(n_slices):
            row = load_slice(urls, rate=rate, seconds=slice_s)
            row["slice"] = i
            rss = [tree_rss_mb(p) if p is not None else None for p in pids]
            for replica, mb in zip(row["replicas"], rss, strict=True):
                replica["rss_mb"] = round(mb, 1) if mb is not None else None
            known = [mb for mb in rss if mb is not None]
            row["rss_mb"] = round(sum(known), 1) if len(known) == len(rss) else None
            slices.append(row)
            print(
                f"slice {i + 1}/{n_slices}: {row['requests_per_s']} req/s, p99 "
                f"{row['p99_ms']} ms, failed {row['failed']}, rss {row['rss_mb']} MB"
                + (
                    " (" + ", ".join(f"{r['requests']} {r['url']}" for r in row["replicas"]) + ")"
                    if len(urls) > 1
                    else ""
                ),
                flush=True,
            )
        feedback = traffic()
    accepted_ids = feedback.pop("accepted_ids")
    by_replica = feedback.pop("by_replica")
    check = check_feedback(database_url, accepted_ids) if database_url else None
    base, last = slices[0]["rss_mb"], slices[-1]["rss_mb"]
    growth = _growth(base, last)
    p99s = [s["p99_ms"] for s in slices]
    replicas = []
    for k, url in enumerate(urls):
        rows = [s["replicas"][k] for s in slices]
        replicas.append(
            {
                "url": url,
                "features": features[k],
                "decide_requests": sum(r["requests"] for r in rows),
                "decide_failed": sum(r["failed"] for r in rows),
                "p50_ms_median_slice": _median([r["p50_ms"] for r in rows]),
                "p99_ms_median_slice": _median([r["p99_ms"] for r in rows]),
                "p99_ms_worst_slice": max(r["p99_ms"] for r in rows),
                "round_trips_decided": by_replica[k]["decided"],
                "feedback_accepted": by_replica[k]["feedback_accepted"],
                "rss_mb_after_warmup": rows[0]["rss_mb"],
                "rss_mb_end": rows[-1]["rss_mb"],
                "rss_growth": _growth(rows[0]["rss_mb"], rows[-1]["rss_mb"]),
            }
        )
    return {
        "minutes": minutes,
        "rate": rate,
        "feedback_rate": feedback_rate,
        "features": features[0] if len(set(features)) == 1 else ",".join(features),
        "slices": slices,
        "feedback_traffic": feedback,
        "decide_requests": sum(s["requests"] for s in slices),
        "decide_failed": sum(s["failed"] for s in slices),
        "feedback_server_errors": feedback["server_errors"],
        "p99_ms_worst_slice": max(p99s),
        "p99_ms_median_slice": _median(p99s),
        "rss_mb_after_warmup": base,
        "rss_mb_end": last,
        "rss_growth": growth,
        "memory_ok": growth <= max_growth if growth is not None else None,
        # several replicas (and the event-log check)
        "urls": urls,
        "feedback_to_other_replica": len(urls) > 1,
        "replicas": replicas,
        "feedback_check": check,
        "feedback_lost": check["lost"] if check else None,
        "feedback_duplicated": check["duplicated"] if check else None,
    }


def run(
    *,
    minutes: float,
    rate: float,
    feedback_rate: float,
    slice_s: float,
    max_growth: float,
    urls: Sequence[str] = (),
    database_url: str | None = None,
) -> dict[str, Any]:
    """The soak run; a result document's ``results`` plus the verdict. Without ``urls`` a
    service of its own (embedded profile, SQLite event log in a temporary folder)."""
    params: dict[str, Any] = {
        "minutes": minutes,
        "rate": rate,
        "feedback_rate": feedback_rate,
        "slice_s": slice_s,
        "max_growth": max_growth,
    }
    if urls:
        pids = [listening_pid(u) for u in urls]
        return soak(list(urls), pids, database_url=database_url, **params)
    with tempfile.TemporaryDirectory(prefix="llmopt-soak-") as tmp:
        root = Path(tmp)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = _env(
            root / "svc",
            LLMOPT_SERVING_MODEL_SOURCE="fresh",
            LLMOPT_SERVING_POLL_S="0",
            LLMOPT_SERVING_FEATURES="embedded",
        )
        proc = _start(
            [str(BIN / "bentoml"), "serve", "serving.service:DecisionService"]
            + ["--host", "127.0.0.1", "--port", str(port)],
            env,
            root / "server.log",
            url,
        )
        try:
            events = f"sqlite:///{root / 'svc' / 'llmopt' / 'events.db'}"
            return soak([url], [proc.pid], database_url=events, **params)
        finally:
            _stop(proc)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.soak [--minutes M] [--rate R] [--url U ...]``; exit 1 on errors, lost
    or duplicated feedback, or memory growth."""
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=300.0, help="decide requests per second")
    p.add_argument("--feedback-rate", type=float, default=20.0, help="round trips per second")
    p.add_argument("--slice", type=float, default=30.0, help="seconds per measured slice")
    p.add_argument("--max-growth", type=float, default=0.10)
    p.add_argument(
        "--url",
        action="append",
        default=[],
        help="a running service (repeatable, or comma-separated): load spread round-robin, "
        "feedback to another replica than the decision's; none: start a service here",
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("LLMOPT_DATABASE_URL") or None,
        help="with --url: the services' event log, to check every acknowledged feedback is "
        "there once (default $LLMOPT_DATABASE_URL; unset: not checked)",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="with several URLs: then the same load on the first URL alone (the same stack, "
        "minutes later), a second result",
    )
    p.add_argument("--name", help="result file bench/results/NAME.json (soak / soak_replicas)")
    p.add_argument("--note", help="the run's conditions, kept in each result as `note`")
    p.add_argument(
        "--append",
        action="store_true",
        help="add the results to the file's (same benchmark name) instead of replacing them",
    )
    args = p.parse_args(argv)
    urls = split_urls(args.url)
    params: dict[str, Any] = {
        "minutes": args.minutes,
        "rate": args.rate,
        "feedback_rate": args.feedback_rate,
        "slice_s": args.slice,
        "max_growth": args.max_growth,
        "database_url": args.database_url if urls else None,
    }
    results = [run(urls=urls, **params)]
    if args.baseline and len(urls) > 1:
        print(f"baseline: the same load on {urls[0]} alone", flush=True)
        results.append(run(urls=urls[:1], **params))
    fresh = list(results)
    if args.note:
        for r in results:
            r["note"] = args.note
    name = args.name or (NAME_URLS if urls else NAME)
    quick = args.minutes < 10
    earlier = _common.result_path(name, quick=quick)
    if args.append and earlier.exists():
        results = [*json.loads(earlier.read_text())["results"], *results]
    doc = _common.document(name, results, quick=quick)
    path = _common.write_document(doc)
    ok = all([_report(name, path, r) for r in fresh])  # every summary printed
    return 0 if ok else 1


def _report(name: str, path: Path, result: dict[str, Any]) -> bool:
    """Print a result's summary; whether it passed (no errors, no lost or duplicated feedback,
    memory within bounds where measured)."""
    growth = result["rss_growth"]
    print(
        f"== {name} -> {_common.display_path(path)}: {result['decide_requests']} decisions "
        f"({result['decide_failed']} failed), feedback 5xx {result['feedback_server_errors']}, "
        f"p99 median/worst slice {result['p99_ms_median_slice']}/{result['p99_ms_worst_slice']} "
        f"ms, RSS {result['rss_mb_after_warmup']} -> {result['rss_mb_end']} MB "
        f"({f'{growth:+.1%}' if growth is not None else 'not measured'})"
    )
    check = result["feedback_check"]
    if check is not None:
        print(
            f"   feedback: {check['acknowledged']} acknowledged, {check['in_log']} in the event "
            f"log, {check['lost']} lost, {check['duplicated']} duplicated"
        )
    for r in result["replicas"] if len(result["urls"]) > 1 else []:
        print(
            f"   {r['url']}: {r['decide_requests']} decisions ({r['decide_failed']} failed), "
            f"p99 median {r['p99_ms_median_slice']} ms, {r['round_trips_decided']} round trips "
            f"decided, {r['feedback_accepted']} feedback received, RSS {r['rss_mb_end']} MB"
        )
    ok = result["decide_failed"] == 0 and result["feedback_server_errors"] == 0
    ok = ok and not result["feedback_lost"] and not result["feedback_duplicated"]
    return ok and result["memory_ok"] is not False


if __name__ == "__main__":
    raise SystemExit(main())
