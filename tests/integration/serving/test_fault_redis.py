"""Redis (the online store) killed under load: decisions go on with flagged fallback features."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.traffic import spawn
from llmopt.app.processes import running_service

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.services]

REPO = Path(__file__).resolve().parents[3]


class PrivateRedis:
    """A redis-server of the test's own on a free port (the shared one is never touched)."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server not installed")
        self.exe = exe
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_redis_killed_under_load_decisions_continue(
    tmp_path: Path, postgres_url: str, private_redis: PrivateRedis
) -> None:
    from feature_store import store as fs_store  # noqa: PLC0415

    feast_env = {
        "LLMOPT_FEAST_PG_DATABASE": postgres_url.rsplit("/", 1)[1],
        "LLMOPT_FEAST_REDIS": f"127.0.0.1:{private_redis.port}",
    }
    repo = fs_store.copy_repo(tmp_path / "feature_repo")
    fs_store.apply_repo("production", repo, env=feast_env)  # what the deployment does
    env = {
        **feast_env,
        "LLMOPT_SERVING_MODEL_SOURCE": "fresh",
        "LLMOPT_SERVING_FEATURES": "production",
        "LLMOPT_SERVING_RATE_LIMIT_PER_S": "0",
        "LLMOPT_SERVING_POLL_S": "0",
    }
    with running_service(tmp_path / "home", **env) as url:
        import httpx  # noqa: PLC0415

        deadline = time.monotonic() + 90
        state = "starting"
        while state == "starting" and time.monotonic() < deadline:
            r = httpx.post(f"{url}/decide", json={"tenant": "w", "prompt": "warm"}, timeout=5)
            state = r.json()["features"]["state"]
            time.sleep(0.3)
        assert state == "open", r.json()
        traffic = spawn(url, rate=40, seconds=12)
        time.sleep(3)
        private_redis.kill()
        time.sleep(5)
        private_redis.start()
        out, _ = traffic.communicate(timeout=120)
    result = json.loads(out)
    print(json.dumps(result))
    tally = result["tally"]
    assert result["server_errors"] == 0, tally
    assert tally["decide 200"] == result["rounds"], tally
    # the outage was seen and flagged, and only around it (refreshes succeed again after)
    assert 0 < tally.get("features degraded", 0) < 0.8 * result["rounds"], tally
    assert tally["feedback stored"] == result["rounds"], tally
