"""Property tests of the service's request and response models (Hypothesis, derandomized).

Requests: any JSON body validates or raises ``ValidationError`` (BentoML answers 400 with the
field), a valid body means the same as the domain record it wraps, and the limits hold.
Responses: every valid response survives ``model_dump_json`` -> ``model_validate_json``, so a
client reading our JSON with these models never fails.
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from llmopt.schemas import Feedback, RequestContext
from serving.schemas import (
    EXAMPLE_DECIDE,
    EXAMPLE_DECIDE_FULL,
    EXAMPLE_FEEDBACK,
    EXAMPLE_TRAFFIC,
    BatchItemError,
    DecideBatchRequest,
    DecideBatchResponse,
    DecideRequest,
    DecideResponse,
    FeatureStatus,
    FeedbackRequest,
    FeedbackResponse,
    ReloadRequest,
    ServingStatus,
    ShadowDecision,
    TrafficRequest,
)

FAST = settings(
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
MODES = st.sampled_from(["champion", "canary", "shadow"])
PERCENT = st.floats(min_value=0, max_value=100)

REQUESTS: list[type[BaseModel]] = [
    DecideRequest,
    DecideBatchRequest,
    FeedbackRequest,
    TrafficRequest,
    ReloadRequest,
]


def fields_of(model: type[BaseModel], good: dict[str, st.SearchStrategy[Any]]) -> Any:
    """Bodies over the model's field names, each value good for it or any JSON."""
    return st.fixed_dictionaries(
        {}, optional={name: good.get(name, JSON) | JSON for name in model.model_fields}
    )


REQUEST_BODIES = {
    DecideRequest: fields_of(
        DecideRequest, {"tenant": TEXT, "prompt": TEXT, "max_cost_usd": FINITE}
    ),
    DecideBatchRequest: fields_of(
        DecideBatchRequest, {"requests": st.lists(st.just(EXAMPLE_DECIDE) | JSON, max_size=3)}
    ),
    FeedbackRequest: fields_of(
        FeedbackRequest, {"decision_id": TEXT, "quality": FINITE, "rating": st.integers(0, 6)}
    ),
    TrafficRequest: fields_of(
        TrafficRequest,
        {
            "mode": MODES | TEXT,
            "canary_percent": FINITE,
            "schedule": st.lists(FINITE, max_size=22),
            "step_s": FINITE,
        },
    ),
    ReloadRequest: fields_of(ReloadRequest, {"force": st.booleans()}),
}


@pytest.mark.parametrize("model", REQUESTS, ids=lambda m: m.__name__)
def test_any_json_body_validates_or_is_a_validation_error(model: type[BaseModel]) -> None:
    @FAST
    @given(JSON | REQUEST_BODIES[model])
    def check(body: object) -> None:
        try:
            model.model_validate(body)
        except ValidationError:
            pass

    check()


@pytest.mark.parametrize("model", REQUESTS, ids=lambda m: m.__name__)
def test_any_bytes_are_a_body_or_a_validation_error(model: type[BaseModel]) -> None:
    """What BentoML does with the raw body: ``model_validate_json`` (bad JSON included)."""

    @FAST
    @given(st.binary(max_size=120) | JSON.map(lambda v: json.dumps(v).encode()))
    def check(raw: bytes) -> None:
        try:
            model.model_validate_json(raw)
        except ValidationError:
            pass

    check()


@FAST
@given(REQUEST_BODIES[DecideRequest])
def test_a_valid_decide_body_is_exactly_a_request_context(body: dict[str, Any]) -> None:
    try:
        request = DecideRequest.model_validate(body)
    except ValidationError:
        with pytest.raises(ValidationError):
            RequestContext.model_validate(body)
        return
    assert RequestContext.model_validate(body) == RequestContext(**request.model_dump())
    assert DecideRequest.model_validate_json(request.model_dump_json()) == request


@FAST
@given(REQUEST_BODIES[FeedbackRequest])
def test_a_valid_feedback_body_is_exactly_a_feedback(body: dict[str, Any]) -> None:
    try:
        request = FeedbackRequest.model_validate(body)
    except ValidationError:
        with pytest.raises(ValidationError):
            Feedback.model_validate(body)
        return
    assert 0.0 <= request.normalized_quality() <= 1.0
    assert FeedbackRequest.model_validate_json(request.model_dump_json()) == request


@FAST
@given(
    mode=MODES,
    canary_percent=PERCENT,
    schedule=st.lists(PERCENT, max_size=20),
    step_s=st.floats(min_value=1e-6, max_value=1e9),
)
def test_valid_traffic_requests_round_trip(
    mode: str, canary_percent: float, schedule: list[float], step_s: float
) -> None:
    t = TrafficRequest.model_validate(
        {"mode": mode, "canary_percent": canary_percent, "schedule": schedule, "step_s": step_s}
    )
    assert TrafficRequest.model_validate_json(t.model_dump_json()) == t


