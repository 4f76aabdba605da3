"""Parameter tuning's TPE work in its child process (``python -m serving.tuning_process``): real
child processes, real Optuna studies on both sides."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from llmopt.schemas import Feedback, RequestContext
from llmopt.settings import Settings
from models.tuning import ParameterTuner
from serving import tuning_process
from serving.parameters import SERVING_SPACE, ServedTuning
from serving.runtime import ServingRuntime
from serving.tuning_process import TuningProcess, TuningProcessError

pytestmark = pytest.mark.integration

KEY = "chat/gpt-4o-mini"
CATALOG_PARAMS = {"temperature": 0.7, "max_tokens": 1024}


def _tuner(temperatures: list[float]) -> ParameterTuner:
    tuner = ParameterTuner(SERVING_SPACE, n_startup_trials=2, smoothing=0.0, seed=0)
    for t in temperatures:
        tuner.record(KEY, {**tuner.defaults(), "temperature": t}, t)
    return tuner


def _fed_tuning(min_feedback: int) -> ServedTuning:
    """A deferred tuning (always exploring once tuned) whose pair has ``min_feedback`` rewards."""
    tuning = ServedTuning(min_feedback=min_feedback, explore=1.0, seed=0)
    tuning.deferred = True
    for _ in range(min_feedback):
        s = tuning.suggest("chat", "gpt-4o-mini", CATALOG_PARAMS)
        tuning.observe(s.record, s.params, 0.5)
    return tuning


def _feed(rt: ServingRuntime, n: int) -> None:
    """``n`` decisions of one pair, each with its feedback."""
    for _ in range(n):
        ctx = RequestContext(tenant="t", prompt="What is 2 + 2?", models=["gpt-4o-mini"])
        d = rt.router.decide(ctx).decision
        rt.router.feedback(Feedback(decision_id=d.decision_id, quality=0.7))


def test_the_child_answers_from_the_trials_sent_and_then_only_new_ones() -> None:
    tuner = _tuner([0.1, 0.6, 0.3])
    with TuningProcess() as child:
        best, nxt = child.refresh("o", tuner, KEY, suggest=True)
        assert best["temperature"] == 0.6
        assert nxt is not None and tuner.validate(nxt) == nxt
        assert child._sent[("o", KEY)][0] == 3
        tuner.record(KEY, {**tuner.defaults(), "temperature": 0.9}, 0.9)
        best, nxt = child.refresh("o", tuner, KEY, suggest=False)
        assert best["temperature"] == 0.9 and nxt is None
        assert child._sent[("o", KEY)][0] == 4
        assert child.starts == 1 and child.cpu_s > 0
        # the parent's trials are no longer what the child holds (another tuner, same owner)
        other = _tuner([0.2])
        best, _ = child.refresh("o", other, KEY, suggest=False)
        assert best["temperature"] == 0.2


def test_what_the_parent_remembers_is_bounded_like_the_childs_studies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Owners come and go (a tuning per policy version): the parent keeps the trial counts of
    as many pairs as the child keeps studies, the most recent; an evicted pair sends all."""
    monkeypatch.setattr(tuning_process, "KEPT_STUDIES", 3)
    tuner = _tuner([0.1, 0.6])
    with TuningProcess() as child:
        for owner in ("a", "b", "c", "d"):
            child.refresh(owner, tuner, KEY, suggest=False)
        assert list(child._sent) == [("b", KEY), ("c", KEY), ("d", KEY)]
        best, _ = child.refresh("a", tuner, KEY, suggest=False)  # all sent again
        assert best["temperature"] == 0.6 and child._sent[("a", KEY)][0] == 2
        assert list(child._sent) == [("c", KEY), ("d", KEY), ("a", KEY)]


def test_a_dead_child_is_started_again_and_sent_every_trial() -> None:
    tuner = _tuner([0.4, 0.5])
    with TuningProcess() as child:
        child.refresh("o", tuner, KEY, suggest=False)
        pid = child.pid
        assert pid is not None
        psutil.Process(pid).kill()
        psutil.Process(pid).wait(10)
        tuner.record(KEY, {**tuner.defaults(), "temperature": 0.8}, 0.8)
        best, _ = child.refresh("o", tuner, KEY, suggest=False)
        assert best["temperature"] == 0.8
        assert child.starts == 2 and child.pid not in (None, pid)
        assert child.failures == []


def test_a_child_that_dies_in_a_call_fails_it_and_is_retried_after_a_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tuning_process, "RESTART_PAUSE_S", 0.3)
    dies = ["python3", "-c", "import sys; sys.stdin.readline(); sys.exit(4)"]
    monkeypatch.setattr(TuningProcess, "command", staticmethod(lambda: dies))
    tuner = _tuner([0.4])
    with TuningProcess() as child:
        with pytest.raises(TuningProcessError, match="the child ended"):
            child.refresh("o", tuner, KEY, suggest=False)
        with pytest.raises(TuningProcessError, match="not retried yet"):
            child.refresh("o", tuner, KEY, suggest=False)
        time.sleep(0.4)
        with pytest.raises(TuningProcessError, match="the child ended"):
            child.refresh("o", tuner, KEY, suggest=False)
        assert child.starts == 2 and not child.alive
        assert len(child.failures) == 2  # the call refused during the pause started no child


