"""The serving runtime's background work: the parameter tuning refreshed off the feedback path,
the event log's checkpoints on a thread of their own."""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

from llmopt.schemas import Feedback, RequestContext
from llmopt.settings import Settings
from serving.runtime import GC_THRESHOLDS, ServingRuntime, settle_for_serving


def test_tuning_is_refreshed_by_the_background_thread_not_the_feedback_path(tmp_path: Path) -> None:
    s = Settings(
        home=tmp_path / "h",
        serving_model_source="fresh",
        serving_features="off",
        serving_tuning_cpu_share=0.5,
    )
    rt = ServingRuntime(s)
    try:
        tuning = rt.router.tuning
        assert tuning.deferred
        assert any(t.name == "tuning-refresh" for t in rt._threads)
        for _ in range(60):
            ctx = RequestContext(tenant="t", prompt="What is 2 + 2?", models=["gpt-4o-mini"])
            d = rt.router.decide(ctx).decision
            rt.router.feedback(Feedback(decision_id=d.decision_id, quality=0.7))
        tuned = [k for k in tuning.tuner.task_types if tuning.n_feedback(k) >= 20]
        assert tuned  # some (task type x model) pair has enough feedback to be tuned
        deadline = time.monotonic() + 20
        while tuning.stale and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tuning.stale == 0
        task, model = tuned[0].split("/", 1)
        reason = tuning.suggest(task, model, {"temperature": 0.7}).reason
        assert reason.startswith(("tuned", "tuning")), reason
    finally:
        rt.close()


def test_a_foreground_runtime_tunes_on_the_feedback_path(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "h", serving_model_source="fresh", serving_features="off")
    rt = ServingRuntime(s, background=False)
    try:
        assert not rt.router.tuning.deferred
        assert rt.refresh_tuning_once() == 0.0  # nothing stale: nothing done, the thread idles
    finally:
        rt.close()


def test_the_embedded_event_log_is_checkpointed_off_the_commit_path(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "h", serving_model_source="fresh", serving_features="off")
    rt = ServingRuntime(s, background=False)
    try:
        cp = rt.event_log.checkpointer
        assert cp is not None and cp.interval_s == s.serving_wal_checkpoint_s
    finally:
        rt.close()
    off = s.model_copy(update={"serving_wal_checkpoint_s": 0.0})
    rt = ServingRuntime(off, background=False)
    try:
        assert rt.event_log.checkpointer is None  # SQLite's own checkpoint, in the commits
    finally:
        rt.close()


def test_settling_for_serving_freezes_the_heap_and_sets_the_collector_and_the_switch() -> None:
    thresholds, switch = gc.get_threshold(), sys.getswitchinterval()
    kept = [object() for _ in range(10)]  # objects alive before: frozen with the heap
    try:
        settle_for_serving(Settings(serving_switch_interval_ms=0.25))
        assert gc.get_threshold() == GC_THRESHOLDS
        assert sys.getswitchinterval() == 0.00025
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(switch)
