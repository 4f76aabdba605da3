"""Champion/challenger routing around the learning loop; plain Python, testable without BentoML.

A :class:`Router` holds a *lineup*, the champion (alias ``prod``) and an optional challenger
(``staging``), each a :class:`Slot`: a version label and a :class:`ServingLoop` (the
:class:`llmopt.loop.LearningLoop` with the serving guards). It decides by the traffic mode:

- ``champion``: the champion serves everything;
- ``canary``: the challenger serves ``canary_percent`` of the traffic, drawn per decision (the
  share is part of the logged propensity, so the A/B comparison is not confounded by who lands
  on each side) or, with ``assignment="tenant"``, sticky per tenant (a hash of the tenant id, so
  a tenant sees one policy). It is rolled back automatically (mode back to ``champion``) when
  its live feedback breaks the SLOs of :class:`llmopt.settings.AutopilotRules` or trails the
  champion's beyond its margins (:mod:`serving.autopilot`); a version newly promoted to
  champion is watched against the SLOs for ``prod_watch_s`` and replaced by its predecessor on
  a breach;
- ``shadow``: the champion serves; the challenger decides the same request too and its
  decision is logged (event log, with its propensity) but not served.

Hot swap: :meth:`Router.swap` builds the new lineup outside any lock and replaces one
reference; a request reads the reference once, so it runs wholly on the old or the new models.
Feedback goes to the slot whose version made the decision (the event log keeps the label);
feedback for a retired version teaches the current champion.

Guards: a per-model :class:`serving.guards.CircuitBreaker` fed by feedback ``error_kind``, a
per-tenant :class:`serving.guards.BudgetLedger` that decisions never overcommit (and, for a key
with a daily budget of its own, the key's: :mod:`serving.key_limits`), and the request's own
``max_cost_usd`` / ``max_latency_ms``. The decided model's predicted cost is reserved
atomically, *only if it fits*: with a ledger shared by several processes
(:mod:`serving.shared_state`) another worker may have spent the budget since it was read; then
the router decides again with what is left, or refuses (402). If the champion cannot decide (a
broken policy), a static default policy from the catalog answers and says so; a failing
challenger falls back to the champion. Nothing but a budget refusal turns into an error for the
caller.

One lock serialises decisions and feedback of one router (one process): the policies are not
thread-safe and the interpreter runs one thread at a time anyway.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from feature_store.reader import RouterFeatures
from llmopt.catalog import ModelCatalog
from llmopt.event_log import EventLog, LogCursor, UnknownDecisionError
from llmopt.features import estimate_tokens, request_features
from llmopt.loop import (
    CONTEXT_RESERVE_TOKENS,
    DEFAULT_OUTPUT_TOKENS,
    FeedbackOutcome,
    LearningLoop,
    NoCandidateError,
    realized_cost,
)
from llmopt.policy import Policy
from llmopt.reward import TradeOff, penalty
from llmopt.schemas import Decision, Feedback, RequestContext
from llmopt.settings import AutopilotRules
from llmopt.tasks import task_type
from llmopt.types import ArmID, DecisionID, Features, TenantID
from models.base import BasePolicy
from models.kinds import kind_of
from serving.autopilot import Rollback, VersionStats, guard_verdict
from serving.cascade import PlannedStep, ServedCascades
from serving.drift import DriftWatch
from serving.guards import BudgetExceededError, BudgetLedger, CircuitBreaker
from serving.key_limits import KeyBudgets
from serving.live_features import (
    LIVE_NOTE,
    LIVE_PRIOR_WEIGHT,
    LiveFeatures,
    live_exclusions,
    live_penalties,
    live_priors,
    recent_risk,
)
from serving.pacing import BudgetPacing
from serving.parameters import ServedTuning

log = logging.getLogger("llmopt.serving")

Role = Literal["champion", "challenger", "static_default"]
TrafficMode = Literal["champion", "canary", "shadow"]
Assignment = Literal["decision", "tenant"]
STATIC_LABEL = "static-default"
RESERVE_ATTEMPTS = 3
"""Decisions made for one request whose budget reservation other workers' spend refused."""
SHAPES_TTL_S = 0.5
"""Longest time single decisions share what requests of one shape work out alike
(:meth:`Router.decide`), if nothing is learned meanwhile."""


class LabelledPolicy:
    """A policy whose decisions carry the serving version label (what the A/B gate groups by) and
    its kind as the policy name (:func:`models.kinds.kind_of`).

    Everything else (``update``, ``cost_aware``, ``set_prior``, ...) is the wrapped policy's.
    """

    def __init__(self, policy: Policy, label: str) -> None:
        self.inner = policy
        self.label = label
        self.name: str = kind_of(policy) if isinstance(policy, BasePolicy) else policy.name
        """The policy's kind (``cost_aware_cluster_thompson``), the name used everywhere."""

    def pull(
        self, arm_ids: Sequence[ArmID], context: Features | None = None, **kwargs: Any
    ) -> Decision:
        d = self.inner.pull(arm_ids, context, **kwargs)
        return d.model_copy(update={"policy_version": self.label, "policy_name": self.name})

    def pull_many(
        self,
        arm_ids: Sequence[ArmID],
        contexts: Sequence[Features | None],
        *,
        penalties: Sequence[Mapping[ArmID, float] | None] | None = None,
    ) -> list[Decision]:
        """:meth:`pull` of each context in turn, labelled like it (the wrapped policy's own
        ``pull_many`` where it has one, else its pulls)."""
        many = getattr(self.inner, "pull_many", None)
        if many is not None:
            drawn: list[Decision] = many(arm_ids, contexts, penalties=penalties)
        elif penalties is None:
            drawn = [self.inner.pull(arm_ids, c) for c in contexts]
        else:
            pull: Any = self.inner.pull
            pairs = zip(contexts, penalties, strict=True)
            drawn = [pull(arm_ids, c, penalties=p) for c, p in pairs]
        update = {"policy_version": self.label, "policy_name": self.name}
        return [d.model_copy(update=update) for d in drawn]

    def update(self, arm_id: ArmID, context: Features | None, reward: float) -> LabelledPolicy:
        self.inner.update(arm_id, context, reward)
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class StaticDefaultPolicy:
    """The answer when no model is available: the cheapest eligible model of the catalog.

    It never learns; its decisions have propensity 1 and say why they were made.

    >>> from llmopt.catalog import load_catalog
    >>> p = StaticDefaultPolicy(load_catalog())
    >>> d = p.pull(["gpt-4o", "gpt-4o-mini"])
    >>> d.model, d.propensity, d.policy_name
    ('gpt-4o-mini', 1.0, 'static_default')
    """

    name = "static_default"
    cost_aware = False

    def __init__(self, catalog: ModelCatalog) -> None:
        self.preference = sorted(catalog.ids, key=lambda m: catalog[m].expected_cost_usd(1000, 256))

    def pull(self, arm_ids: Sequence[ArmID], context: Features | None = None) -> Decision:
        offered = set(arm_ids)
        model = next((m for m in self.preference if m in offered), arm_ids[0])
        return Decision(
            model=model,
            propensity=1.0,
            policy_name=self.name,
            policy_version=STATIC_LABEL,
            notes=["static default: no policy is loaded; the cheapest eligible model answers"],
        )

    def update(self, arm_id: ArmID, context: Features | None, reward: float) -> StaticDefaultPolicy:
        return self


