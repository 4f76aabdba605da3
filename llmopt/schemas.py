"""Typed request, decision and feedback records: the language every component speaks.

Examples
--------
>>> ctx = RequestContext(tenant="acme", prompt="What is 2 + 2?", task_hints=["math"])
>>> ctx.tenant, ctx.max_cost_usd
('acme', None)
>>> Feedback(decision_id="d1", rating=4).normalized_quality()
0.75
>>> Feedback(decision_id="d1", thumbs="down").normalized_quality()
0.0
>>> Feedback(decision_id="d1", error_kind="timeout").normalized_quality()
0.0
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
    model_validator,
)

from llmopt.types import ArmID, DecisionID, TenantID

_ID_BATCH = 64
"""Random parts of decision ids drawn from the operating system at once (one system call)."""
_ids: list[str] = []


def new_decision_id() -> DecisionID:
    """A fresh, globally unique decision id: 32 hex characters, the time of issue in
    milliseconds (12) then 80 random bits (20), as a UUIDv7 orders its bits.

    Ids sort by when they were issued, so the event log's primary-key index receives them at
    its right edge. Random ids spread each group commit over pages all across the index, and the
    table grows by hundreds of MB an hour at 500 decisions/s: ``python -m bench decision_ids``
    (300,000 rows in groups of 8) measured the last sixth's commits x1.6-2.0 faster on average
    and x4-5 shorter at p99 with these ids (``bench/results/decision_ids.json``). The id
    reveals when the decision was made, which its ``created_at`` says anyway.

    The random bits come from ``os.urandom``, 64 ids' worth per system call: ``list.pop`` hands
    each to one caller only, even across threads, and a forked child drops the bits its parent
    had drawn (it would hand out the same ones).

    >>> a, b = new_decision_id(), new_decision_id()
    >>> len(a), a != b, int(a, 16) >= 0
    (32, True, True)
    """
    try:
        random_part = _ids.pop()
    except IndexError:
        batch = os.urandom(10 * _ID_BATCH).hex()
        _ids.extend(batch[k : k + 20] for k in range(20, len(batch), 20))
        random_part = batch[:20]
    return f"{time.time_ns() // 1_000_000:012x}{random_part}"


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_ids.clear)


def utc_now() -> datetime:
    """Timezone-aware current time in UTC."""
    return datetime.now(UTC)


NO_NUL = r"^[^\x00]*$"
"""Pattern of ids the event log stores: PostgreSQL refuses NUL (0x00) in text columns."""

MAX_FEATURE = 1e12
"""Largest client feature magnitude: beyond ~1e154 ``x x'`` overflows and poisons the policy."""

MAX_TOKENS = 2**31 - 1
"""Token counts are a 32-bit INTEGER column in the event log (PostgreSQL)."""


class RequestContext(BaseModel):
    """What a client tells us about one LLM request before it is sent."""

    # No inf/NaN: JSON has no spelling for them (pydantic writes null), so they would not
    # survive the event log, and Python's JSON reader accepts them as Infinity/NaN.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    tenant: TenantID = Field(
        min_length=1, max_length=200, pattern=NO_NUL, description="Tenant (team, app) id."
    )
    prompt: str | None = Field(
        default=None,
        max_length=1_000_000,
        description="Prompt text; used for request features only, not stored unless opted in.",
    )
    task_hints: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Client-side task labels, e.g. 'code', 'math', 'summarize', 'chat'.",
    )
    max_cost_usd: float | None = Field(
        default=None, gt=0, description="Hard cap on the predicted cost of this request (USD)."
    )
    max_latency_ms: float | None = Field(
        default=None, gt=0, description="Hard cap on the predicted latency of this request (ms)."
    )
    # Bounded so that cost / willingness_to_pay and latency_weight * latency stay finite:
    # 1e-320 or 1e308 made every penalty infinite and the policy fail (static fallback).
    willingness_to_pay: float | None = Field(
        default=None,
        ge=1e-9,
        description="USD this tenant pays for one unit of quality; defaults from settings.",
    )
    latency_weight: float | None = Field(
        default=None, ge=0, le=1000, description="Quality units lost per second of latency."
    )
    features: dict[str, Annotated[float, Field(ge=-MAX_FEATURE, le=MAX_FEATURE)] | str] = Field(
        default_factory=dict,
        max_length=256,
        description=(
            "Arbitrary client features: numbers (|x| <= 1e12) are used as-is, strings one-hot "
            "encoded."
        ),
    )
    models: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description=(
            "Choose only among these models (the ones this client can call); default: every "
            "model the router serves. Unknown names are ignored; none known is an error."
        ),
    )
    mode: Literal["single", "cascade"] = Field(
        default="single",
        description=(
            "single: one model; cascade: also a plan, a cheap model first and when to escalate "
            "(serving only)."
        ),
    )


