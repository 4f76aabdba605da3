"""The decision service: one ``@bentoml.service`` over :class:`serving.runtime.ServingRuntime`.

Endpoints (OpenAPI at ``/docs.json``, UI at ``/``):

- ``POST /decide``: one request -> a decision (model, parameters, decision_id, propensity,
  policy version, explanation); ``POST /decide_batch``: several at once;
- ``POST /feedback``: stored once in the event log and learned from; the same feedback again
  -> 200 ``duplicate``; a different feedback for the same decision -> 409; an unknown
  decision -> 404;
- ``GET /healthz`` (alive), ``GET /readyz`` (JSON: 503 ``starting`` until it can decide, then
  200 ``ok``, or 200 ``degraded`` with the reasons, e.g. the event log down and decisions
  spooled: :mod:`serving.health` says why degraded is not a 503), ``GET /metrics``
  (Prometheus text, :mod:`serving.metrics`);
- ``POST /admin/reload`` (swap in the versions the registry aliases point at now) and
  ``POST /admin/traffic`` (champion / canary at a percentage / shadow).

Every error has one body, ``{"error": {"code", "message", "field"}}`` (:mod:`serving.errors`):
validation errors are 400 ``validation_error`` naming the offending field; a tenant whose daily
budget pays for no model gets 402; keys, body size and rate limits are
:mod:`serving.http_guard`'s (401/403/413/415/429); a key bound to tenants
(``LLMOPT_CLIENT_KEY_TENANTS``) gets 403 for another tenant: ``/decide`` and ``/decide_batch``
(every request of the batch is checked before any is decided) name the tenant, ``/feedback``
is checked against its decision's tenant. Nothing else is an error: a failing policy
falls back (see :mod:`serving.router`). The OpenAPI document is 3.1 (:mod:`serving.openapi`).

Run: ``bentoml serve serving.service:DecisionService --port 3000`` from the repository root,
or ``llmopt serve --port 3000``. ``POST /decide``, ``/decide_batch`` and ``/feedback`` are
answered by :meth:`DecisionService.answer` through :mod:`serving.fast_path`, in front of
BentoML's request machinery (``LLMOPT_SERVING_FAST_PATH=false``: through the endpoints below,
which stay declared for the OpenAPI document and answer the same). Handlers return pydantic
models (a ``dict`` return type costs a JSON schema per request); ``/decide`` runs on the event
loop, as in the bare baseline, which measured faster than a hop to a thread pool
(bench/serving.py), and waits for its group commit there; ``/feedback`` runs on a worker thread
(its own transaction may wait for the database's write lock); batches run on one thread of
their own, admin endpoints (MLflow) in BentoML's pool. The access log and BentoML's own
request metrics are off and the start-up heap is frozen out of the garbage collector at the
end of ``__init__`` (``docs/stack_notes.md``: without it BentoML's p99 exceeds 100 ms);
OpenTelemetry spans are skipped for ``/decide``, ``/decide_batch``, ``/feedback`` and
``/v1/chat/completions``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import bentoml
import orjson
from pydantic import BaseModel, ValidationError

from llmopt.event_log import ConflictingFeedbackError, UnknownDecisionError
from llmopt.loop import ContextWindowError, NoCandidateError
from llmopt.schemas import Feedback, RequestContext
from llmopt.settings import Settings
from serving.errors import (
    ApiError,
    BadRequestError,
    BudgetRefusedError,
    ConflictError,
    ErrorShapeMiddleware,
    NotFoundError,
    UnavailableError,
    error_body,
    quiet_client_errors,
    validation_body,
)
from serving.fast_path import FastPathMiddleware
from serving.gateway import GatewayMiddleware
from serving.guards import BudgetExceededError
from serving.health import ProbeMiddleware
from serving.http_guard import GuardMiddleware, KeyRing, check_tenant, current_grant
from serving.metrics import ServingMetrics, get_metrics
from serving.openapi import OpenAPIMiddleware, build_spec
from serving.pareto import ParetoMiddleware
from serving.router import BATCH, BatchPlan, Routed
from serving.runtime import ServingRuntime, settle_for_serving
from serving.schemas import (
    BatchItemError,
    DecideBatchRequest,
    DecideBatchResponse,
    DecideRequest,
    DecideResponse,
    FeatureStatus,
    FeedbackRequest,
    FeedbackResponse,
    PlanStep,
    ReloadRequest,
    ServingStatus,
    ShadowDecision,
    TrafficRequest,
)

log = logging.getLogger("llmopt.serving")

F = TypeVar("F", bound=Callable[..., Any])


def api(**options: Any) -> Callable[[F], F]:
    """``bentoml.api`` with a type mypy can follow (it is untyped in BentoML)."""
    decorator: Callable[[F], F] = bentoml.api(**options)
    return decorator


def to_response(routed: Routed, features_state: str = "off") -> DecideResponse:
    """The HTTP view of a routed decision (``features_state``: the runtime's)."""
    d = routed.decision
    f = routed.features
    features = (
        FeatureStatus(state="open", degraded=f.degraded, reason=f.reason, read_ms=f.elapsed_ms)
        if f is not None
        else FeatureStatus(state=features_state)
    )
    shadow = None
    if routed.shadow is not None:
        s = routed.shadow
        shadow = ShadowDecision(
            model=s.model,
            propensity=s.propensity,
            decision_id=s.decision_id,
            policy_version=s.policy_version,
        )
    return DecideResponse(
        decision_id=d.decision_id,
        model=d.model,
        parameters=d.parameters,
        parameters_reason=d.parameters_reason,
        propensity=d.propensity,
        policy_name=d.policy_name,
        policy_version=d.policy_version,
        served_by=routed.slot.role,
        fallback=routed.slot.fallback,
        predicted_cost_usd=routed.predicted_cost_usd,
        explanation=d.explanation,
        scores=d.scores,
        notes=d.notes,
        shadow=shadow,
        plan=(
            [PlanStep.model_validate(step, from_attributes=True) for step in routed.plan]
            if routed.plan is not None
            else None
        ),
        features=features,
        created_at=d.created_at,
    )


def response_json(routed: Routed, features_state: str = "off") -> bytes:
    """``to_response(routed, features_state).model_dump_json()``, the same bytes, written
    directly: building and validating the response model cost as much as serialising it (the
    two were a tenth of a decision's CPU). Cascade plans and shadow decisions, rare, go through
    the model; a test compares both ways over every kind of decision."""
    if routed.plan is not None or routed.shadow is not None:
        return to_response(routed, features_state).model_dump_json().encode()
    d = routed.decision
    f = routed.features
    e = d.explanation
    return orjson.dumps(
        {
            "decision_id": d.decision_id,
            "model": d.model,
            "parameters": d.parameters,
            "parameters_reason": d.parameters_reason,
            "propensity": d.propensity,
            "policy_name": d.policy_name,
            "policy_version": d.policy_version,
            "served_by": routed.slot.role,
            "fallback": routed.slot.fallback,
            "predicted_cost_usd": routed.predicted_cost_usd,
            "explanation": (
                None
                if e is None
                else {
                    "estimate": e.estimate,
                    "uncertainty_bonus": e.uncertainty_bonus,
                    "penalty": e.penalty,
                    "expected_reward": e.expected_reward,
                    "explored": e.explored,
                    "reason": e.reason,
                }
            ),
            "scores": d.scores,
            "notes": d.notes,
            "shadow": None,
            "features": (
                {
                    "state": "open",
                    "degraded": f.degraded,
                    "reason": f.reason,
                    "read_ms": f.elapsed_ms,
                }
                if f is not None
                else {"state": features_state, "degraded": False, "reason": "", "read_ms": 0.0}
            ),
            "plan": None,
            "created_at": d.created_at,
        },
        option=orjson.OPT_UTC_Z,
    )


def batch_response_json(
    routed: Sequence[Routed | None], errors: Sequence[BatchItemError], features_state: str = "off"
) -> bytes:
    """``DecideBatchResponse(...).model_dump_json()`` for these decisions (None: refused) and
    errors, the same bytes, each decision written by :func:`response_json`."""
    items = b",".join(
        response_json(r, features_state) if r is not None else b"null" for r in routed
    )
    listed = b",".join(e.model_dump_json().encode() for e in errors)
    return b'{"decisions":[' + items + b'],"errors":[' + listed + b"]}"


@bentoml.service(
    name="llmopt-router",
    logging={"access": {"enabled": False}},
    metrics={"enabled": False},  # /metrics is ours (serving.metrics): no per-request middleware
    # No tracing exporter is configured: skip OpenTelemetry's per-request spans on the hot path
    # (with both off, ~+40% requests/s in bench/serving.py).
    tracing={"excluded_urls": ["/decide", "/decide_batch", "/feedback", "/v1/chat/completions"]},
    traffic={"timeout": 30},
    workers=1,
)
class DecisionService:
    """Which LLM to use for each request, learned online from feedback."""

    def __init__(self) -> None:
        settings = Settings()
        keys = KeyRing.from_settings(settings)  # keys that do not hold together fail the start
        if not keys.auth:
            log.warning(
                "LLMOPT_CLIENT_KEYS and LLMOPT_ADMIN_KEYS are unset: the service runs OPEN "
                "(embedded profile); set them to require Authorization: Bearer KEY"
            )
        if keys.unbound:
            log.warning(
                "%d client key(s) not in LLMOPT_CLIENT_KEY_TENANTS may act for no tenant (403); "
                'bind them, or give them ["*"]',
                keys.unbound,
            )
        self.runtime = ServingRuntime(settings)
        self._batches = ThreadPoolExecutor(1, thread_name_prefix="decide-batch")
        """Batches decided one at a time, off the event loop (two at once contend for the GIL)."""
        self.router = self.runtime.router
        self.metrics = get_metrics()
        self.metrics.hooks[:] = [self._refresh_gauges]  # one service per process
        lineup = self.router.lineup
        log.info(
            "serving champion %s, challenger %s, traffic %s",
            lineup.champion.label,
            lineup.challenger.label if lineup.challenger else None,
            self.router.traffic.mode,
        )
        # The start-up heap frozen out of the collector, the GIL handed over every 0.5 ms
        settle_for_serving(settings)

    def __is_ready__(self) -> bool:
        return self.router.ready

    def _refresh_gauges(self, m: ServingMetrics) -> None:
        for model in self.router.arms:
            m.breaker_open.labels(model).set(
                1.0 if self.router.breaker.state(model) == "open" else 0
            )
        ev = self.router.events
        if ev.shadow_decisions:
            m.shadow_agreement.set(ev.shadow_agreements / ev.shadow_decisions)
        m.rollbacks.set(ev.rollbacks)
        traffic = self.router.traffic
        m.canary_percent.set(traffic.canary_percent if traffic.mode == "canary" else 0.0)
        m.set_model_available("champion", not self.runtime.fallback)
        m.set_model_available("challenger", self.router.lineup.challenger is not None or None)
        rt = self.runtime
        m.sync_training_examples("log", self.router.events.log_learned)
        m.sync_features(rt.settings.serving_features, rt.features_state, self.router.features)

    def _route(self, ctx: RequestContext, memo: dict[Any, Any] | None = None) -> Routed:
        """Decide for one request (its errors as API errors), counted in the metrics
        (``memo``: a batch's, :meth:`serving.router.Router.decide`)."""
        started = time.perf_counter()
        try:
            routed = self.router.decide(ctx, memo=memo)
        except ContextWindowError as exc:
            raise BadRequestError(str(exc), code="context_window", field="prompt") from None
        except NoCandidateError as exc:
            raise BadRequestError(str(exc), code="no_candidate", field="models") from None
        except BudgetExceededError as exc:
            self.metrics.observe_failed_decision(402)
            raise BudgetRefusedError(str(exc)) from None
        except Exception as exc:  # e.g. the event log is down
            log.exception("decide failed")
            self.metrics.observe_failed_decision(503)
            raise UnavailableError(f"cannot decide right now: {type(exc).__name__}") from None
        self.metrics.observe_decision(
            routed.decision,
            served_by=routed.slot.role,
            fallback=routed.slot.fallback,
            seconds=time.perf_counter() - started,
        )
        return routed

    async def _decide_one(self, ctx: RequestContext) -> Routed:
        check_tenant(ctx.tenant)
        with self.router.event_log.deferred_writes() as writes:
            routed = self._route(ctx)
        try:  # group commit: answer once the decision is durable, other requests run meanwhile
            await writes.wait_async()
        except Exception as exc:
            raise self._unlogged(exc) from None
        return routed

    @api(route="/decide", input_spec=DecideRequest)
    async def decide(self, **fields: Any) -> DecideResponse:
        """Choose the model for one LLM request."""
        routed = await self._decide_one(RequestContext.model_validate(fields))
        return to_response(routed, self.runtime.features_state)

    @api(route="/decide_batch", input_spec=DecideBatchRequest)
    def decide_batch(self, requests: list[RequestContext]) -> DecideBatchResponse:
        """Choose the model for each of several requests (each independently)."""
        routed, errors = self._decide_batch(requests)
        state = self.runtime.features_state
        return DecideBatchResponse(
            decisions=[to_response(r, state) if r is not None else None for r in routed],
            errors=errors,
        )

    def _decide_batch_json(self, requests: Sequence[RequestContext]) -> bytes:
        """:meth:`decide_batch`'s answer as JSON (:func:`batch_response_json`)."""
        routed, errors = self._decide_batch(requests)
        return batch_response_json(routed, errors, self.runtime.features_state)

    def _decide_batch(
        self, requests: Sequence[RequestContext]
    ) -> tuple[list[Routed | None], list[BatchItemError]]:
        """Each request decided in turn (None and an error where refused), logged in one group
        commit, durable before it returns."""
        for i, ctx in enumerate(requests):  # all or nothing: a foreign tenant refuses the batch
            check_tenant(ctx.tenant, field=f"requests.{i}.tenant")
        decisions: list[Routed | None] = []
        errors: list[BatchItemError] = []
        # what requests of one shape share (Router.decide), and draw together (BatchPlan)
        memo: dict[Any, Any] = {BATCH: BatchPlan(requests)}
        # Held until every request is decided, then written in one transaction: submitted one by
        # one, the writer committed small groups while the batch was still deciding (x0.8 CPU
        # per decision held: python -m bench decide_batch).
        with self.router.event_log.deferred_writes(hold=True) as writes:
            for i, ctx in enumerate(requests):
                try:
                    decisions.append(self._route(ctx, memo))
                except ApiError as exc:
                    decisions.append(None)
                    errors.append(
                        BatchItemError(index=i, status=int(exc.error_code), message=exc.message)
                    )
        try:
            writes.wait()
        except Exception as exc:
            raise self._unlogged(exc) from None
        return decisions, errors

    def _unlogged(self, exc: Exception) -> UnavailableError:
        """A decision made but not logged (the event log failed and nothing spooled it)."""
        log.error("decision not logged: %r", exc)
        self.metrics.observe_failed_decision(503)
        return UnavailableError(f"cannot decide right now: {type(exc).__name__}")

    @api(route="/feedback", input_spec=FeedbackRequest)
    async def feedback(self, **fields: Any) -> FeedbackResponse:
        """Report what happened to a decision; stored once and learned from."""
        return await asyncio.to_thread(self._feedback, Feedback.model_validate(fields))

    def _feedback(self, fb: Feedback) -> FeedbackResponse:
        """Store and learn one feedback; on a worker thread, never on the event loop: its
        transaction can wait for the event log's write lock (SQLite's busy handler sleeps 1, 2,
        5, 10 ms ... while the group-commit writer commits), and on the loop every request
        would wait with it."""
        if current_grant().tenants is not None:
            self._check_decision_tenant(fb.decision_id)
        try:
            outcome = self.router.feedback(fb)
        except UnknownDecisionError as exc:
            self.metrics.observe_feedback("unknown")
            raise NotFoundError(str(exc), field="decision_id") from None
        except ConflictingFeedbackError as exc:
            self.metrics.observe_feedback("conflict")
            raise ConflictError(str(exc)) from None
        except Exception as exc:
            log.exception("feedback failed")
            self.metrics.observe_feedback("error")
            raise UnavailableError(
                f"cannot store feedback right now: {type(exc).__name__}"
            ) from None
        self.metrics.observe_feedback(
            outcome.status, decision_id=outcome.decision_id, reward=outcome.reward
        )
        if outcome.status == "stored":
            self.runtime.note_own_feedback(outcome.feedback_id)
        return FeedbackResponse(
            status=outcome.status,
            decision_id=outcome.decision_id,
            reward=outcome.reward,
            feedback_id=outcome.feedback_id,
        )

    async def answer(self, path: str, raw: bytes) -> tuple[int, bytes]:
        """``POST /decide``, ``/decide_batch`` or ``/feedback`` from the raw body: (status, body).

        What :mod:`serving.fast_path` answers with, in front of BentoML's request machinery:
        the same validation (the endpoints' input models, 400 ``validation_error`` naming the
        field), the same handlers and errors, the same response model.
        """
        raw = raw if raw.strip() else b"{}"  # as BentoML: no body is an empty object
        try:
            if path == "/decide":
                routed = await self._decide_one(DecideRequest.model_validate_json(raw))
                return 200, response_json(routed, self.runtime.features_state)
            if path == "/decide_batch":
                batch = DecideBatchRequest.model_validate_json(raw)
                return 200, await asyncio.get_running_loop().run_in_executor(
                    self._batches,
                    contextvars.copy_context().run,
                    self._decide_batch_json,
                    batch.requests,
                )
            fb = FeedbackRequest.model_validate_json(raw)
            response: BaseModel = await asyncio.to_thread(self._feedback, fb)
        except ValidationError as exc:
            return 400, validation_body(exc)
        except ApiError as exc:
            status = int(exc.error_code)
            return status, error_body(status, exc.message, code=exc.code, field=exc.field)
        except Exception:  # a bug: the one shape, no details
            log.exception("%s failed", path)
            return 500, error_body(500, "internal error")
        return 200, response.model_dump_json().encode()

    def _check_decision_tenant(self, decision_id: str) -> None:
        """403 unless the request's key may act for the decision's tenant (bound keys only:
        one more primary-key read of the decision; the router reads it again)."""
        try:
            row, answered = self.router.event_log.lookup_decision(decision_id)
        except Exception as exc:
            log.exception("decision lookup failed")
            raise UnavailableError(
                f"cannot check the decision's tenant right now: {type(exc).__name__}"
            ) from None
        if row is None and answered:
            return  # the router answers 404
        if row is None:  # the database is down and this worker never saw the decision
            raise UnavailableError(
                "cannot check the decision's tenant while the event log is down; retry"
            )
        check_tenant(
            str(row["tenant"]),
            field="decision_id",
            message=f"decision {decision_id!r} is another tenant's: this key may not act for it",
        )

    def _status(self, **extra: Any) -> ServingStatus:
        lineup, traffic = self.router.lineup, self.router.traffic
        return ServingStatus(
            champion=lineup.champion.label,
            challenger=lineup.challenger.label if lineup.challenger else None,
            mode=traffic.mode,
            canary_percent=traffic.canary_percent,
            schedule=list(traffic.schedule),
            fallback=self.runtime.fallback,
            features=self.runtime.features_state,
            **extra,
        )

    @api(route="/admin/reload", input_spec=ReloadRequest)
    def admin_reload(self, force: bool = False) -> ServingStatus:
        """Swap in the versions the registry aliases (prod, staging) point at now."""
        result = self.runtime.reload(force=force)
        if result.changed:
            self.metrics.observe_swap(result.elapsed_ms / 1000, trigger="reload")
        return self._status(
            changed=result.changed, elapsed_ms=result.elapsed_ms, notes=result.notes
        )

    @api(route="/admin/traffic", input_spec=TrafficRequest)
    def admin_traffic(
        self,
        mode: str,
        canary_percent: float = 0.0,
        schedule: list[float] | None = None,
        step_s: float = 600.0,
    ) -> ServingStatus:
        """Set the traffic mode: champion, canary (percent of tenants, schedule) or shadow."""
        try:
            self.router.set_traffic(
                mode,  # type: ignore[arg-type]
                canary_percent,
                schedule=schedule or (),
                step_s=step_s,
            )
        except ValueError as exc:
            raise BadRequestError(str(exc), code="invalid_traffic") from None
        return self._status(notes=list(self.router.events.notes)[-5:])


_svc: Any = DecisionService  # a bentoml Service object at run time
# Outermost first: the spec, then the one error shape around the guard's refusals and
# BentoML's own, and BentoML's ERROR tracebacks kept for server errors only.
_svc.add_asgi_middleware(ProbeMiddleware)  # /healthz, /readyz with a JSON body saying why
_svc.add_asgi_middleware(OpenAPIMiddleware, spec=lambda: build_spec(_svc))
_svc.add_asgi_middleware(ErrorShapeMiddleware)
_svc.add_asgi_middleware(GuardMiddleware)
_svc.add_asgi_middleware(ParetoMiddleware)  # GET /pareto, behind the guard
_svc.add_asgi_middleware(GatewayMiddleware)  # /v1/models, /v1/chat/completions, behind the guard
_svc.add_asgi_middleware(FastPathMiddleware)  # POST /decide, /feedback without BentoML's machinery
quiet_client_errors()