_Shape = tuple[list[ArmID], str | None, dict[ArmID, float], int | None]
"""What a batch's requests of one shape share (:meth:`ServingLoop._batch_eligible`): the
offered models, the live terms' note and penalties, the smallest context window among them."""


BATCH = "batch"
"""The batch memo's key of its :class:`BatchPlan` (``/decide_batch`` sets it; single decisions'
memo never holds one)."""


def _kind(ctx: RequestContext) -> tuple[Any, ...]:
    """What makes two requests of a batch likely to be offered the same models at the same
    penalties per token: those drawn ahead together (:meth:`ServingLoop._pull`)."""
    return (
        ctx.tenant,
        tuple(ctx.models or ()),
        ctx.willingness_to_pay,
        ctx.latency_weight,
        ctx.max_cost_usd,
        ctx.max_latency_ms,
        tuple(ctx.task_hints),
    )


class BatchPlan:
    """The requests of one ``/decide_batch`` call, so that a policy can draw the decisions of
    the later requests like the current one together with it (:meth:`ServingLoop._pull`),
    and their features computed then are not computed again.

    >>> a = RequestContext(tenant="acme", prompt="hi")
    >>> b = RequestContext(tenant="other", prompt="hi")
    >>> c = RequestContext(tenant="acme", prompt="ho")
    >>> [x.prompt for x in BatchPlan([a, b, c]).alike_from(a)], BatchPlan([a]).alike_from(c) == [c]
    (['hi', 'ho'], True)
    """

    def __init__(self, requests: Sequence[RequestContext]) -> None:
        self.requests = list(requests)
        self._index = {id(c): i for i, c in enumerate(self.requests)}
        self.features: dict[int, dict[str, float]] = {}
        """Features computed ahead, by ``id`` of the request."""

    def alike_from(self, ctx: RequestContext) -> list[RequestContext]:
        """``ctx``, then the batch's later requests of its kind (:func:`_kind`), in order."""
        i = self._index.get(id(ctx))
        if i is None:  # not one of the batch's own (e.g. a copy with a paced trade-off)
            return [ctx]
        kind = _kind(ctx)
        return [ctx, *(c for c in self.requests[i + 1 :] if _kind(c) == kind)]


