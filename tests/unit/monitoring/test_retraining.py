"""An isolated retraining trigger (serving's) asks from a child process and never imports Prefect
into the process that answers requests; a child that fails is a ``failed`` outcome."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from monitoring.retraining import RetrainTrigger


def child_env(tmp_path: Path) -> dict[str, str]:
    """No Prefect API: an empty Prefect home, no ``PREFECT_API_URL``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    return env


def test_an_isolated_trigger_asks_from_a_child_and_never_imports_prefect(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from monitoring.retraining import RetrainTrigger\n"
        "t = RetrainTrigger('nightly-training/nightly-training', isolate=True)\n"
        "o = t.request('drift of gpt-4o quality (cusum)')\n"
        "print(o.status, o.source, 'prefect' in sys.modules)\n"
        "print(o.detail)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    first, detail = done.stdout.splitlines()[:2]
    assert first == "no_api detector False"  # the child's answer; Prefect stayed out of here
    assert "no Prefect API is configured" in detail


def test_without_isolation_or_once_prefect_is_imported_the_request_stays_in_process() -> None:
    import prefect  # noqa: F401, PLC0415 - imported here: no reason for a child any more

    trigger = RetrainTrigger("a/b", isolate=True, api_url=lambda: None)
    assert trigger.request("drift").status == "no_api"  # api_url is only read in process


def test_a_child_that_fails_is_a_failed_outcome() -> None:
    trigger = RetrainTrigger("a/b", isolate=True)
    trigger.deployment = "no-slash"  # the child's own trigger refuses it: a traceback, exit 1
    out = trigger._send_in_child("drift")
    assert out.status == "failed" and out.source == "detector" and out.reason == "drift"
    assert "child process failed" in out.detail
    assert "deployment must be 'flow name/deployment name'" in out.detail


def test_a_child_that_cannot_reach_the_api_says_so() -> None:
    trigger = RetrainTrigger("nightly-training/nightly-training", isolate=True)
    # nothing listens there; the reason looks like an option, and the child still reads it
    out = trigger._send_in_child("-drift", api_url="http://127.0.0.1:9/api")
    assert out.status == "failed" and out.reason == "-drift"  # the child's own outcome
    assert "Prefect API at http://127.0.0.1:9/api answered" in out.detail
