"""The nightly rebuild warm-starts on an evaluation file, then the event log, and says so."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from llmopt.settings import Settings, get_settings
from pipelines.tasks import rebuild_from_history
from pipelines.warm_start import file_sha256

pytestmark = pytest.mark.integration
DEMO = Path(__file__).resolve().parents[3] / "llmopt" / "data" / "alpaca_eval.parquet"


def test_rebuild_learns_the_evals_first_then_the_log(
    env: Settings,
    filled: Callable[..., int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frame = pd.read_parquet(DEMO)
    evals = tmp_path / "evals.parquet"
    frame[frame["sample_id"].isin(frame["sample_id"].unique()[:20])].to_parquet(evals)
    n_logged = filled(50)
    monkeypatch.setenv("LLMOPT_WARM_START_EVALS", str(evals))
    get_settings.cache_clear()
    result = rebuild_from_history.fn("cost_aware_cluster_thompson", {}, 1000)
    assert result.n_events == n_logged
    assert result.policy.n_updates == 20 * 15 + n_logged  # 20 prompts x 15 models, then the log
    assert result.warm_start["warm_start_evals"] == "evals.parquet"
    assert result.warm_start["warm_start_evals_sha256"] == file_sha256(evals)
    assert result.warm_start["warm_start_evals_outcomes"] == "300"


def test_without_an_evals_file_the_rebuild_says_nothing_of_one(
    env: Settings, filled: Callable[..., int]
) -> None:
    filled(10)
    result = rebuild_from_history.fn("cost_aware_cluster_thompson", {}, 1000)
    assert result.warm_start == {} and result.policy.n_updates == 10
