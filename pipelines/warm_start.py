"""Warm start from what a user already has: an offline evaluation file and the event log.

* **Evaluations** (``llmopt train --from-evals FILE``, or ``LLMOPT_WARM_START_EVALS`` for the
  nightly flow): a routing-format file (:mod:`llmopt.routing_data`) where every model answered
  a sample of prompts. Full information: each (prompt, model) outcome is learnt as if that
  model had been chosen, with the request features (embedding included) the router computes
  for that prompt. A cost-aware policy learns the quality; any other the reward at the given
  willingness to pay (:func:`llmopt.reward.reward`).
* **Logged bandit events**: the event log's feedback, learnt by :func:`pipelines.training.
  rebuild` after the evaluations, with the features logged at decision time.

The registered version records both (:func:`WarmStart.tags`).

Examples
--------
>>> from llmopt.routing_data import load_routing_data
>>> from llmopt.routing_data import DEMO_DATA
>>> from models.kinds import make_policy
>>> policy = make_policy("cost_aware_cluster_thompson", seed=0)
>>> ws = learn_evals(policy, load_routing_data(DEMO_DATA), limit=40)
>>> ws.n_prompts, ws.n_outcomes, policy.n_updates
(40, 600, 600)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from llmopt.features import estimate_tokens, request_features
from llmopt.loop import LearningLoop
from llmopt.reward import TradeOff
from llmopt.routing_data import RoutingData
from models.base import BasePolicy


@dataclass(frozen=True)
class WarmStart:
    """What a policy was warmed on, for the registered version's tags."""

    source: str
    sha256: str
    n_prompts: int
    n_outcomes: int

    def tags(self) -> dict[str, str]:
        """Registry tags of this warm start."""
        return {
            "warm_start_evals": self.source,
            "warm_start_evals_sha256": self.sha256,
            "warm_start_evals_prompts": str(self.n_prompts),
            "warm_start_evals_outcomes": str(self.n_outcomes),
        }


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def learn_evals(
    policy: BasePolicy,
    data: RoutingData,
    *,
    willingness_to_pay: float = 0.05,
    limit: int | None = None,
) -> WarmStart:
    """Teach ``policy`` every model's outcome on every prompt of ``data`` (full information)."""
    if willingness_to_pay <= 0:
        raise ValueError(f"willingness_to_pay must be > 0, got {willingness_to_pay}")
    n = data.n_prompts if limit is None else min(limit, data.n_prompts)
    loop = LearningLoop(
        policy, data.models, default_tradeoff=TradeOff(willingness_to_pay=willingness_to_pay)
    )
    for i in range(n):
        prompt = data.prompts[i]
        features, tokens = request_features(prompt), estimate_tokens(prompt)
        for j, model in enumerate(data.models):
            loop.learn_outcome(
                model,
                features,
                input_tokens=tokens,
                quality=float(data.quality[i, j]),
                cost_usd=float(data.cost_usd[i, j]),
            )
    source = Path(data.source)
    digest = file_sha256(source) if source.is_file() else ""
    return WarmStart(
        source=source.name, sha256=digest, n_prompts=n, n_outcomes=n * len(data.models)
    )
