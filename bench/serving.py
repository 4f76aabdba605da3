"""The decision service under load: BentoML vs bare uvicorn+starlette, and a swap under load.

- Throughput and latency of ``POST /decide`` (the contract's body) measured by ``wrk`` (Debian
  package) with 1 and 16 connections, against the real service (``bentoml serve
  serving.service:DecisionService``, 1 worker) and, in the same run, against a bare
  uvicorn+starlette endpoint doing the same policy work (``bench/serving_bare.py``: the same
  router, policy, guards and event-log write).
- Swap under load: while ``wrk`` drives the service, the champion's state file is replaced
  (the local model source; the alias poller checks every 50 ms); reported: failed requests
  during the run and the time from the change to the first answer by the new model.

Both servers use a fresh ``cost_aware_linucb`` over the 27 catalog models, SQLite event log in a
temporary folder, rate limit off. The load generator shares the machine's cores with the
server. Run: ``make bench-serving`` or ``python -m bench.serving [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench import _common

NAME = "serving"
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BODY = '{"tenant": "acme", "prompt": "What is 2 + 2?"}'
LUA = f"""wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start(cmd: list[str], env: dict[str, str], log: Path, url: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if m is None:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, script: Path, *, connections: int, seconds: float) -> dict[str, Any]:
    """One wrk run: requests/s, p50/p90/p99 latency (ms), failed requests."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script)]
        + [f"{url}/decide"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.MULTILINE))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert total is not None and rps is not None, out
    return {
        "connections": connections,
        "seconds": seconds,
        "requests": int(total.group(1)),
        "requests_per_s": round(float(rps.group(1)), 1),
        "p50_ms": round(_ms(pct["50"]), 3),
        "p90_ms": round(_ms(pct["90"]), 3),
        "p99_ms": round(_ms(pct["99"]), 3),
        "failed": (int(non2xx.group(1)) if non2xx else 0)
        + (sum(int(x) for x in sock.groups()) if sock else 0),
    }


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "BENTOML_HOME": str(home / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        "LLMOPT_HOME": str(home / "llmopt"),
        "LLMOPT_SERVING_RATE_LIMIT_PER_S": "0",
        **extra,
    }
    for key in ("LLMOPT_CLIENT_KEYS", "LLMOPT_ADMIN_KEYS", "LLMOPT_DATABASE_URL"):
        env.pop(key, None)
    return env


def _swap_under_load(url: str, script: Path, home: Path, seconds: float) -> dict[str, Any]:
    """Replace the champion while wrk runs; failed requests and time to the new model."""
    result: dict[str, Any] = {}

    def load() -> None:
        result.update(wrk(url, script, connections=8, seconds=seconds))

    t = threading.Thread(target=load)
    t.start()
    time.sleep(seconds / 3)
    state = home / "llmopt" / "policy.pkl"
    tmp = state.with_suffix(".tmp")
    from models.registry import make_policy  # noqa: PLC0415

    tmp.write_bytes(pickle.dumps(make_policy("cost_aware_linucb", seed=1)))
    changed = time.monotonic()
    tmp.replace(state)
    swap_ms = None
    with httpx.Client(base_url=url, timeout=5) as http:
        while time.monotonic() - changed < 10:
            label = http.post("/decide", content=BODY).json()["policy_version"]
            if label.startswith("local/"):
                swap_ms = round((time.monotonic() - changed) * 1000, 1)
                break
    t.join()
    return {"kind": "swap_under_load", "swap_ms": swap_ms, "poll_s": 0.05, **result}


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """Measure both servers and the swap; return result rows."""
    seconds = 3.0 if quick else 10.0
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llmopt-bench-serving-") as tmp:
        root = Path(tmp)
        script = root / "post.lua"
        script.write_text(LUA)
        servers = {
            "bentoml": (
                [str(BIN / "bentoml"), "serve", "serving.service:DecisionService"],
                {"LLMOPT_SERVING_MODEL_SOURCE": "local", "LLMOPT_SERVING_POLL_S": "0.05"},
            ),
            "bare_starlette": (
                [str(BIN / "uvicorn"), "--factory", "bench.serving_bare:build"]
                + ["--no-access-log", "--log-level", "warning"],
                {"LLMOPT_SERVING_MODEL_SOURCE": "fresh", "LLMOPT_SERVING_POLL_S": "0"},
            ),
        }
        for name, (cmd, extra) in servers.items():
            home = root / name
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            proc = _start(
                [*cmd, "--host", "127.0.0.1", "--port", str(port)],
                _env(home, **extra),
                root / f"{name}.log",
                url,
            )
            try:
                wrk(url, script, connections=4, seconds=2)  # warm-up
                for c in (1, 16):
                    row = wrk(url, script, connections=c, seconds=seconds)
                    results.append({"kind": "throughput", "server": name, **row})
                if name == "bentoml":
                    results.append({"server": name, **_swap_under_load(url, script, home, seconds)})
            finally:
                _stop(proc)
    for c in (1, 16):
        ours = next(r for r in results if r.get("server") == "bentoml" and r["connections"] == c)
        bare = next(
            r for r in results if r.get("server") == "bare_starlette" and r["connections"] == c
        )
        results.append(
            {
                "kind": "ratio",
                "connections": c,
                "throughput_vs_bare": _common.ratio(ours["requests_per_s"], bare["requests_per_s"]),
            }
        )
    return results


def summary(results: list[dict[str, Any]]) -> list[str]:
    """One line per measurement."""
    lines = []
    for r in results:
        if r["kind"] == "throughput":
            lines.append(
                f"{r['server']:15} c={r['connections']:<2} {r['requests_per_s']:8.1f} req/s  "
                f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  failed {r['failed']}"
            )
        elif r["kind"] == "swap_under_load":
            lines.append(
                f"swap under load (c=8, {r['requests_per_s']} req/s): new model answering after "
                f"{r['swap_ms']} ms, {r['failed']} failed of {r['requests']}"
            )
        else:
            lines.append(f"c={r['connections']}: ours / bare throughput {r['throughput_vs_bare']}")
    return lines


def main() -> int:
    """``python -m bench.serving [--quick]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 s runs instead of 10 s")
    args = parser.parse_args()
    results = run(quick=args.quick)
    path = _common.write_document(_common.document(NAME, results, quick=args.quick))
    print(f"== {NAME} -> {_common.display_path(path)}")
    for line in summary(results):
        print(f"   {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
