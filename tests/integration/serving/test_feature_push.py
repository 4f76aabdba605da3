"""The online-feature push in its child process (``python -m serving.feature_push``), against a
real embedded Feast store and a real SQLite event log."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llmopt.event_log import EventLog
from llmopt.schemas import Decision, ErrorKind, Feedback, RequestContext
from llmopt.settings import Settings
from serving import feature_push
from serving.feature_push import PushProcess
from serving.live_features import ERROR_RATE, LiveFeatures
from serving.runtime import ServingRuntime

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def _failing_feedback(url: str, model: str, n: int) -> None:
    """``n`` decisions for ``model`` whose calls timed out, as another worker logs them."""
    log = EventLog(url)
    ctx = RequestContext(tenant="acme", prompt="What is 2 + 2?")
    for _ in range(n):
        d = Decision(model=model, propensity=1.0, policy_name="p", policy_version="w2")
        log.record_decision(d, ctx, features={})
        log.record_feedback(
            Feedback(decision_id=d.decision_id, quality=0.0, error_kind=ErrorKind.TIMEOUT)
        )
    log.close()


def _wait(cond, timeout_s: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "h",
        serving_model_source="fresh",
        serving_features="embedded",
        serving_features_ttl_s=0.001,
        serving_features_budget_ms=2000,
        serving_features_push_s=0.2,
    )


def test_the_child_pushes_the_logs_feedback_and_survives_being_killed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feature_push, "RESTART_PAUSE_S", 0.1)
    live = LiveFeatures.open(settings, None)  # copies and applies the embedded repo
    assert live.writer is not None
    EventLog(settings.event_log_url).close()  # the schema, before the child opens the log
    reports: list[tuple[int, int]] = []
    lock = threading.Lock()

    def on_push(pushed: int, cursor: int) -> None:
        with lock:
            reports.append((pushed, cursor))

    pusher = PushProcess(
        Path(str(live.writer.store.config.repo_path)),
        "embedded",
        after=0,
        interval_s=0.2,
        on_push=on_push,
        event_log_url=settings.event_log_url,
    ).start()
    try:
        _failing_feedback(settings.event_log_url, "gpt-4o-mini", 20)
        assert _wait(lambda: sum(p for p, _ in reports) >= 20), (reports, pusher.failures)
        assert reports[-1][1] == 20  # the cursor: the last feedback id pushed
        assert pusher._proc is not None  # below the serving process's CPU priority
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, pusher._proc.pid) == min(own + 10, 19)
        values = live.reader.read(["gpt-4o-mini"], tenant="acme", task_type="general")
        assert not values.degraded, values.reason
        assert values.values["gpt-4o-mini"][ERROR_RATE] == pytest.approx(1.0)

        # Killed: started again from the cursor it reported, nothing pushed twice.
        assert pusher._proc is not None
        pusher._proc.kill()
        assert _wait(lambda: pusher.starts == 2 and pusher.alive), pusher.failures
        assert pusher.failures  # the end was noticed and said
        assert "--after=20" in pusher.command()
        _failing_feedback(settings.event_log_url, "gpt-4o-mini", 5)
        assert _wait(lambda: reports[-1][1] == 25), reports
        assert sum(p for p, _ in reports) == 25
    finally:
        pusher.close()
        live.close()
    assert not pusher.alive


def test_the_runtime_pushes_through_the_child_and_stops_it(settings: Settings) -> None:
    rt = ServingRuntime(settings)
    try:
        assert _wait(lambda: rt.features_state == "open", 120), rt.features_state
        pusher = rt._pusher
        assert isinstance(pusher, PushProcess)
        assert _wait(lambda: pusher.alive)
        _failing_feedback(settings.event_log_url, "gpt-4o-mini", 3)
        features = rt.router.features
        assert features is not None
        assert _wait(lambda: features.pushed_events >= 3), pusher.failures
        assert features.cursor == 3
    finally:
        rt.close()
    assert not pusher.alive


def test_a_thread_pushes_when_the_process_is_off(settings: Settings) -> None:
    rt = ServingRuntime(settings.model_copy(update={"serving_push_process": False}))
    try:
        assert _wait(lambda: rt.features_state == "open", 120), rt.features_state
        assert isinstance(rt._pusher, threading.Thread)
        assert rt._pusher.name == "feature-pusher"
        _failing_feedback(settings.event_log_url, "gpt-4o-mini", 2)
        features = rt.router.features
        assert features is not None
        assert _wait(lambda: features.pushed_events >= 2)
    finally:
        rt.close()


def test_the_child_stops_when_its_parent_is_gone(settings: Settings) -> None:
    live = LiveFeatures.open(settings, None)
    assert live.writer is not None
    EventLog(settings.event_log_url).close()
    live.close()
    # --parent names a process that is not the child's parent: it ends without a push.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.feature_push",
            f"--repo={live.writer.store.config.repo_path}",
            "--interval-s=0.2",
            "--parent=1",
        ],
        check=False,
        cwd=REPO,
        env={**PushProcess.child_env(settings.event_log_url)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == ""


def test_bad_arguments_are_refused_with_a_message() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "serving.feature_push", "--repo=x", "--interval-s=0"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "--interval-s must be > 0" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_child_that_cannot_start_is_retried_and_its_errors_kept_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feature_push, "RESTART_PAUSE_S", 0.05)
    monkeypatch.setattr(feature_push, "KEPT_FAILURES", 2)
    pusher = PushProcess(
        tmp_path / "missing",
        "embedded",
        after=0,
        interval_s=1.0,
        on_push=lambda pushed, cursor: None,
        event_log_url=f"sqlite:///{tmp_path}/events.db",
    ).start()
    try:
        assert _wait(lambda: pusher.starts >= 4, 120), pusher.failures
    finally:
        pusher.close()
    assert len(pusher.failures) == 2
    assert all("no Feast repository folder" in f for f in pusher.failures), pusher.failures
