"""The learning loop in one process: decide -> (client calls the LLM) -> feedback -> learn.

Serving wraps this behind HTTP; the replay and the demo drive it directly. It owns what happens
around the policy: request features, hard constraints (``max_cost_usd``, ``max_latency_ms``),
generation parameters from the catalog, the reward, and the event log.

Examples
--------
>>> from llmopt.catalog import load_catalog
>>> from llmopt.schemas import Feedback, RequestContext
>>> class First:  # any object with the Policy shape works
...     name = "first"
...     def pull(self, arm_ids, context=None):
...         return Decision(model=arm_ids[0], propensity=1.0, policy_name=self.name)
...     def update(self, arm_id, context, reward):
...         return self
>>> loop = LearningLoop(First(), ["gpt-4o", "gpt-4o-mini"], catalog=load_catalog())
>>> d = loop.decide(RequestContext(tenant="acme", prompt="hi", max_cost_usd=0.001))
>>> d.model, d.parameters["temperature"]
('gpt-4o-mini', 0.7)
>>> out = loop.feedback(Feedback(decision_id=d.decision_id, quality=0.9, cost_usd=0.0002))
>>> out.status, round(out.reward, 3)
('stored', 0.896)
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from llmopt.catalog import ModelCatalog, ModelSpec
from llmopt.cost_model import CostModel
from llmopt.event_log import EventLog, UnknownDecisionError
from llmopt.features import estimate_tokens, request_features
from llmopt.policy import Policy
from llmopt.priors import price_tier_prior
from llmopt.reward import TradeOff, penalty, reward
from llmopt.schemas import Decision, Feedback, RequestContext
from llmopt.types import ArmID, DecisionID

DEFAULT_OUTPUT_TOKENS = 256
"""Output length assumed when predicting latency before a request runs."""


def _json_number(x: float) -> float | None:
    """``x`` as the context's JSON dump writes it (pydantic writes infinities as null)."""
    return x if math.isfinite(x) else None


def realized_cost(fb: Feedback, spec: ModelSpec | None, predicted: float | None) -> float:
    """What a call cost: as reported, else priced from its reported tokens, else predicted."""
    if fb.cost_usd is not None:
        return fb.cost_usd
    if spec is not None and fb.input_tokens is not None:
        return spec.expected_cost_usd(fb.input_tokens, fb.output_tokens or 0)
    return predicted or 0.0


@dataclass(frozen=True)
class _Pending:
    model: ArmID
    features: dict[str, float]
    tradeoff: TradeOff
    predicted_cost_usd: float | None
    predicted_latency_ms: float | None
    input_tokens: int = 0


@dataclass(frozen=True)
class FeedbackOutcome:
    """Result of one feedback: stored or spooled (and learned from), or a duplicate (ignored)."""

    status: Literal["stored", "duplicate", "spooled"]
    decision_id: DecisionID
    reward: float | None
    """None for feedback spooled before its decision could be looked up (learned at replay)."""
    feedback_id: int | None


@dataclass(frozen=True)
class StoredFeedback:
    """A feedback :meth:`LearningLoop.store_feedback` stored, not yet learned from."""

    outcome: FeedbackOutcome
    feedback: Feedback
    decision: _Pending | None
    """What the decision was made from (None: a duplicate, nothing to learn)."""


class NoCandidateError(ValueError):
    """The request's ``models`` names no model the loop serves."""


class ContextWindowError(NoCandidateError):
    """The prompt does not fit the context window of any model the request allows."""


CONTEXT_RESERVE_TOKENS = DEFAULT_OUTPUT_TOKENS
"""Answer tokens a model's context window must hold beyond the prompt for the model to fit.

Not the request's ``max_tokens``: a large default ``max_tokens`` should not rule out a model
the prompt fits; instead the served ``max_tokens`` is capped at what the window leaves (see
``serving.parameters``). The reserve is the answer length the cost and latency predictions assume.
"""


