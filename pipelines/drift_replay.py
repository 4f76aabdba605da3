"""Serving's drift response, replayed by incremental training on the logged stream.

The live policy discounts a model whose quality or reward drifted (:mod:`serving.drift`,
:class:`monitoring.drift_response.DriftResponder`): it forgets most of that model's old rewards,
so it moves off a degraded model within a few hundred requests. A training lineage that learns
the same feedback without that response remembers every old reward: after a change it keeps
preferring the model that *was* best, and the version it registers trails the live champion
(measured by ``llmopt scenario``: retrained versions sent 90-100% of their canary traffic to the
degraded model and were rolled back).

:class:`DriftReplay` runs the same detectors (:class:`monitoring.detectors.StreamMonitor`) and
the same responder over the events training learns, in log order, and applies each response
to the policy at the event where the detector fired. Its detectors are not checkpointed: each
run warms them up on the events just before its cursor (read, not acted on), so a rerun after
a crash replays the same responses, and no pickled state sits in the database.

Example
-------
>>> from llmopt.event_log import TrainingEvent
>>> from models.kinds import make_policy
>>> def event(i, model, q):
...     return TrainingEvent(i, model, {}, q, q, 0.0, 1.0, "v", (), {})
>>> events = [event(i, "a", 0.9 if i < 300 else 0.1) for i in range(400)]
>>> plain, replayed = make_policy("thompson_gaussian"), make_policy("thompson_gaussian")
>>> _ = plain.learn_many((e.model, {}, e.quality) for e in events)
>>> replay = DriftReplay()
>>> replay.learn(replayed, events, lambda e: e.quality)
>>> replay.responses, round(plain.arm_mean("a"), 2), round(replayed.arm_mean("a"), 2)
(1, 0.7, 0.23)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from llmopt.event_log import TrainingEvent
from llmopt.types import ArmID
from models.base import BasePolicy
from monitoring.detectors import StreamMonitor
from monitoring.drift_response import DriftResponder

WARMUP_EVENTS = 2000
"""Events before a run's cursor its detectors are warmed up on."""


class DriftReplay:
    """Detectors and responder of one training run (see the module docstring).

    Parameters
    ----------
    warmup
        Events learned before this run, oldest first: fed to the detectors, not acted on.
    """

    def __init__(self, warmup: Iterable[TrainingEvent] = ()) -> None:
        self.monitor = StreamMonitor()
        for e in warmup:
            self._observe(e)
        self.responder = DriftResponder(self, log_level=logging.DEBUG)
        self._pending: list[tuple[ArmID, float, float | None, bool]] = []
        self.responses = 0
        """Discounts applied to the policy by this run."""

    def _observe(self, e: TrainingEvent) -> list:  # type: ignore[type-arg]
        return self.monitor.observe(
            e.model, reward=e.reward, quality=e.quality, cost_usd=e.cost_usd
        )

    def reset_arm(
        self,
        arm: ArmID,
        *,
        factor: float = 0.0,
        max_weight: float | None = None,
        costs: bool = False,
    ) -> bool:
        """The responder's target: remember the response, applied at its event by :meth:`learn`."""
        self._pending.append((arm, factor, max_weight, costs))
        return True

    def learn(
        self,
        policy: BasePolicy,
        batch: Sequence[TrainingEvent],
        target: Callable[[TrainingEvent], float],
    ) -> None:
        """``policy`` learns ``batch`` (``target`` of each event), discounted where serving's
        detectors would have fired; runs of events between responses are learned in bulk."""
        start = 0
        for i, e in enumerate(batch):
            events = self._observe(e)
            if not events:
                continue
            self.responder.handle(events)
            if not self._pending:
                continue
            policy.learn_many((x.model, x.features, target(x)) for x in batch[start : i + 1])
            start = i + 1
            for arm, factor, max_weight, costs in self._pending:
                if costs and policy.cost_aware:  # it learns quality alone: no old price in it
                    continue
                try:
                    policy.discount_arm(arm, factor, max_weight=max_weight)
                except (NotImplementedError, KeyError):
                    continue
                self.responses += 1
            self._pending.clear()
        if start < len(batch):
            policy.learn_many((x.model, x.features, target(x)) for x in batch[start:])