class Explanation(BaseModel):
    """Why a policy chose its arm, in reward units (higher is better)."""

    model_config = ConfigDict(extra="forbid")

    estimate: float = Field(description="Predicted learned target (quality or reward) of the arm.")
    uncertainty_bonus: float = Field(
        description="Optimism (UCB width or Thompson draw minus mean) added to the estimate."
    )
    penalty: float = Field(
        default=0.0, description="Predicted cost and latency, in reward units, subtracted."
    )
    expected_reward: float = Field(description="estimate - penalty: what exploitation ranks by.")
    explored: bool = Field(
        description="True when the chosen arm is not the one with the best expected reward."
    )
    reason: str = Field(description="'greedy', 'optimism', 'random exploration' or 'burn-in'.")


class Decision(BaseModel):
    """A policy's choice for one request, with what off-policy evaluation needs (the propensity)."""

    model_config = ConfigDict(extra="forbid")

    decision_id: DecisionID = Field(default_factory=new_decision_id, min_length=1, max_length=64)
    model: ArmID = Field(description="The chosen model (arm).")
    parameters: dict[str, float | int | str] = Field(
        default_factory=dict,
        description="Generation parameters: temperature, max_tokens, template.",
    )
    parameters_reason: str = Field(
        default="", description="Why these parameters: catalog default, safe default or tuned."
    )
    propensity: float = Field(
        gt=0, le=1, description="Probability with which the policy chose this model."
    )
    policy_name: str = Field(description="Name of the policy that decided.")
    policy_version: str = Field(default="0", description="Version of that policy's state.")
    scores: dict[ArmID, float] = Field(
        default_factory=dict, description="Per-arm scores the policy compared (explanation)."
    )
    notes: list[str] = Field(
        default_factory=list, description="Why arms were excluded or a fallback answered."
    )
    explanation: Explanation | None = Field(
        default=None, description="Expected reward, uncertainty bonus, whether it explored."
    )
    created_at: datetime = Field(default_factory=utc_now)

    # -- deferred fields ---------------------------------------------------------------------
    # A policy decides thousands of times a second and most decisions are never explained:
    # ``deferred`` builds one whose scores, explanation and timestamp are computed on first
    # read, from numbers the policy kept. Every way of reading a decision (attributes,
    # serialisation, equality, iteration, repr, pickling) fills them in first, so no reader can
    # tell a deferred decision from one built whole. Copies share the pending numbers.

    @classmethod
    def deferred(
        cls, values: dict[str, Any], fill: Callable[[], dict[str, Any]], fields_set: set[str]
    ) -> Self:
        """A decision built without validation, some of its fields computed on first read.

        ``values`` are the fields known now (already valid, as for ``model_construct``; no
        defaults are filled in; the dict becomes the decision's own); ``fill()`` returns the
        others (any of scores, explanation, created_at), computed from numbers that must not
        change afterwards. ``fields_set`` is what ``model_fields_set`` reports.

        >>> d = Decision.deferred(
        ...     {"decision_id": "d1", "model": "a", "parameters": {}, "parameters_reason": "",
        ...      "propensity": 1.0, "policy_name": "doc", "policy_version": "0", "notes": []},
        ...     lambda: {"scores": {"a": 0.5}, "explanation": None, "created_at": utc_now()},
        ...     {"model", "propensity", "policy_name", "scores", "explanation", "created_at"},
        ... )
        >>> d.scores, list(d.model_dump())[-4:]
        ({'a': 0.5}, ['scores', 'notes', 'explanation', 'created_at'])
        """
        decision = cls.__new__(cls)
        setattr_ = object.__setattr__
        setattr_(decision, "__dict__", values)
        setattr_(decision, "__pydantic_fields_set__", fields_set)
        setattr_(decision, "__pydantic_extra__", None)
        setattr_(decision, "__pydantic_private__", {_FILL: fill})
        return decision

    def _fill(self) -> None:
        """Compute the deferred fields (if any), keeping the fields' order."""
        private = object.__getattribute__(self, "__pydantic_private__")
        if not private or _FILL not in private:
            return
        fill = private[_FILL]
        known = self.__dict__
        computed = fill()
        values = {
            name: known[name] if name in known else computed[name]
            for name in type(self).model_fields
            if name in known or name in computed
        }
        object.__setattr__(self, "__dict__", values)
        object.__setattr__(self, "__pydantic_private__", None)

    if not TYPE_CHECKING:  # as pydantic does: mypy keeps checking attribute names

        def __getattr__(self, name: str) -> Any:
            if name in _DEFERRABLE:
                self._fill()
                if name in self.__dict__:
                    return self.__dict__[name]
            return super().__getattr__(name)

    @model_serializer(mode="wrap")
    def _serialize_filled(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        # No return annotation: one would replace the decision's JSON schema with its own.
        self._fill()
        return handler(self)

    def __eq__(self, other: object) -> bool:
        self._fill()
        if isinstance(other, Decision):
            other._fill()
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # as BaseModel's: a mutable model, unhashable

    def __iter__(self) -> Generator[tuple[str, Any]]:
        self._fill()
        yield from super().__iter__()

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        self._fill()
        yield from super().__repr_args__()

    def __getstate__(self) -> dict[Any, Any]:
        self._fill()
        return super().__getstate__()


_FILL = "_deferred_fill"
"""Key of a deferred decision's pending computation in its (pydantic) private storage."""
_DEFERRABLE = frozenset({"scores", "explanation", "created_at"})
"""Fields a deferred decision may compute on first read."""


class ErrorKind(StrEnum):
    """Why an LLM call failed, as reported by the client."""

    TIMEOUT = "timeout"
    RATE_LIMIT = "rate_limit"
    SERVER_ERROR = "server_error"
    CONTENT_FILTER = "content_filter"
    CONTEXT_LENGTH = "context_length"
    OTHER = "other"


class Feedback(BaseModel):
    """What the client observed once the LLM answered (or failed), possibly much later."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    decision_id: DecisionID = Field(min_length=1, max_length=64, pattern=NO_NUL)
    quality: float | None = Field(default=None, ge=0, le=1, description="Quality score in [0, 1].")
    thumbs: Literal["up", "down"] | None = Field(default=None, description="Thumbs up or down.")
    rating: int | None = Field(default=None, ge=1, le=5, description="1-5 star rating.")
    input_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    output_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    # Upper bounds keep the reward finite: a cost of 1e308 made it -inf and broke the policy.
    latency_ms: float | None = Field(
        default=None, ge=0, le=86_400_000, description="Observed latency (at most a day)."
    )
    cost_usd: float | None = Field(
        default=None,
        ge=0,
        le=10_000,
        description="Observed cost (at most 10,000 USD); computed from the catalog when absent.",
    )
    error_kind: ErrorKind | None = Field(default=None, description="Set when the call failed.")

    @model_validator(mode="after")
    def _one_quality_signal(self) -> Feedback:
        given = [n for n in ("quality", "thumbs", "rating") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of quality, thumbs or rating, not {' and '.join(given)}")
        if not given and self.error_kind is None:
            raise ValueError("feedback needs quality, thumbs, rating, or an error_kind")
        return self

    def with_measurements(self, call: Mapping[str, Any] | None) -> Feedback:
        """This feedback with what a gateway measured of the call (``latency_ms``,
        ``input_tokens``, ``output_tokens``, ``cost_usd``) filled in where it says nothing.

        >>> fb = Feedback(decision_id="d", quality=0.9, latency_ms=500.0)
        >>> done = fb.with_measurements({"latency_ms": 800.0, "cost_usd": 0.002})
        >>> done.latency_ms, done.cost_usd
        (500.0, 0.002)
        """
        if not call:
            return self
        update = {
            k: call[k]
            for k in ("latency_ms", "input_tokens", "output_tokens", "cost_usd")
            if getattr(self, k) is None and call.get(k) is not None
        }
        return self.model_copy(update=update) if update else self

    def normalized_quality(self) -> float:
        """The quality signal mapped to [0, 1]; a failed call counts as quality 0."""
        if self.error_kind is not None:
            return 0.0
        if self.quality is not None:
            return self.quality
        if self.thumbs is not None:
            return 1.0 if self.thumbs == "up" else 0.0
        assert self.rating is not None  # guaranteed by the validator
        return (self.rating - 1) / 4
