"""The gateway's upstream HTTP client: CPU per forwarded call, httpx vs aiohttp.

The gateway (``serving/gateway.py``) forwards every ``/v1/chat/completions`` call to an
OpenAI-compatible upstream. Profiling ``python -m bench.gateway`` with py-spy put half of the
gateway's CPU in httpx, a quarter in its connection pool alone: httpcore checks every pooled
connection's socket on every request (``has_expired`` -> ``is_socket_readable``, one syscall
per pooled connection; encode/httpcore#928, open since 2024). This benchmark measures it alone:
``llmopt upstream-replay`` (a real HTTP server in its own process, at speed 1000 so the
upstream is not the bottleneck) and, in this process, a fixed number of non-streamed chat
completions with N in flight, through each client configured as the gateway configures it.
Reported: this process's CPU per call (``time.process_time``, the client's own cost: the
upstream runs elsewhere) and the wall time, alternating clients over rounds.

Run: ``python -m bench upstream_client [--quick]`` -> ``bench/results/upstream_client.json``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from bench._common import ratio
from llmopt.app.processes import free_port

NAME = "upstream_client"
CALLS = 1500
IN_FLIGHT = (4, 32)
BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Name three primary colours."}],
    }
).encode()
HEADERS = {"content-type": "application/json"}

Client = Callable[[str, int, int], Awaitable[None]]


async def _calls(one: Callable[[], Awaitable[None]], n: int, in_flight: int) -> None:
    gate = asyncio.Semaphore(in_flight)

    async def limited() -> None:
        async with gate:
            await one()

    await asyncio.gather(*(limited() for _ in range(n)))


async def with_httpx(url: str, n: int, in_flight: int) -> None:
    """``n`` calls through httpx as the gateway configured it before (pool of 200 / 50)."""
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one() -> None:
            r = await client.post(url, content=BODY, headers=HEADERS)
            json.loads(r.content)

        await _calls(one, n, in_flight)


async def with_aiohttp(url: str, n: int, in_flight: int) -> None:
    """``n`` calls through aiohttp as the gateway configures it (``Gateway.client``)."""
    connector = aiohttp.TCPConnector(limit=200, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as r:
                json.loads(await r.read())

        await _calls(one, n, in_flight)


CLIENTS: dict[str, Client] = {"httpx": with_httpx, "aiohttp": with_aiohttp}


def _measure(client: Client, url: str, n: int, in_flight: int) -> tuple[float, float]:
    """(CPU ms per call in this process, wall seconds)."""
    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(client(url, n, in_flight))
    return 1000 * (time.process_time() - cpu) / n, time.perf_counter() - wall


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """Both clients against one replay upstream, alternating, over rounds."""
    from bench.gateway import _cli, _env, _process  # noqa: PLC0415 (the gateway bench's helpers)

    n, rounds = (300, 2) if quick else (CALLS, 3)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llmopt-bench-client-") as tmp:
        port = free_port()
        cmd = [*_cli("upstream-replay", "--port", str(port), "--speed", "1000"), "--seed", "0"]
        root = Path(tmp)
        with _process(cmd, _env(root), root / "upstream.log", f"http://127.0.0.1:{port}/healthz"):
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            for in_flight in IN_FLIGHT:
                _measure(with_aiohttp, url, 50, in_flight)  # warm both paths up
                _measure(with_httpx, url, 50, in_flight)
                cpu: dict[str, list[float]] = {name: [] for name in CLIENTS}
                wall: dict[str, list[float]] = {name: [] for name in CLIENTS}
                for _ in range(rounds):
                    for name, client in CLIENTS.items():
                        c, w = _measure(client, url, n, in_flight)
                        cpu[name].append(c)
                        wall[name].append(w)
                for name in CLIENTS:
                    results.append(
                        {
                            "kind": "client",
                            "client": name,
                            "in_flight": in_flight,
                            "calls": n,
                            "rounds": rounds,
                            "cpu_ms_per_call": round(statistics.mean(cpu[name]), 4),
                            "cpu_ms_per_call_range": [
                                round(min(cpu[name]), 4),
                                round(max(cpu[name]), 4),
                            ],
                            "calls_per_s": round(n / statistics.mean(wall[name]), 1),
                        }
                    )
                by = {r["client"]: r for r in results if r["in_flight"] == in_flight}
                results.append(
                    {
                        "kind": "ratio",
                        "in_flight": in_flight,
                        "httpx_cpu_over_aiohttp": ratio(
                            by["httpx"]["cpu_ms_per_call"], by["aiohttp"]["cpu_ms_per_call"]
                        ),
                    }
                )
    return results


def summary(results: list[dict[str, Any]]) -> list[str]:
    """One line per client and concurrency, and the ratios."""
    lines = []
    for r in results:
        if r["kind"] == "client":
            lines.append(
                f"{r['client']:8} {r['in_flight']:3} in flight: {r['cpu_ms_per_call']:.3f} ms CPU "
                f"per call (range {r['cpu_ms_per_call_range']}), {r['calls_per_s']:.0f} calls/s"
            )
        else:
            lines.append(
                f"{r['in_flight']:3} in flight: httpx / aiohttp CPU per call "
                f"x{r['httpx_cpu_over_aiohttp']}"
            )
    return lines


if __name__ == "__main__":
    print("run: python -m bench upstream_client [--quick]", file=sys.stderr)
    raise SystemExit(2)
