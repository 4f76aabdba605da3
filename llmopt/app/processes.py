"""The demo's HTTP leg: start the decision service, drive real prompts through it, stop it.

``llmopt demo`` calls :func:`drive_service` after registering its trained policy: the service
(``llmopt serve``, a real BentoML process) loads that version from the registry (alias ``prod``),
and every prompt goes ``POST /decide`` -> the data set's outcome of the chosen model ->
``POST /feedback``, through :class:`llmopt.client.DecisionClient`, as a user's application
would do it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmopt.client import DecisionClient, DecisionServiceError
from llmopt.routing_data import RoutingData

REPO = Path(__file__).resolve().parents[2]


class ServiceStartError(RuntimeError):
    """The service did not become ready; the message ends with its log."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def running_service(
    home: Path,
    *,
    port: int | None = None,
    timeout_s: float = 180.0,
    workers: int = 1,
    **env: str,
) -> Iterator[str]:
    """``llmopt serve`` on a free port with state in ``home``; yields its URL once ready."""
    port = port or free_port()
    home = home.resolve()
    log = home / "demo-service.log"
    home.mkdir(parents=True, exist_ok=True)
    environ = {**os.environ, "LLMOPT_HOME": str(home), **env}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmopt.app.cli", "serve", "--port", str(port)]
            + (["--workers", str(workers)] if workers != 1 else []),
            cwd=REPO,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        with DecisionClient(url, timeout=2.0) as client:
            deadline = time.monotonic() + timeout_s
            while not client.ready():
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-3000:]
                    raise ServiceStartError(f"the decision service did not start:\n{tail}")
                time.sleep(0.3)
        yield url
    finally:
        stop_group(proc)


@contextmanager
def running_upstream(
    data: Path, home: Path, *, speed: float = 200.0, timeout_s: float = 120.0
) -> Iterator[str]:
    """``llmopt upstream-replay`` of ``data`` on a free port; yields its base URL (…/v1)."""
    import httpx  # noqa: PLC0415

    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    log = home / "upstream-replay.log"
    cmd = [sys.executable, "-m", "llmopt.app.cli", "upstream-replay", "--data", str(data)]
    cmd += ["--port", str(port), "--speed", f"{speed:g}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**os.environ, "LLMOPT_HOME": str(home)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise ServiceStartError(f"the replay upstream did not start:\n{tail}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_group(proc)


def drive_gateway(
    url: str,
    routing: RoutingData,
    *,
    n: int = 300,
    seed: int = 0,
    tenant: str = "demo",
    wait_features_s: float = 120.0,
) -> dict[str, Any]:
    """Send ``n`` prompts of ``routing`` through the service's OpenAI-compatible gateway with the
    official ``openai`` client (``model="auto"``, the file's models allowed), then post each
    answer's recorded quality to ``/feedback`` (cost and latency: what the gateway measured);
    the same summary as :func:`drive_service`."""
    import openai  # noqa: PLC0415

    order = np.random.default_rng(seed).permutation(routing.n_prompts)[:n]
    index = {m: j for j, m in enumerate(routing.models)}
    tally = _Tally()
    options = {"llmopt": {"tenant": tenant, "models": list(routing.models)}}
    with (
        DecisionClient(url, timeout=10.0) as client,
        openai.OpenAI(base_url=f"{url}/v1", api_key="demo", max_retries=0, timeout=30.0) as oai,
    ):
        wait_for_features(client, tenant, timeout_s=wait_features_s)
        for i in order.tolist():
            started = time.perf_counter()
            try:
                raw = oai.chat.completions.with_raw_response.create(
                    model="auto",
                    messages=[{"role": "user", "content": routing.prompts[i]}],
                    extra_body=options,
                )
                answer = raw.parse()
                model = answer.model
                j = index[model]
                q, c = float(routing.quality[i, j]), float(routing.cost_usd[i, j])
                client.feedback(raw.headers["x-llmopt-decision-id"], quality=q)
            except (openai.OpenAIError, DecisionServiceError, KeyError):
                tally.failed += 1
                continue
            version = raw.headers.get("x-llmopt-policy-version", "?")
            state = raw.headers.get("x-llmopt-features", "off")
            tally.add(started, q, c, model=model, version=version, state=state)
    return tally.summary(url)


def stop_group(proc: subprocess.Popen[Any], timeout_s: float = 30.0) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and its group; SIGKILL late."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for_features(client: DecisionClient, tenant: str, *, timeout_s: float) -> str:
    """Wait until the service's online features are open (or known to be off); the state.

    The service opens its feature store in the background (seconds of imports and ``feast
    apply``) and decides without it meanwhile; the demo waits so that its traffic uses it.
    """
    deadline = time.monotonic() + timeout_s
    state = "starting"
    while state == "starting" and time.monotonic() < deadline:
        d = client.decide(tenant, "warm-up")
        state = str((d.get("features") or {}).get("state", "off"))
        if state == "starting":
            time.sleep(0.5)
    return state


@dataclass
class _Tally:
    """What :func:`drive_service` and :func:`drive_gateway` count, and their summary."""

    latencies: list[float] = field(default_factory=list)
    quality: list[float] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)
    chosen: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    features: Counter[str] = field(default_factory=Counter)
    failed: int = 0

    def add(
        self, started: float, quality: float, cost: float, *, model: str, version: str, state: str
    ) -> None:
        self.latencies.append((time.perf_counter() - started) * 1000)
        self.quality.append(quality)
        self.cost.append(cost)
        self.chosen[model] += 1
        self.versions[version] += 1
        self.features[state] += 1

    def summary(self, url: str) -> dict[str, Any]:
        lat = np.asarray(self.latencies) if self.latencies else np.zeros(1)
        return {
            "url": url,
            "requests": len(self.latencies),
            "failed": self.failed,
            "avg_quality": float(np.mean(self.quality)) if self.quality else float("nan"),
            "avg_cost_usd": float(np.mean(self.cost)) if self.cost else float("nan"),
            "round_trip_p50_ms": float(np.percentile(lat, 50)),
            "round_trip_p99_ms": float(np.percentile(lat, 99)),
            "top_models": self.chosen.most_common(3),
            "policy_versions": dict(self.versions),
            "features": dict(self.features),
        }


def drive_service(
    url: str,
    routing: RoutingData,
    *,
    n: int = 300,
    seed: int = 0,
    tenant: str = "demo",
    wait_features_s: float = 120.0,
) -> dict[str, Any]:
    """Send ``n`` prompts of ``routing`` through ``url``: decide, then feedback; a summary."""
    order = np.random.default_rng(seed).permutation(routing.n_prompts)[:n]
    index = {m: j for j, m in enumerate(routing.models)}
    tally = _Tally()
    with DecisionClient(url, timeout=10.0) as client:
        wait_for_features(client, tenant, timeout_s=wait_features_s)
        for i in order.tolist():
            started = time.perf_counter()
            try:
                d = client.decide(tenant, routing.prompts[i], models=routing.models)
                j = index[d["model"]]
                q, c = float(routing.quality[i, j]), float(routing.cost_usd[i, j])
                client.feedback(d["decision_id"], quality=q, cost_usd=c)
            except DecisionServiceError:
                tally.failed += 1
                continue
            state = (d.get("features") or {}).get("state", "off")
            tally.add(started, q, c, model=d["model"], version=d["policy_version"], state=state)
    return tally.summary(url)
