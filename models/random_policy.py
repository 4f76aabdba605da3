"""Uniform random policy: the baseline every learner must beat."""

from __future__ import annotations

from llmopt.types import ArmID
from models.base import Policy


class UniformRandom(Policy):
    """Pick each arm with the same probability.

    Examples
    --------
    >>> p = UniformRandom(seed=1)
    >>> d = p.pull(["a", "b", "c", "d"])
    >>> d.propensity
    0.25
    """

    name = "random"

    def _pull(
        self, arm_ids: list[ArmID], context: dict[str, float]
    ) -> tuple[dict[ArmID, float], dict[ArmID, float]]:
        p = 1.0 / len(arm_ids)
        return {a: p for a in arm_ids}, {a: 0.0 for a in arm_ids}

    def _update(self, arm_id: ArmID, context: dict[str, float], reward: float) -> None:
        pass
