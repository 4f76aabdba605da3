"""The served tuning travels with its policy version through a real MLflow registry (SQLite):
the champion and the challenger each serve their own version's tuning, a reload swaps it, and a
version without one tunes from scratch."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from llmopt.event_log import ParameterFeedback
from llmopt.schemas import Feedback, RequestContext
from llmopt.settings import Settings
from models.kinds import make_policy
from models.tuning_snapshot import TuningSnapshot, fit_snapshot
from registry import mlflow_registry as registry
from serving.model_source import RegistrySource, SourceError
from serving.runtime import ServingRuntime

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-mini"
CTX = RequestContext(tenant="acme", prompt="write a sort", task_hints=["code"], models=[MODEL])
DEFAULT = {"temperature": 0.7, "top_p": 1.0, "max_tokens": 1024, "prompt_template": "plain"}


def snapshot(n: int = 40, seed: int = 0) -> TuningSnapshot:
    """``n`` rewards for code/gpt-4o-mini whose best configuration is temperature 0.2."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        t = rng.uniform(0.0, 1.2)
        params = {**DEFAULT, "temperature": t}
        reward = 1.0 - (t - 0.2) ** 2 + rng.gauss(0, 0.02)
        rows.append(
            ParameterFeedback(i + 1, {"key": f"code/{MODEL}", "trial": i}, params, reward, None)
        )
    return fit_snapshot(rows, until_feedback_id=n)


def reasons(rt: ServingRuntime, n: int = 10) -> set[str]:
    """The kinds of parameter reasons (``default``, ``tuning``, ``tuned``) of ``n`` decisions."""
    return {rt.router.decide(CTX).decision.parameters_reason.split(":")[0] for _ in range(n)}


def test_a_registered_tuning_is_served_with_its_version_and_swapped_on_reload(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path / "h", serving_features="off", serving_poll_s=0)
    settings.ensure_home()
    snap = snapshot()
    v1 = registry.register_policy(
        make_policy("ucb1", seed=1), settings=settings, aliases=("prod",), tuning=snap
    )
    client = registry.configure(settings)
    tags = registry.client_model_version(client, v1, registry.MODEL_NAME).tags
    assert tags["tuning_n_feedback"] == "40" and tags["tuning_pairs"] == "1"
    assert registry.load_tuning(client, v1) == snap  # the JSON round trip through MLflow
    loaded = RegistrySource(settings).load("prod")
    assert loaded is not None and loaded.tuning == snap

    rt = ServingRuntime(settings, background=False)
    try:
        champion = rt.router.lineup.champion
        assert champion.label == registry.version_label(v1)
        assert champion.loop.tuning is not rt.router.tuning  # the version's own
        assert reasons(rt) <= {"tuned", "tuning"} and "tuned" in reasons(rt)
        d = rt.router.decide(CTX).decision
        rt.router.feedback(Feedback(decision_id=d.decision_id, quality=0.9))
        assert champion.loop.tuning is not None  # online feedback teaches the loaded tuning
        assert champion.loop.tuning.n_feedback(f"code/{MODEL}") == 41

        # A version without tuning: from scratch, as before (the router's shared tuning).
        v2 = registry.register_policy(make_policy("ucb1", seed=2), settings=settings, aliases=())
        assert registry.load_tuning(client, v2) is None
        registry.set_alias(client, v2, "prod")
        result = rt.reload()
        assert result.changed and rt.router.lineup.champion.loop.tuning is rt.router.tuning
        assert reasons(rt) == {"default"}

        # v1 as the challenger: its own tuning again, the champion keeps the shared one.
        registry.set_alias(client, v1, "staging")
        result = rt.reload()
        assert any("tuning: 40 feedback over 1" in n for n in result.notes), result.notes
        challenger = rt.router.lineup.challenger
        assert challenger is not None and challenger.label == registry.version_label(v1)
        assert challenger.loop.tuning is not rt.router.tuning
        assert challenger.loop.tuning is not None
        assert challenger.loop.tuning.n_feedback(f"code/{MODEL}") == 40  # the registry's, anew
        assert rt.router.lineup.champion.loop.tuning is rt.router.tuning
    finally:
        rt.close()


def test_a_tampered_tuning_artifact_refuses_the_version(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "h", serving_features="off", serving_poll_s=0)
    settings.ensure_home()
    registry.register_policy(make_policy("ucb1", seed=1), settings=settings, tuning=snapshot())
    files = list(settings.home.rglob(registry.TUNING_FILE))
    assert files
    for path in files:
        path.write_bytes(path.read_bytes().replace(b'"n_feedback":40', b'"n_feedback":400'))
    with pytest.raises(SourceError, match="tuning_sha256"):
        RegistrySource(settings).load("prod")
