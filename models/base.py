"""Base class of every policy: validation, burn-in, penalties, explanations, state and merging.

Each algorithm implements only ``_pull`` (probability, penalised score and estimate per arm),
``_update`` and its state hooks (docs/style.md #8). River's bandit policies return a bare arm id; we
need the propensity of every choice for off-policy evaluation and per-arm scores for
explanations, hence our own base class.

Cost awareness. A policy learns a *target* (the reward, or the quality alone) and may be given,
at pull time, a known ``penalty`` per arm in the same units (predicted cost / willingness to pay,
plus the latency term). Exploitation ranks arms by ``estimate - penalty``; optimism is added to
the estimate only, and capped at ``max_reward`` (quality never exceeds 1), so an arm whose best
possible quality cannot pay for its price is never explored. This is what keeps a router from
burning its gain exploring expensive models.
"""

from __future__ import annotations

import copy
import math
import operator
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, ClassVar, Self

import numpy as np

from llmopt.schemas import Decision, Explanation, new_decision_id
from llmopt.types import ArmID, Features
from models.state import Stateful, rng_state, set_rng_state

_DECISION_FIELDS_SET = frozenset(
    (
        "decision_id",
        "model",
        "parameters",
        "propensity",
        "policy_name",
        "policy_version",
        "scores",
        "notes",
        "explanation",
        "created_at",
    )
)
"""The fields a policy's decision sets (``model_fields_set``; parameters_reason is a default)."""


_NO_PENALTIES: dict[int, np.ndarray] = {}
_UNIT_WEIGHTS: dict[int, np.ndarray] = {}  # n draws -> n weights of 1/n (win shares)


def _no_penalties(n_arms: int) -> np.ndarray:
    """The penalties of a pull given none: zeros, one read-only array per number of arms."""
    zeros = _NO_PENALTIES.get(n_arms)
    if zeros is None:
        zeros = np.zeros(n_arms)
        zeros.setflags(write=False)
        _NO_PENALTIES[n_arms] = zeros
    return zeros


def _explain(  # noqa: PLR0917 - bound positionally by functools.partial in pull
    arms: list[ArmID],
    sc: list[float],
    est: list[float],
    pe: list[float],
    i: int,
    reason: str,
    at: float,
) -> dict[str, Any]:
    """A decision's scores, explanation and timestamp, computed when first read."""
    expected = [e - p for e, p in zip(est, pe, strict=True)]
    explored = expected[i] < max(expected) - 1e-12
    if not reason:
        if not explored:
            reason = "greedy"
        elif sc[i] >= max(sc) - 1e-12:
            reason = "optimism"
        else:
            reason = "random exploration"
    return {
        "scores": dict(zip(arms, sc, strict=True)),
        "explanation": Explanation(  # validated: pydantic-core is faster than model_construct
            estimate=est[i],
            uncertainty_bonus=sc[i] + pe[i] - est[i],
            penalty=pe[i],
            expected_reward=expected[i],
            explored=explored,
            reason=reason,
        ),
        "created_at": datetime.fromtimestamp(at, UTC),
    }


