"""Cascade mode: a plan of models to try in order, its escalation rule learned by Q-learning.

``/decide`` with ``"mode": "cascade"`` answers with a ``plan``. The router's policy still picks
the model it would serve (the *target*); when a cheaper model is eligible for the request, the
plan first tries the cheapest one and escalates to the target when the client's check of the
cheap answer falls in one of the plan's ``escalate_on`` quality buckets (for a monotone rule also
given as ``escalate_if_quality_below``). The rule comes from a
:class:`models.cascade.EscalationCascade` per (task type, cheap model, target) ladder, sampled
epsilon-greedily per request (``probability`` is that rule's propensity).

Each step has its own ``decision_id`` (an event-log decision like any other), so the step's
feedback is an ordinary ``/feedback``:

- step 0's feedback carries the **check result**: the cheap answer's quality as the client's
  check judged it (``quality``, or an ``error_kind``). If the plan said accept for that result,
  the cascade learns ``accept`` with that quality;
- step 1's feedback carries the final outcome; together with step 0's it teaches the escalation
  transition (its cost, the state it led to) and ``accept`` at the target. Q-learning is
  off-policy: an escalation the client made against the plan is learned too.

Episodes waiting for their other step live in memory (bounded), so both feedbacks must reach the
same worker; the Q-tables are not yet versioned in the registry. The cascade's willingness to
pay is the router's default one.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from llmopt.types import ArmID, DecisionID
from models.cascade import ACCEPT, ERROR, CascadeState, EscalationCascade, _quality_labels

MAX_EPISODES = 100_000
"""Episodes kept waiting for feedback; the oldest are dropped beyond it."""


@dataclass(frozen=True)
class PlannedStep:
    """One step of a plan: the model, its decision, and when to go on to the next step."""

    model: ArmID
    decision_id: DecisionID
    parameters: dict[str, float | int | str] = field(default_factory=dict)
    parameters_reason: str = ""
    escalate_to: ArmID | None = None
    escalate_on: tuple[str, ...] = ()
    escalate_if_quality_below: float | None = None
    probability: float = 1.0


@dataclass
class _Episode:
    key: str
    ladder: tuple[ArmID, ArmID]
    actions: dict[str, str]
    first: CascadeState | None = None
    first_quality: float = 0.0
    last: tuple[CascadeState, float] | None = None
    """Step 1's state and cost, once its feedback came."""
    learned: set[str] = field(default_factory=set)


def cascade_key(task_type: str, cheap: ArmID, target: ArmID) -> str:
    """The Q-table of one ladder.

    >>> cascade_key("code", "gpt-4o-mini", "gpt-4o")
    'code:gpt-4o-mini>gpt-4o'
    """
    return f"{task_type}:{cheap}>{target}"


