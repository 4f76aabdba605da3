"""Helpers of the production-profile tests: a stack of our own (``make up`` on free ports).

:func:`stack_env` is the environment of a second stack beside any running one: its own ports,
infra home, database prefix and Redis database, on the shared PostgreSQL and Redis (which
``up`` uses as they are and ``down`` leaves running); afterwards ``down``, its databases dropped
and its Feast and serving-state keys deleted. :func:`stack` also starts it (``infra/up.sh``,
what ``make up`` runs) and hands over a :class:`Stack` that knows its URLs, pid files, logs and
settings.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from llmopt.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
INFRA = ROOT / "infra"
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
POLL_S = 1.0
"""Alias poll interval of the stacks started by :func:`stack` (the default is 5 s)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http(url: str, body: dict[str, Any] | None = None, *, timeout: float = 10) -> tuple[int, Any]:
    """POST ``body`` as JSON (GET without one); ``(status, parsed JSON or text)``.

    An HTTP error status is returned, not raised (transport errors are raised).
    """
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode(errors="replace")
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def script(name: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INFRA / name)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stack_pids(home: Path) -> set[int]:
    """Every process of the stack: the pid files' processes and everything below them."""
    pids = {int(p.read_text()) for p in (home / "run").glob("*.pid")}
    table = subprocess.run(
        ["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True
    ).stdout
    children: dict[int, list[int]] = {}
    for line in table.splitlines():
        pid, ppid = map(int, line.split())
        children.setdefault(ppid, []).append(pid)
    todo, seen = list(pids), set(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))  # zombie


def shared_servers_answer() -> bool:
    """The shared PostgreSQL and Redis at their usual ports still answer."""
    pg = subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], check=False)
    ping = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping"],
        capture_output=True,
        text=True,
        check=False,
    )
    return pg.returncode == 0 and ping.stdout.strip() == "PONG"


def wait_until(what: str, check: Any, timeout_s: float, every_s: float = 0.5) -> Any:
    """Call ``check()`` until it returns something truthy (returned); fail after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f} s (last: {got!r})")
        time.sleep(every_s)


@pytest.fixture
def stack_env(postgres_url: str, redis_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment of a second stack; afterwards: down, its databases and Redis keys dropped."""
    del redis_url  # only its availability
    prefix = f"llmopt_it_{uuid.uuid4().hex[:8]}_"
    redis_db = random.randint(8, 15)  # Feast's keys of project llmopt, apart from db 0's
    env = {
        **os.environ,
        "LLMOPT_INFRA_HOME": str(tmp_path / "infra"),
        "LLMOPT_INFRA_DB_PREFIX": prefix,
        "LLMOPT_INFRA_REDIS_DB": str(redis_db),
        "LLMOPT_INFRA_MLFLOW_PORT": str(free_port()),
        "LLMOPT_INFRA_PREFECT_PORT": str(free_port()),
        "LLMOPT_INFRA_SERVING_PORT": str(free_port()),
        "LLMOPT_INFRA_WORKERS": "1",
        "LLMOPT_INFRA_TIMEOUT": "200",
    }
    try:
        yield env
    finally:
        script("down.sh", env, timeout=120)
        server = postgres_url.rpartition("/")[0]
        admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            names = conn.execute(
                sa.text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                {"p": f"{prefix}%"},
            ).scalars()
            for name in list(names):
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        import redis  # noqa: PLC0415

        r = redis.Redis(host="127.0.0.1", port=6379, db=redis_db)
        for key in r.scan_iter():
            # Feast's keys end with the project's name; the serving state's (budgets, breakers,
            # rate limits: LLMOPT_SERVING_SHARED_STATE=redis) start with its prefix
            if key.endswith(b"llmopt") or key.startswith(b"llmopt:serving:"):
                r.delete(key)


