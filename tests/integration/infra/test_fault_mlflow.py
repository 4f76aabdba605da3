"""The MLflow tracking server killed under load, on a stack of our own (``make up`` on free ports).

A version aliased ``prod`` serves; ``bench.traffic`` drives decide + feedback round trips from a
second process; MLflow's server (this stack's, by its pid file) is SIGKILLed. The service must
keep answering with the model it has (no 5xx, the same ``policy_version`` throughout) and its
alias poller must say so in the service log ("source unavailable, current model kept"). An
``incremental-training`` run started while MLflow is down must complete once MLflow is back
(restarted within the client's retry window, the same command line, by ``infra/lib.sh``'s
``start_bg``): its MLflow calls retry (MLflow's HTTP client: 7 retries with exponential backoff,
~4 minutes, under the Prefect task retries of ``train-incremental`` and ``log-model-version``).
After the restart the service must pick up a later alias change.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from .conftest import INFRA, POLL_S, ROOT, Stack, http, port_open, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.services, pytest.mark.slow]

KEPT = "source unavailable, current model kept"
RATE, SECONDS = 30, 15
KILL_AFTER = 30
"""Round trips of ``bench.traffic`` (tenants ``t0``..``t6``) stored before MLflow is killed."""


def traffic_decisions(engine: sa.Engine) -> dict[str, int]:
    """Decisions of ``bench.traffic``'s tenants in the event log, by policy version."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT policy_version, count(*) FROM decisions WHERE tenant LIKE 't_' "
                "GROUP BY policy_version"
            )
        ).all()
    return {str(v): int(n) for v, n in rows}


def mlflow_healthy(stack: Stack) -> bool:
    try:
        return http(f"{stack.mlflow_url}/health", timeout=2) == (200, "OK")
    except OSError:
        return False


def restart_mlflow(stack: Stack, argv: list[str]) -> None:
    """Start MLflow again as ``make up`` does (own session, pid file, log): same command line."""
    subprocess.run(
        ["bash", "-c", f'source "{INFRA}/lib.sh" && stack_env && start_bg mlflow "$@"', "_", *argv],
        env=stack.env,
        cwd=ROOT,
        check=True,
        timeout=30,
    )