class ServedCascades:
    """Q-learning cascades per (task type, ladder), and the episodes awaiting feedback.

    Not thread-safe: the router calls it under its lock.

    Examples
    --------
    >>> c = ServedCascades(willingness_to_pay=0.05, seed=0, epsilon=0.0)
    >>> rule = c.rule("code", "cheap", "big")
    >>> rule.model, rule.escalate_to, 0 < rule.probability <= 1
    ('cheap', 'big', True)
    """

    def __init__(
        self,
        *,
        willingness_to_pay: float = 0.05,
        quality_thresholds: tuple[float, ...] = (0.5, 0.8),
        epsilon: float = 0.2,
        seed: int | None = None,
    ) -> None:
        self.willingness_to_pay = willingness_to_pay
        self.quality_thresholds = quality_thresholds
        self.epsilon = epsilon
        self.seed = seed
        self.cascades: dict[str, EscalationCascade] = {}
        self._episodes: OrderedDict[DecisionID, tuple[DecisionID, int]] = OrderedDict()
        self._open: dict[DecisionID, _Episode] = {}

    def cascade(self, task_type: str, cheap: ArmID, target: ArmID) -> EscalationCascade:
        """The cascade of a ladder (created on first use)."""
        key = cascade_key(task_type, cheap, target)
        c = self.cascades.get(key)
        if c is None:
            c = EscalationCascade(
                [cheap, target],
                willingness_to_pay=self.willingness_to_pay,
                quality_thresholds=self.quality_thresholds,
                epsilon=self.epsilon,
                seed=None if self.seed is None else zlib.crc32(f"{self.seed}:{key}".encode()),
            )
            self.cascades[key] = c
        return c

    def rule(self, task_type: str, cheap: ArmID, target: ArmID) -> PlannedStep:
        """Step 0's escalation rule for one request, sampled (no decision id yet)."""
        c = self.cascade(task_type, cheap, target)
        labels = [*_labels(c), ERROR]
        actions, prob = {}, 1.0
        for label in labels:
            a = c.step(CascadeState("all", 0, label))
            actions[label] = a.action
            prob *= a.probability
        escalate = tuple(lbl for lbl in labels if actions[lbl] != ACCEPT)
        return PlannedStep(
            model=cheap,
            decision_id="",
            escalate_to=target,
            escalate_on=escalate,
            escalate_if_quality_below=_threshold(c, escalate),
            probability=prob,
        )

    def start(
        self,
        task_type: str,
        first: DecisionID,
        second: DecisionID,
        rule: PlannedStep,
    ) -> None:
        """Remember an episode: step 0 is decision ``first``, step 1 decision ``second``."""
        assert rule.escalate_to is not None
        labels = [*_labels(self.cascade(task_type, rule.model, rule.escalate_to)), ERROR]
        self._open[first] = _Episode(
            key=cascade_key(task_type, rule.model, rule.escalate_to),
            ladder=(rule.model, rule.escalate_to),
            actions={
                lbl: (rule.escalate_to if lbl in rule.escalate_on else ACCEPT) for lbl in labels
            },
        )
        self._episodes[first] = (first, 0)
        self._episodes[second] = (first, 1)
        while len(self._episodes) > MAX_EPISODES:
            old, _ = self._episodes.popitem(last=False)
            self._open.pop(old, None)

    def observe(
        self, decision_id: DecisionID, *, quality: float, cost_usd: float, error: bool
    ) -> list[str]:
        """Learn from one step's feedback; returns what was learned (e.g. ``["accept"]``)."""
        found = self._episodes.get(decision_id)
        if found is None:
            return []
        first, step = found
        ep = self._open.get(first)
        if ep is None:
            return []
        c = self.cascades[ep.key]
        quality = min(max(quality, 0.0), 1.0) if math.isfinite(quality) else 0.0
        state = c.observe(None, ep.ladder[step], quality=quality, error=error)
        learned: list[str] = []
        if step == 0:
            ep.first, ep.first_quality = state, 0.0 if error else quality
            if ep.actions[state.quality] == ACCEPT and "accept0" not in ep.learned:
                c.update(state, ACCEPT, quality=ep.first_quality)
                ep.learned.add("accept0")
                learned.append("accept")
        else:
            ep.last = (state, cost_usd)
            if "accept1" not in ep.learned:
                c.update(state, ACCEPT, quality=0.0 if error else quality)
                ep.learned.add("accept1")
                learned.append("accept at the target")
        if ep.first is not None and ep.last is not None and "escalate" not in ep.learned:
            s1, cost = ep.last
            c.update(ep.first, ep.ladder[1], cost_usd=cost, next_state=s1)
            ep.learned.add("escalate")
            learned.append(f"escalate to {ep.ladder[1]}")
        if {"escalate", "accept1"} <= ep.learned and ep.first is not None:
            self._open.pop(first, None)
        return learned

    def explain(self) -> dict[str, Any]:
        """Every ladder's greedy rule as text (``EscalationCascade.explain``)."""
        return {k: c.explain() for k, c in self.cascades.items()}


def _labels(c: EscalationCascade) -> list[str]:
    return _quality_labels(c.quality_thresholds)


def _threshold(c: EscalationCascade, escalate: tuple[str, ...]) -> float | None:
    """The quality below which the rule escalates, if it is that simple (else None)."""
    labels = _labels(c)
    quality = [lbl for lbl in escalate if lbl != ERROR]
    if quality != labels[: len(quality)] or len(quality) == len(labels):
        return None
    return [*c.quality_thresholds, 1.0][len(quality) - 1] if quality else 0.0
