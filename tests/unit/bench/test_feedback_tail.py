"""The feedback-tail benchmark's plumbing (figures: ``python -m bench feedback_tail``)."""

from __future__ import annotations

import pytest

from bench import feedback_tail


def test_one_short_run_decides_learns_and_pushes_through_the_child() -> None:
    row = feedback_tail._run_child("push_process", seconds=2.0, idle_s=3.0)
    assert row["mode"] == "push_process"
    assert row["decisions"] == 1000  # 2 s at 500/s
    assert row["feedback"] >= 30  # 20/s for ~2 s
    assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["p999_ms"] <= row["max_ms"]


def test_the_summary_compares_the_modes_medians(monkeypatch: pytest.MonkeyPatch) -> None:
    p99 = {"no_feedback": 2.0, "push_thread": 12.0, "push_process": 4.0, "tuning_process": 3.0}

    def fake(mode: str, seconds: float, idle_s: float) -> dict[str, object]:
        return {"mode": mode, "p50_ms": 1.0, "p99_ms": p99[mode], "p999_ms": 20.0}

    monkeypatch.setattr(feedback_tail, "_run_child", fake)
    results = feedback_tail.run(quick=True)
    summary = results[-1]
    assert summary["kind"] == "summary"
    assert summary["p99_push_process_vs_thread"] == pytest.approx(1 / 3, abs=1e-3)
    assert summary["p99_tuning_process_vs_push_process"] == 0.75
    assert summary["p99_tuning_process_vs_no_feedback"] == 1.5
    (line,) = feedback_tail.summary(results)
    assert "push_thread 12.0 ms" in line and "x0.75" in line
