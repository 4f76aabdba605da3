"""What clients send cannot grow a worker's learned state without bound (a memory DoS)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmopt.features import N_CLIENT_BUCKETS
from llmopt.schemas import Feedback, RequestContext
from llmopt.settings import Settings
from models.kinds import make_policy
from serving.runtime import ServingRuntime


def _serve(tmp_path: Path, policy: Any, names_per_request: int) -> Any:
    """20 decide + feedback rounds, each with ``names_per_request`` never-seen feature names."""
    s = Settings(home=tmp_path / "h", serving_model_source="fresh", serving_features="off")
    rt = ServingRuntime(s, background=False)
    try:
        if policy is not None:
            rt.router.swap((policy, "test"))
        served = rt.router.lineup.champion.loop.policy.inner
        for i in range(20):  # up to 5,120 distinct names: before hashing, that many dimensions
            feats = {f"k{i}_{j}": 1.0 for j in range(names_per_request)}
            d = rt.router.decide(RequestContext(tenant="t", prompt="hi", features=feats)).decision
            rt.router.feedback(Feedback(decision_id=d.decision_id, quality=0.5))
        return served
    finally:
        rt.close()


def test_a_linear_policys_dimension_grows_by_the_hash_buckets_at_most(tmp_path: Path) -> None:
    plain = _serve(tmp_path / "a", make_policy("cost_aware_linucb", seed=0), 0)
    named = _serve(tmp_path / "b", make_policy("cost_aware_linucb", seed=0), 256)
    assert len(named._features) <= len(plain._features) + N_CLIENT_BUCKETS


def test_the_recommended_policys_state_ignores_client_feature_names(tmp_path: Path) -> None:
    plain = _serve(tmp_path / "a", None, 0)
    named = _serve(tmp_path / "b", None, 256)
    assert named.n_updates == plain.n_updates == 20
    assert json.dumps(named.to_dict()) == json.dumps(plain.to_dict())  # names left no trace
