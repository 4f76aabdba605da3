"""Base class of every policy: validation, burn-in, counts and seeded randomness.

Each algorithm implements only ``_pull`` (a probability and a score per arm) and ``_update``
(STYLE.md #8). River's bandit policies return a bare arm id; we need the propensity of every
choice for off-policy evaluation and per-arm scores for explanations, hence our own base class.
"""

from __future__ import annotations

import copy
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar, Self

from llmopt.schemas import Decision
from llmopt.types import ArmID, Features


class Policy(ABC):
    """A bandit policy with River's shape: ``pull`` then ``update``.

    Parameters
    ----------
    burn_in
        Each arm is pulled this many times (uniformly among the arms still under it) before the
        algorithm's own rule takes over. Also applies to arms added later: a new model gets its
        share of exploration.
    seed
        Seed of the policy's own random generator.
    """

    name: ClassVar[str]

    def __init__(self, *, burn_in: int = 0, seed: int | None = None) -> None:
        if burn_in < 0:
            raise ValueError(f"burn_in must be >= 0, got {burn_in}")
        self.burn_in = burn_in
        self.seed = seed
        self._rng = random.Random(seed)
        self._updates: dict[ArmID, int] = {}
        self._n_updates = 0

    # -- public API ---------------------------------------------------------------------------
    def pull(self, arm_ids: Sequence[ArmID], context: Features | None = None) -> Decision:
        """Choose one arm; the decision carries its propensity and the per-arm scores."""
        arms = self._check_arms(arm_ids)
        ctx = self._check_context(context)
        cold = [a for a in arms if self._updates.get(a, 0) < self.burn_in]
        if cold:
            probs = {a: 1.0 / len(cold) for a in cold}
            scores: dict[ArmID, float] = {a: float(self._updates.get(a, 0)) for a in arms}
        else:
            probs, scores = self._pull(arms, ctx)
        arm = self._sample(probs)
        return Decision(
            model=arm,
            propensity=min(max(probs[arm], 1e-12), 1.0),
            policy_name=self.name,
            policy_version=str(self._n_updates),
            scores=scores,
        )

    def update(self, arm_id: ArmID, context: Features | None, reward: float) -> Self:
        """Learn from the reward of ``arm_id`` in ``context``."""
        if not isinstance(arm_id, str) or not arm_id:
            raise ValueError(f"arm_id must be a non-empty string, got {arm_id!r}")
        if not math.isfinite(reward):
            raise ValueError(f"reward must be a finite number, got {reward}")
        self._update(arm_id, self._check_context(context), float(reward))
        self._updates[arm_id] = self._updates.get(arm_id, 0) + 1
        self._n_updates += 1
        return self

    def clone(self) -> Self:
        """A fresh, unfitted policy with the same hyperparameters."""
        params = {k: copy.deepcopy(v) for k, v in vars(self).items() if not k.startswith("_")}
        return type(self)(**params)

    @property
    def n_updates(self) -> int:
        """Number of rewards learned from."""
        return self._n_updates

    # -- hooks ----------------------------------------------------------------------------------
    @abstractmethod
    def _pull(
        self, arm_ids: list[ArmID], context: dict[str, float]
    ) -> tuple[dict[ArmID, float], dict[ArmID, float]]:
        """Return (probability of each arm, score of each arm); probabilities sum to 1."""

    @abstractmethod
    def _update(self, arm_id: ArmID, context: dict[str, float], reward: float) -> None:
        """Learn from one reward."""

    # -- helpers ----------------------------------------------------------------------------------
    def _argmax_probs(self, scores: Mapping[ArmID, float]) -> dict[ArmID, float]:
        """Greedy probabilities: ties share the mass evenly."""
        best = max(scores.values())
        top = [a for a, s in scores.items() if s >= best - 1e-12]
        return {a: (1.0 / len(top) if a in top else 0.0) for a in scores}

    def _sample(self, probs: Mapping[ArmID, float]) -> ArmID:
        u = self._rng.random()
        acc = 0.0
        last = None
        for arm, p in probs.items():
            if p <= 0:
                continue
            acc += p
            last = arm
            if u < acc:
                return arm
        assert last is not None
        return last

    @staticmethod
    def _check_arms(arm_ids: Sequence[ArmID]) -> list[ArmID]:
        arms = list(arm_ids)
        if not arms:
            raise ValueError("pull needs at least one arm")
        if len(set(arms)) != len(arms):
            raise ValueError("arm_ids must be unique")
        if not all(isinstance(a, str) and a for a in arms):
            raise ValueError("arm_ids must be non-empty strings")
        return arms

    @staticmethod
    def _check_context(context: Features | None) -> dict[str, float]:
        if context is None:
            return {}
        out: dict[str, float] = {}
        for k, v in context.items():
            fv = float(v)
            if not math.isfinite(fv):
                raise ValueError(f"context feature {k!r} is not finite: {v}")
            out[k] = fv
        return out

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"
