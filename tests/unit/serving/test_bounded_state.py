"""What clients send cannot grow a worker's learned state without bound (a memory DoS)."""

from __future__ import annotations

from pathlib import Path

from llmopt.features import N_CLIENT_BUCKETS
from llmopt.schemas import Feedback, RequestContext
from llmopt.settings import Settings
from serving.runtime import ServingRuntime


def test_new_client_feature_names_on_every_request_keep_the_dimension_bounded(
    tmp_path: Path,
) -> None:
    s = Settings(home=tmp_path / "h", serving_model_source="fresh", serving_features="off")
    rt = ServingRuntime(s, background=False)
    try:
        policy = rt.router.lineup.champion.loop.policy.inner
        d = rt.router.decide(RequestContext(tenant="t", prompt="hi")).decision
        rt.router.feedback(Feedback(decision_id=d.decision_id, quality=0.5))
        base = len(policy._features)
        for i in range(20):  # 5,120 distinct names: before hashing, 5,120 new dimensions
            ctx = RequestContext(
                tenant="t", prompt="hi", features={f"k{i}_{j}": 1.0 for j in range(256)}
            )
            d = rt.router.decide(ctx).decision
            rt.router.feedback(Feedback(decision_id=d.decision_id, quality=0.5))
        assert len(policy._features) <= base + N_CLIENT_BUCKETS
    finally:
        rt.close()
