"""Disjoint LinUCB: one ridge regression of the target on the context per arm, optimistic choice.

Written with numpy rather than River's ``LinUCBDisjoint``: River returns no propensities or
per-arm scores, inverts a matrix per step, and its constructor passes ``burn_in`` into the wrong
slot. The shared machinery (Sherman-Morrison updates, runtime growth, discounting, merging)
lives in :mod:`models.linear`.
"""

from __future__ import annotations

import numpy as np

from llmopt.types import ArmID
from models.linear import LinearPolicy


class LinUCB(LinearPolicy):
    """Upper confidence bound on a per-arm linear model of the target.

    Score of arm ``a`` for context ``x``: ``min(theta_a . x + alpha * sqrt(x' A_a^-1 x),
    max_reward) - penalty_a`` where ``A_a = ridge * I + sum x x'`` and ``theta_a = A_a^-1 b_a``.
    The arm with the highest score is chosen (ties split evenly), so the propensity is 1 unless
    scores tie or an exploration floor is set.

    Parameters
    ----------
    alpha
        Width of the confidence bonus: exploration strength.
    ridge, bias_ridge, discount, bias_feature, pooled_prior,
        context_gate, burn_in, max_reward, exploration_floor, explore_decay, cost_aware, seed
        See :class:`models.linear.LinearPolicy`.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(0)
    >>> p = LinUCB(alpha=0.3, seed=0)
    >>> for _ in range(300):
    ...     x = {"bias": 1.0, "code": float(rng.random() < 0.5)}
    ...     d = p.pull(["coder", "chatter"], x)
    ...     good = (d.model == "coder") == (x["code"] == 1.0)
    ...     _ = p.update(d.model, x, 1.0 if good else 0.0)
    >>> p.pull(["coder", "chatter"], {"bias": 1.0, "code": 1.0}).model
    'coder'
    >>> d = p.pull(["coder", "chatter"], {"bias": 1.0, "code": 0.0})
    >>> d.model, d.explanation.reason
    ('chatter', 'greedy')

    References
    ----------
    Li, Chu, Langford, Schapire (2010). A contextual-bandit approach to personalized news
    article recommendation. WWW.
    """

    name = "linucb"

    def __init__(
        self,
        alpha: float = 0.5,
        *,
        ridge: float = 1.0,
        bias_ridge: float | None = None,
        discount: float = 1.0,
        bias_feature: str = "bias",
        pooled_prior: bool = False,
        context_gate: bool = False,
        burn_in: int = 1,
        max_reward: float | None = None,
        exploration_floor: float = 0.0,
        explore_decay: float = 0.0,
        cost_aware: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            ridge=ridge,
            bias_ridge=bias_ridge,
            discount=discount,
            bias_feature=bias_feature,
            pooled_prior=pooled_prior,
            context_gate=context_gate,
            burn_in=burn_in,
            max_reward=max_reward,
            exploration_floor=exploration_floor,
            explore_decay=explore_decay,
            cost_aware=cost_aware,
            seed=seed,
        )
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    def _pull(
        self, arm_ids: list[ArmID], context: dict[str, float], penalties: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mean, width = self._mean_width(arm_ids, context)
        scores = self._cap(mean + self.alpha * width) - penalties
        return self._greedy(scores), scores, mean
