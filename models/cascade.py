"""Escalation cascade learned by tabular Q-learning: try a cheap model, escalate when it pays.

A cascade sends a request to the cheapest rung of a ladder of models first. After each answer it
decides, from a small discrete state, whether to **accept** that answer or to **escalate** to any
more expensive rung. The state is

* the request-features bucket (chosen features quantised into ``n_buckets`` bins each),
* the rung that answered last (its index in the ladder), and
* a coarse bucket of that answer's observed or predicted quality, or ``"error"``.

The rung stands for the "step" of the cascade: since an escalation may skip rungs, the rung (not
the number of calls so far) fixes which actions remain, and the calls already paid for are sunk
costs that no later decision can change.

The episode's reward is :func:`llmopt.reward.reward` of the final answer: its quality minus the
summed cost of every call made, divided by the willingness to pay. It is split over the steps so
that a Q-value only counts what is still to come (the first call is paid whatever the policy
does): escalating to ``X`` earns ``-cost(X) / w``, accepting earns the accepted answer's quality.
Escalation therefore wins only where the expected quality gain beats the extra cost.

Why a table and not a regression: the state is a handful of buckets and a few rungs, every cell is
visited often, and a table explains itself (:meth:`EscalationCascade.explain`) and merges exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

from llmopt.reward import reward
from llmopt.types import ArmID, Features
from models.state import Stateful, rng_state, set_rng_state

ACCEPT = "accept"
"""The action that returns the current answer; every other action is a model id to escalate to."""

ERROR = "error"
"""Quality bucket of a call that failed (timeout, refusal, provider error)."""

ModelCall = Callable[[ArmID], tuple[float, float, bool]]
"""Calls a model: returns (quality in [0, 1], cost in USD, error flag)."""


@dataclass(frozen=True, order=True)
class CascadeState:
    """What the cascade conditions on after an answer.

    ``bucket`` is the request-features bucket, ``rung`` the ladder index of the model that answered
    last, ``quality`` the label of its quality bucket (``"[0,0.5)"``...) or ``"error"``.
    """

    bucket: str
    rung: int
    quality: str


@dataclass(frozen=True)
class CascadeAction:
    """One decision: ``action`` is ``"accept"`` or the model to escalate to, with its propensity."""

    action: str
    probability: float
    q_values: dict[str, float]
    state: CascadeState

    @property
    def accept(self) -> bool:
        """Whether the current answer is returned."""
        return self.action == ACCEPT


@dataclass(frozen=True)
class EpisodeStep:
    """One model call of an episode and the decision taken after it."""

    model: ArmID
    quality: float
    cost_usd: float
    error: bool
    state: CascadeState
    action: str
    probability: float


@dataclass(frozen=True)
class Episode:
    """A walked cascade: the calls made, the answer returned and the reward it earned."""

    steps: tuple[EpisodeStep, ...]
    model: ArmID
    quality: float
    cost_usd: float
    reward: float

    @property
    def propensity(self) -> float:
        """Probability of the whole decision sequence under the policy that ran it."""
        return math.prod(s.probability for s in self.steps)


class EscalationCascade(Stateful):
    """A model cascade whose escalation rule is learned by Q-learning (Watkins).

    After each answer the cascade picks, epsilon-greedily over its Q-values, either ``"accept"``
    or a later rung of ``ladder``; the returned :class:`CascadeAction` carries the probability of
    that choice (off-policy evaluation needs it). ``update`` applies the Watkins backup
    ``Q(s, a) += lr * (r + discount * max_a' Q(s', a') - Q(s, a))``, with no next state after
    ``accept``. :meth:`run_episode` walks a whole request through the cascade, calls the models
    and learns; the lower-level ``start`` / ``observe`` / ``step`` / ``update`` do the same for a
    caller that makes the calls itself (serving).

    Exploration in state ``s`` is ``max(min_epsilon, epsilon / (1 + epsilon_decay * n(s)))``
    where ``n(s)`` is the number of updates of ``s``: a rare bucket keeps exploring after a common
    one has settled. Actions never tried hold ``initial_q``; its default 1.0 is the largest
    possible reward, so every action is tried once in every state (optimistic initial values).

    Replicas (serving workers) merge with :meth:`merge`: per (state, action) the visit counts add
    and the Q-values are averaged weighted by visits. With the sample-average step size
    (``learning_rate=None``, ``1/n``) this is exact for targets that do not bootstrap (``accept``:
    the merged value is the mean of every quality both replicas saw); for escalations, whose
    targets bootstrap on each replica's own estimates, and for a constant step size, it is the
    usual visit-weighted model average. Given ``base`` (the common snapshot both replicas started
    from), only their deltas since ``base`` are combined, so ``base`` is not counted twice.

    Parameters
    ----------
    ladder
        Model ids ordered from cheapest to most expensive; requests start on the first rung.
    willingness_to_pay
        USD per unit of quality (see :mod:`llmopt.reward`): converts call costs into reward.
    features
        Names of the request features that define the bucket; each is read as a value in [0, 1]
        (as :func:`llmopt.features.request_features` produces) and cut into ``n_buckets`` bins.
        Empty: one bucket for every request.
    n_buckets
        Bins per bucket feature.
    quality_thresholds
        Increasing cut points in (0, 1) of the quality buckets (plus the ``"error"`` bucket).
    learning_rate
        Constant step size in (0, 1], or ``None`` for the sample average ``1 / n(s, a)``.
    discount
        Discount of the value of the next state, in (0, 1].
    epsilon
        Initial exploration rate, in [0, 1].
    epsilon_decay
        How fast exploration decays with the visits of a state (0: never).
    min_epsilon
        Floor of the exploration rate.
    initial_q
        Value of actions never tried.
    seed
        Seed of the cascade's own random generator.

    Examples
    --------
    A small model that is right on easy requests only, a large one right on all:

    >>> import random
    >>> world = random.Random(0)
    >>> cascade = EscalationCascade(
    ...     ["small", "large"], willingness_to_pay=0.01, features=["hard"], n_buckets=2, seed=0
    ... )
    >>> def make_call(hard):
    ...     def call(model):
    ...         right = model == "large" or not hard
    ...         cost = {"small": 0.0001, "large": 0.003}[model]
    ...         return (0.9 if right else 0.1), cost, False
    ...     return call
    >>> for _ in range(400):
    ...     hard = world.random() < 0.5
    ...     episode = cascade.run_episode({"hard": float(hard)}, make_call(hard))
    >>> cascade.run_episode({"hard": 0.0}, make_call(False), learn=False, explore=False).model
    'small'
    >>> episode = cascade.run_episode({"hard": 1.0}, make_call(True), learn=False, explore=False)
    >>> [step.model for step in episode.steps], round(episode.reward, 2)
    (['small', 'large'], 0.59)

    References
    ----------
    Watkins, Dayan (1992). Q-learning. Machine Learning 8, 279-292.

    Chen, Zaharia, Zou (2023). FrugalGPT: how to use large language models while reducing cost
    and improving performance. arXiv:2305.05176.
    """

    kind = "q_cascade"

    def __init__(
        self,
        ladder: Sequence[ArmID],
        *,
        willingness_to_pay: float = 0.05,
        features: Sequence[str] = (),
        n_buckets: int = 3,
        quality_thresholds: Sequence[float] = (0.5, 0.8),
        learning_rate: float | None = None,
        discount: float = 1.0,
        epsilon: float = 0.2,
        epsilon_decay: float = 0.05,
        min_epsilon: float = 0.01,
        initial_q: float = 1.0,
        seed: int | None = None,
    ) -> None:
        ladder = _checked_ladder(ladder)
        if not willingness_to_pay > 0:
            raise ValueError(f"willingness_to_pay must be > 0, got {willingness_to_pay}")
        features = list(features)
        if not all(isinstance(f, str) and f for f in features) or len(set(features)) != len(
            features
        ):
            raise ValueError(f"features must be unique non-empty strings, got {features!r}")
        if n_buckets < 1:
            raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
        thresholds = [float(t) for t in quality_thresholds]
        if any(not 0.0 < t < 1.0 for t in thresholds) or thresholds != sorted(set(thresholds)):
            raise ValueError(
                f"quality_thresholds must be increasing values in (0, 1), got {thresholds}"
            )
        if learning_rate is not None and not 0.0 < learning_rate <= 1.0:
            raise ValueError(f"learning_rate must be in (0, 1] or None, got {learning_rate}")
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        for name, value in (("epsilon", epsilon), ("min_epsilon", min_epsilon)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not epsilon_decay >= 0:
            raise ValueError(f"epsilon_decay must be >= 0, got {epsilon_decay}")
        if not math.isfinite(initial_q):
            raise ValueError(f"initial_q must be finite, got {initial_q}")
        self.ladder = ladder
        self.willingness_to_pay = willingness_to_pay
        self.features = features
        self.n_buckets = n_buckets
        self.quality_thresholds = thresholds
        self.learning_rate = learning_rate
        self.discount = discount
        self.epsilon = epsilon
        self.epsilon_decay = epsilon_decay
        self.min_epsilon = min_epsilon
        self.initial_q = initial_q
        self.seed = seed
        self._rng = random.Random(seed)
        self._rung = {m: i for i, m in enumerate(ladder)}
        self._labels = _quality_labels(thresholds)
        self._q: dict[CascadeState, dict[str, float]] = {}
        self._n: dict[CascadeState, dict[str, int]] = {}
        self._n_updates = 0

    # -- states and actions ---------------------------------------------------------------------
    def bucket(self, context: Features | None) -> str:
        """The request-features bucket of ``context``, e.g. ``"difficulty=2"`` (``"all"``)."""
        if not self.features:
            return "all"
        if context is None:
            raise ValueError(f"context must give the bucket features {self.features}")
        parts = []
        for name in self.features:
            if name not in context:
                raise ValueError(f"context lacks the bucket feature {name!r}")
            value = float(context[name])
            if not math.isfinite(value):
                raise ValueError(f"context feature {name!r} is not finite: {value}")
            b = min(int(min(max(value, 0.0), 1.0) * self.n_buckets), self.n_buckets - 1)
            parts.append(f"{name}={b}")
        return ",".join(parts)

    def start(self, context: Features | None = None) -> ArmID:
        """The first model to call for ``context``: the cheapest rung."""
        self.bucket(context)  # validate now rather than after a paid call
        return self.ladder[0]

    def observe(
        self,
        context: Features | None,
        model: ArmID,
        *,
        quality: float | None,
        error: bool = False,
    ) -> CascadeState:
        """The state after ``model`` answered ``context`` with ``quality`` (or failed)."""
        rung = self._rung_of(model)
        if error:
            label = ERROR
        else:
            label = self._labels[self._quality_index(quality)]
        return CascadeState(self.bucket(context), rung, label)

    def actions(self, state: CascadeState) -> list[str]:
        """Allowed actions in ``state``: accept, or escalate to any later rung."""
        self._check_state(state)
        return [ACCEPT, *self.ladder[state.rung + 1 :]]

    def q_values(self, state: CascadeState) -> dict[str, float]:
        """Q-value of every allowed action in ``state`` (``initial_q`` for untried ones)."""
        known = self._q.get(state, {})
        return {a: known.get(a, self.initial_q) for a in self.actions(state)}

    def exploration(self, state: CascadeState) -> float:
        """Exploration rate in ``state``."""
        visits = sum(self._n.get(state, {}).values())
        return max(self.min_epsilon, self.epsilon / (1.0 + self.epsilon_decay * visits))

    # -- decisions and learning ---------------------------------------------------------------
    def step(self, state: CascadeState, *, explore: bool = True) -> CascadeAction:
        """Choose accept or an escalation in ``state``, epsilon-greedily; carries its propensity.

        With ``explore=False`` the choice is greedy (ties split evenly).
        """
        q = self.q_values(state)
        best = max(q.values())
        top = [a for a, v in q.items() if v >= best - 1e-12]
        eps = self.exploration(state) if explore and len(q) > 1 else 0.0
        probs = {a: eps / len(q) + (1.0 - eps) * (a in top) / len(top) for a in q}
        u = self._rng.random()
        acc = 0.0
        chosen = next(a for a in reversed(q) if probs[a] > 0)  # fallback for rounding at u ~ 1
        for a, p in probs.items():
            acc += p
            if p > 0 and u < acc:
                chosen = a
                break
        return CascadeAction(chosen, min(max(probs[chosen], 1e-12), 1.0), q, state)

    def update(
        self,
        state: CascadeState,
        action: str,
        *,
        quality: float | None = None,
        cost_usd: float = 0.0,
        next_state: CascadeState | None = None,
    ) -> Self:
        """Watkins' Q-learning backup of one transition.

        ``accept``: give the accepted answer's ``quality`` (which may be a later, better judgement
        than the one the state was bucketed on) and no ``next_state``. An escalation: give the
        ``cost_usd`` of the call it made and the ``next_state`` its answer led to.
        """
        allowed = self.actions(state)
        if action not in allowed:
            raise ValueError(f"action {action!r} is not allowed in {state}; allowed: {allowed}")
        if action == ACCEPT:
            if quality is None:
                raise ValueError("accept needs the quality of the accepted answer")
            if next_state is not None:
                raise ValueError("accept ends the episode: next_state must be None")
        else:
            if quality is not None:
                raise ValueError("an escalation earns only its cost: quality must be None")
            if next_state is None:
                raise ValueError(f"escalating to {action!r} needs the next_state it led to")
            self._check_state(next_state)
            if next_state.rung != self._rung[action] or next_state.bucket != state.bucket:
                raise ValueError(
                    f"next_state {next_state} does not follow {state} escalated to {action!r}"
                )
        if quality is not None and not math.isfinite(quality):
            raise ValueError(f"quality must be a finite number in [0, 1], got {quality}")
        # The one reward function; raises on a quality outside [0, 1] or a bad cost.
        r = reward(
            0.0 if quality is None else float(quality),
            float(cost_usd),
            willingness_to_pay=self.willingness_to_pay,
        )
        target = r
        if next_state is not None:
            target += self.discount * max(self.q_values(next_state).values())
        qs = self._q.setdefault(state, {})
        ns = self._n.setdefault(state, {})
        n = ns.get(action, 0) + 1
        old = qs.get(action, self.initial_q)
        lr = 1.0 / n if self.learning_rate is None else self.learning_rate  # 1/1: old forgotten
        qs[action] = old + lr * (target - old)
        ns[action] = n
        self._n_updates += 1
        return self

    def run_episode(
        self,
        context: Features | None,
        call: ModelCall,
        *,
        learn: bool = True,
        explore: bool = True,
    ) -> Episode:
        """Walk one request through the cascade: call models until accepting, then learn.

        ``call(model)`` returns ``(quality, cost_usd, error)``; on an error the quality is ignored
        (an accepted failure has quality 0). Updates are applied from the last transition back to
        the first, so the accepted quality reaches the earlier decisions within the same episode.
        """
        model = self.start(context)
        quality, cost, error = self._call(call, model)
        total_cost = cost
        state = self.observe(context, model, quality=quality, error=error)
        steps: list[EpisodeStep] = []
        transitions: list[tuple[CascadeState, str, float, CascadeState | None]] = []
        while True:
            decision = self.step(state, explore=explore)
            steps.append(
                EpisodeStep(
                    model, quality, cost, error, state, decision.action, decision.probability
                )
            )
            if decision.accept:
                transitions.append((state, ACCEPT, quality, None))
                break
            model = decision.action
            quality, cost, error = self._call(call, model)
            total_cost += cost
            next_state = self.observe(context, model, quality=quality, error=error)
            transitions.append((state, model, cost, next_state))
            state = next_state
        if learn:
            for s, a, value, s_next in reversed(transitions):
                if a == ACCEPT:
                    self.update(s, a, quality=value)
                else:
                    self.update(s, a, cost_usd=value, next_state=s_next)
        return Episode(
            steps=tuple(steps),
            model=model,
            quality=quality,
            cost_usd=total_cost,
            reward=reward(quality, total_cost, willingness_to_pay=self.willingness_to_pay),
        )

    # -- explanations -----------------------------------------------------------------------------
    def greedy_policy(self) -> dict[CascadeState, str]:
        """The greedy action of every state learned from so far (ties: the cheaper action)."""
        out: dict[CascadeState, str] = {}
        for state in sorted(self._q):
            q = self.q_values(state)
            out[state] = max(q, key=lambda a: q[a])  # first maximum: accept before escalating
        return out

    def explain(self) -> str:
        """The greedy policy as a text table: bucket, model, quality bucket, action, Q, visits."""
        rows = [("bucket", "model", "quality", "greedy", "q-values", "visits")]
        for state, action in self.greedy_policy().items():
            q = self.q_values(state)
            n = self._n.get(state, {})
            rows.append(
                (
                    state.bucket,
                    self.ladder[state.rung],
                    state.quality,
                    action,
                    " ".join(f"{a}={v:+.3f}" for a, v in q.items()),
                    str(sum(n.values())),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in rows
        )

    @property
    def n_updates(self) -> int:
        """Number of transitions learned from."""
        return self._n_updates

    # -- replicas -------------------------------------------------------------------------------
    def merge(self, other: EscalationCascade, base: EscalationCascade | None = None) -> Self:
        """A new cascade combining two replicas (see the class docstring); inputs are unchanged.

        The result keeps this cascade's random generator state.
        """
        for peer in (other, base):
            if peer is None:
                continue
            if not isinstance(peer, EscalationCascade) or _hyper(peer) != _hyper(self):
                raise ValueError("can only merge cascades with the same hyperparameters")
        merged = self.copy()
        pairs = {(s, a) for src in (self, other) for s, acts in src._n.items() for a in acts}
        merged._q, merged._n = {}, {}
        for s, a in sorted(pairs):
            n1, n2 = self._n.get(s, {}).get(a, 0), other._n.get(s, {}).get(a, 0)
            q1, q2 = self._q.get(s, {}).get(a, 0.0), other._q.get(s, {}).get(a, 0.0)
            nb, qb = 0, 0.0
            if base is not None:
                nb, qb = base._n.get(s, {}).get(a, 0), base._q.get(s, {}).get(a, 0.0)
                if n1 < nb or n2 < nb:
                    raise ValueError(f"base has more visits of {s}, {a!r} than a replica")
            n = n1 + n2 - nb
            if n == 0:
                continue
            merged._n.setdefault(s, {})[a] = n
            merged._q.setdefault(s, {})[a] = (q1 * n1 + q2 * n2 - qb * nb) / n
        base_updates = base._n_updates if base is not None else 0
        merged._n_updates = self._n_updates + other._n_updates - base_updates
        return merged

    def copy(self) -> Self:
        """A deep copy: same hyperparameters, learned state and random generator state."""
        out = type(self)(**self._params())
        out._set_state(self._get_state())
        return out

    # -- state ----------------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        table = [
            [s.bucket, s.rung, s.quality, a, self._q[s][a], self._n[s][a]]
            for s in sorted(self._q)
            for a in sorted(self._q[s])
        ]
        return {"table": table, "n_updates": self._n_updates, "rng": rng_state(self._rng)}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._q, self._n = {}, {}
        for bucket, rung, label, action, q, n in state["table"]:
            s = CascadeState(str(bucket), int(rung), str(label))
            if action not in self.actions(s):
                raise ValueError(f"action {action!r} is not allowed in {s}")
            if int(n) < 1 or not math.isfinite(float(q)):
                raise ValueError(f"bad entry for {s}, {action!r}: q={q}, n={n}")
            self._q.setdefault(s, {})[action] = float(q)
            self._n.setdefault(s, {})[action] = int(n)
        self._n_updates = int(state["n_updates"])
        set_rng_state(self._rng, state["rng"])

    # -- helpers ----------------------------------------------------------------------------------
    def _rung_of(self, model: ArmID) -> int:
        try:
            return self._rung[model]
        except (KeyError, TypeError):
            raise ValueError(f"unknown model {model!r}; the ladder is {self.ladder}") from None

    def _quality_index(self, quality: float | None) -> int:
        if quality is None or not 0.0 <= quality <= 1.0:  # also refuses NaN
            raise ValueError(f"quality must be a number in [0, 1] unless error=True, got {quality}")
        return sum(quality >= t for t in self.quality_thresholds)

    def _check_state(self, state: CascadeState) -> None:
        if not isinstance(state, CascadeState):
            raise ValueError(f"expected a CascadeState, got {state!r}")
        if not 0 <= state.rung < len(self.ladder):
            raise ValueError(f"rung {state.rung} is outside the ladder {self.ladder}")
        if state.quality != ERROR and state.quality not in self._labels:
            raise ValueError(
                f"unknown quality bucket {state.quality!r}; known: {[*self._labels, ERROR]}"
            )

    def _call(self, call: ModelCall, model: ArmID) -> tuple[float, float, bool]:
        quality, cost, error = call(model)
        if not (math.isfinite(cost) and cost >= 0):
            raise ValueError(f"call({model!r}) returned a bad cost: {cost}")
        if error:
            return 0.0, float(cost), True
        self._quality_index(quality)
        return float(quality), float(cost), False


def _checked_ladder(ladder: Sequence[ArmID]) -> list[ArmID]:
    out = list(ladder)
    if not out:
        raise ValueError("ladder must name at least one model")
    if not all(isinstance(m, str) and m for m in out):
        raise ValueError(f"ladder entries must be non-empty strings, got {out!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"ladder entries must be unique, got {out!r}")
    if ACCEPT in out:
        raise ValueError(f"{ACCEPT!r} is reserved for the accept action; rename that model")
    return out


def _quality_labels(thresholds: Sequence[float]) -> list[str]:
    """``[0, 0.5, 0.8]`` cuts -> ``["[0,0.5)", "[0.5,0.8)", "[0.8,1]"]``."""
    edges = [0.0, *thresholds, 1.0]
    return [
        f"[{lo:g},{hi:g}{']' if i == len(edges) - 2 else ')'}"
        for i, (lo, hi) in enumerate(zip(edges, edges[1:], strict=False))
    ]


def _hyper(cascade: EscalationCascade) -> dict[str, Any]:
    """Hyperparameters that must agree for a merge (replicas should differ in their seeds)."""
    return {k: v for k, v in cascade._params().items() if k != "seed"}
