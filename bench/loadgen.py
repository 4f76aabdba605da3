"""An open-loop HTTP load generator: requests at a fixed rate, latency from the intended send time.

``wrk`` (closed loop: a connection sends its next request when the last one answered) cannot say
"p99 at 500 requests/s": when the server slows down, wrk slows down with it and the slow period
is under-sampled (coordinated omission). ``wrk2`` fixes that but is not packaged by Debian, so this
module does what it does, for one URL and one body: request ``i`` is due at ``t0 + i / rate``,
sent on the first free keep-alive connection, and its latency is measured from its due time, so a
stall shows up in every request it delayed. Raw HTTP/1.1 on asyncio streams keeps the generator's
own cost (~60 us per request) well under the server's.

Run it in its own process (it competes with the server for the cores otherwise)::

    python -m bench.loadgen --url http://127.0.0.1:3000/decide --rate 500 --seconds 10

It prints one JSON object: requests, rate achieved, failed (non-2xx or transport errors, by
status), p50/p90/p99/p999/max latency in ms.

Example
-------
>>> summarize([1.0, 2.0, 3.0, 4.0], seconds=1.0, failed={})["p50_ms"]
2.0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np


def summarize(
    latencies_ms: Sequence[float], *, seconds: float, failed: Mapping[str, int]
) -> dict[str, Any]:
    """Counts and latency percentiles of a run (``np.percentile``'s linear interpolation)."""
    lat = np.asarray(latencies_ms, dtype=float)
    n = int(lat.size)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 3) if n else None

    return {
        "requests": n,
        "seconds": round(seconds, 3),
        "requests_per_s": round(n / seconds, 1) if seconds > 0 else None,
        "failed": int(sum(failed.values())),
        "failed_by": dict(failed),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "p999_ms": pct(99.9),
        "max_ms": round(float(lat.max()), 3) if n else None,
    }


class _Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, payload: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"connection" and value.strip().lower() == b"close":
                close = True
        if length:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_load(
    url: str,
    body: bytes,
    *,
    rate: float,
    seconds: float,
    connections: int = 32,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 5.0,
) -> dict[str, Any]:
    """Send ``rate`` requests per second for ``seconds`` (open loop); a summary dict."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    payload = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body
    idle: asyncio.Queue[_Conn] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(_Conn(host, port))
    latencies: list[float] = []
    failed: Counter[str] = Counter()
    total = int(rate * seconds)
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05

    async def one(due: float) -> None:
        conn = await idle.get()
        try:
            status = await asyncio.wait_for(conn.request(payload), timeout_s)
            if not 200 <= status < 300:
                failed[str(status)] += 1
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            conn.close()
            failed[type(exc).__name__] += 1
        finally:
            idle.put_nowait(conn)
        latencies.append((loop.time() - due) * 1000)

    tasks: list[asyncio.Task[None]] = []
    for i in range(total):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - t0
    while not idle.empty():
        idle.get_nowait().close()
    return summarize(latencies, seconds=elapsed, failed=failed)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--body", default='{"tenant": "acme", "prompt": "What is 2 + 2?"}')
    p.add_argument("--rate", type=float, default=500.0, help="requests per second")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    args = p.parse_args(argv)
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    started = time.perf_counter()
    result = asyncio.run(
        run_load(
            args.url,
            args.body.encode(),
            rate=args.rate,
            seconds=args.seconds,
            connections=args.connections,
            headers=headers,
        )
    )
    result["target_rate"] = args.rate
    result["wall_s"] = round(time.perf_counter() - started, 2)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
