"""Uniform random policy: the baseline every learner must beat."""

from __future__ import annotations

import numpy as np

from llmopt.types import ArmID
from models.base import BasePolicy


class UniformRandom(BasePolicy):
    """Pick each arm with the same probability.

    Parameters
    ----------
    burn_in, max_reward, exploration_floor, seed
        See :class:`models.base.BasePolicy` (only ``seed`` matters here).

    Examples
    --------
    >>> p = UniformRandom(seed=1)
    >>> d = p.pull(["a", "b", "c", "d"])
    >>> d.propensity
    0.25
    """

    name = "random"

    def _pull(
        self, arm_ids: list[ArmID], context: dict[str, float], penalties: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = len(arm_ids)
        return np.full(k, 1.0 / k), -penalties, np.zeros(k)

    def _update(self, arm_id: ArmID, context: dict[str, float], reward: float) -> None:
        pass
