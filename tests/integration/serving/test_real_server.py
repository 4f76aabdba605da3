"""The decision service as a real ``bentoml serve`` process, called over HTTP by the client."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from llmopt.client import DecisionClient, DecisionServiceError
from llmopt.demo_service import free_port
from models.registry import make_policy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


@contextmanager
def running(cmd: list[str], tmp_path: Path, **env_vars: str) -> Iterator[str]:
    """Run a server command until its /readyz answers 200; yield its URL; stop it after."""
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        "LLMOPT_HOME": str(tmp_path / "llmopt"),
        **env_vars,
    }
    for key in ("LLMOPT_CLIENT_KEYS", "LLMOPT_ADMIN_KEYS", "LLMOPT_DATABASE_URL"):
        env.pop(key, None)
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        with DecisionClient(url) as probe:
            deadline = time.monotonic() + 120  # start-up imports take long on a busy machine
            while not probe.ready():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"server did not become ready:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``bentoml serve serving.service:DecisionService`` on a free port; stopped afterwards."""
    cmd = [str(BIN / "bentoml"), "serve", "serving.service:DecisionService", "--host", "127.0.0.1"]
    with running(
        cmd, tmp_path, LLMOPT_SERVING_MODEL_SOURCE="local", LLMOPT_SERVING_POLL_S="0.05"
    ) as url:
        yield url, tmp_path / "llmopt"


def test_llmopt_serve_contract(tmp_path: Path):
    """The acceptance contract: `llmopt serve --port N`, /readyz, /decide, /feedback."""
    with running([str(BIN / "llmopt"), "serve"], tmp_path) as url:
        r = httpx.post(f"{url}/decide", json={"tenant": "acme", "prompt": "What is 2 + 2?"})
        assert r.status_code == 200 and r.json()["decision_id"] and r.json()["model"]
        r = httpx.post(
            f"{url}/feedback", json={"decision_id": r.json()["decision_id"], "quality": 0.8}
        )
        assert r.status_code == 200
        assert "OPEN" in (tmp_path / "server.log").read_text()  # the start-up warning


def test_decide_feedback_and_a_hot_swap_under_load(server: tuple[str, Path]):
    url, home = server
    with DecisionClient(url) as client:
        d = client.decide("acme", "What is 2 + 2?")
        assert d["model"] and d["decision_id"]
        assert d["policy_version"].startswith("fresh/")
        fb = client.feedback(d["decision_id"], quality=0.8)
        assert fb["status"] == "stored"
        assert client.feedback(d["decision_id"], quality=0.8)["status"] == "duplicate"
        with pytest.raises(DecisionServiceError) as err:
            client.feedback(d["decision_id"], quality=0.1)
        assert err.value.status == 409

    errors: list[str] = []
    seen: list[tuple[float, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.is_set():
                try:
                    r = http.post("/decide", json={"tenant": "acme", "prompt": "hi"})
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                    continue
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                seen.append((time.monotonic(), r.json()["policy_version"]))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    state = home / "policy.pkl"
    tmp = state.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(make_policy("ucb1", seed=7)))
    swapped_at = time.monotonic()
    tmp.replace(state)  # the alias change: the poller notices and swaps
    deadline = swapped_at + 10
    while time.monotonic() < deadline and not any(v.startswith("local/") for _, v in seen):
        time.sleep(0.01)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()

    assert errors == []
    new = [ts for ts, v in seen if v.startswith("local/")]
    assert new, "the new policy never answered"
    swap_ms = (min(new) - swapped_at) * 1000
    before = sum(v.startswith("fresh/") for _, v in seen)
    print(f"{len(seen)} decisions, 0 errors; {before} before the swap; swap in {swap_ms:.0f} ms")
    assert before > 0
    assert all(v.startswith("local/") for ts, v in seen if ts > min(new) + 0.2)
