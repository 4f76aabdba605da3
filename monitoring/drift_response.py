"""The response to a drift: the live policy discounts the drifted model; retraining is requested.

A policy that remembers every reward needs about as many new rewards as it has old ones before
a model whose quality collapsed loses its place (a mean over 1,000 good answers moves by 1/1,000
per bad one). On a drift of a model's quality or reward, :class:`DriftResponder` discounts that
model's arm in the live policy (:meth:`llmopt.loop.LearningLoop.reset_arm`, hence
:meth:`models.base.Policy.discount_arm`), so the next few rewards decide, and requests a
retraining through ``on_retrain_request`` (the training flows re-fit from the event log, where
the new outcomes are; serving passes :class:`monitoring.retraining.RetrainTrigger`, which runs
the retraining deployment through Prefect).

What each stream's drift does:

- ``quality``, ``reward``: the arm's statistics keep the weight of at most ``keep``
  observations, so the next few rewards decide. Forgetting them outright (``keep=0``) is
  dangerous with a policy that explores little: after a false alarm a good model restarts
  from the average of all models and may never be tried again (measured on a RouterBench
  replay, seed 0, willingness to pay 0.05: one false alarm's full reset of GPT-4 lowered
  the reward by about 0.06 per decision over the next 1,000 decisions).
- ``cost_usd``: the model's observed costs are forgotten (its price changed); a policy that
  learns the reward, which has the old price in it, is discounted too.
- ``latency_ms``: nothing is learned from latency (the catalog's figures are used): alert only.

Several detectors usually fire on one change, a few values apart: after acting on a model the
responder ignores further events of the same kind for that model for ``cooldown`` values.

Examples
--------
>>> from datetime import UTC, datetime
>>> from monitoring.detectors import DriftEvent
>>> class Loop:  # anything with reset_arm works: the LearningLoop in production
...     def reset_arm(self, arm, *, factor=0.0, max_weight=None, costs=False):
...         print(f"reset {arm} max_weight={max_weight} costs={costs}")
...         return True
>>> responder = DriftResponder(Loop(), cooldown=100)
>>> t = datetime(2025, 1, 1, tzinfo=UTC)
>>> acted = responder.handle([
...     DriftEvent("gpt-4o", "quality", "cusum", 1003, 0.0, t),
...     DriftEvent("gpt-4o", "quality", "adwin", 1024, 0.0, t),  # same change: cooldown
...     DriftEvent("gpt-4o", "latency_ms", "iqr", 1030, 9000.0, t),  # alert only
... ])
reset gpt-4o max_weight=20.0 costs=False
>>> [(e.detector, e.n_seen) for e in acted], len(responder.retrain_requests)
([('cusum', 1003)], 1)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from typing import Protocol

from llmopt.types import ArmID
from monitoring.alerts import LOGGER_NAME
from monitoring.detectors import DriftEvent

_ACTIONS = {"quality": "policy", "reward": "policy", "cost_usd": "costs"}
"""What a drift of each stream resets (streams not listed: alert only)."""


class ArmResetter(Protocol):
    """What the responder acts on (:class:`llmopt.loop.LearningLoop` has it)."""

    def reset_arm(
        self,
        arm: ArmID,
        *,
        factor: float = 0.0,
        max_weight: float | None = None,
        costs: bool = False,
    ) -> bool:
        """Discount the arm's statistics (or, with ``costs``, its learned costs)."""
        ...


class DriftResponder:
    """Discounts a drifted model in the live policy and requests retraining.

    Parameters
    ----------
    target
        The live learning loop (anything with ``reset_arm``); None: only requests retraining.
    keep
        Weight, in observations, that the drifted model's old statistics keep at most (0:
        forget them, back to the prior).
    detectors
        Names of the detectors whose events are acted on (None: every detector's).
    cooldown
        Values of a model's stream after a response during which further events of the same
        kind (policy or costs) for that model are not acted on again.
    on_retrain_request
        Called with the event behind each retraining request (serving: run the retraining
        deployment, :mod:`monitoring.retraining`); an exception it raises is logged, never
        propagated. Every request is also kept in :attr:`retrain_requests`.
    log_level
        Level of the record each response logs (serving: a warning, an alert; training, which
        replays the responses on the logged stream: debug).
    """

    def __init__(
        self,
        target: ArmResetter | None = None,
        *,
        keep: float = 20.0,
        detectors: Collection[str] | None = None,
        cooldown: int = 200,
        on_retrain_request: Callable[[DriftEvent], None] | None = None,
        log_level: int = logging.WARNING,
    ) -> None:
        if not keep >= 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        if cooldown < 0:
            raise ValueError(f"cooldown must be >= 0, got {cooldown}")
        self.target = target
        self.keep = keep
        self.detectors = frozenset(detectors) if detectors is not None else None
        self.cooldown = cooldown
        self.on_retrain_request = on_retrain_request
        self.log_level = log_level
        self.retrain_requests: list[DriftEvent] = []
        """Every retraining request so far, oldest first."""
        self._last: dict[tuple[ArmID, str], int] = {}
        self._logger = logging.getLogger(LOGGER_NAME)

    def handle(self, events: Iterable[DriftEvent]) -> list[DriftEvent]:
        """Respond to drift events (what a ``StreamMonitor`` returned); returns those acted on."""
        acted = []
        for event in events:
            if self._respond(event):
                acted.append(event)
        return acted

    def _respond(self, event: DriftEvent) -> bool:
        action = _ACTIONS.get(event.stream)
        if action is None or (self.detectors is not None and event.detector not in self.detectors):
            return False
        key = (event.model, action)
        last = self._last.get(key)
        if last is not None and 0 <= event.n_seen - last < self.cooldown:
            return False
        self._last[key] = event.n_seen
        discounted = False
        if self.target is not None:
            discounted = self.target.reset_arm(
                event.model, factor=1.0, max_weight=self.keep, costs=action == "costs"
            )
        self._logger.log(
            self.log_level,
            "drift response: %s %s (policy discounted: %s), retraining requested",
            event.model,
            "costs forgotten" if action == "costs" else f"statistics kept at <= {self.keep:g} obs",
            discounted,
            extra={"alert": {"kind": "drift_response", **event.to_dict(), "action": action}},
        )
        self._request_retraining(event)
        return True

    def _request_retraining(self, event: DriftEvent) -> None:
        self.retrain_requests.append(event)
        if self.on_retrain_request is not None:
            try:
                self.on_retrain_request(event)
            except Exception:  # the retraining trigger must not break the feedback path
                self._logger.exception("on_retrain_request hook failed")
