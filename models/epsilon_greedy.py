"""Epsilon-greedy with a decaying exploration rate (non-contextual)."""

from __future__ import annotations

import numpy as np

from llmopt.types import ArmID
from models.arm_stats import ArmStatsPolicy


def decayed_epsilon(epsilon: float, decay: float, t: int) -> float:
    """``epsilon * decay / (decay + t)``: halved after ``decay`` updates (0: constant)."""
    return epsilon if decay == 0 else epsilon * decay / (decay + t)


class EpsilonGreedy(ArmStatsPolicy):
    """Exploit the best running mean; explore uniformly with a decaying probability epsilon.

    The exploration rate decays as ``epsilon * decay / (decay + t)`` with ``t`` the number of
    updates, so that it explores a lot early and little once the means are known.

    Parameters
    ----------
    epsilon
        Initial exploration probability.
    decay
        Number of updates after which epsilon has halved (0 keeps it constant).
    discount, window, pooled_prior, burn_in, max_reward, exploration_floor, explore_decay,
    cost_aware, seed
        See :class:`models.arm_stats.ArmStatsPolicy`.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(0)
    >>> p = EpsilonGreedy(epsilon=0.2, seed=0)
    >>> for _ in range(500):
    ...     d = p.pull(["bad", "good"])
    ...     _ = p.update(d.model, None, rng.gauss(1.0 if d.model == "good" else 0.0, 0.1))
    >>> d = p.pull(["bad", "good"])
    >>> max(d.scores, key=d.scores.__getitem__)
    'good'
    >>> round(p.predict_one("good"), 1)
    1.0

    References
    ----------
    Sutton & Barto, *Reinforcement Learning: An Introduction*, 2nd ed., section 2.2.
    """

    name = "epsilon_greedy"

    def __init__(
        self,
        epsilon: float = 0.1,
        *,
        decay: float = 0.0,
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
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if decay < 0:
            raise ValueError(f"decay must be >= 0, got {decay}")
        self.epsilon = epsilon
        self.decay = decay

    @property
    def current_epsilon(self) -> float:
        """Exploration probability after the updates so far."""
        return decayed_epsilon(self.epsilon, self.decay, self.n_updates)

    def _pull(
        self, arm_ids: list[ArmID], context: dict[str, float], penalties: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        _, mean, _ = self._columns(arm_ids)
        scores = mean - penalties
        eps = self.current_epsilon
        probs = (1 - eps) * self._greedy(scores) + eps / len(arm_ids)
        return probs, scores, mean
