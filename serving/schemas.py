"""Requests and responses of the decision service, with the examples tests and docs reuse.

The request bodies are the domain's own records (:class:`llmopt.schemas.RequestContext`,
:class:`llmopt.schemas.Feedback`): a client sends exactly what ``llmopt decide`` /
``llmopt feedback`` take, and every field keeps its description in the OpenAPI spec.

Examples
--------
>>> DecideRequest.model_validate(EXAMPLE_DECIDE).tenant
'acme'
>>> FeedbackRequest.model_validate(EXAMPLE_FEEDBACK).quality
0.8
>>> TrafficRequest.model_validate(EXAMPLE_TRAFFIC).mode
'canary'
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmopt.schemas import Explanation, Feedback, RequestContext

EXAMPLE_DECIDE: dict[str, Any] = {"tenant": "acme", "prompt": "What is 2 + 2?"}
"""The smallest valid /decide body (the contract's example)."""

EXAMPLE_DECIDE_FULL: dict[str, Any] = {
    "tenant": "acme",
    "prompt": "Write a Python function that reverses a list.",
    "task_hints": ["code"],
    "max_cost_usd": 0.01,
    "max_latency_ms": 20_000,
    "willingness_to_pay": 0.05,
}
"""A /decide body with the optional fields."""

EXAMPLE_FEEDBACK: dict[str, Any] = {"decision_id": "<from /decide>", "quality": 0.8}
"""The smallest valid /feedback body (fill in ``decision_id``)."""

EXAMPLE_TRAFFIC: dict[str, Any] = {"mode": "canary", "canary_percent": 10.0}
"""An /admin/traffic body."""

TrafficMode = Literal["champion", "canary", "shadow"]
ServedBy = Literal["champion", "challenger", "static_default"]


class DecideRequest(RequestContext):
    """One LLM request to route: only ``tenant`` is required."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": EXAMPLE_DECIDE})


class ShadowDecision(BaseModel):
    """What the challenger would have chosen in shadow mode (logged, not served)."""

    model: str = Field(description="The challenger's choice.")
    propensity: float = Field(description="Probability of that choice under the challenger.")
    decision_id: str = Field(description="The shadow decision's id in the event log.")
    policy_version: str = Field(description="The challenger's version label.")


class PlanStep(BaseModel):
    """One step of a cascade plan: call ``model``; check its answer; escalate or stop."""

    model: str = Field(description="The model to call at this step.")
    decision_id: str = Field(
        description="This step's decision: its /feedback carries the step's check result "
        "(the answer's quality as the client's check judged it, or an error_kind)."
    )
    parameters: dict[str, float | int | str] = Field(
        default_factory=dict, description="Generation parameters for this step's call."
    )
    parameters_reason: str = Field(default="", description="Why these parameters.")
    escalate_to: str | None = Field(
        default=None, description="The next step's model; null on the last step."
    )
    escalate_on: list[str] = Field(
        default_factory=list,
        description="Check results that escalate: quality buckets like '[0,0.5)', or 'error'.",
    )
    escalate_if_quality_below: float | None = Field(
        default=None,
        description="The same rule as one threshold, when it is one (errors escalate if "
        "'error' is in escalate_on).",
    )
    probability: float = Field(
        default=1.0, description="Propensity of this escalation rule (it explores)."
    )


class FeatureStatus(BaseModel):
    """The online features a decision saw."""

    state: Literal["open", "starting", "unavailable", "off"] = Field(
        description="open: read from the online store; starting/unavailable/off: not used."
    )
    degraded: bool = Field(
        default=False, description="The store was late or down: last values or defaults used."
    )
    reason: str = Field(default="", description="Why degraded, or which keys got defaults.")
    read_ms: float = Field(default=0.0, description="Time the read (or cache lookup) took.")


class DecideResponse(BaseModel):
    """The chosen model, with what off-policy evaluation and a curious user need."""

    decision_id: str = Field(description="Quote it in /feedback.")
    model: str = Field(description="The model to call.")
    parameters: dict[str, float | int | str] = Field(
        default_factory=dict,
        description=(
            "Generation parameters: temperature, top_p, max_tokens and prompt_template (plain, "
            "step_by_step or concise: how to wrap the prompt; not an API parameter)."
        ),
    )
    parameters_reason: str = Field(
        default="",
        description=(
            "Why these parameters: 'default: k of n feedback needed ...' (safe default), "
            "'tuning: TPE trial ...' or 'tuned: best of k feedback ...', per task type x model."
        ),
    )
    propensity: float = Field(description="Probability with which the policy chose this model.")
    policy_name: str = Field(description="Algorithm of the deciding policy.")
    policy_version: str = Field(
        description="Version label of the deciding policy, e.g. llm-router/3 or local/fresh."
    )
    served_by: ServedBy = Field(
        description="champion, challenger (canary), or static_default when no model is loaded."
    )
    fallback: bool = Field(
        default=False, description="True when a static default answered instead of a policy."
    )
    predicted_cost_usd: float | None = Field(
        default=None, description="Predicted cost of the call (what the budget reserves)."
    )
    explanation: Explanation | None = Field(
        default=None, description="Estimate, uncertainty bonus, penalty, whether it explored."
    )
    scores: dict[str, float] = Field(
        default_factory=dict, description="Per-model scores the policy compared."
    )
    notes: list[str] = Field(
        default_factory=list, description="Exclusions (caps, budget, circuit breaker), fallbacks."
    )
    shadow: ShadowDecision | None = Field(
        default=None, description="Shadow mode only: the challenger's (unserved) choice."
    )
    features: FeatureStatus | None = Field(
        default=None, description="Online features used (model, tenant and fleet statistics)."
    )
    plan: list[PlanStep] | None = Field(
        default=None,
        description=(
            'mode "cascade" only: the steps to try in order; the last is the policy\'s choice '
            "(the top-level model and decision_id). Quote each step's decision_id in /feedback."
        ),
    )
    created_at: datetime = Field(description="When the decision was made (UTC).")


class DecideBatchRequest(BaseModel):
    """Several requests decided in one call (each independently)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {"requests": [EXAMPLE_DECIDE]}}
    )

    requests: list[RequestContext] = Field(
        min_length=1, max_length=256, description="Up to 256 requests."
    )


