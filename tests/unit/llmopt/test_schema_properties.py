"""Property tests of the domain records (Hypothesis, derandomized: the same cases in every run).

- Any JSON-able input either validates or raises ``pydantic.ValidationError``, never another
  exception (what the service and the CLI turn into a 400 / one clear line).
- Every valid record survives ``model_dump_json`` -> ``model_validate_json`` unchanged.
- ``Feedback.normalized_quality()`` is in [0, 1] for every valid feedback.
- The documented limits hold (lengths, ranges, finiteness, NUL-free ids).
"""

from __future__ import annotations

import math
from datetime import UTC
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from llmopt.schemas import (
    MAX_FEATURE,
    MAX_TOKENS,
    Decision,
    ErrorKind,
    Explanation,
    Feedback,
    RequestContext,
)

FAST = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# -- any JSON ----------------------------------------------------------------------------------
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and +-inf too: Python's JSON reader accepts NaN / Infinity
    | st.text(max_size=12)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def near_valid(
    model: type[BaseModel], good: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts over the model's own fields (required ones mostly present, so that validation
    gets past them), each value valid for its field 9 times in 10, else any JSON; some with
    an extra key."""

    def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.integers(0, 9).flatmap(lambda n: JSON if n == 0 else valid)

    fields = {name: mostly(good.get(name, JSON)) for name in model.model_fields}
    required = {n for n, f in model.model_fields.items() if f.is_required()}
    base = st.fixed_dictionaries(
        {n: v for n, v in fields.items() if n in required},
        optional={n: v for n, v in fields.items() if n not in required},
    )
    extra = st.dictionaries(st.text(max_size=8), JSON, min_size=1, max_size=1)
    with_extra = st.tuples(base, extra).map(lambda both: {**both[0], **both[1]})
    return st.integers(0, 3).flatmap(lambda n: with_extra if n == 0 else base)


# -- valid values ------------------------------------------------------------------------------
TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)
ID = TEXT.filter(bool)
POSITIVE = st.floats(min_value=1e-300, max_value=1e300)
UNIT = st.floats(min_value=0, max_value=1)

CONTEXT_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "tenant": st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
        min_size=1,
        max_size=200,
    ),
    "prompt": st.none() | st.text(max_size=200),
    "task_hints": st.lists(TEXT, max_size=32),
    "max_cost_usd": st.none() | POSITIVE,
    "max_latency_ms": st.none() | POSITIVE,
    "willingness_to_pay": st.none() | st.floats(min_value=1e-9, max_value=1e300),
    "latency_weight": st.none() | st.floats(min_value=0, max_value=1000),
    "features": st.dictionaries(
        TEXT, st.floats(min_value=-MAX_FEATURE, max_value=MAX_FEATURE) | TEXT, max_size=8
    ),
    "models": st.none() | st.lists(ID.filter(lambda s: len(s) <= 200), min_size=1, max_size=8),
}
FEEDBACK_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "decision_id": st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=64
    ),
    "quality": UNIT,
    "thumbs": st.sampled_from(["up", "down"]),
    "rating": st.integers(1, 5),
    "input_tokens": st.none() | st.integers(0, MAX_TOKENS),
    "output_tokens": st.none() | st.integers(0, MAX_TOKENS),
    "latency_ms": st.none() | st.floats(min_value=0, max_value=86_400_000),
    "cost_usd": st.none() | st.floats(min_value=0, max_value=10_000),
    "error_kind": st.sampled_from(list(ErrorKind)),
}
EXPLANATION = st.builds(
    Explanation,
    estimate=st.floats(allow_nan=False, allow_infinity=False),
    uncertainty_bonus=st.floats(allow_nan=False, allow_infinity=False),
    penalty=st.floats(allow_nan=False, allow_infinity=False),
    expected_reward=st.floats(allow_nan=False, allow_infinity=False),
    explored=st.booleans(),
    reason=st.sampled_from(["greedy", "optimism", "random exploration", "burn-in"]),
)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
DECISION_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "decision_id": st.text(min_size=1, max_size=64),
    "model": ID,
    "parameters": st.dictionaries(TEXT, FINITE | st.integers(-(2**40), 2**40) | TEXT, max_size=4),
    "propensity": st.floats(min_value=1e-300, max_value=1),
    "policy_name": TEXT,
    "policy_version": TEXT,
    "scores": st.dictionaries(ID, FINITE, max_size=4),
    "notes": st.lists(TEXT, max_size=3),
    "explanation": st.none() | EXPLANATION,
    "created_at": st.datetimes(timezones=st.just(UTC)),
}


def valid_contexts() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"tenant": CONTEXT_FIELDS["tenant"]},
        optional={k: v for k, v in CONTEXT_FIELDS.items() if k != "tenant"},
    )


def valid_feedback() -> st.SearchStrategy[dict[str, Any]]:
    signal = st.sampled_from(["quality", "thumbs", "rating", "error_kind"])
    rest = {k: v for k, v in FEEDBACK_FIELDS.items() if k.endswith(("tokens", "_ms", "_usd"))}

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        body = draw(
            st.fixed_dictionaries({"decision_id": FEEDBACK_FIELDS["decision_id"]}, optional=rest)
        )
        chosen = draw(signal)
        body[chosen] = draw(FEEDBACK_FIELDS[chosen])
        if chosen != "error_kind" and draw(st.booleans()):
            body["error_kind"] = draw(FEEDBACK_FIELDS["error_kind"])
        return body

    return build()


def valid_decisions() -> st.SearchStrategy[dict[str, Any]]:
    required = ("model", "propensity", "policy_name")
    return st.fixed_dictionaries(
        {k: DECISION_FIELDS[k] for k in required},
        optional={k: v for k, v in DECISION_FIELDS.items() if k not in required},
    )


# -- any input: validates or ValidationError ---------------------------------------------------
def validates_or_refuses(model: type[BaseModel], data: object) -> BaseModel | None:
    try:
        return model.model_validate(data)
    except ValidationError:
        return None


@FAST
@given(st.one_of(JSON, near_valid(RequestContext, CONTEXT_FIELDS)))
def test_any_json_is_a_request_context_or_a_validation_error(data: object) -> None:
    ctx = validates_or_refuses(RequestContext, data)
    if isinstance(ctx, RequestContext):
        assert all(math.isfinite(v) for v in ctx.features.values() if isinstance(v, float))


@FAST
@given(st.one_of(JSON, near_valid(Feedback, FEEDBACK_FIELDS)))
def test_any_json_is_a_feedback_or_a_validation_error(data: object) -> None:
    fb = validates_or_refuses(Feedback, data)
    if isinstance(fb, Feedback):
        assert 0.0 <= fb.normalized_quality() <= 1.0


@FAST
@given(st.one_of(JSON, near_valid(Decision, DECISION_FIELDS)))
def test_any_json_is_a_decision_or_a_validation_error(data: object) -> None:
    validates_or_refuses(Decision, data)


@FAST
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_text_is_json_for_a_record_or_a_validation_error(raw: str) -> None:
    for model in (RequestContext, Feedback, Decision):
        try:
            model.model_validate_json(raw)
        except ValidationError:
            pass


# -- valid records round-trip ------------------------------------------------------------------
@FAST
@given(valid_contexts())
def test_valid_request_contexts_round_trip_through_json(data: dict[str, Any]) -> None:
    ctx = RequestContext.model_validate(data)
    assert RequestContext.model_validate_json(ctx.model_dump_json()) == ctx


@FAST
@given(valid_feedback())
def test_valid_feedback_round_trips_and_its_quality_is_in_the_unit_interval(
    data: dict[str, Any],
) -> None:
    fb = Feedback.model_validate(data)
    assert Feedback.model_validate_json(fb.model_dump_json()) == fb
    q = fb.normalized_quality()
    assert 0.0 <= q <= 1.0
    if fb.error_kind is not None:
        assert q == 0.0


@FAST
@given(valid_decisions())
def test_valid_decisions_round_trip_through_json(data: dict[str, Any]) -> None:
    d = Decision.model_validate(data)
    assert Decision.model_validate_json(d.model_dump_json()) == d
    assert 0 < d.propensity <= 1


# -- limits ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tenant": ""}, "tenant"),
        ({"tenant": "t" * 201}, "tenant"),
        ({"tenant": "a\x00b"}, "tenant"),
        ({"prompt": "p" * 1_000_001}, "prompt"),
        ({"task_hints": ["x"] * 33}, "task_hints"),
        ({"features": {f"k{i}": 1.0 for i in range(257)}}, "features"),
        ({"features": {"x": float("nan")}}, "features.x"),
        ({"features": {"x": float("inf")}}, "features.x"),
        ({"features": {"x": MAX_FEATURE * 10}}, "features.x"),
        ({"features": {"x": [1]}}, "features.x"),
        ({"models": []}, "models"),
        ({"models": ["m"] * 501}, "models"),
        ({"models": [""]}, "models.0"),
        ({"models": ["m" * 201]}, "models.0"),
        ({"max_cost_usd": 0}, "max_cost_usd"),
        ({"max_cost_usd": float("inf")}, "max_cost_usd"),
        ({"max_latency_ms": -1}, "max_latency_ms"),
        ({"willingness_to_pay": 1e-320}, "willingness_to_pay"),
        ({"willingness_to_pay": float("nan")}, "willingness_to_pay"),
        ({"latency_weight": -0.1}, "latency_weight"),
        ({"latency_weight": 1e308}, "latency_weight"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_request_context_limits(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        RequestContext.model_validate({"tenant": "acme", **change})
    locs = {".".join(str(p) for p in e["loc"][: field.count(".") + 1]) for e in info.value.errors()}
    assert field in locs, info.value


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"decision_id": ""}, "decision_id"),
        ({"decision_id": "d" * 65}, "decision_id"),
        ({"decision_id": "\x00"}, "decision_id"),
        ({"quality": 1.01}, "quality"),
        ({"quality": float("nan")}, "quality"),
        ({"rating": 6, "quality": None}, "rating"),
        ({"input_tokens": -1}, "input_tokens"),
        ({"input_tokens": MAX_TOKENS + 1}, "input_tokens"),
        ({"output_tokens": 2**64}, "output_tokens"),
        ({"latency_ms": float("inf")}, "latency_ms"),
        ({"latency_ms": 1e308}, "latency_ms"),
        ({"cost_usd": -0.01}, "cost_usd"),
        ({"cost_usd": 1e308}, "cost_usd"),
        ({"error_kind": "cosmic_rays"}, "error_kind"),
    ],
)
def test_feedback_limits(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Feedback.model_validate({"decision_id": "d", "quality": 0.5, **change})
    assert field in {str(e["loc"][0]) for e in info.value.errors()}, info.value


def test_the_largest_valid_values_are_accepted() -> None:
    ctx = RequestContext(
        tenant="t" * 200,
        task_hints=["h"] * 32,
        features={f"k{i}": MAX_FEATURE for i in range(256)},
        models=["m" * 200] * 500,
        willingness_to_pay=1e-9,
        latency_weight=1000,
    )
    assert len(ctx.features) == 256
    fb = Feedback(
        decision_id="d" * 64,
        quality=1.0,
        input_tokens=MAX_TOKENS,
        output_tokens=MAX_TOKENS,
        latency_ms=86_400_000,
        cost_usd=10_000,
    )
    assert fb.normalized_quality() == 1.0
