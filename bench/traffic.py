"""Decide-then-feedback traffic from a second process, counting every answer (fault tests).

Each round trip is ``POST /decide`` then ``POST /feedback`` for that decision, as a client
application does; rounds start at a fixed rate from a few threads. At the end it prints one JSON
object: rounds, answers by endpoint and status (``decide 200``, ``feedback stored``, ``feedback
spooled``, ``feedback 503``, ``transport`` errors ...) and how many feedback were *accepted*
(a 200 answer: the service promises those are kept).

    python -m bench.traffic --url http://127.0.0.1:3000 --rate 50 --seconds 20

Example
-------
>>> tally = Counter({"feedback stored": 3, "feedback spooled": 2, "decide 200": 5})
>>> accepted_feedback(tally)
5
"""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import httpx


def accepted_feedback(tally: Counter[str]) -> int:
    """Feedback the service answered 200 for, first time (stored now or spooled)."""
    return tally["feedback stored"] + tally["feedback spooled"]


def decide(http: httpx.Client, i: int, seen: list[str]) -> str | None:
    """Round ``i``'s ``POST /decide``; its tally keys go to ``seen`` (status, degraded
    features); the decision id, or None if it was not answered 200."""
    r = http.post("/decide", json={"tenant": f"t{i % 7}", "prompt": f"q {i}"})
    seen.append(f"decide {r.status_code}")
    if r.status_code != 200:
        return None
    doc = r.json()
    features = doc.get("features") or {}
    if features.get("degraded"):
        seen.append("features degraded")
        seen.append(f"degraded: {features.get('reason', '')[:60]}")
    return str(doc["decision_id"])


class _Run:
    """One traffic run's shared state: the tally and the delayed feedback queue."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.tally: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.slow: list[float] = []
        self.later: queue.PriorityQueue[tuple[float, int, dict[str, object]]] = (
            queue.PriorityQueue()
        )
        self.done = threading.Event()

    def count(self, seen: list[str], elapsed: float = 0.0) -> None:
        with self.lock:
            self.tally.update(seen)
            if elapsed > 1.0:
                self.slow.append(round(elapsed, 2))

    @staticmethod
    def send_feedback(http: httpx.Client, body: dict[str, object], seen: list[str]) -> None:
        f = http.post("/feedback", json=body)
        ok = f.status_code == 200
        seen.append(f"feedback {f.json()['status'] if ok else f.status_code}")

    def late_sender(self) -> None:
        """Send the delayed feedback when due, until the rounds are over and it is empty."""
        with httpx.Client(base_url=self.url, timeout=10.0) as http:
            while not (self.done.is_set() and self.later.empty()):
                try:
                    due, _, body = self.later.get(timeout=0.1)
                except queue.Empty:
                    continue
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                seen: list[str] = []
                try:
                    self.send_feedback(http, body, seen)
                except httpx.HTTPError as exc:
                    seen.append(f"transport {type(exc).__name__}")
                self.count(seen)

    def round_trip(self, http: httpx.Client, i: int, *, delayed: bool) -> None:
        seen: list[str] = []
        started = time.monotonic()
        try:
            decision_id = decide(http, i, seen)
            if decision_id is not None:
                body = {"decision_id": decision_id, "quality": (i % 10) / 10}
                if delayed and i % 2:
                    lag = 0.5 + 2.5 * ((i * 7919) % 100) / 100
                    self.later.put((time.monotonic() + lag, i, body))
                else:
                    self.send_feedback(http, body, seen)
        except httpx.HTTPError as exc:
            seen.append(f"transport {type(exc).__name__}")
        self.count(seen, time.monotonic() - started)


def run(
    url: str, *, rate: float, seconds: float, threads: int = 4, delayed: bool = False
) -> dict[str, object]:
    """Drive the traffic; the tally and latency summary.

    ``delayed``: every other round sends its feedback 0.5-3 s after the decision (from a
    separate thread), as a caller that runs the model first would; the others at once.
    """
    state = _Run(url)
    total = int(rate * seconds)
    next_round = iter(range(total))
    t0 = time.monotonic()

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=10.0) as http:
            for i in next_round:
                due = t0 + i / rate
                if (delay := due - time.monotonic()) > 0:
                    time.sleep(delay)
                state.round_trip(http, i, delayed=delayed)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    sender = threading.Thread(target=state.late_sender)
    for t in [*pool, sender]:
        t.start()
    for t in pool:
        t.join()
    state.done.set()
    sender.join()
    tally = state.tally
    return {
        "rounds": total,
        "seconds": round(time.monotonic() - t0, 2),
        "tally": dict(tally),
        "accepted_feedback": accepted_feedback(tally),
        "server_errors": sum(n for k, n in tally.items() if k.split()[-1].startswith("5")),
        "rounds_over_1s": len(state.slow),
    }


def spawn(url: str, *, rate: float, seconds: float, delayed: bool = False) -> subprocess.Popen[str]:
    """This module in a second process (``communicate()`` returns its JSON line)."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.traffic", "--url", url, "--rate", str(rate)]
        + ["--seconds", str(seconds)]
        + (["--delayed"] if delayed else []),
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        text=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, default=50.0, help="round trips per second")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument(
        "--delayed", action="store_true", help="every other feedback 0.5-3 s after its decision"
    )
    args = p.parse_args(argv)
    result = run(
        args.url, rate=args.rate, seconds=args.seconds, threads=args.threads, delayed=args.delayed
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
