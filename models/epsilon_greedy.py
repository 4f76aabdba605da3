"""Epsilon-greedy with a decaying exploration rate (non-contextual)."""

from __future__ import annotations

import math

from llmopt.types import ArmID
from models.base import Policy


class EpsilonGreedy(Policy):
    """Exploit the best running mean reward; explore uniformly with probability epsilon.

    The exploration rate decays as ``epsilon * decay / (decay + t)`` with ``t`` the number of
    updates, so that it explores a lot early and little once the means are known.

    Parameters
    ----------
    epsilon
        Initial exploration probability.
    decay
        Number of updates after which epsilon has halved (0 keeps it constant).
    burn_in
        See :class:`models.base.Policy`.
    seed
        Seed of the policy's random generator.

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
    >>> round(p.pull(["bad", "good"]).scores["good"], 1)
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
        burn_in: int = 1,
        seed: int | None = None,
    ) -> None:
        super().__init__(burn_in=burn_in, seed=seed)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if decay < 0:
            raise ValueError(f"decay must be >= 0, got {decay}")
        self.epsilon = epsilon
        self.decay = decay
        self._means: dict[ArmID, float] = {}

    @property
    def current_epsilon(self) -> float:
        """Exploration probability after the updates so far."""
        if self.decay == 0:
            return self.epsilon
        return self.epsilon * self.decay / (self.decay + self.n_updates)

    def _pull(
        self, arm_ids: list[ArmID], context: dict[str, float]
    ) -> tuple[dict[ArmID, float], dict[ArmID, float]]:
        scores = {a: self._means.get(a, math.inf) for a in arm_ids}
        greedy = self._argmax_probs(scores)
        eps = self.current_epsilon
        probs = {a: (1 - eps) * greedy[a] + eps / len(arm_ids) for a in arm_ids}
        return probs, {a: (s if math.isfinite(s) else 0.0) for a, s in scores.items()}

    def _update(self, arm_id: ArmID, context: dict[str, float], reward: float) -> None:
        n = self._updates.get(arm_id, 0) + 1
        mean = self._means.get(arm_id, 0.0)
        self._means[arm_id] = mean + (reward - mean) / n
