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

from llmopt.app.processes import free_port
from llmopt.client import DecisionClient, DecisionServiceError
from models.kinds import make_policy

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
        ready = httpx.get(f"{url}/readyz")  # the worker's own answer, not BentoML's empty one
        assert ready.json() == {"status": "ok", "reasons": []}, ready.text
        r = httpx.post(f"{url}/decide", json={"tenant": "acme", "prompt": "What is 2 + 2?"})
        assert r.status_code == 200 and r.json()["decision_id"] and r.json()["model"]
        r = httpx.post(
            f"{url}/feedback", json={"decision_id": r.json()["decision_id"], "quality": 0.8}
        )
        assert r.status_code == 200
        assert "OPEN" in (tmp_path / "server.log").read_text()  # the start-up warning


def test_the_api_contract_over_a_real_server(tmp_path: Path):
    """Issue 18's acceptance: ``schemathesis run URL/docs.json --checks not_a_server_error``
    finds no schema error and no server error; refusals share one body; no 4xx traceback."""
    with running([str(BIN / "llmopt"), "serve"], tmp_path) as url:
        spec = httpx.get(f"{url}/docs.json").json()
        assert spec["openapi"].startswith("3.1.") and spec["info"]["version"] != "None"
        with DecisionClient(url) as client:
            with pytest.raises(DecisionServiceError) as err:
                client.feedback("no-such-decision", quality=0.5)
            assert (err.value.status, err.value.code) == (404, "unknown_decision")
            assert err.value.field == "decision_id"
            with pytest.raises(DecisionServiceError) as err:
                client.decide("acme", max_cost_usd=-1)
            assert (err.value.status, err.value.code) == (400, "validation_error")
            assert err.value.field == "max_cost_usd"
        r = httpx.post(f"{url}/decide", content=b"{nope", headers={"content-type": "text/plain"})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        cli = subprocess.run(
            [str(BIN / "schemathesis"), "run", f"{url}/docs.json", "--checks"]
            + ["not_a_server_error", "--max-examples", "20", "--seed", "18", "--no-color"],
            cwd=tmp_path,  # its .schemathesis/ cache stays out of the repository
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert cli.returncode == 0, cli.stdout[-4000:] + cli.stderr[-2000:]
        assert "Specification:    Open API 3.1.0" in cli.stdout, cli.stdout[:2000]
        assert "10 selected / 10 total" in cli.stdout, cli.stdout[:2000]
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log and "Exception on" not in log, log[-3000:]


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