@dataclass
class Stack:
    """A running stack of our own: where its parts listen and keep their state."""

    env: dict[str, str]
    up_seconds: float

    @property
    def home(self) -> Path:
        return Path(self.env["LLMOPT_INFRA_HOME"])

    def port(self, component: str) -> int:
        return int(self.env[f"LLMOPT_INFRA_{component.upper()}_PORT"])

    @property
    def serving_url(self) -> str:
        return f"http://127.0.0.1:{self.port('serving')}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.port('mlflow')}"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.port('prefect')}/api"

    @property
    def events_url(self) -> str:
        return f"{PG_SERVER}/{self.env['LLMOPT_INFRA_DB_PREFIX']}llmopt"

    @property
    def redis_db(self) -> int:
        return int(self.env["LLMOPT_INFRA_REDIS_DB"])

    def settings(self, home: Path) -> Settings:
        """Settings of a client of the stack (what ``source env.sh`` gives a shell)."""
        return Settings(
            home=home,
            database_url=self.events_url,
            mlflow_tracking_uri=self.mlflow_url,
            mlflow_artifacts_uri="mlflow-artifacts:/experiments",
        )

    def feast_env(self) -> dict[str, str]:
        """The ``LLMOPT_FEAST_*`` placeholders of feature_repo/production/feature_store.yaml."""
        return {
            "LLMOPT_FEAST_PG_HOST": "127.0.0.1",
            "LLMOPT_FEAST_PG_PORT": "5432",
            "LLMOPT_FEAST_PG_USER": "postgres",
            "LLMOPT_FEAST_PG_PASSWORD": "",
            "LLMOPT_FEAST_PG_DATABASE": f"{self.env['LLMOPT_INFRA_DB_PREFIX']}llmopt",
            "LLMOPT_FEAST_REDIS": f"127.0.0.1:6379,db={self.redis_db}",
        }

    def pid(self, component: str) -> int:
        return int((self.home / "run" / f"{component}.pid").read_text())

    def log(self, component: str) -> str:
        return (self.home / "logs" / f"{component}.log").read_text(errors="replace")

    def served(self, tenant: str = "probe") -> tuple[str, str]:
        """The policy version a decision is made by now, and its role (``served_by``)."""
        status, d = http(f"{self.serving_url}/decide", {"tenant": tenant, "prompt": "2 + 2?"})
        assert status == 200, d
        return str(d["policy_version"]), str(d["served_by"])

    def policy_version(self, tenant: str = "probe") -> str:
        """The policy version a decision is made by now."""
        return self.served(tenant)[0]

    def wait_for_version(self, label: str, timeout_s: float) -> float:
        """Poll ``/decide`` until ``label`` decides as the champion; seconds it took. (A
        version moved to staging, then prod, may first answer as the challenger of a canary:
        the alias poller can run between the two moves.)"""
        started = time.monotonic()
        wait_until(
            f"policy_version {label} as the champion",
            lambda: self.served() == (label, "champion"),
            timeout_s,
            every_s=0.05,
        )
        return time.monotonic() - started

    def pause_schedules(self) -> list[str]:
        """Pause every deployment's schedule (runs are started by hand); the names."""
        _, deployments = http(f"{self.prefect_api}/deployments/filter", {})
        for d in deployments:
            status, _ = http(f"{self.prefect_api}/deployments/{d['id']}/pause_deployment", {})
            assert status in (200, 204), status
        return [d["name"] for d in deployments]

    def start_flow_run(self, deployment: str) -> str:
        """A run of ``flow/deployment`` for the work pool's worker; its id."""
        status, d = http(f"{self.prefect_api}/deployments/name/{deployment}")
        assert status == 200, d
        status, run = http(f"{self.prefect_api}/deployments/{d['id']}/create_flow_run", {})
        assert status in (200, 201), run
        return str(run["id"])

    def flow_run(self, run_id: str) -> dict[str, Any]:
        status, run = http(f"{self.prefect_api}/flow_runs/{run_id}")
        assert status == 200, run
        return dict(run)

    def wait_flow_run(self, run_id: str, timeout_s: float) -> dict[str, Any]:
        """Wait until the flow run reaches a final state; the run."""
        final = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
        return dict(
            wait_until(
                f"flow run {run_id}",
                lambda: (r := self.flow_run(run_id))["state_type"] in final and r,
                timeout_s,
                every_s=1.0,
            )
        )

    def task_runs(self, run_id: str) -> list[dict[str, Any]]:
        body = {"flow_runs": {"id": {"any_": [run_id]}}}
        status, runs = http(f"{self.prefect_api}/task_runs/filter", body)
        assert status == 200, runs
        return list(runs)


@pytest.fixture
def stack(stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Stack:
    """A stack started with ``infra/up.sh`` (``make up``), its schedules paused; down afterwards."""
    stack_env["LLMOPT_SERVING_POLL_S"] = str(POLL_S)
    # The tests' logs are small: every training run that learned something registers.
    stack_env["LLMOPT_REGISTER_MIN_EVENTS"] = "1"
    # Nor a retraining run that serving's drift detectors start on the tests' traffic (it would
    # register a version beside the one a test's own flow run registers): alert only.
    stack_env["LLMOPT_RETRAIN_DEPLOYMENT"] = ""
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # this process's client
    started = time.monotonic()
    up = script("up.sh", stack_env, timeout=400)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-5000:]
    running = Stack(stack_env, time.monotonic() - started)
    running.pause_schedules()  # no scheduled run interferes with the runs a test starts
    return running
