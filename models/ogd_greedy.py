"""Epsilon-greedy on per-model quality regressions learned by online gradient descent.

The reward model is :class:`models.quality.QualityModel` (one River linear model per arm);
the policy plays the arm with the best predicted target minus its penalty, and explores
uniformly with a decaying probability. Cheaper per step than LinUCB on many features (no
d x d matrix per arm) at the price of no confidence bounds: exploration is blind.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np

from llmopt.types import ArmID
from models.base import BasePolicy
from models.epsilon_greedy import decayed_epsilon
from models.quality import QualityModel
from models.state import Stateful


class OGDGreedy(BasePolicy):
    """Greedy on online-gradient-descent quality models, with decaying epsilon exploration.

    Parameters
    ----------
    lr
        Learning rate of each arm's regression.
    epsilon
        Initial exploration probability.
    decay
        Number of updates after which epsilon has halved (0 keeps it constant).
    burn_in, max_reward, exploration_floor, explore_decay, cost_aware, seed
        See :class:`models.base.BasePolicy`.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(42)
    >>> p = OGDGreedy(seed=0)
    >>> for _ in range(600):
    ...     x = {"bias": 1.0, "code": float(rng.random() < 0.5)}
    ...     d = p.pull(["coder", "writer"], x)
    ...     good = (d.model == "coder") == (x["code"] == 1.0)
    ...     _ = p.update(d.model, x, 1.0 if good else 0.0)
    >>> p.pull(["coder", "writer"], {"bias": 1.0, "code": 1.0}).model
    'coder'

    References
    ----------
    Zinkevich (2003). Online convex programming and generalized infinitesimal gradient ascent.
    ICML. Sutton & Barto (2018), section 2.2 (epsilon-greedy).
    """

    name = "ogd_greedy"

    def __init__(
        self,
        lr: float = 0.05,
        *,
        epsilon: float = 0.1,
        decay: float = 200.0,
        burn_in: int = 1,
        max_reward: float | None = None,
        exploration_floor: float = 0.0,
        explore_decay: float = 0.0,
        cost_aware: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            burn_in=burn_in,
            max_reward=max_reward,
            exploration_floor=exploration_floor,
            explore_decay=explore_decay,
            cost_aware=cost_aware,
            seed=seed,
        )
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if decay < 0:
            raise ValueError(f"decay must be >= 0, got {decay}")
        self.lr = lr
        self.epsilon = epsilon
        self.decay = decay
        self._model = QualityModel(lr, prior=0.0)
        self._means: dict[ArmID, list[float]] = {}

    def _pull(
        self, arm_ids: list[ArmID], context: dict[str, float], penalties: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        est = np.array([self._model.predict_one(context, arm=a) for a in arm_ids])
        scores = est - penalties
        eps = decayed_epsilon(self.epsilon, self.decay, self._n_updates)
        probs = (1.0 - eps) * self._greedy(scores) + eps / len(arm_ids)
        return probs, scores, est

    def _update(self, arm_id: ArmID, context: dict[str, float], reward: float) -> None:
        self._model.learn_one(context, reward, arm=arm_id)
        n, total = self._means.get(arm_id, (0.0, 0.0))
        self._means[arm_id] = [n + 1.0, total + reward]

    def arm_mean(self, arm_id: ArmID) -> float | None:
        n, total = self._means.get(arm_id, (0.0, 0.0))
        return total / n if n else None

    def predict_one(self, arm_id: ArmID, context: dict[str, float] | None = None) -> float:
        """Predicted target of ``arm_id`` in ``context``."""
        return self._model.predict_one(self._check_context(context), arm=arm_id)

    def _merge_stats(self, a: Self, b: Self, base: Self) -> None:
        self._model = a._model.merge(b._model, base._model if base._model.counts else None)
        self._means = {}
        for arm in set(a._means) | set(b._means):
            za, zb, zc = (x._means.get(arm, [0.0, 0.0]) for x in (a, b, base))
            self._means[arm] = [p + q - r for p, q, r in zip(za, zb, zc, strict=True)]

    def _get_state(self) -> dict[str, Any]:
        return {
            **super()._get_state(),
            "model": self._model.to_dict(),
            "means": {a: list(v) for a, v in self._means.items()},
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        super()._set_state(state)
        model = Stateful.from_dict(state["model"])
        if not isinstance(model, QualityModel):
            raise ValueError("the state's model is not a quality model")
        self._model = model
        self._means = {str(a): [float(x) for x in v] for a, v in state["means"].items()}