class BatchItemError(BaseModel):
    """Why one request of a batch got no decision."""

    index: int = Field(description="Position of the request in the batch.")
    status: int = Field(description="The HTTP status /decide would have answered.")
    message: str = Field(description="The reason.")


class DecideBatchResponse(BaseModel):
    """Decisions in request order; refused requests are listed in ``errors``."""

    decisions: list[DecideResponse | None] = Field(
        description="One entry per request; null where the request was refused."
    )
    errors: list[BatchItemError] = Field(default_factory=list, description="Refused requests.")


class FeedbackRequest(Feedback):
    """What the client observed; give one of quality, thumbs or rating, or an error_kind."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": EXAMPLE_FEEDBACK})


class FeedbackResponse(BaseModel):
    """The feedback was stored now (and learned from) or had been stored before."""

    status: Literal["stored", "duplicate", "spooled"] = Field(
        description=(
            "stored; duplicate (ignored); or spooled: accepted and learned from while the event "
            "log's database is down, kept in a durable local spool and stored when it returns."
        )
    )
    decision_id: str = Field(description="The decision the feedback is for.")
    reward: float | None = Field(
        description=(
            "Reward computed from quality, cost and latency; null when the feedback was spooled "
            "before its decision could be looked up (the event log's database is down and this "
            "worker never saw the decision): it is checked, stored and learned when the "
            "database returns."
        )
    )
    feedback_id: int | None = Field(default=None, description="Row id in the event log.")


class TrafficRequest(BaseModel):
    """Set how traffic is split between the champion (prod) and the challenger (staging)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": EXAMPLE_TRAFFIC})

    mode: TrafficMode = Field(
        description="champion: champion only; canary: the challenger serves canary_percent of "
        "tenants (sticky by hash); shadow: the challenger decides too, logged, not served."
    )
    canary_percent: float = Field(
        default=0.0, ge=0, le=100, description="Canary only: share of tenants, in percent."
    )
    schedule: list[float] = Field(
        default_factory=list,
        max_length=20,
        description="Canary only: next shares in percent, increasing, e.g. [10, 50, 100].",
    )
    step_s: float = Field(
        default=600.0, gt=0, description="Canary only: seconds between schedule steps."
    )


class ServingStatus(BaseModel):
    """The models loaded and the traffic mode."""

    champion: str = Field(description="Version label of the champion.")
    challenger: str | None = Field(default=None, description="Version label of the challenger.")
    mode: TrafficMode = Field(description="Traffic mode.")
    canary_percent: float = Field(description="Canary share of tenants, in percent.")
    schedule: list[float] = Field(
        default_factory=list, description="Canary shares still to come, in percent."
    )
    fallback: bool = Field(description="True when a static default policy is serving.")
    features: str = Field(
        default="off", description="Online features: open, starting, unavailable or off."
    )
    changed: bool = Field(default=False, description="Reload only: whether a model was swapped.")
    elapsed_ms: float = Field(default=0.0, description="Reload only: time to load and swap.")
    notes: list[str] = Field(default_factory=list, description="What happened, e.g. a rollback.")


class ReloadRequest(BaseModel):
    """Reload the champion and challenger from the model source (by alias)."""

    model_config = ConfigDict(extra="forbid")

    force: bool = Field(default=False, description="Reload even if the versions did not change.")