def test_the_examples_are_valid_bodies() -> None:
    DecideRequest.model_validate(EXAMPLE_DECIDE)
    DecideRequest.model_validate(EXAMPLE_DECIDE_FULL)
    FeedbackRequest.model_validate(EXAMPLE_FEEDBACK)
    TrafficRequest.model_validate(EXAMPLE_TRAFFIC)
    DecideBatchRequest.model_validate({"requests": [EXAMPLE_DECIDE] * 256})
    ReloadRequest.model_validate({})


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [
        (DecideBatchRequest, {"requests": []}, "requests"),
        (DecideBatchRequest, {"requests": [EXAMPLE_DECIDE] * 257}, "requests"),
        (DecideBatchRequest, {"requests": [{"tenant": "a", "x": 1}]}, "requests"),
        (DecideBatchRequest, {"requests": [EXAMPLE_DECIDE], "more": 1}, "more"),
        (TrafficRequest, {"mode": "sideways"}, "mode"),
        (TrafficRequest, {"mode": "canary", "canary_percent": 100.5}, "canary_percent"),
        (TrafficRequest, {"mode": "canary", "canary_percent": float("nan")}, "canary_percent"),
        (TrafficRequest, {"mode": "canary", "schedule": [1.0] * 21}, "schedule"),
        (TrafficRequest, {"mode": "canary", "step_s": 0}, "step_s"),
        (ReloadRequest, {"force": "maybe"}, "force"),
        (ReloadRequest, {"hard": True}, "hard"),
        (DecideRequest, {"tenant": "a", "requests": []}, "requests"),
        (FeedbackRequest, {"decision_id": "d", "quality": 0.5, "extra": 1}, "extra"),
    ],
)
def test_request_limits(model: type[BaseModel], body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    assert field in {str(e["loc"][0]) for e in info.value.errors()}, info.value


# -- responses ---------------------------------------------------------------------------------
EXPLANATION = st.fixed_dictionaries(
    {
        "estimate": FINITE,
        "uncertainty_bonus": FINITE,
        "expected_reward": FINITE,
        "explored": st.booleans(),
        "reason": st.sampled_from(["greedy", "optimism", "random exploration", "burn-in"]),
    },
    optional={"penalty": FINITE},
)
DECIDE_RESPONSE = st.builds(
    DecideResponse,
    decision_id=TEXT,
    model=TEXT,
    parameters=st.dictionaries(TEXT, FINITE | st.integers(-(2**40), 2**40) | TEXT, max_size=3),
    propensity=st.floats(min_value=1e-9, max_value=1),
    policy_name=TEXT,
    policy_version=TEXT,
    served_by=st.sampled_from(["champion", "challenger", "static_default"]),
    fallback=st.booleans(),
    predicted_cost_usd=st.none() | st.floats(min_value=0, max_value=1e6),
    explanation=st.none() | EXPLANATION,
    scores=st.dictionaries(TEXT, FINITE, max_size=3),
    notes=st.lists(TEXT, max_size=3),
    shadow=st.none()
    | st.builds(
        ShadowDecision,
        model=TEXT,
        propensity=st.floats(min_value=1e-9, max_value=1),
        decision_id=TEXT,
        policy_version=TEXT,
    ),
    features=st.none()
    | st.builds(
        FeatureStatus,
        state=st.sampled_from(["open", "starting", "unavailable", "off"]),
        degraded=st.booleans(),
        reason=TEXT,
        read_ms=st.floats(min_value=0, max_value=1e6),
    ),
    created_at=st.datetimes(timezones=st.just(UTC)),
)
RESPONSES: dict[str, st.SearchStrategy[BaseModel]] = {
    "DecideResponse": DECIDE_RESPONSE,
    "DecideBatchResponse": st.builds(
        DecideBatchResponse,
        decisions=st.lists(st.none() | DECIDE_RESPONSE, max_size=3),
        errors=st.lists(
            st.builds(
                BatchItemError,
                index=st.integers(0, 255),
                status=st.sampled_from([400, 402, 503]),
                message=TEXT,
            ),
            max_size=2,
        ),
    ),
    "FeedbackResponse": st.builds(
        FeedbackResponse,
        status=st.sampled_from(["stored", "duplicate", "spooled"]),
        decision_id=TEXT,
        reward=FINITE,
        feedback_id=st.none() | st.integers(1, 2**62),
    ),
    "ServingStatus": st.builds(
        ServingStatus,
        champion=TEXT,
        challenger=st.none() | TEXT,
        mode=MODES,
        canary_percent=PERCENT,
        schedule=st.lists(PERCENT, max_size=3),
        fallback=st.booleans(),
        features=st.sampled_from(["open", "starting", "unavailable", "off"]),
        changed=st.booleans(),
        elapsed_ms=st.floats(min_value=0, max_value=1e6),
        notes=st.lists(TEXT, max_size=3),
    ),
}


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_responses_round_trip_through_json(name: str) -> None:
    @FAST
    @given(RESPONSES[name])
    def check(response: BaseModel) -> None:
        again = type(response).model_validate_json(response.model_dump_json())
        assert again == response

    check()