def test_a_child_that_does_not_answer_in_time_is_stopped() -> None:
    silent = ["python3", "-c", "import sys, time; sys.stdin.readline(); time.sleep(60)"]
    with TuningProcess(timeout_s=0.5) as child:
        child.command = lambda: silent  # type: ignore[method-assign]
        started = time.monotonic()
        with pytest.raises(TuningProcessError, match="no answer within 0.5 s"):
            child.refresh("o", _tuner([0.4]), KEY, suggest=False)
        assert time.monotonic() - started < 10 and not child.alive


def test_the_child_runs_niced_and_ends_with_its_input() -> None:
    child = TuningProcess()
    child.refresh("o", _tuner([0.5]), KEY, suggest=False)
    proc = child._proc
    assert proc is not None
    assert psutil.Process(proc.pid).nice() == os.nice(0) + tuning_process.NICE
    assert proc.stdin is not None
    proc.stdin.close()  # what the parent's exit does
    assert proc.wait(10) == 0
    child.close()


def test_served_tuning_serves_the_childs_suggestions_and_learns_them() -> None:
    tuning = _fed_tuning(3)
    with TuningProcess() as child:
        assert tuning.refresh(child=child) == 1
        s = tuning.suggest("chat", "gpt-4o-mini", CATALOG_PARAMS)
        assert s.reason.startswith(f"tuning: TPE suggestion for {KEY}"), s.reason
        assert s.record == {"key": KEY, "trial": None}
        assert tuning.observe(s.record, s.params, 0.9)  # recorded as the parameters served
        assert tuning.tuner.n_trials(KEY) == 4
        assert tuning.refresh(child=child) == 1
        tuning.explore = 0.0  # the best now: the suggestion that earned 0.9
        assert tuning.suggest("chat", "gpt-4o-mini", CATALOG_PARAMS).params == s.params


def test_pairs_wait_while_the_child_cannot_answer_then_are_refreshed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tuning_process, "RESTART_PAUSE_S", 0.3)
    ends = ["python3", "-c", "import sys; sys.exit(3)"]  # a child that ends at once
    tuning = _fed_tuning(2)
    with TuningProcess() as child:
        child.command = lambda: ends  # type: ignore[method-assign]
        assert tuning.refresh(child=child) == 0  # and it returns: the pair waits
        assert child.failures and child.cooling
        assert tuning.stale == 1  # nothing computed in-process: the pair waits
        assert tuning.tuner.expire(KEY, keep=0) == 0  # no trial was asked here
        s = tuning.suggest("chat", "gpt-4o-mini", CATALOG_PARAMS)
        assert s.reason.startswith("default"), s.reason
        time.sleep(0.4)
        child.command = TuningProcess.command  # type: ignore[method-assign]
        assert tuning.refresh(child=child) == 1 and tuning.stale == 0
    s = tuning.suggest("chat", "gpt-4o-mini", CATALOG_PARAMS)
    assert s.reason.startswith(f"tuning: TPE suggestion for {KEY}"), s.reason


def test_the_runtime_tunes_through_the_child_and_stops_it(tmp_path: Path) -> None:
    s = Settings(
        home=tmp_path / "h",
        serving_model_source="fresh",
        serving_features="off",
        serving_tuning_cpu_share=0.5,
    )
    rt = ServingRuntime(s)
    try:
        child = rt.tuning_process
        assert child is not None
        _feed(rt, 60)
        deadline = time.monotonic() + 60
        while (rt.router.tuning.stale or not child.cpu_s) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rt.router.tuning.stale == 0 and child.cpu_s > 0 and child.alive
        proc = child._proc
    finally:
        rt.close()
    assert proc is not None and proc.wait(10) == 0  # stopped with the runtime
    off = Settings(
        home=tmp_path / "h2",
        serving_model_source="fresh",
        serving_features="off",
        serving_tuning_process=False,
    )
    rt = ServingRuntime(off)
    try:
        assert rt.tuning_process is None
    finally:
        rt.close()


def test_the_runtime_leaves_the_pairs_stale_while_the_child_cools_down(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "h", serving_model_source="fresh", serving_features="off")
    rt = ServingRuntime(s)
    try:
        child = rt.tuning_process
        assert child is not None
        rt._stop.set()  # the refresh thread stops: this test refreshes by hand
        tuning = rt.router.tuning
        _feed(rt, 30)
        stale = tuning.stale
        assert stale >= 1
        child._retry_at = time.monotonic() + 60  # as after a failure
        assert rt.refresh_tuning_once() == 0.0
        assert tuning.stale == stale
        child._retry_at = 0.0
        assert rt.refresh_tuning_once() > 0.0
        assert tuning.stale == stale - 1
    finally:
        rt.close()
