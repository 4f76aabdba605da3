"""UCB1: optimism in the face of uncertainty, one running mean per arm (non-contextual)."""

from __future__ import annotations

import math

import numpy as np

from llmopt.types import ArmID
from models.arm_stats import ArmStatsPolicy


class UCB1(ArmStatsPolicy):
    """Choose the arm with the highest ``mean + c * sqrt(2 ln N / n_arm)``.

    ``N`` is the (discounted) number of rewards over all arms offered, ``n_arm`` the arm's own.
    With a cost penalty the bonus applies to the learned target only and is capped at
    ``max_reward``.

    Parameters
    ----------
    c
        Scale of the confidence bonus (rewards in [0, 1] call for about 1; smaller explores
        less).
    discount, window, pooled_prior, burn_in, max_reward, exploration_floor, explore_decay,
    cost_aware, seed
        See :class:`models.arm_stats.ArmStatsPolicy`.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(1)
    >>> p = UCB1(c=0.5, seed=0)
    >>> truth = {"a": 0.2, "b": 0.5, "c": 0.8}
    >>> for _ in range(400):
    ...     d = p.pull(["a", "b", "c"])
    ...     _ = p.update(d.model, None, float(rng.random() < truth[d.model]))
    >>> p.pull(["a", "b", "c"]).model
    'c'

    References
    ----------
    Auer, Cesa-Bianchi, Fischer (2002). Finite-time analysis of the multiarmed bandit problem.
    Machine Learning 47. Garivier & Moulines (2011), discounted and sliding-window UCB.
    """

    name = "ucb1"

    def __init__(
        self,
        c: float = 1.0,
        *,
        discount: float = 1.0,
        window: int | None = None,
        pooled_prior: float = 0.0,
        burn_in: int = 1,
        max_reward: float | None = None,
        exploration_floor: float = 0.0,
        explore_decay: float = 0.0,
        cost_aware: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            discount=discount,
            window=window,
            pooled_prior=pooled_prior,
            burn_in=burn_in,
            max_reward=max_reward,
            exploration_floor=exploration_floor,
            explore_decay=explore_decay,
            cost_aware=cost_aware,
            seed=seed,
        )
        if c < 0:
            raise ValueError(f"c must be >= 0, got {c}")
        self.c = c

    def _pull(
        self, arm_ids: list[ArmID], context: dict[str, float], penalties: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, mean, _ = self._columns(arm_ids)
        total = max(float(n.sum()), 1.0)
        bonus = self.c * np.sqrt(2.0 * np.log(max(total, math.e)) / np.maximum(n, 1e-9))
        upper = mean + bonus
        upper = np.where(n > 0, upper, np.max(upper[n > 0]) + 1.0 if (n > 0).any() else 1.0)
        scores = self._cap(upper) - penalties
        return self._greedy(scores), scores, mean
