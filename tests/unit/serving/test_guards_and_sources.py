"""Circuit breaker, budget ledger, token bucket, model sources and the runtime's reloads."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from llmopt.event_log import EventLog, ParameterFeedback
from llmopt.schemas import Feedback, RequestContext
from llmopt.settings import Settings
from models.kinds import RECOMMENDED, make_policy
from models.tuning_snapshot import fit_snapshot
from serving.guards import BudgetLedger, CircuitBreaker
from serving.http_guard import TokenBucket
from serving.model_source import (
    ChainSource,
    LoadedPolicy,
    LocalFileSource,
    SourceError,
    save_policy_file,
    save_tuning_file,
    source_from_settings,
    tuning_file,
)
from serving.parameters import ServedTuning
from serving.runtime import ServingRuntime


def test_breaker_needs_min_calls_and_reopens_on_a_failed_probe():
    now = [0.0]
    cb = CircuitBreaker(min_calls=4, error_rate=0.5, cooldown_s=5, clock=lambda: now[0])
    for ok in (False, False, True):
        cb.record("m", ok=ok)
    assert cb.state("m") == "closed"  # 3 < min_calls
    cb.record("m", ok=False)
    assert cb.state("m") == "open"
    now[0] = 6.0
    assert cb.state("m") == "half_open"
    cb.record("m", ok=False)
    assert cb.state("m") == "open"
    now[0] = 12.0
    cb.record("m", ok=True)  # cooldown noticed by record itself
    assert cb.state("m") == "closed"


def test_breaker_opens_after_consecutive_errors_despite_a_healthy_window():
    cb = CircuitBreaker(window=20, min_calls=5, error_rate=0.5, consecutive_errors=5)
    for _ in range(20):
        cb.record("m", ok=True)
    for _ in range(4):
        cb.record("m", ok=False)
    assert cb.state("m") == "closed"  # 4 in a row, 4 of 20 failed
    cb.record("m", ok=False)
    assert cb.state("m") == "open"  # 5 in a row, though only 5 of 20 failed
    off = CircuitBreaker(window=20, min_calls=5, error_rate=0.5, consecutive_errors=0)
    for ok in [True] * 20 + [False] * 9:
        off.record("m", ok=ok)
    assert off.state("m") == "closed"  # the rule off: 9 of 20 is under the error rate


def test_ledger_resets_each_utc_day_and_ignores_uncapped_tenants():
    day = [datetime(2026, 1, 1, 23, 0, tzinfo=UTC)]
    ledger = BudgetLedger(default_usd=1.0, per_tenant={"big": 10.0}, now=lambda: day[0])
    ledger.reserve("acme", "d1", 0.9)
    assert ledger.remaining("acme") == pytest.approx(0.1)
    assert ledger.remaining("big") == 10.0
    day[0] += timedelta(hours=2)
    assert ledger.remaining("acme") == 1.0
    uncapped = BudgetLedger()
    uncapped.reserve("acme", "d2", 5.0)
    assert uncapped.remaining("acme") is None


def test_token_bucket_allows_the_burst_then_limits():
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=4.0, clock=lambda: now[0])
    assert [bucket.take("k") for _ in range(4)] == [0.0] * 4
    assert bucket.take("k") > 0
    assert bucket.take("other") == 0.0
    now[0] = 1.0
    assert bucket.take("k") == 0.0


def test_local_file_source_reads_pickle_and_json_and_labels_by_content(tmp_path: Path):
    path = tmp_path / "policy.pkl"
    src = LocalFileSource(path)
    assert src.load("prod") is None and src.version("prod") is None
    path.write_bytes(pickle.dumps(make_policy("ucb1", seed=0)))
    first = src.version("prod")
    assert first is not None and src.load("prod").label == first
    save_policy_file(make_policy("ucb1", seed=1), path)
    assert src.version("prod") != first
    path.write_text("{not json")
    with pytest.raises(SourceError):
        src.load("prod")


def test_local_file_source_reads_the_tuning_next_to_the_policy_file(tmp_path: Path):
    path = tmp_path / "policy.pkl"
    path.write_bytes(pickle.dumps(make_policy("ucb1", seed=0)))
    src = LocalFileSource(path)
    untuned = src.load("prod")
    assert untuned is not None and untuned.tuning is None  # no file: tuned from scratch
    served = {"temperature": 0.2, "top_p": 1.0, "max_tokens": 512, "prompt_template": "concise"}
    rows = [ParameterFeedback(i, {"key": "code/m"}, served, 0.9, None) for i in range(1, 31)]
    snap = fit_snapshot(rows, until_feedback_id=30)
    assert save_tuning_file(snap, path) == tuning_file(path) == tmp_path / "policy.pkl.tuning.json"
    loaded = src.load("prod")
    assert loaded is not None and loaded.tuning == snap
    assert loaded.label == src.version("prod") != untuned.label  # a new tuning: a new version
    s = ServedTuning.from_snapshot(loaded.tuning).suggest("code", "m", {"temperature": 0.7})
    assert s.reason.startswith(("tuned", "tuning")) and s.params["prompt_template"] == "concise"
    tuning_file(path).write_text('{"format": "llmopt.served-tuning/0"}')
    with pytest.raises(SourceError, match="tuning"):
        src.load("prod")
    tuning_file(path).unlink()
    assert src.version("prod") == untuned.label


class Failing:
    def version(self, alias: str) -> str | None:
        raise SourceError("registry down")

    def load(self, alias: str) -> LoadedPolicy | None:
        raise SourceError("registry down")


class Fake:
    def __init__(self) -> None:
        self.policies: dict[str, LoadedPolicy] = {}

    def version(self, alias: str) -> str | None:
        p = self.policies.get(alias)
        return p.label if p else None

    def load(self, alias: str) -> LoadedPolicy | None:
        return self.policies.get(alias)


def test_a_failing_source_stops_the_chain(tmp_path: Path):
    path = tmp_path / "p.json"
    save_policy_file(make_policy("ucb1", seed=0), path)
    with pytest.raises(SourceError):
        ChainSource(Failing(), LocalFileSource(path)).version("prod")
    assert ChainSource(Fake(), LocalFileSource(path)).load("prod") is not None


def test_source_from_settings(tmp_path: Path):
    assert source_from_settings(Settings(home=tmp_path, serving_model_source="fresh")) is None
    assert isinstance(
        source_from_settings(Settings(home=tmp_path, serving_model_source="local")),
        LocalFileSource,
    )
    with pytest.raises(ValueError, match="serving_model_source"):
        source_from_settings(Settings(home=tmp_path, serving_model_source="nope"))


def runtime(tmp_path: Path, source: object | None) -> ServingRuntime:
    settings = Settings(home=tmp_path, serving_poll_s=0)
    return ServingRuntime(
        settings,
        source=source,  # type: ignore[arg-type]
        event_log=EventLog(f"sqlite:///{tmp_path / 'events.db'}"),
        background=False,
    )


def test_runtime_starts_fresh_and_warm_starts_from_the_log(tmp_path: Path):
    rt = runtime(tmp_path, Fake())
    assert rt.router.lineup.champion.label == f"fresh/{RECOMMENDED}+0"
    d = rt.router.decide(RequestContext(tenant="a", prompt="hi")).decision
    rt.router.feedback(Feedback(decision_id=d.decision_id, quality=0.8))
    rt.close()
    rt2 = runtime(tmp_path, Fake())
    assert rt2.router.lineup.champion.label == f"fresh/{RECOMMENDED}+1"
    rt2.close()


def test_runtime_reload_swaps_changed_versions_and_keeps_models_when_the_source_fails(
    tmp_path: Path,
):
    src = Fake()
    src.policies["prod"] = LoadedPolicy("llm-router/1", make_policy("ucb1", seed=0), "fake")
    rt = runtime(tmp_path, src)
    assert rt.router.lineup.champion.label == "llm-router/1"
    assert not rt.reload().changed
    src.policies["prod"] = LoadedPolicy("llm-router/2", make_policy("ucb1", seed=0), "fake")
    src.policies["staging"] = LoadedPolicy("llm-router/3", make_policy("ucb1", seed=1), "fake")
    result = rt.reload()
    assert result.changed and rt.router.lineup.champion.label == "llm-router/2"
    assert rt.router.lineup.challenger is not None
    assert rt.router.lineup.challenger.label == "llm-router/3"
    rt.source = Failing()
    result = rt.reload(force=True)
    assert not result.changed and any("current model kept" in n for n in result.notes)
    assert rt.router.lineup.champion.label == "llm-router/2"
    rt.source = src
    del src.policies["staging"]
    assert rt.reload().changed and rt.router.lineup.challenger is None
    rt.close()


def test_runtime_falls_back_to_the_local_file_when_the_source_fails_at_start(tmp_path: Path):
    path = Settings(home=tmp_path).policy_state_path  # the CLI's pickle
    path.write_bytes(pickle.dumps(make_policy("ucb1", seed=0)))
    rt = runtime(tmp_path, Failing())
    assert rt.router.lineup.champion.label.startswith("local/")
    rt.close()


def test_an_embedded_registry_never_created_has_nothing_and_is_not_created(tmp_path: Path):
    from serving.model_source import RegistrySource  # noqa: PLC0415

    src = RegistrySource(Settings(home=tmp_path))
    assert src.version("prod") is None and src.load("prod") is None
    assert not (tmp_path / "mlflow.db").exists()
