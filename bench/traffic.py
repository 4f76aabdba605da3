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


def run(url: str, *, rate: float, seconds: float, threads: int = 4) -> dict[str, object]:
    """Drive the traffic; the tally and latency summary."""
    tally: Counter[str] = Counter()
    lock = threading.Lock()
    total = int(rate * seconds)
    next_round = iter(range(total))
    t0 = time.monotonic()
    slow: list[float] = []

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=10.0) as http:
            for i in next_round:
                due = t0 + i / rate
                if (delay := due - time.monotonic()) > 0:
                    time.sleep(delay)
                seen: list[str] = []
                started = time.monotonic()
                try:
                    r = http.post("/decide", json={"tenant": f"t{i % 7}", "prompt": f"q {i}"})
                    seen.append(f"decide {r.status_code}")
                    features = (r.json().get("features") or {}) if r.status_code == 200 else {}
                    if features.get("degraded"):
                        seen.append("features degraded")
                        seen.append(f"degraded: {features.get('reason', '')[:60]}")
                    if r.status_code == 200:
                        body = {"decision_id": r.json()["decision_id"], "quality": (i % 10) / 10}
                        f = http.post("/feedback", json=body)
                        ok = f.status_code == 200
                        seen.append(f"feedback {f.json()['status'] if ok else f.status_code}")
                except httpx.HTTPError as exc:
                    seen.append(f"transport {type(exc).__name__}")
                elapsed = time.monotonic() - started
                with lock:
                    tally.update(seen)
                    if elapsed > 1.0:
                        slow.append(round(elapsed, 2))

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
    }


def spawn(url: str, *, rate: float, seconds: float) -> subprocess.Popen[str]:
    """This module in a second process (``communicate()`` returns its JSON line)."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.traffic", "--url", url, "--rate", str(rate)]
        + ["--seconds", str(seconds)],
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
    args = p.parse_args(argv)
    json.dump(run(args.url, rate=args.rate, seconds=args.seconds, threads=args.threads), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