class ServingLoop(LearningLoop):
    """The learning loop plus the serving guards: circuit breaker and tenant budget.

    Overrides :meth:`LearningLoop._eligible`, the loop's arm filter: models whose context window
    the prompt does not fit are left out (:meth:`LearningLoop.fit_context`; none fits: a
    :class:`llmopt.loop.ContextWindowError`, a 400), models whose breaker is
    open are left out (all of them open: every model is probed), models the fleet's live
    statistics rule out (:func:`serving.live_features.live_exclusions`: error rate over the
    last 5 minutes, observed p95 latency above the request's cap) are left out unless that
    leaves nothing, and under a budget only
    models whose predicted cost fits what is left are offered, strictly (an unpriced model
    cannot be shown to fit and is left out; the request's own caps fall back to the cheapest
    model *within the budget*; nothing within it raises :class:`BudgetExceededError`).
    """

    def __init__(
        self,
        *args: Any,
        breaker: CircuitBreaker | None = None,
        tuning: ServedTuning | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.breaker = breaker
        self.tuning = tuning
        self.budget_left: float | None = None  # set by the router, under its lock
        self.live: RouterFeatures | None = None  # online features, set by the router
        self._live_penalty: dict[ArmID, float] = {}  # this decision's, set by _eligible
        self._live_seeded: set[ArmID] = set()  # arms given a live prior (once each)
        self.batch_memo: dict[Any, Any] | None = None
        """Set by the router for the decisions of one batch (:meth:`Router.decide`'s ``memo``,
        under its lock): what :meth:`_eligible` and :meth:`penalties` work out per request
        shape, not per request, shared by the batch's requests of that shape."""

    def penalties(
        self, arms: Sequence[ArmID], input_tokens: int, tradeoff: TradeOff
    ) -> dict[ArmID, float]:
        """The loop's cost and latency penalties, plus the fleet's fresh live statistics
        (:func:`serving.live_features.live_penalties`: error-rate risk, observed p95 latency)."""
        if self.batch_memo is not None:
            return self._batch_penalties(self.batch_memo, arms, input_tokens, tradeoff)
        out = super().penalties(arms, input_tokens, tradeoff)
        for arm, delta in self._live_penalty.items():
            if arm in out:
                out[arm] = max(0.0, out[arm] + delta)
        return out

    def _batch_penalties(
        self,
        memo: dict[Any, Any],
        arms: Sequence[ArmID],
        input_tokens: int,
        tradeoff: TradeOff,
    ) -> dict[ArmID, float]:
        """:meth:`penalties`, the same numbers, with each arm's cost coefficients, latency term
        and live delta looked up once per batch and offer (the prompt's length still prices
        each request): the cost model's coefficients and the live terms are a snapshot taken
        at the batch's first request of that shape."""
        live = self._live_penalty
        wtp, weight = tradeoff.willingness_to_pay, tradeoff.latency_weight
        key = ("penalties", id(self), tuple(arms), wtp, weight, id(live), self.cost_model.changes)
        hit = memo.get(key)
        if hit is None:
            terms: list[tuple[ArmID, tuple[float, float] | None, float, float | None]] = []
            get = self.catalog.get if self.catalog is not None else None
            for arm in arms:
                spec = get(arm) if get is not None else None
                latency = spec.expected_latency_ms(DEFAULT_OUTPUT_TOKENS) if spec else None
                # penalty() of a zero cost: its latency term, with the same validation
                term = penalty(0.0, latency, willingness_to_pay=wtp, latency_weight=weight)
                terms.append((arm, self.cost_model.coefficients(arm), term, live.get(arm)))
            hit = memo[key] = (terms, live, self)  # kept: their ids are not reused meanwhile
        out: dict[ArmID, float] = {}
        cost_of = self.cost_model.cost
        for arm, coef, term, delta in hit[0]:
            cost = cost_of(coef, input_tokens) if coef is not None else 0.0
            value = cost / wtp + term  # penalty()'s arithmetic, in its order
            out[arm] = value if delta is None else max(0.0, value + delta)
        return out

    def _request_features(self, ctx: RequestContext) -> dict[str, float]:
        batch = self.batch_memo.get(BATCH) if self.batch_memo is not None else None
        got = batch.features.pop(id(ctx), None) if batch is not None else None
        return got if got is not None else super()._request_features(ctx)

    def _pull(
        self,
        ctx: RequestContext,
        arms: list[ArmID],
        features: dict[str, float],
        penalties: Mapping[ArmID, float],
    ) -> Decision:
        """In a batch (:class:`BatchPlan`), the first request of a kind draws the decisions of
        the batch's later requests of its kind with its own, in one :meth:`pull_many` over the
        same models, each at its own penalties (its prompt's length prices it). A later
        request takes the decision drawn for it if it is offered the same models at the same
        penalties, from the same policy state (updates, priors given): a draw of exactly the
        distribution its own pull would draw from. Otherwise (another shape after all, feedback
        learnt meanwhile) it pulls alone, and the draw made for it is never used."""
        memo = self.batch_memo
        batch: BatchPlan | None = memo.get(BATCH) if memo is not None else None
        pull_many = getattr(self.policy, "pull_many", None)
        if memo is None or batch is None or pull_many is None:
            return super()._pull(ctx, arms, features, penalties)
        key = (
            "ahead",
            id(self),
            getattr(self.policy, "n_updates", None),
            len(self._live_seeded),
            tuple(arms),
        )
        hit = memo.get(key)
        if hit is not None:
            ahead: dict[int, tuple[Mapping[ArmID, float], dict[str, float], Decision]] = hit[0]
        else:
            group = batch.alike_from(ctx)
            feats, pens = [features], [penalties]
            for other in group[1:]:
                f = batch.features[id(other)] = super()._request_features(other)
                feats.append(f)
                tokens = estimate_tokens(other.prompt or "")
                pens.append(self.penalties(arms, tokens, self.tradeoff_for(other)))
            drawn = pull_many(arms, feats, penalties=pens)
            ahead = {id(c): (p, f, d) for c, p, f, d in zip(group, pens, feats, drawn, strict=True)}
            memo[key] = (ahead, self)  # the loop kept: its id is not reused meanwhile
        got = ahead.pop(id(ctx), None)
        if got is not None and got[1] is features and got[0] == penalties:
            return got[2]
        return super()._pull(ctx, arms, features, penalties)

    def _live_terms(self, ctx: RequestContext, arms: Sequence[ArmID]) -> str | None:
        """Compute this decision's live penalties (kept for :meth:`penalties`) and seed the
        cold arms with the fleet's per-task quality (:meth:`_seed_cold_arms`); their note."""
        self._live_penalty = {}
        cost_aware = getattr(self.policy, "cost_aware", False)
        if self.live is None:
            recent = self._recent_risk(arms, None) if cost_aware else []
            return LIVE_NOTE + "; ".join(recent) if recent else None
        seeded = self._seed_cold_arms(arms)
        if not cost_aware:
            return LIVE_NOTE + "; ".join(seeded) if seeded else None
        tradeoff = self.tradeoff_for(ctx)
        catalog = self.catalog

        def catalog_latency(arm: ArmID) -> float | None:
            spec = catalog.get(arm) if catalog is not None else None
            return spec.expected_latency_ms(DEFAULT_OUTPUT_TOKENS) if spec is not None else None

        arm_mean = getattr(self.policy, "arm_mean", None)
        self._live_penalty, note = live_penalties(
            arms,
            self.live,
            latency_weight=tradeoff.latency_weight,
            catalog_latency_ms=catalog_latency,
            expected_quality=arm_mean if arm_mean is not None else (lambda arm: None),
        )
        parts = [*self._recent_risk(arms, self.live), *seeded]
        if not parts:
            return note
        more = "; ".join(parts)
        return f"{note}; {more}" if note is not None else LIVE_NOTE + more

    def _recent_risk(self, arms: Sequence[ArmID], live: RouterFeatures | None) -> list[str]:
        """Add the breaker window's recent error rates to this decision's live penalties
        (:func:`serving.live_features.recent_risk`); the note's parts."""
        breaker = self.breaker
        arm_mean = getattr(self.policy, "arm_mean", None)
        if breaker is None or arm_mean is None:
            return []
        extra, parts = recent_risk(arms, breaker.recent_error_rate, live, expected_quality=arm_mean)
        for arm, delta in extra.items():
            self._live_penalty[arm] = self._live_penalty.get(arm, 0.0) + delta
        return parts

    def _seed_cold_arms(self, arms: Sequence[ArmID]) -> list[str]:
        """Start each arm the policy has learned nothing about at the fleet's live quality of
        the model on this task type (:func:`serving.live_features.live_priors`), with the
        weight of :data:`LIVE_PRIOR_WEIGHT` observations, once per arm and process; its own
        feedback then outweighs it within a few requests. The note's part per seeded arm."""
        set_prior = getattr(self.policy, "set_prior", None)
        arm_mean = getattr(self.policy, "arm_mean", None)
        if set_prior is None or arm_mean is None or self.live is None:
            return []
        priors = live_priors(arms, self.live, arm_mean=arm_mean)  # usually none: one lookup
        if priors and self._live_seeded:
            priors = {a: q for a, q in priors.items() if a not in self._live_seeded}
        for arm, quality in priors.items():
            set_prior(arm, quality, LIVE_PRIOR_WEIGHT)
            self._live_seeded.add(arm)
        return [f"{arm} task quality {q:.2f} (24 h) as its prior" for arm, q in priors.items()]

    def generation_parameters(
        self,
        ctx: RequestContext,
        model: ArmID,
        params: dict[str, float | int | str],
        input_tokens: int,
    ) -> tuple[dict[str, float | int | str], str, dict[str, Any]]:
        """Tuned parameters per (task type x model) (:mod:`serving.parameters`)."""
        if self.tuning is None:
            return super().generation_parameters(ctx, model, params, input_tokens)
        spec = self.catalog.get(model) if self.catalog is not None else None
        cap = spec.context_window - input_tokens if spec is not None else None
        try:
            s = self.tuning.suggest(task_type(ctx.task_hints), model, params, max_tokens_cap=cap)
        except Exception:  # tuning must never fail a decision
            log.exception("parameter tuning failed; catalog defaults served")
            return params, "default: parameter tuning failed", {}
        return s.params, s.reason, {"tuning": s.record}

    def _eligible(self, ctx: RequestContext) -> tuple[list[ArmID], list[str]]:
        memo = self.batch_memo
        if (
            memo is not None
            and self.budget_left is None
            and ctx.max_cost_usd is None
            and ctx.max_latency_ms is None
        ):
            shared = self._batch_eligible(memo, ctx)
            if shared is not None:
                return shared
        return self._eligible_now(ctx)

    def _batch_eligible(
        self, memo: dict[Any, Any], ctx: RequestContext
    ) -> tuple[list[ArmID], list[str]] | None:
        """:meth:`_eligible` for a request of a batch with no caps and no budget, worked out
        once per request shape (offered models, latency weight, online features read) when
        nothing rules a model out: no breaker open, no live exclusion, a prompt every offered
        model's context window holds. None: decide it alone (:meth:`_eligible_now`)."""
        if self.breaker is not None and self.breaker.blocked():
            return None
        live = self.live
        key = (
            "eligible",
            id(self),
            tuple(ctx.models or ()),
            ctx.latency_weight,
            id(live),
            # what the live terms read that learning moves: the policy's means (and the priors
            # given to cold arms), the recent error rates
            getattr(self.policy, "n_updates", None),
            len(self._live_seeded),
            self.breaker.records if self.breaker is not None else None,
        )
        hit = memo.get(key)
        if hit is None:
            candidates = self.candidates(ctx)  # NoCandidateError as in _eligible_now
            if live and live_exclusions(candidates, live, None):
                hit = memo[key] = (None, live, self)
            else:
                seeded = len(self._live_seeded)
                note = self._live_terms(ctx, candidates)
                get = self.catalog.get if self.catalog is not None else None
                specs = map(get, candidates) if get is not None else ()
                windows = [spec.context_window for spec in specs if spec is not None]
                made = (candidates, note, self._live_penalty, min(windows, default=None))
                hit = (made, live, self)  # kept: their ids are not reused meanwhile
                if len(self._live_seeded) == seeded:  # a prior given says so once, not shared
                    memo[key] = hit
        shape: _Shape | None = hit[0]
        if shape is None:
            return None
        candidates, note, live_penalty, window = shape
        if (
            ctx.prompt
            and window is not None
            and estimate_tokens(ctx.prompt) + CONTEXT_RESERVE_TOKENS > window
        ):
            return None  # some model's window is too small: fit_context says which
        self._live_penalty = live_penalty  # read-only from here (penalties)
        return list(candidates), [note] if note is not None else []

    def _eligible_now(self, ctx: RequestContext) -> tuple[list[ArmID], list[str]]:
        blocked = self.breaker.blocked() if self.breaker is not None else frozenset()
        budget = self.budget_left
        candidates, context_notes = self.fit_context(ctx, self.candidates(ctx))
        live = live_exclusions(candidates, self.live, ctx.max_latency_ms) if self.live else {}
        if ctx.max_cost_usd is None and ctx.max_latency_ms is None and budget is None:
            if not blocked and not live:
                live_note = self._live_terms(ctx, candidates)
                if live_note is not None:
                    return candidates, [*context_notes, live_note]
                return candidates, context_notes
        notes = [*context_notes]
        notes += [f"{a} excluded: circuit breaker open" for a in candidates if a in blocked]
        arms = [a for a in candidates if a not in blocked]
        if not arms:
            arms = list(candidates)
            notes = [*context_notes, "every model's circuit breaker is open: probing them all"]
        if live:
            kept = [a for a in arms if a not in live]
            if kept:
                notes += [live[a] for a in arms if a in live]
                arms = kept
            else:
                notes.append("live statistics rule out every candidate: ignored")
        ok, affordable, cap_notes = self.within_caps(ctx, arms, budget)
        notes += cap_notes
        live_note = self._live_terms(ctx, arms)
        if live_note is not None:
            notes.append(live_note)
        if budget is not None:
            if not affordable:
                raise BudgetExceededError(
                    f"tenant {ctx.tenant!r}: the daily budget left ({max(budget, 0.0):.6f} USD) "
                    "pays for no model's predicted cost"
                )
            if len(affordable) < len(arms):
                notes.append(
                    f"{len(arms) - len(affordable)} models excluded: predicted cost above the "
                    f"tenant's daily budget left ({budget:.6f} USD)"
                )
        if not ok:
            cheapest = min(affordable, key=affordable.__getitem__)
            notes.append(f"no model meets the caps; fell back to the cheapest, {cheapest}")
            ok = [cheapest]
        return ok, notes


@dataclass(frozen=True)
class Slot:
    """One served policy: its role, version label and loop."""

    role: Role
    label: str
    loop: ServingLoop

    @property
    def fallback(self) -> bool:
        """True for the static default policy."""
        return self.role == "static_default"


@dataclass(frozen=True)
class Lineup:
    """What serves right now; replaced as a whole on a swap."""

    champion: Slot
    challenger: Slot | None = None


@dataclass(frozen=True)
class Traffic:
    """Traffic mode, canary share (percent) and how it is drawn, and the canary's schedule."""

    mode: TrafficMode = "champion"
    canary_percent: float = 0.0
    schedule: tuple[float, ...] = ()
    """Next canary percentages, one every ``step_s`` seconds (e.g. 10, 50, 100)."""
    step_s: float = 600.0
    next_step_at: float = float("inf")
    assignment: Assignment = "tenant"
    """``decision``: each decision drawn at random; ``tenant``: sticky per tenant."""


@dataclass(frozen=True)
class _Watch:
    """A freshly promoted champion under watch, and the champion it replaced."""

    label: str
    until: float
    previous: Slot
    previous_stats: VersionStats | None


@dataclass(frozen=True)
class Routed:
    """A served decision and how it was made."""

    decision: Decision
    slot: Slot
    predicted_cost_usd: float | None
    shadow: Decision | None = None
    features: RouterFeatures | None = None
    """The online features the decision saw (None: live features off or not open yet)."""
    plan: tuple[PlannedStep, ...] | None = None
    """Cascade mode only: the models to try in order (:mod:`serving.cascade`)."""


def tenant_bucket(tenant: str) -> float:
    """A stable position of ``tenant`` in [0, 100): canary membership is ``bucket < percent``.

    >>> tenant_bucket("acme") == tenant_bucket("acme")
    True
    """
    h = int.from_bytes(hashlib.blake2b(tenant.encode(), digest_size=8).digest(), "big")
    return (h % 10_000) / 100.0


@dataclass
class RouterEvents:
    """Things the router did that operators want to see (the service turns them into metrics)."""

    rollbacks: int = 0
    swaps: int = 0
    shadow_decisions: int = 0
    shadow_agreements: int = 0
    challenger_failures: int = 0
    champion_failures: int = 0
    log_learned: int = 0
    """Feedback learned from the shared event log (other workers' feedback)."""
    unvalidated_feedback: int = 0
    """Feedback accepted while its decision could not be looked up (checked at replay)."""
    notes: deque[str] = field(default_factory=lambda: deque(maxlen=100))


class Router:
    """Route decisions between champion and challenger; route feedback back to them.

    Parameters
    ----------
    catalog
        Model catalog: the arms offered, prices, the static default.
    event_log
        Durable decisions and feedback (shared by every worker).
    arms
        Models offered (default: every catalog model).
    default_tradeoff
        Trade-off used when a request carries none.
    breaker
        Per-model circuit breaker (default: a fresh one).
    ledger
        Per-tenant daily budgets (default: no caps).
    key_budgets
        Keys' own daily budgets (:mod:`serving.key_limits`), on top of the tenants' (default:
        none).
    rules
        The autopilot's rules: when a canary or a fresh champion is rolled back, how a canary
        started by :meth:`start_canary` is drawn and stepped (None: never rolled back).
    on_rollback
        Called (outside the decision path's work, under the router's lock) after each automatic
        rollback, to make it durable (the runtime updates the registry) and to alert.
    tuning
        Generation parameters per (task type x model) of the slots whose version brings no
        tuning of its own (default: a fresh :class:`serving.parameters.ServedTuning`). A
        version registered with a tuning snapshot serves and teaches its own: per slot, see
        :meth:`swap`.
    clock
        Monotonic time source of the canary schedule.
    pacing
        Budget pacing of tenants with a daily budget (:mod:`serving.pacing`; None: the budget
        is only a hard cap).
    store_prompt_tenants
        Tenants whose prompt text the event log keeps (opt-in; others: SHA-256 + features).
    """

    def __init__(
        self,
        catalog: ModelCatalog,
        event_log: EventLog,
        *,
        arms: Sequence[ArmID] | None = None,
        default_tradeoff: TradeOff | None = None,
        breaker: CircuitBreaker | None = None,
        ledger: BudgetLedger | None = None,
        key_budgets: KeyBudgets | None = None,
        rules: AutopilotRules | None = None,
        on_rollback: Callable[[Rollback], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        store_prompt_tenants: Sequence[str] = (),
        tuning: ServedTuning | None = None,
        pacing: BudgetPacing | None = None,
    ) -> None:
        self.catalog = catalog
        self.pacing = pacing
        self.tuning = tuning or ServedTuning()
        """Generation parameters per (task type x model) of every slot given none of its own."""
        self.cascades = ServedCascades(
            willingness_to_pay=(
                default_tradeoff or TradeOff(willingness_to_pay=0.05)
            ).willingness_to_pay
        )
        """Cascade mode's escalation rules (Q-learning) per (task type, ladder)."""
        self.store_prompt_tenants = frozenset(store_prompt_tenants)
        self._clock = clock
        self.event_log = event_log
        self.arms = list(arms or catalog.ids)
        self.default_arms = list(arms) if arms else [a for a in self.arms if not catalog[a].legacy]
        """Models a request that names none may get: the ``arms`` given, else the catalog's
        current (non-legacy) ones."""
        self.default_tradeoff = default_tradeoff or TradeOff(willingness_to_pay=0.05)
        self.breaker = breaker or CircuitBreaker()
        self.ledger = ledger or BudgetLedger()
        self.key_budgets = key_budgets or KeyBudgets()
        self.rules = rules
        self.on_rollback = on_rollback
        self.rolled_back: list[Rollback] = []
        """Every automatic rollback since start, oldest first."""
        self._rng = random.Random()
        self._watch: _Watch | None = None
        self._served_champions: set[str] = set()
        self.events = RouterEvents()
        self.traffic = Traffic()
        self.drift: DriftWatch | None = None
        """Streaming drift detectors on feedback (:mod:`serving.drift`; None: off)."""
        self.features: LiveFeatures | None = None
        """Online features (set once the feature store is open; None: request features only)."""
        self._lock = threading.RLock()
        self.shapes_ttl_s = SHAPES_TTL_S
        """How long single decisions share per-shape work while nothing is learned (0: never)."""
        self._shapes: dict[Any, Any] = {}
        self._shapes_born = -math.inf
        self._static = self.slot(StaticDefaultPolicy(catalog), STATIC_LABEL, role="static_default")
        self._lineup = Lineup(self._static)
        self._live: dict[str, VersionStats] = {}

    # -- lineup -------------------------------------------------------------------------------
    def slot(
        self,
        policy: Any,
        label: str,
        *,
        role: Role = "champion",
        tuning: ServedTuning | None = None,
    ) -> Slot:
        """A slot serving ``policy`` under ``label`` (it learns into ``policy`` itself) with the
        version's ``tuning`` (None: the router's shared :attr:`tuning`)."""
        wrapped = policy if role == "static_default" else LabelledPolicy(policy, label)
        loop = ServingLoop(
            wrapped,
            self.arms,
            catalog=self.catalog,
            event_log=self.event_log,
            default_tradeoff=self.default_tradeoff,
            breaker=self.breaker,
            tuning=tuning if tuning is not None else self.tuning,
            store_prompt_tenants=self.store_prompt_tenants,
            default_arms=self.default_arms,
        )
        return Slot(role=role, label=label, loop=loop)

    @property
    def lineup(self) -> Lineup:
        """The current champion and challenger."""
        return self._lineup

    @property
    def ready(self) -> bool:
        """True once a policy (or the static default) can decide: always, by construction."""
        return self._lineup.champion is not None

    def swap(
        self,
        champion: tuple[Any, str] | None = None,
        challenger: tuple[Any, str] | None = None,
        *,
        keep_challenger: bool = True,
        champion_tuning: ServedTuning | None = None,
        challenger_tuning: ServedTuning | None = None,
    ) -> Lineup:
        """Serve new policies, given as ``(policy, label)``; one atomic reference replacement.

        ``champion=None`` keeps the current champion; ``challenger=None`` keeps the current
        challenger unless ``keep_challenger`` is False. ``champion_tuning`` and
        ``challenger_tuning``: the generation-parameter tuning each new version brings (its
        registry snapshot, :meth:`ServedTuning.from_snapshot`); None: the router's shared one.
        """
        old = self._lineup
        champ = (
            self.slot(champion[0], champion[1], tuning=champion_tuning)
            if champion is not None
            else old.champion
        )
        chall = (
            self.slot(challenger[0], challenger[1], role="challenger", tuning=challenger_tuning)
            if challenger is not None
            else (old.challenger if keep_challenger else None)
        )
        if chall is not None and chall.label == champ.label:
            chall = None  # a promoted challenger is the champion now: no A/B against itself
        new = Lineup(champ, chall)
        self._lineup = new  # the swap: requests read this reference once
        self._forget_shapes()
        self.events.swaps += 1
        if new.champion.label != old.champion.label:
            self._start_watch(new.champion.label, old.champion)
        if new.champion.label != old.champion.label or (
            (new.challenger and new.challenger.label) != (old.challenger and old.challenger.label)
        ):
            self._live.clear()
        if new.challenger is None and self.traffic.mode != "champion":
            self.traffic = Traffic()
        return new

    def _start_watch(self, label: str, previous: Slot) -> None:
        """Watch a champion that replaced ``previous``, unless it served as champion before."""
        served_before = label in self._served_champions
        self._served_champions.add(label)
        if (
            self.rules is None
            or served_before
            or previous.role == "static_default"
            or self.rules.prod_watch_s <= 0
        ):
            self._watch = None
            return
        stats = self._live.get(previous.label)
        self._watch = _Watch(label, self._clock() + self.rules.prod_watch_s, previous, stats)

    def start_canary(self) -> Traffic | None:
        """The autopilot's canary for the current challenger (None: no rules or no challenger).

        It starts at ``rules.start_percent`` of the decisions, drawn as ``rules.assignment``
        says, and steps through ``rules.steps`` every ``rules.step_s`` while the canary's
        guards stay green.
        """
        rules, challenger = self.rules, self._lineup.challenger
        if rules is None or not rules.enabled or challenger is None:
            return None
        traffic = self.set_traffic(
            "canary",
            rules.start_percent,
            schedule=rules.steps,
            step_s=rules.step_s,
            assignment=rules.assignment,
        )
        note = (
            f"autopilot: canary of {challenger.label} at {rules.start_percent:g}% of the "
            f"{'decisions' if rules.assignment == 'decision' else 'tenants'}"
        )
        log.info(note)
        self.events.notes.append(note)
        return traffic

    def set_traffic(
        self,
        mode: TrafficMode,
        canary_percent: float = 0.0,
        *,
        schedule: Sequence[float] = (),
        step_s: float = 600.0,
        assignment: Assignment = "tenant",
    ) -> Traffic:
        """Change the traffic mode; canary and shadow need a challenger.

        A canary ``schedule`` (increasing percentages, e.g. ``(10, 50, 100)``) steps the share
        up every ``step_s`` seconds unless the canary is rolled back first; ``assignment``
        draws the canary per ``decision`` (its share in the logged propensity) or per
        ``tenant`` (sticky).
        """
        if mode not in ("champion", "canary", "shadow"):
            raise ValueError(f"traffic mode must be champion, canary or shadow, got {mode!r}")
        if assignment not in ("decision", "tenant"):
            raise ValueError(f"assignment must be decision or tenant, got {assignment!r}")
        if mode != "champion" and self._lineup.challenger is None:
            raise ValueError(f"traffic mode {mode!r} needs a challenger (a staging version)")
        if not 0.0 <= canary_percent <= 100.0:
            raise ValueError(f"canary_percent must be in [0, 100], got {canary_percent}")
        steps = tuple(float(x) for x in schedule) if mode == "canary" else ()
        previous = canary_percent
        for x in steps:
            if not previous < x <= 100.0:
                raise ValueError(
                    f"schedule must increase from canary_percent up to at most 100, got {steps}"
                )
            previous = x
        if steps and step_s <= 0:
            raise ValueError(f"step_s must be > 0, got {step_s}")
        self.traffic = Traffic(
            mode,
            canary_percent if mode == "canary" else 0.0,
            steps,
            step_s,
            self._clock() + step_s if steps else float("inf"),
            assignment,
        )
        self._live.clear()
        return self.traffic

    def _step(self, t: Traffic) -> Traffic:
        """The canary's next step, if its time has come and it is healthy (decision path).

        With autopilot rules, a step waits until the challenger has ``min_feedback`` feedback
        (its guards have had a say); a breach rolls it back before any step.
        """
        now = self._clock()
        if now < t.next_step_at or not t.schedule:
            return t
        challenger = self._lineup.challenger
        if self.rules is not None and challenger is not None:
            stats = self._live.get(challenger.label)
            if stats is None or stats.n < self.rules.min_feedback:
                return t
        rest = t.schedule[1:]
        nxt = Traffic(
            "canary",
            t.schedule[0],
            rest,
            t.step_s,
            now + t.step_s if rest else float("inf"),
            t.assignment,
        )
        self.traffic = nxt
        unit = "decisions" if t.assignment == "decision" else "tenants"
        note = f"canary stepped to {nxt.canary_percent:g}% of {unit}"
        log.info(note)
        self.events.notes.append(note)
        return nxt

    # -- decisions ----------------------------------------------------------------------------
    def _pick(self, lineup: Lineup, tenant: str) -> tuple[Slot, float]:
        """The slot that decides, and the probability it was drawn (1 unless per decision)."""
        t = self.traffic
        if t.schedule:
            t = self._step(t)
        if t.mode != "canary" or lineup.challenger is None:
            return lineup.champion, 1.0
        if t.assignment == "tenant":
            if tenant_bucket(tenant) < t.canary_percent:
                return lineup.challenger, 1.0
            return lineup.champion, 1.0
        share = t.canary_percent / 100.0
        if self._rng.random() < share:
            return lineup.challenger, share
        return lineup.champion, 1.0 - share

    def _run(
        self,
        slot: Slot,
        ctx: RequestContext,
        budget_left: float | None,
        live: RouterFeatures | None = None,
        share: float = 1.0,
        *,
        memo: dict[Any, Any] | None = None,
    ) -> Decision:
        loop = slot.loop
        loop.budget_left = budget_left
        loop.live = live
        loop.traffic_share = share
        loop.batch_memo = memo
        try:
            return loop.decide(ctx)
        finally:
            loop.budget_left = None
            loop.live = None
            loop.traffic_share = 1.0
            loop.batch_memo = None

    def _features(self, ctx: RequestContext) -> RouterFeatures | None:
        live = self.features
        if live is None:
            return None
        return live.get(self.arms, tenant=ctx.tenant, task_type=task_type(ctx.task_hints))

    def decide(self, ctx: RequestContext, *, memo: dict[Any, Any] | None = None) -> Routed:
        """Decide for one request (raises :class:`BudgetExceededError` when nothing fits).

        ``memo``: one dict shared by the decisions of a batch (``/decide_batch``), empty at its
        start. Requests of one shape (offered models, trade-off, online features read) without
        caps or a budget then share their eligibility, live terms and penalty coefficients,
        taken at the batch's first request of that shape (:class:`ServingLoop`): feedback
        learned during the batch shows from the next one. Without one, single decisions share
        the router's own, emptied whenever anything is learned (feedback, the log follower,
        a swap) and at least every :attr:`shapes_ttl_s` seconds: the same decisions as
        worked out alone, but for the online values' freshness, judged up to that late.
        """
        lineup = self._lineup
        slot, share = self._pick(lineup, ctx.tenant)
        live = self._features(ctx)
        paced = (
            self.pacing.willingness_to_pay(ctx.tenant, ctx.willingness_to_pay)
            if self.pacing is not None
            else None
        )
        if paced is not None:
            ctx = ctx.model_copy(update={"willingness_to_pay": max(paced[0], 1e-9)})
        picked = slot
        with self._lock:
            if memo is None and self.shapes_ttl_s > 0:
                memo = self._shapes_now()
            key = self.key_budgets.current()  # the request's key, if it has a budget of its own
            budget_left, by_key = self.key_budgets.left(self.ledger.remaining(ctx.tenant), key)
            refused: list[str] = []
            for _ in range(RESERVE_ATTEMPTS):
                try:
                    slot, decision = self._decide_once(
                        lineup,
                        picked,
                        ctx,
                        budget_left=budget_left,
                        live=live,
                        share=share,
                        memo=memo,
                    )
                except BudgetExceededError as exc:  # the key's budget the tighter: say so
                    raise KeyBudgets.exceeded(exc, by_key, budget_left, tenant=ctx.tenant) from None
                predicted = slot.loop.cost_model.predict(
                    decision.model, estimate_tokens(ctx.prompt or "")
                )
                if self._try_reserve(ctx.tenant, key, decision.decision_id, predicted or 0.0):
                    break
                # Another worker spent the budget since it was read: decide again with what is
                # left (the refused decision stays logged without feedback, never served).
                budget_left, by_key = self.key_budgets.left(self.ledger.remaining(ctx.tenant), key)
                refused.append(
                    f"budget: {decision.model} ({predicted or 0.0:.6f} USD) no longer fit, other "
                    f"workers spent the budget meanwhile; decided again with "
                    f"{max(budget_left or 0.0, 0.0):.6f} USD left"
                )
            else:
                whose = f"tenant {ctx.tenant!r}" if key is None else f"tenant {ctx.tenant!r} or key"
                raise BudgetExceededError(
                    f"{whose}: the daily budget was spent by concurrent requests "
                    f"({RESERVE_ATTEMPTS} decisions refused)"
                )
            refused += KeyBudgets.notes(by_key, budget_left)
            if refused:
                decision = decision.model_copy(update={"notes": [*decision.notes, *refused]})
            plan = None
            if ctx.mode == "cascade":
                plan, plan_notes = self._plan(slot, ctx, decision, budget_left, live)
                decision = decision.model_copy(update={"notes": [*decision.notes, *plan_notes]})
            shadow = None
            if self.traffic.mode == "shadow" and lineup.challenger is not None:
                shadow = self._shadow(lineup.challenger, ctx, budget_left, decision, live)
        if live is not None and live.degraded:
            decision = decision.model_copy(
                update={"notes": [*decision.notes, f"online features degraded: {live.reason}"]}
            )
        if paced is not None:
            decision = decision.model_copy(update={"notes": [*decision.notes, paced[1]]})
        degraded = self.ledger.degraded or self.breaker.degraded
        if degraded is not None:
            decision = decision.model_copy(update={"notes": [*decision.notes, degraded]})
        return Routed(decision, slot, predicted, shadow, live, plan)

    def _shapes_now(self) -> dict[Any, Any]:
        """The single decisions' shared per-shape work, emptied once :attr:`shapes_ttl_s` old
        (locked)."""
        now = self._clock()
        if now - self._shapes_born > self.shapes_ttl_s:
            self._shapes = {}
            self._shapes_born = now
        return self._shapes

    def _forget_shapes(self) -> None:
        """Something was learned (or swapped): what requests of one shape shared is stale."""
        self._shapes = {}
        self._shapes_born = -math.inf

    def _try_reserve(
        self, tenant: TenantID, key: str | None, decision_id: DecisionID, usd: float
    ) -> bool:
        """Reserve ``usd`` on the tenant's budget and, if it has one, the key's: both or neither
        (the key's refused: the tenant's reservation is released)."""
        if not self.ledger.try_reserve(tenant, decision_id, usd):
            return False
        if self.key_budgets.try_reserve(key, decision_id, usd):
            return True
        self.ledger.release(decision_id)
        return False

    def _decide_once(
        self,
        lineup: Lineup,
        slot: Slot,
        ctx: RequestContext,
        *,
        budget_left: float | None,
        live: RouterFeatures | None,
        share: float,
        memo: dict[Any, Any] | None = None,
    ) -> tuple[Slot, Decision]:
        """One decision by ``slot``, or by its fallback if its policy fails (locked)."""
        try:
            return slot, self._run(slot, ctx, budget_left, live, share, memo=memo)
        except (BudgetExceededError, NoCandidateError):
            raise
        except Exception as exc:  # a broken policy must not fail the request
            fallback = lineup.champion if slot.role == "challenger" else self._static
            if slot.role == "challenger":
                self.events.challenger_failures += 1
            else:
                self.events.champion_failures += 1
            log.exception("policy %s failed; %s answers", slot.label, fallback.label)
            self.events.notes.append(f"{slot.label} failed: {exc!r}")
            return fallback, self._run(fallback, ctx, budget_left, live)

    def _plan(
        self,
        slot: Slot,
        ctx: RequestContext,
        decision: Decision,
        budget_left: float | None,
        live: RouterFeatures | None,
    ) -> tuple[tuple[PlannedStep, ...], list[str]]:
        """Cascade mode: the cheapest eligible model first, then the policy's choice (locked)."""
        loop = slot.loop
        target = PlannedStep(
            model=decision.model,
            decision_id=decision.decision_id,
            parameters=decision.parameters,
            parameters_reason=decision.parameters_reason,
        )
        loop.budget_left, loop.live = budget_left, live
        try:
            arms, _ = loop._eligible(ctx)
        finally:
            loop.budget_left, loop.live = None, None
        in_tokens = estimate_tokens(ctx.prompt or "")
        costs = {a: loop.cost_model.predict(a, in_tokens) for a in arms}
        priced = {a: c for a, c in costs.items() if c is not None}
        cheap = min(priced, key=priced.__getitem__) if priced else None
        target_cost = priced.get(decision.model)
        if (
            cheap is None
            or cheap == decision.model
            or (target_cost is not None and priced[cheap] >= target_cost)
        ):
            return (target,), ["cascade: the policy's choice is the cheapest eligible model"]
        task = task_type(ctx.task_hints)
        rule = self.cascades.rule(task, cheap, decision.model)
        spec = self.catalog.get(cheap)
        params, reason, tuning = loop.generation_parameters(
            ctx, cheap, dict(spec.parameters) if spec is not None else {}, in_tokens
        )
        first = Decision(
            model=cheap,
            propensity=1.0,
            policy_name="q_cascade",
            policy_version=slot.label,
            parameters=params,
            parameters_reason=reason,
            notes=[f"cascade step 0 before {decision.model} ({decision.decision_id})"],
        )
        key = self.key_budgets.current()
        if not self._try_reserve(ctx.tenant, key, first.decision_id, priced[cheap]):
            return (target,), [
                f"cascade: the budget left pays for no first step before {decision.model}"
            ]
        tradeoff = loop.tradeoff_for(ctx)
        self.event_log.record_decision(
            first,
            ctx.model_copy(
                update={
                    "willingness_to_pay": tradeoff.willingness_to_pay,
                    "latency_weight": tradeoff.latency_weight,
                }
            ),
            store_prompt=ctx.tenant in self.store_prompt_tenants,
            features=request_features(
                ctx.prompt, task_hints=ctx.task_hints, client_features=ctx.features
            ),
            extra={
                "predicted_cost_usd": priced[cheap],
                "predicted_latency_ms": None,
                "input_tokens": in_tokens,
                **tuning,
                "cascade": {"step": 0, "then": decision.decision_id},
            },
        )
        self.cascades.start(task, first.decision_id, decision.decision_id, rule)
        step0 = PlannedStep(
            model=cheap,
            decision_id=first.decision_id,
            parameters=params,
            parameters_reason=reason,
            escalate_to=decision.model,
            escalate_on=rule.escalate_on,
            escalate_if_quality_below=rule.escalate_if_quality_below,
            probability=rule.probability,
        )
        return (step0, target), []

    def _shadow(
        self,
        slot: Slot,
        ctx: RequestContext,
        budget_left: float | None,
        served: Decision,
        live: RouterFeatures | None,
    ) -> Decision | None:
        try:
            d = self._run(slot, ctx, budget_left, live)
        except Exception:  # the shadow never affects the served answer
            self.events.challenger_failures += 1
            log.exception("shadow policy %s failed", slot.label)
            return None
        self.events.shadow_decisions += 1
        self.events.shadow_agreements += int(d.model == served.model)
        log.info(
            "shadow decision %s: %s (propensity %.4f) by %s; served %s",
            d.decision_id,
            d.model,
            d.propensity,
            slot.label,
            served.model,
        )
        return d

    # -- feedback -----------------------------------------------------------------------------
    def feedback(self, fb: Feedback) -> FeedbackOutcome:
        """Store feedback and teach the policy that decided (see the module docstring)."""
        row, answered = self.event_log.lookup_decision(fb.decision_id)
        if row is None and not answered:  # only a spooled log cannot tell
            # The database is down and this worker never saw the decision: it may exist (made
            # before the outage, or by a sibling). Accept it, checked when the spool replays.
            receipt = self.event_log.spool_unvalidated_feedback(fb)  # type: ignore[attr-defined]
            self.events.unvalidated_feedback += int(receipt.status == "spooled")
            return FeedbackOutcome(receipt.status, fb.decision_id, None, None)
        if row is None:
            raise UnknownDecisionError(
                f"unknown decision_id {fb.decision_id!r}: feedback must name a decision returned "
                "by /decide"
            )
        fb = fb.with_measurements((row.get("context") or {}).get("call"))
        lineup = self._lineup
        label = row["policy_version"]
        if lineup.challenger is not None and label == lineup.challenger.label:
            slot = lineup.challenger
        elif label == STATIC_LABEL:
            slot = self._static
        else:
            slot = lineup.champion
        # Stored outside the lock: the transaction may wait for the database's write lock (and
        # SQLite's busy handler sleeps), and every decision takes this lock.
        stored = slot.loop.store_feedback(fb, decision_row=row)
        outcome = stored.outcome
        if outcome.status != "duplicate" and outcome.reward is not None:
            with self._lock:
                self._forget_shapes()
                slot.loop.learn_feedback(stored)
                self._after_feedback(fb, row, slot, outcome.reward)
        return outcome

    def _after_feedback(
        self, fb: Feedback, row: Mapping[str, Any], slot: Slot, reward: float
    ) -> None:
        failed = fb.error_kind is not None
        self.breaker.record(row["model"], ok=not failed)
        cost = self._actual_cost(fb, row)
        self.ledger.settle(fb.decision_id, cost)
        self.key_budgets.settle(fb.decision_id, cost)
        stats = self._live.setdefault(slot.label, VersionStats())
        stats.add(
            reward,
            failed,
            quality=fb.normalized_quality(),
            cost_usd=cost,
            latency_ms=fb.latency_ms,
        )
        try:
            (slot.loop.tuning or self.tuning).observe(
                (row.get("context") or {}).get("tuning"),
                row.get("parameters") or {},
                reward,
                error_kind=fb.error_kind.value if fb.error_kind is not None else None,
            )
        except Exception:  # learning the parameters must never fail a feedback
            log.exception("parameter tuning failed to learn")
        try:
            self.cascades.observe(
                fb.decision_id, quality=fb.normalized_quality(), cost_usd=cost, error=failed
            )
        except Exception:  # nor learning the cascade
            log.exception("cascade failed to learn")
        self._check_guards()
        if self.drift is not None and slot.role != "static_default":
            try:
                self.drift.observe(
                    slot.label,
                    slot.loop,
                    row["model"],
                    reward=reward,
                    quality=fb.normalized_quality(),
                    latency_ms=fb.latency_ms,
                    cost_usd=cost,
                )
            except Exception:  # monitoring must never fail a feedback
                log.exception("drift watch failed")

    def _actual_cost(self, fb: Feedback, row: Mapping[str, Any]) -> float:
        predicted = (row.get("context") or {}).get("predicted_cost_usd")
        return realized_cost(fb, self.catalog.get(row["model"]), predicted)

    def _check_guards(self) -> None:
        """Roll back a canary, or a freshly promoted champion, that breaks its guards."""
        rules, lineup = self.rules, self._lineup
        if rules is None:
            return
        champ = self._live.get(lineup.champion.label)
        if self.traffic.mode == "canary" and lineup.challenger is not None:
            chall = self._live.get(lineup.challenger.label)
            verdict = guard_verdict(chall, champ, rules) if chall is not None else None
            if verdict is not None:  # the canary stops and the challenger retires
                self._lineup = Lineup(lineup.champion, None)
                self.traffic = Traffic()
                self._live.clear()
                self._rolled_back(
                    Rollback("challenger", lineup.challenger.label, lineup.champion.label, verdict)
                )
                return
        watch = self._watch
        if watch is None or watch.label != lineup.champion.label:
            return
        if self._clock() > watch.until:
            self._watch = None
            return
        # The SLOs only: the predecessor's record comes from another period (the traffic, the
        # models' quality and prices may have changed since), so a margin against it would
        # blame the new version for the world's changes.
        verdict = guard_verdict(champ, None, rules) if champ is not None else None
        if verdict is None:
            return
        self._watch = None
        restored = watch.previous
        self._lineup = Lineup(restored, lineup.challenger)  # the predecessor serves, at once
        self.traffic = Traffic()
        self._live.clear()
        self._rolled_back(Rollback("champion", lineup.champion.label, restored.label, verdict))

    def _rolled_back(self, rollback: Rollback) -> None:
        what = "canary" if rollback.role == "challenger" else "champion"
        note = (
            f"{what} {rollback.label} rolled back ({rollback.verdict.kind}): "
            f"{rollback.verdict.reason}; {rollback.restored} serves"
        )
        log.warning(note)
        self.events.notes.append(note)
        self.events.rollbacks += 1
        self.rolled_back.append(rollback)
        if self.on_rollback is not None:
            try:
                self.on_rollback(rollback)
            except Exception:  # making it durable must never fail a feedback
                log.exception("rollback hook failed for %s", rollback.label)

    def live_stats(self) -> dict[str, dict[str, float | int | None]]:
        """Live feedback per version label since the last traffic change (n, reward, errors,
        quality, cost per request, p95 latency)."""
        return {k: v.as_dict() for k, v in self._live.items()}

    # -- several workers ----------------------------------------------------------------------
    def learn_from_log(self, after: LogCursor | int, own: set[int]) -> LogCursor:
        """Learn feedback other workers stored (after the cursor ``after``, not in ``own``).

        Returns the new cursor. The log is read with :meth:`EventLog.feedback_after`, so a
        feedback whose transaction commits late (PostgreSQL, concurrent workers) is read once
        it is final, never skipped. Every worker ends up having learned the same set of
        feedback (additive statistics: the same up to rounding; see ``serving/README.md``).
        """
        cursor = after if isinstance(after, LogCursor) else LogCursor(0, after)
        events = self.event_log.feedback_after(cursor, limit=10_000)
        lineup = self._lineup
        serving = {lineup.champion.label}
        if lineup.challenger is not None:
            serving.add(lineup.challenger.label)
        counted = False
        with self._lock:
            if events:
                self._forget_shapes()
            for ev in events:
                if ev.feedback_id in own:
                    own.discard(ev.feedback_id)
                    continue
                slot = (
                    lineup.challenger
                    if lineup.challenger is not None
                    and ev.policy_version == lineup.challenger.label
                    else lineup.champion
                )
                policy = slot.loop.policy
                target = ev.quality if getattr(policy, "cost_aware", False) else ev.reward
                if target is not None and slot.role != "static_default":
                    policy.update(ev.model, ev.features, float(target))
                    self.events.log_learned += 1
                # A shared breaker and ledger (Redis) hold every worker's outcomes and spend
                # already: only per-process ones learn other workers' from the log.
                if not self.breaker.shared:
                    self.breaker.record(ev.model, ok=ev.error_kind is None)
                if not self.ledger.shared:
                    self.ledger.add(ev.tenant, float(ev.cost_usd or 0.0), decided_at=ev.decided_at)
                # The canary's statistics are the fleet's: another worker's feedback for a
                # version serving now counts here too (a retired version's is not revived).
                if ev.reward is not None and ev.policy_version in serving:
                    self._live.setdefault(ev.policy_version, VersionStats()).add(
                        ev.reward,
                        ev.error_kind is not None,
                        quality=ev.quality,
                        cost_usd=ev.cost_usd,
                        latency_ms=ev.latency_ms,
                    )
                    counted = True
            if counted:
                self._check_guards()
        return events[-1].position if events else cursor