class BasePolicy(Stateful, ABC):
    """A bandit policy with River's shape: ``pull`` then ``update``.

    Parameters
    ----------
    burn_in
        Each arm is pulled this many times (uniformly among the arms still under it) before the
        algorithm's own rule takes over. Also applies to arms added later: a new model gets its
        share of exploration. With ``max_reward`` set, an arm whose penalty rules it out even
        at the best possible quality is not burnt in.
    max_reward
        Known upper bound of the target (1.0 when the policy learns quality): optimistic scores
        are capped there. None: no cap.
    exploration_floor
        Share of every decision spread uniformly over the arms, so every arm keeps a propensity
        of at least ``exploration_floor / n_arms`` (safe off-policy evaluation, and a new model
        keeps being tried). 0 disables it.
    explore_decay
        ``c`` of a decaying exploration rate ``c / (1 + t)`` spread over the arms that could
        still be best (with ``max_reward``: whose best possible target minus penalty beats the
        best expected reward). It retries a model written off by a few unlucky early rewards;
        in all it costs about ``c * ln(t)`` exploratory pulls. 0 disables it.
    cost_aware
        Tells the learning loop to teach this policy the *quality* of each answer and to pass
        the predicted cost and latency of each model as ``penalties`` at every pull, instead of
        teaching it the reward (cost and latency are known before a call; quality is not).
    seed
        Seed of the policy's own random generator.
    """

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        if "name" in cls.__dict__:
            cls.kind = cls.__dict__["name"]
        super().__init_subclass__(**kwargs)

    def __init__(
        self,
        *,
        burn_in: int = 0,
        max_reward: float | None = None,
        exploration_floor: float = 0.0,
        explore_decay: float = 0.0,
        cost_aware: bool = False,
        seed: int | None = None,
    ) -> None:
        if burn_in < 0:
            raise ValueError(f"burn_in must be >= 0, got {burn_in}")
        if max_reward is not None and not math.isfinite(max_reward):
            raise ValueError(f"max_reward must be finite or None, got {max_reward}")
        if not 0.0 <= exploration_floor <= 1.0:
            raise ValueError(f"exploration_floor must be in [0, 1], got {exploration_floor}")
        self.burn_in = burn_in
        self.max_reward = max_reward
        if not (math.isfinite(explore_decay) and explore_decay >= 0):
            raise ValueError(f"explore_decay must be a finite number >= 0, got {explore_decay}")
        self.exploration_floor = exploration_floor
        self.explore_decay = explore_decay
        self.cost_aware = cost_aware
        self.seed = seed
        self._rng = random.Random(seed)
        self._updates: dict[ArmID, int] = {}
        self._warm: set[ArmID] = set()  # arms past their burn-in
        self._last_arms: list[ArmID] = []
        self._n_updates = 0

    # -- public API ---------------------------------------------------------------------------
    def pull(
        self,
        arm_ids: Sequence[ArmID],
        context: Features | None = None,
        *,
        penalties: Mapping[ArmID, float] | None = None,
    ) -> Decision:
        """Choose one arm; the decision carries its propensity, scores and an explanation.

        ``penalties`` are known per-arm costs in reward units (e.g. predicted cost divided by
        the willingness to pay), subtracted from each arm's learned score.
        """
        arms = self._check_arms(arm_ids)
        ctx = self._check_context(context)
        pen = self._check_penalties(arms, penalties)
        probs, scores, estimates = self._pull(arms, ctx, pen)
        return self._decided(arms, probs, scores, estimates, pen)

    def pull_many(
        self,
        arm_ids: Sequence[ArmID],
        contexts: Sequence[Features | None],
        *,
        penalties: Sequence[Mapping[ArmID, float] | None] | None = None,
    ) -> list[Decision]:
        """:meth:`pull` for each context in turn, over the same arms (``penalties``: one
        mapping, or None, per context).

        The same decisions as that many pulls in that order from the same state and seed (but
        for their ids and timestamps); an algorithm that can (:meth:`_pull_many`) works out
        the per-arm numbers of all of them at once (``/decide_batch``).

        >>> from models.thompson import GaussianThompson
        >>> a, b = GaussianThompson(seed=3), GaussianThompson(seed=3)
        >>> ctxs = [{"x": 1.0}, {"x": 2.0}, None]
        >>> [d.model for d in a.pull_many(["m1", "m2"], ctxs)] == [
        ...     b.pull(["m1", "m2"], c).model for c in ctxs]
        True
        """
        arms = self._check_arms(arm_ids)
        ctxs = [self._check_context(c) for c in contexts]
        if penalties is None:
            pens = [_no_penalties(len(arms))] * len(ctxs)
        elif len(penalties) != len(ctxs):
            raise ValueError(f"{len(penalties)} penalties for {len(ctxs)} contexts")
        else:
            pens = [self._check_penalties(arms, p) for p in penalties]
        many = self._pull_many(arms, ctxs, pens) if ctxs else None
        if many is None:
            return [
                self._decided(arms, *self._pull(arms, c, p), p)
                for c, p in zip(ctxs, pens, strict=True)
            ]
        probs, scores, estimates = many
        return [
            self._decided(arms, probs[b], scores[b], estimates[b], p) for b, p in enumerate(pens)
        ]

    def _decided(
        self,
        arms: list[ArmID],
        probs: np.ndarray,
        scores: np.ndarray,
        estimates: np.ndarray,
        pen: np.ndarray,
    ) -> Decision:
        """The decision of one pull from its per-arm numbers: burn-in, decaying exploration and
        the floor mixed in, the arm drawn, its explanation deferred."""
        # Plain floats from here: on a dozen arms, each numpy call costs more than its maths (the
        # operations are the same IEEE ones, so the results are bit for bit numpy's).
        p: list[float] = probs.tolist()
        est: list[float] = estimates.tolist()
        pe: list[float] = pen.tolist()
        reason = ""
        cold = (
            [i for i, a in enumerate(arms) if self._updates.get(a, 0) < self.burn_in]
            if self.burn_in and not self._warm.issuperset(arms)
            else []
        )
        if cold or self.explore_decay > 0:
            # Arms that could still win: even at the best possible target, minus their penalty,
            # they beat the best expected reward. The others' price alone rules them out.
            if self.max_reward is not None:
                best = max(map(operator.sub, est, pe))
                top = self.max_reward
                if top - max(pe) > best:  # the dearest arm could: all could (rounding is monotone)
                    could_win = [True] * len(arms)
                else:
                    could_win = [top - q > best for q in pe]
            else:
                could_win = [True] * len(arms)
            if cold:  # a burn-in try of a model its price rules out teaches nothing
                cold = [i for i in cold if could_win[i]]
            if cold:
                p = [0.0] * len(arms)
                for i in cold:
                    p[i] = 1.0 / len(cold)
                reason = "burn-in"
            elif self.explore_decay > 0:
                # Decaying exploration among the arms that could still win: a model written off
                # by a few unlucky early rewards is retried now and then (c / t), a model its
                # price rules out never is.
                eps = min(1.0, self.explore_decay / (1.0 + self._n_updates))
                n_win = could_win.count(True)
                keep, share = 1.0 - eps, eps / n_win if n_win else 0.0
                if n_win == len(p) > 1:
                    p = [keep * q + share for q in p]
                elif n_win > 1:
                    p = [
                        keep * q + (share if w else 0.0) for q, w in zip(p, could_win, strict=True)
                    ]
        if self.exploration_floor > 0:
            keep, share = 1.0 - self.exploration_floor, self.exploration_floor / len(arms)
            p = [keep * q + share for q in p]
        i = self._sample(p)
        # Built without validation (every value is computed here, finite and in range; pydantic's
        # checks were a third of a pull's time), its scores, explanation and timestamp computed
        # only if someone reads them (most decisions are never explained).
        return Decision.deferred(
            {
                "decision_id": new_decision_id(),
                "model": arms[i],
                "parameters": {},
                "parameters_reason": "",
                "propensity": p[i] if 1e-12 <= p[i] <= 1.0 else min(max(p[i], 1e-12), 1.0),
                "policy_name": self.name,
                "policy_version": str(self._n_updates),
                "notes": [],
            },
            partial(_explain, arms, scores.tolist(), est, pe, i, reason, time.time()),
            set(_DECISION_FIELDS_SET),
        )

    def update(self, arm_id: ArmID, context: Features | None, reward: float) -> Self:
        """Learn from the reward of ``arm_id`` in ``context``."""
        if not isinstance(arm_id, str) or not arm_id:
            raise ValueError(f"arm_id must be a non-empty string, got {arm_id!r}")
        if not isinstance(reward, int | float) or not math.isfinite(reward):
            raise ValueError(f"reward must be a finite number, got {reward!r}")
        self._check_reward(float(reward))
        self._update(arm_id, self._check_context(context), float(reward))
        n = self._updates[arm_id] = self._updates.get(arm_id, 0) + 1
        if n >= self.burn_in:
            self._warm.add(arm_id)
        self._n_updates += 1
        return self

    def learn_many(self, events: Iterable[tuple[ArmID, Features | None, float]]) -> Self:
        """Warm start from logged ``(arm, context, reward)`` events (e.g. from the event log).

        Fitting each arm's model on its logged outcomes needs no importance weights: the
        estimates are per arm and conditional on the context.
        """
        for arm, ctx, r in events:
            self.update(arm, ctx, r)
        return self

    def arm_mean(self, arm_id: ArmID) -> float | None:
        """Mean target learned for ``arm_id`` regardless of context (None: never updated)."""
        return None

    def discount_arm(
        self, arm_id: ArmID, factor: float = 0.0, *, max_weight: float | None = None
    ) -> Self:
        """Keep only ``factor`` of the weight of what was learned about ``arm_id``.

        For a drift of that one model (monitoring/drift_response.py): 0 forgets the arm back
        to its prior (and it goes through its burn-in again); 0.1 keeps the old evidence at a
        tenth of its weight. ``max_weight`` caps what is kept at the weight of that many
        observations, whatever the arm's history: the next few rewards then outweigh it,
        while a false alarm does not throw away a good model. Other arms are untouched, an
        arm never seen is left alone, the count used for the burn-in is scaled alike.
        Discounting is not additive: merge replicas before discounting, or discount each.

        Raises ``NotImplementedError`` for a policy that cannot discount one arm.
        """
        if not (math.isfinite(factor) and 0.0 <= factor <= 1.0):
            raise ValueError(f"factor must be in [0, 1], got {factor}")
        if max_weight is not None and not (math.isfinite(max_weight) and max_weight >= 0):
            raise ValueError(f"max_weight must be a finite number >= 0, got {max_weight}")
        weight = self._arm_weight(arm_id)
        if max_weight is not None and weight * factor > max_weight:
            factor = max_weight / weight
        if factor >= 1.0:
            return self
        self._discount_arm(arm_id, float(factor))
        if arm_id in self._updates:
            self._updates[arm_id] = kept = int(self._updates[arm_id] * factor)
            if kept < self.burn_in:
                self._warm.discard(arm_id)
        return self

    @property
    def n_updates(self) -> int:
        """Number of rewards learned from."""
        return self._n_updates

    def merge(self, other: Self, *, base: Self | None = None) -> Self:
        """Combine what two replicas learned into a new policy (additive sufficient statistics).

        Without ``base`` the two policies are taken to have learned from disjoint data from a
        fresh start. With ``base`` (the snapshot both replicas started from), only what each
        learned since is added to it: ``base + (self - base) + (other - base)``.
        """
        if type(other) is not type(self) or other._params() != self._params():
            raise ValueError("can only merge policies of the same class and hyperparameters")
        if base is not None and (type(base) is not type(self) or base._params() != self._params()):
            raise ValueError("the merge base must be the same kind of policy")
        out = copy.deepcopy(self)
        ref = base if base is not None else self.clone()
        for arm in set(self._updates) | set(other._updates):
            n = self._updates.get(arm, 0) + other._updates.get(arm, 0) - ref._updates.get(arm, 0)
            out._updates[arm] = max(n, 0)
        out._warm = {a for a, n in out._updates.items() if n >= out.burn_in}
        out._n_updates = self._n_updates + other._n_updates - ref._n_updates
        out._merge_stats(self, other, ref)
        return out

    # -- hooks ----------------------------------------------------------------------------------
    @abstractmethod
    def _pull(
        self, arm_ids: list[ArmID], context: dict[str, float], penalties: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (probability, penalised score, unpenalised estimate) of each arm.

        Probabilities sum to 1. The score is what the rule ranks by (estimate plus optimism,
        capped at ``max_reward``, minus the penalty); the estimate is the point prediction.
        """

    def _pull_many(
        self, arm_ids: list[ArmID], contexts: list[dict[str, float]], penalties: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """:meth:`_pull` of each context in turn, as three (contexts x arms) arrays; None: this
        algorithm has no batch form (:meth:`pull_many` calls :meth:`_pull` for each)."""
        return None

    @abstractmethod
    def _update(self, arm_id: ArmID, context: dict[str, float], reward: float) -> None:
        """Learn from one reward."""

    def _merge_stats(self, a: Self, b: Self, base: Self) -> None:
        """Set this policy's learned statistics to ``a + b - base`` (default: nothing learned)."""

    def _discount_arm(self, arm_id: ArmID, factor: float) -> None:
        """Scale what was learned about one arm by ``factor`` (see :meth:`discount_arm`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot discount one arm")

    def _arm_weight(self, arm_id: ArmID) -> float:
        """Weight of what was learned about one arm, in observations (default: its count)."""
        return float(self._updates.get(arm_id, 0))

    def _check_reward(self, reward: float) -> None:
        """Refuse rewards outside what the algorithm supports (default: any finite number)."""

    def _get_state(self) -> dict[str, Any]:
        return {
            "rng": rng_state(self._rng),
            "updates": dict(self._updates),
            "n_updates": self._n_updates,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        set_rng_state(self._rng, state["rng"])
        self._updates = {str(k): int(v) for k, v in state["updates"].items()}
        self._warm = {a for a, n in self._updates.items() if n >= self.burn_in}
        self._n_updates = int(state["n_updates"])

    # -- helpers ----------------------------------------------------------------------------------
    def _cap(self, optimistic: np.ndarray) -> np.ndarray:
        if self.max_reward is None:
            return optimistic
        capped: np.ndarray = np.minimum(optimistic, self.max_reward)
        return capped

    @staticmethod
    def _win_shares(values: np.ndarray) -> np.ndarray:
        """Share of the rows (posterior draws x arms) that each arm wins: Thompson propensities.

        Sampling the arm from these shares plays textbook Thompson sampling's choice
        distribution, up to Monte-Carlo error, with a propensity exact for what is played.
        """
        winners = values.argmax(axis=1)
        n = len(winners)
        if n & (n - 1) == 0:  # a power of two: n weights of 1/n add up to count/n exactly
            weights = _UNIT_WEIGHTS.get(n)
            if weights is None:
                weights = _UNIT_WEIGHTS[n] = np.full(n, 1.0 / n)
            shares: np.ndarray = np.bincount(winners, weights, minlength=values.shape[1])
            return shares
        shares = np.bincount(winners, minlength=values.shape[1]) / n
        return shares

    @staticmethod
    def _greedy(scores: np.ndarray) -> np.ndarray:
        """Greedy probabilities: ties share the mass evenly."""
        top = scores >= scores.max() - 1e-12
        n = int(top.sum())
        out: np.ndarray = top / n if n > 1 else top.astype(float)
        return out

    def _sample(self, p: list[float]) -> int:
        u = self._rng.random()  # drawn even when the choice is certain: seeded runs stay aligned
        top = max(p)
        if top >= 1.0:
            return p.index(top)
        acc = 0.0
        last = 0
        for i, pi in enumerate(p):
            if pi <= 0:
                continue
            acc += pi
            last = i
            if u < acc:
                return i
        return last

    def _check_arms(self, arm_ids: Sequence[ArmID]) -> list[ArmID]:
        last = self._last_arms
        if type(arm_ids) is list and arm_ids == last and last:  # the same offer: checked
            return last  # our own copy, never changed: a caller may change its list later
        arms = list(arm_ids)
        if arms and arms == last:
            return last
        if not arms:
            raise ValueError("pull needs at least one arm")
        if len(set(arms)) != len(arms):
            raise ValueError("arm_ids must be unique")
        if not all(isinstance(a, str) and a for a in arms):
            raise ValueError("arm_ids must be non-empty strings")
        self._last_arms = arms
        return arms

    @staticmethod
    def _check_penalties(arms: list[ArmID], penalties: Mapping[ArmID, float] | None) -> np.ndarray:
        if not penalties:
            return _no_penalties(len(arms))
        values = [float(penalties.get(a, 0.0)) for a in arms]
        if len(penalties) > len(arms) - values.count(0.0):  # some could name no offered arm
            unknown = set(penalties) - set(arms)
            if unknown:
                raise ValueError(f"penalties name arms not offered: {sorted(unknown)}")
        if not math.isfinite(sum(values)) and not all(map(math.isfinite, values)):
            raise ValueError("penalties must be finite numbers")  # (a finite sum: all finite)
        return np.array(values)

    @staticmethod
    def _check_context(context: Features | None) -> dict[str, float]:
        """The context, checked: every value a finite number (one vectorised pass)."""
        if not context:
            return {}
        try:  # fast path: the sum of finite floats is finite (or overflows: checked below)
            total = sum(context.values())
        except (TypeError, ArithmeticError):  # the full check says what is wrong
            total = None
        if isinstance(total, float) and math.isfinite(total):
            return context if isinstance(context, dict) else dict(context)
        try:
            values = np.fromiter(context.values(), dtype=float, count=len(context))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"context features must be numbers: {exc}") from None
        if not np.isfinite(values).all():
            bad = next(
                k for k, v in zip(context, values.tolist(), strict=True) if not math.isfinite(v)
            )
            raise ValueError(f"context feature {bad!r} is not finite: {context[bad]}")
        return context if isinstance(context, dict) else dict(context)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"
