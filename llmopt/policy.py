"""The policy protocol the core depends on; ``models/`` implements it.

The core never imports ``models/`` (docs/style.md layers): the learning loop and the replay take any
object with this shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from llmopt.schemas import Decision
from llmopt.types import ArmID, Features


@runtime_checkable
class Policy(Protocol):
    """A learner that picks an arm for a context and learns from the reward that follows."""

    @property
    def name(self) -> str:
        """Stable policy name, logged with every decision."""
        ...

    def pull(self, arm_ids: Sequence[ArmID], context: Features | None = None) -> Decision:
        """Choose one of ``arm_ids`` for ``context``; the decision carries its propensity."""
        ...

    def update(self, arm_id: ArmID, context: Features | None, reward: float) -> Policy:
        """Learn from the ``reward`` of pulling ``arm_id`` in ``context``."""
        ...