@pytest.mark.timeout(600)
def test_mlflow_killed_under_load(stack: Stack, tmp_path: Path) -> None:
    from models.kinds import RECOMMENDED, make_policy  # noqa: PLC0415
    from registry import mlflow_registry as registry  # noqa: PLC0415 - MLflow imports take seconds

    print(f"\nmake up: {stack.up_seconds:.0f} s")
    settings = stack.settings(tmp_path / "client")
    first = registry.register_policy(
        make_policy(RECOMMENDED, seed=0),
        settings=settings,
        aliases=("dev", "prod"),
        tags={"data_window": "feedback (0, 0]", "last_feedback_id": "0", "n_events": "0"},
    )
    label = registry.version_label(first)
    swap_s = stack.wait_for_version(label, timeout_s=60)
    print(f"bootstrap: {label} aliased dev + prod, served {swap_s:.2f} s after registering")

    # -- MLflow killed while a second process drives traffic --------------------------------
    events = sa.create_engine(stack.events_url)
    pid = stack.pid("mlflow")
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")
    tree = _descendants(pid)  # MLflow's workers (they should share its process group)
    traffic = subprocess.Popen(
        [sys.executable, "-m", "bench.traffic", "--url", stack.serving_url]
        + ["--rate", str(RATE), "--seconds", str(SECONDS)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            "traffic before the kill",
            lambda: sum(traffic_decisions(events).values()) >= KILL_AFTER,
            30,
            every_s=0.1,
        )
        before_kill = sum(traffic_decisions(events).values())
        t_kill = time.monotonic()
        os.killpg(pid, signal.SIGKILL)  # this stack's MLflow server and its workers only
        for p in tree:
            try:
                os.kill(p, signal.SIGKILL)  # a worker that left the group
            except ProcessLookupError:
                pass
        wait_until("MLflow's port closed", lambda: not port_open(stack.port("mlflow")), 10)
        run_id = stack.start_flow_run("incremental-training/incremental-training")

        seen: Counter[str] = Counter()
        while traffic.poll() is None:
            seen[stack.policy_version()] += 1
            time.sleep(0.5)
        out, err = traffic.communicate(timeout=30)
    finally:
        if traffic.poll() is None:
            traffic.kill()
    tally = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    assert tally, err[-2000:]
    counts = tally["tally"]
    print(
        f"bench.traffic (second process): {tally['rounds']} rounds in {tally['seconds']} s, "
        f"{tally['server_errors']} 5xx, tally {counts}; probe decisions by {dict(seen)}"
    )
    assert tally["server_errors"] == 0
    assert not [k for k in counts if k.startswith("transport")], counts
    assert counts.get("decide 200") == tally["rounds"]
    assert tally["accepted_feedback"] == tally["rounds"]
    assert set(seen) == {label}

    by_version = traffic_decisions(events)
    events.dispose()
    during = sum(by_version.values()) - before_kill
    print(
        f"traffic decisions stored: {before_kill} before the kill, {during} during the outage; "
        f"by policy_version {by_version}"
    )
    assert by_version == {label: tally["rounds"]}
    assert during >= tally["rounds"] // 2  # most of the traffic met the outage

    kept = wait_until(
        "the alias poller's 'current model kept'",
        lambda: stack.log("serving").count(KEPT),
        15,
    )
    print(f"service log: {kept} x '{KEPT}' (alias poll every {POLL_S:g} s)")

    # -- the flow run waits for MLflow; MLflow comes back -----------------------------------
    wait_until(
        "the flow run's first task to start",
        lambda: stack.task_runs(run_id),
        180,
        every_s=1.0,
    )
    time.sleep(3)  # its first MLflow call is failing now
    state_before = stack.flow_run(run_id)["state_type"]
    t_restart = time.monotonic()
    restart_mlflow(stack, argv)
    wait_until("MLflow healthy again", lambda: mlflow_healthy(stack), 180, every_s=0.5)
    outage_s = time.monotonic() - t_kill
    print(
        f"MLflow down {outage_s:.0f} s: restarted {t_restart - t_kill:.0f} s after the kill "
        f"(its pid file's command line), healthy {time.monotonic() - t_restart:.0f} s later"
    )
    assert state_before == "RUNNING"

    run = stack.wait_flow_run(run_id, timeout_s=300)
    flow_s = time.monotonic() - t_kill
    tasks = [
        (t["name"].rsplit("-", 1)[0], t["state_type"], t["run_count"])
        for t in stack.task_runs(run_id)
    ]
    print(
        f"training flow started during the outage: {run['state_type']} {flow_s:.0f} s after the "
        f"kill; tasks (name, state, attempts) {tasks}"
    )
    # the flow did meet the outage: MLflow's client retried (the worker logs the flow's output)
    retried = [
        line
        for line in stack.log("prefect-worker-1").splitlines()
        if "Retrying (Retry(" in line and f"port={stack.port('mlflow')}" in line
    ]
    print(f"flow's MLflow client: {len(retried)} retries logged, first {retried[:1]}")
    assert run["state_type"] == "COMPLETED", run["state"]
    assert retried
    client = registry.configure(settings)
    newest = registry.list_versions(client)[0]
    assert newest.version != first and newest.aliases == ("dev",)
    assert newest.tags["source_flow"] == "incremental-training"
    assert int(newest.tags["n_events"]) >= tally["rounds"]

    # -- a later alias change reaches the service -------------------------------------------
    assert stack.policy_version() == label  # still the model it had
    registry.set_alias(client, newest.version, "prod")
    new_label = registry.version_label(newest.version)
    swap_s = stack.wait_for_version(new_label, timeout_s=60)
    print(f"after the restart: prod -> {new_label}, served {swap_s:.2f} s after the alias move")
    assert swap_s < POLL_S + 15
    # the poller is back to normal: no more "current model kept" (BentoML logs WARNING and up)
    quiet = stack.log("serving").count(KEPT)
    time.sleep(3 * POLL_S)
    assert stack.log("serving").count(KEPT) == quiet


def _descendants(pid: int) -> list[int]:
    table = subprocess.run(
        ["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True
    ).stdout
    children: dict[int, list[int]] = {}
    for line in table.splitlines():
        p, parent = map(int, line.split())
        children.setdefault(parent, []).append(p)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