class LearningLoop:
    """Decide with a policy, log, and learn from delayed feedback.

    Parameters
    ----------
    policy
        Any object with the :class:`llmopt.policy.Policy` shape.
    arms
        The models to choose from.
    catalog
        Model catalog for prices, latency figures and default parameters (optional: without it
        no constraint can be checked and feedback must carry its cost).
    event_log
        Durable log of decisions and feedback; without it pending decisions live in memory.
    default_tradeoff
        Trade-off used when a request does not carry its own.
    """

    def __init__(
        self,
        policy: Policy,
        arms: Sequence[ArmID],
        *,
        catalog: ModelCatalog | None = None,
        event_log: EventLog | None = None,
        default_tradeoff: TradeOff | None = None,
        store_prompt_tenants: Collection[str] = (),
        default_arms: Sequence[ArmID] | None = None,
    ) -> None:
        if not arms:
            raise ValueError("the loop needs at least one arm")
        self.default_arms = frozenset(default_arms or ())
        """Arms offered to a request that names none (empty: every arm); e.g. current models."""
        self.store_prompt_tenants = frozenset(store_prompt_tenants)
        """Tenants that opted in to their prompt text in the event log (others: its SHA-256)."""
        self.policy = policy
        self.arms = list(arms)
        self.catalog = catalog
        self.event_log = event_log
        self.default_tradeoff = default_tradeoff or TradeOff(willingness_to_pay=0.05)
        self.cost_model = CostModel(catalog)
        self._pending: dict[DecisionID, _Pending] = {}
        self._answered: dict[DecisionID, float] = {}
        self.traffic_share = 1.0
        """Probability that a traffic split sent the next request to this loop (a canary drawn
        per decision sets it): the logged propensity is the policy's times this share."""

    def learn_outcome(
        self,
        model: ArmID,
        features: Mapping[str, float],
        *,
        input_tokens: int,
        quality: float,
        cost_usd: float,
        latency_ms: float | None = None,
        tradeoff: TradeOff | None = None,
    ) -> float:
        """Learn one observed outcome that no decision of this loop asked for (a warm start).

        For offline evaluations where every model answered the same prompts (full
        information) and for logged outcomes: the cost model learns the cost, the policy the
        quality (cost-aware) or the reward, exactly as :meth:`feedback` teaches them. Returns
        the reward at ``tradeoff`` (default: the loop's).
        """
        t = tradeoff or self.default_tradeoff
        r = reward(
            quality,
            cost_usd,
            latency_ms,
            willingness_to_pay=t.willingness_to_pay,
            latency_weight=t.latency_weight,
        )
        self.cost_model.learn(model, input_tokens, cost_usd)
        target = quality if getattr(self.policy, "cost_aware", False) else r
        self.policy.update(model, dict(features), target)
        return r

    def add_arm(self, arm: ArmID, *, prior_weight: float = 2.0) -> float | None:
        """Offer a new model from the next decision on; returns the prior it starts from.

        If the policy takes priors (``set_prior``) and the catalog prices the model, it starts
        at what the known models of its price tier achieve (see :mod:`llmopt.priors`), with
        the weight of ``prior_weight`` observations; the policy's burn-in and exploration floor
        then give it its first real requests.
        """
        if arm in self.arms:
            raise ValueError(f"{arm!r} is already offered")
        prior = None
        set_prior = getattr(self.policy, "set_prior", None)
        arm_mean = getattr(self.policy, "arm_mean", None)
        spec = self.catalog.get(arm) if self.catalog is not None else None
        if spec is not None and set_prior is not None and arm_mean is not None:
            known: dict[ArmID, tuple[float, float]] = {}
            for other in self.arms:
                other_spec = self.catalog.get(other) if self.catalog is not None else None
                mean = arm_mean(other)
                if other_spec is not None and mean is not None:
                    known[other] = (other_spec.expected_cost_usd(1000, 256), mean)
            prior = price_tier_prior(spec.expected_cost_usd(1000, 256), known)
            if prior is not None:
                set_prior(arm, prior, prior_weight)
        self.arms.append(arm)
        return prior

    def remove_arm(self, arm: ArmID) -> None:
        """Stop offering ``arm``; feedback on its past decisions is still accepted and learned."""
        if arm not in self.arms:
            raise ValueError(f"{arm!r} is not offered")
        if len(self.arms) == 1:
            raise ValueError("cannot remove the last model")
        self.arms.remove(arm)

    def reset_arm(
        self,
        arm: ArmID,
        *,
        factor: float = 0.0,
        max_weight: float | None = None,
        costs: bool = False,
    ) -> bool:
        """Discount what the policy learned about ``arm`` to ``factor`` of its weight (0: forget).

        The response to a drift of one model (``monitoring.drift_response``): its quality
        changed, so its old rewards mislead the policy. ``max_weight`` caps what is kept at
        the weight of that many observations (see ``models.base.Policy.discount_arm``). With
        ``costs`` (its price changed) the model's observed costs are forgotten instead, back
        to the catalog's price, and the policy is discounted only if it learns the reward,
        which has the old price in it (a cost-aware policy learns quality alone). Returns True
        if the policy was discounted; False if it was left alone or cannot discount one arm
        (no ``discount_arm``, or it raises ``NotImplementedError``).
        """
        if costs:
            self.cost_model.forget(arm)
            if getattr(self.policy, "cost_aware", False):
                return False
        discount = getattr(self.policy, "discount_arm", None)
        if discount is None:
            return False
        try:
            discount(arm, factor, max_weight=max_weight)
        except NotImplementedError:
            return False
        return True

    def tradeoff_for(self, ctx: RequestContext) -> TradeOff:
        """The request's trade-off, falling back to the default one field by field."""
        if ctx.willingness_to_pay is None and ctx.latency_weight is None:
            return self.default_tradeoff  # (frozen)
        return TradeOff(
            willingness_to_pay=ctx.willingness_to_pay or self.default_tradeoff.willingness_to_pay,
            latency_weight=(
                ctx.latency_weight
                if ctx.latency_weight is not None
                else self.default_tradeoff.latency_weight
            ),
        )

    def penalties(
        self, arms: Sequence[ArmID], input_tokens: int, tradeoff: TradeOff
    ) -> dict[ArmID, float]:
        """Predicted cost and latency of each arm in reward units (see :mod:`llmopt.reward`).

        An arm with no prediction yet (unpriced and never observed) gets no penalty: it is
        tried, and its first feedback teaches its cost.
        """
        out: dict[ArmID, float] = {}
        wtp, weight = tradeoff.willingness_to_pay, tradeoff.latency_weight
        predict = self.cost_model.predict
        get = self.catalog.get if self.catalog is not None else None
        for arm in arms:
            spec = get(arm) if get is not None else None
            latency = spec.expected_latency_ms(DEFAULT_OUTPUT_TOKENS) if spec else None
            out[arm] = penalty(
                predict(arm, input_tokens) or 0.0,
                latency,
                willingness_to_pay=wtp,
                latency_weight=weight,
            )
        return out

    def candidates(self, ctx: RequestContext) -> list[ArmID]:
        """The arms this request may get: the default ones (all, unless ``default_arms`` was
        given), or those of ``ctx.models`` this loop knows.

        Raises :class:`NoCandidateError` when ``ctx.models`` names none of them.
        """
        if not ctx.models:
            if self.default_arms:
                offered = [a for a in self.arms if a in self.default_arms]
                return offered or self.arms
            return self.arms
        wanted = set(ctx.models)
        arms = [a for a in self.arms if a in wanted]
        if not arms:
            raise NoCandidateError(
                f"models: none of {sorted(wanted)[:10]} is served; known models: "
                f"{', '.join(self.arms[:40])}"
            )
        return arms

    def fit_context(
        self, ctx: RequestContext, arms: Sequence[ArmID]
    ) -> tuple[list[ArmID], list[str]]:
        """Arms whose context window holds the prompt plus :data:`CONTEXT_RESERVE_TOKENS`.

        The prompt's size is :func:`llmopt.features.estimate_tokens`, the estimate the cost
        model prices. An arm the catalog does not know cannot be checked and is kept. Raises
        :class:`ContextWindowError` (its message names the context window) when no arm fits.
        Used by serving; the replay does not call it (its arms and prompts are fixed data).
        """
        if self.catalog is None or not ctx.prompt:
            return list(arms), []
        need = estimate_tokens(ctx.prompt) + CONTEXT_RESERVE_TOKENS
        fit: list[ArmID] = []
        notes: list[str] = []
        windows: dict[ArmID, int] = {}
        for arm in arms:
            spec = self.catalog.get(arm)
            if spec is None or need <= spec.context_window:
                fit.append(arm)
            else:
                windows[arm] = spec.context_window
                notes.append(
                    f"{arm} excluded: prompt of ~{need - CONTEXT_RESERVE_TOKENS} tokens "
                    f"(+{CONTEXT_RESERVE_TOKENS} for the answer) exceeds its context window of "
                    f"{spec.context_window} tokens"
                )
        if not fit:
            largest = max(windows, key=windows.__getitem__)
            raise ContextWindowError(
                f"prompt of ~{need - CONTEXT_RESERVE_TOKENS} tokens (+{CONTEXT_RESERVE_TOKENS} "
                f"for the answer) exceeds the context window of every allowed model (largest: "
                f"{largest}, {windows[largest]} tokens)"
            )
        return fit, notes

    def _eligible(self, ctx: RequestContext) -> tuple[list[ArmID], list[str]]:
        """Arms whose predicted cost and latency respect the request's hard caps.

        Cost comes from the learned cost model (catalog prices corrected by observed costs);
        an arm with no prediction yet (unpriced, never observed) cannot be shown to break a
        cost cap and stays eligible.
        """
        candidates = self.candidates(ctx)
        if ctx.max_cost_usd is None and ctx.max_latency_ms is None:
            return candidates, []
        ok, costs, notes = self.within_caps(ctx, candidates)
        if not ok:  # nothing fits: the cheapest arm, and say so
            cheapest = min(candidates, key=costs.__getitem__)
            notes.append(f"no model meets the caps; fell back to the cheapest, {cheapest}")
            ok = [cheapest]
        return ok, notes

    def within_caps(
        self, ctx: RequestContext, arms: Sequence[ArmID], budget: float | None = None
    ) -> tuple[list[ArmID], dict[ArmID, float], list[str]]:
        """Arms meeting the request's caps, arms within ``budget`` (with their cost), notes.

        An arm whose cost is unknown is within no budget (it cannot be shown to fit) but breaks
        no cost cap either; without a budget every arm is "within" it.
        """
        in_tokens = estimate_tokens(ctx.prompt or "")
        ok: list[ArmID] = []
        notes: list[str] = []
        affordable: dict[ArmID, float] = {}
        for arm in arms:
            spec = self.catalog.get(arm) if self.catalog is not None else None
            cost = self.cost_model.predict(arm, in_tokens)
            latency = spec.expected_latency_ms(DEFAULT_OUTPUT_TOKENS) if spec else None
            if budget is not None and (cost is None or cost > budget):
                continue  # summarised by the caller: one note, not one per model
            affordable[arm] = cost if cost is not None else 0.0
            if ctx.max_cost_usd is not None and cost is not None and cost > ctx.max_cost_usd:
                notes.append(f"{arm} excluded: predicted cost {cost:.6f} > max_cost_usd")
            elif (
                ctx.max_latency_ms is not None
                and latency is not None
                and latency > ctx.max_latency_ms
            ):
                notes.append(f"{arm} excluded: predicted latency {latency:.0f} ms > max_latency_ms")
            else:
                ok.append(arm)
        return ok, affordable, notes

    def decide(
        self, ctx: RequestContext, *, features: Mapping[str, float] | None = None
    ) -> Decision:
        """Choose a model for ``ctx``; ``features`` may come precomputed (as in the replay)."""
        feats = dict(features) if features is not None else self._request_features(ctx)
        arms, notes = self._eligible(ctx)
        tradeoff = self.tradeoff_for(ctx)
        in_tokens = estimate_tokens(ctx.prompt or "")
        if getattr(self.policy, "cost_aware", False):
            decision = self._pull(ctx, arms, feats, self.penalties(arms, in_tokens, tradeoff))
        else:
            decision = self.policy.pull(arms, feats)
        spec = self.catalog.get(decision.model) if self.catalog is not None else None
        predicted_cost = self.cost_model.predict(decision.model, in_tokens)
        predicted_latency = None
        params: dict[str, float | int | str] = dict(decision.parameters)
        if spec is not None:
            params = {**spec.parameters, **params}
            predicted_latency = spec.expected_latency_ms(DEFAULT_OUTPUT_TOKENS)
        params, params_reason, tuning = self.generation_parameters(
            ctx, decision.model, params, in_tokens
        )
        update: dict[str, Any] = {
            "parameters": params,
            "parameters_reason": params_reason,
            "notes": [*decision.notes, *notes],
        }
        if self.traffic_share != 1.0:  # a canary drawn per decision: P(slot) x P(model | slot)
            update["propensity"] = decision.propensity * self.traffic_share
            tuning = {**tuning, "traffic_share": self.traffic_share}
        decision = decision.model_copy(update=update)
        if self.event_log is not None:
            self.event_log.record_decision(
                decision,
                ctx,
                store_prompt=ctx.tenant in self.store_prompt_tenants,
                features=feats,
                extra={  # the trade-off in force replaces the request's own (None: default)
                    "willingness_to_pay": _json_number(tradeoff.willingness_to_pay),
                    "latency_weight": _json_number(tradeoff.latency_weight),
                    "predicted_cost_usd": predicted_cost,
                    "predicted_latency_ms": predicted_latency,
                    "input_tokens": in_tokens,
                    **tuning,
                },
            )
        else:
            self._pending[decision.decision_id] = _Pending(
                decision.model, feats, tradeoff, predicted_cost, predicted_latency, in_tokens
            )
        return decision

    def _request_features(self, ctx: RequestContext) -> dict[str, float]:
        """The request's features (:func:`~llmopt.features.request_features`)."""
        return request_features(ctx.prompt, task_hints=ctx.task_hints, client_features=ctx.features)

    def _pull(
        self,
        ctx: RequestContext,
        arms: list[ArmID],
        features: dict[str, float],
        penalties: Mapping[ArmID, float],
    ) -> Decision:
        """The cost-aware policy's pull for ``ctx`` (serving may have drawn it ahead)."""
        return self.policy.pull(arms, features, penalties=penalties)  # type: ignore[call-arg]

    def generation_parameters(
        self,
        ctx: RequestContext,
        model: ArmID,
        params: dict[str, float | int | str],
        input_tokens: int,
    ) -> tuple[dict[str, float | int | str], str, dict[str, Any]]:
        """The parameters to serve ``model`` with, their reason, and extras for the event log.

        Here: the catalog's parameters (``params``) as they are. Serving overrides it with
        the tuned ones (:mod:`serving.parameters`).
        """
        return params, "catalog default" if params else "", {}

    def _lookup(self, decision_id: DecisionID, row: Mapping[str, Any] | None = None) -> _Pending:
        pending = self._pending.get(decision_id)
        if pending is not None:
            return pending
        if row is None and self.event_log is not None:
            row = self.event_log.get_decision(decision_id)
        if row is None:
            raise UnknownDecisionError(
                f"unknown decision_id {decision_id!r}: feedback must name a decision returned by "
                "decide"
            )
        ctx = row["context"]
        return _Pending(
            model=row["model"],
            features=row["features"],
            tradeoff=TradeOff(
                willingness_to_pay=ctx.get("willingness_to_pay")
                or self.default_tradeoff.willingness_to_pay,
                latency_weight=ctx.get("latency_weight") or 0.0,
            ),
            predicted_cost_usd=ctx.get("predicted_cost_usd"),
            predicted_latency_ms=ctx.get("predicted_latency_ms"),
            input_tokens=int(ctx.get("input_tokens") or 0),
        )

    def feedback(
        self, fb: Feedback, *, decision_row: Mapping[str, Any] | None = None
    ) -> FeedbackOutcome:
        """Record feedback, compute its reward and, unless it is a duplicate, learn from it.

        ``decision_row``: the decision's event-log row when the caller has just read it (the
        router does), so it is not read twice (a second read could also fail mid-outage).
        The same as :meth:`store_feedback` then :meth:`learn_feedback`.
        """
        stored = self.store_feedback(fb, decision_row=decision_row)
        self.learn_feedback(stored)
        return stored.outcome

    def store_feedback(
        self, fb: Feedback, *, decision_row: Mapping[str, Any] | None = None
    ) -> StoredFeedback:
        """Compute the reward and store the feedback in the event log, without learning.

        The router stores outside its lock (the transaction may wait for the database's write
        lock) and learns inside it (:meth:`learn_feedback`), so decisions never wait on a
        feedback's transaction.
        """
        if fb.decision_id in self._answered:  # in-memory mode only: the log tracks it otherwise
            duplicate = FeedbackOutcome(
                "duplicate", fb.decision_id, self._answered[fb.decision_id], None
            )
            return StoredFeedback(duplicate, fb, None)
        pending = self._lookup(fb.decision_id, decision_row)
        spec = self.catalog.get(pending.model) if self.catalog is not None else None
        cost = realized_cost(fb, spec, pending.predicted_cost_usd)
        latency = fb.latency_ms
        if latency is None and spec is not None and fb.output_tokens is not None:
            latency = spec.expected_latency_ms(fb.output_tokens)
        r = reward(
            fb.normalized_quality(),
            cost,
            latency,
            willingness_to_pay=pending.tradeoff.willingness_to_pay,
            latency_weight=pending.tradeoff.latency_weight,
        )
        feedback_id: int | None = None
        status: Literal["stored", "duplicate", "spooled"] = "stored"
        if self.event_log is not None:
            receipt = self.event_log.record_feedback(
                fb, reward=r, cost_usd=cost, latency_ms=latency
            )
            status, feedback_id = receipt.status, receipt.feedback_id
        outcome = FeedbackOutcome(status, fb.decision_id, r, feedback_id)
        return StoredFeedback(outcome, fb, pending)

    def learn_feedback(self, stored: StoredFeedback) -> None:
        """Teach the policy a :meth:`store_feedback` result (nothing for a duplicate)."""
        outcome, fb, d = stored.outcome, stored.feedback, stored.decision
        if d is None or outcome.status == "duplicate" or outcome.reward is None:
            return
        if fb.cost_usd is not None:
            self.cost_model.learn(d.model, d.input_tokens, fb.cost_usd)
        if getattr(self.policy, "cost_aware", False):  # cost is known up front: learn quality
            self.policy.update(d.model, d.features, fb.normalized_quality())
        else:
            self.policy.update(d.model, d.features, outcome.reward)
        if self._pending.pop(fb.decision_id, None) is not None:
            self._answered[fb.decision_id] = outcome.reward
