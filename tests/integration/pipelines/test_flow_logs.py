"""A flow run's progress is stored as its logs (what the Prefect UI shows); library chatter is not.

``llmopt flows run`` runs in a process of its own, as a user runs it, against the session's
Prefect API (``PREFECT_API_URL``): its flow-run logs are read back through the Prefect client.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from llmopt.settings import Settings
from pipelines.runtime import QUIET_LOGGERS, configure_environment

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.usefixtures("prefect_harness"),
]

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
NOISE = ("Creating initial MLflow database tables", "Successfully registered model", "Context impl")
"""INFO lines MLflow and Alembic print during a training flow unless quieted."""


def flow_run_logs(flow_name: str, after: datetime) -> tuple[Any, list[Any]]:
    """The one run of ``flow_name`` started after ``after`` and its stored logs."""
    from prefect import get_client  # noqa: PLC0415
    from prefect.client.schemas.filters import (  # noqa: PLC0415
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
        LogFilter,
        LogFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=after)),
        )
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    return run, logs


def test_a_training_flow_run_stores_its_info_progress_and_no_library_info(
    env: Settings, filled: Callable[..., int]
) -> None:
    from prefect.settings import PREFECT_API_URL  # noqa: PLC0415

    filled(120)
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_LOGGING_LEVEL", "MLFLOW_LOGGING_LEVEL", "PREFECT_HOME")
    }
    environ["PREFECT_API_URL"] = str(PREFECT_API_URL.value())  # the session's test server
    started = datetime.now(UTC)
    done = subprocess.run(
        [str(BIN / "llmopt"), "flows", "run", "nightly-training", "--param", "use_hpo=false"],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run, logs = flow_run_logs("nightly-training", started)
    deadline = time.monotonic() + 10  # logs are shipped in batches; the last at exit
    while not any(x.message.startswith("Finished in state") and not x.task_run_id for x in logs):
        assert time.monotonic() < deadline, [x.message for x in logs]
        time.sleep(0.5)
        run, logs = flow_run_logs("nightly-training", started)
    info = [x for x in logs if x.level == logging.INFO]
    # The engine's progress of the flow and of each task, and the tasks' own lines, at INFO:
    engine = [x for x in info if x.message.startswith(("Finished in state", "Beginning flow"))]
    assert {x.task_run_id is None for x in engine} == {True, False}, info
    own = [x for x in info if x not in engine and x.task_run_id is not None]
    assert own, [x.message for x in info]  # e.g. "registered llm-router version 1 ..."
    assert {x.name for x in info} <= {"prefect.flow_runs", "prefect.task_runs"}
    quiet = tuple(QUIET_LOGGERS)
    assert not [x for x in logs if x.name.startswith(quiet) and x.level < logging.WARNING]
    assert not [x for x in logs if any(n in x.message for n in NOISE)]
    # ...and the console of `llmopt flows run` shows progress, not the libraries' chatter.
    assert "Finished in state Completed()" in done.stderr
    assert not [line for line in done.stderr.splitlines() if any(n in line for n in NOISE)], (
        done.stderr[-3000:]
    )


def test_configure_environment_keeps_prefect_at_info_and_quiets_the_libraries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("PREFECT_LOGGING_LEVEL", "MLFLOW_LOGGING_LEVEL", "PREFECT_HOME"):
        monkeypatch.delenv(var, raising=False)
    for name in QUIET_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    monkeypatch.setattr(logging.getLogger("optuna"), "level", logging.ERROR)
    out = configure_environment(Settings(home=tmp_path / "h"))
    assert out["PREFECT_LOGGING_LEVEL"] == "INFO" and out["MLFLOW_LOGGING_LEVEL"] == "WARNING"
    assert logging.getLogger("mlflow.tracking").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("alembic.runtime.migration").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("optuna").level == logging.ERROR  # quieter already: kept
