from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmopt.schemas import Decision, ErrorKind, Feedback, RequestContext


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"quality": 0.3}, 0.3),
        ({"thumbs": "up"}, 1.0),
        ({"thumbs": "down"}, 0.0),
        ({"rating": 1}, 0.0),
        ({"rating": 5}, 1.0),
        ({"rating": 3}, 0.5),
        ({"error_kind": "rate_limit"}, 0.0),
        ({"quality": 0.9, "error_kind": "timeout"}, 0.0),
    ],
)
def test_feedback_signals_map_to_unit_quality(kwargs: dict[str, object], expected: float) -> None:
    assert Feedback(decision_id="d", **kwargs).normalized_quality() == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"quality": 1.5},
        {"quality": -0.01},
        {"rating": 0},
        {"rating": 6},
        {"thumbs": "sideways"},
        {"quality": 0.5, "thumbs": "up"},
        {},
        {"quality": 0.5, "input_tokens": -1},
        {"quality": 0.5, "latency_ms": -3},
        {"quality": 0.5, "error_kind": "cosmic_rays"},
        {"quality": 0.5, "surprise": 1},
    ],
)
def test_bad_feedback_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Feedback(decision_id="d", **kwargs)  # type: ignore[arg-type]


def test_feedback_needs_a_decision_id() -> None:
    with pytest.raises(ValidationError):
        Feedback(decision_id="", quality=0.5)


def test_request_context_validation() -> None:
    ctx = RequestContext(tenant="t", features={"region": "eu", "priority": 2})
    assert ctx.features == {"region": "eu", "priority": 2}
    for bad in (
        {"tenant": ""},
        {"tenant": "t", "max_cost_usd": 0},
        {"tenant": "t", "max_latency_ms": -5},
        {"tenant": "t", "willingness_to_pay": 0},
        {"tenant": "t", "unknown": 1},
    ):
        with pytest.raises(ValidationError):
            RequestContext.model_validate(bad)


def test_decision_ids_are_unique_and_propensity_bounded() -> None:
    a = Decision(model="m", propensity=0.5, policy_name="p")
    b = Decision(model="m", propensity=0.5, policy_name="p")
    assert a.decision_id != b.decision_id and len(a.decision_id) == 32
    assert a.created_at.tzinfo is not None
    for p in (0.0, 1.5):
        with pytest.raises(ValidationError):
            Decision(model="m", propensity=p, policy_name="p")


def test_error_kinds_are_strings() -> None:
    assert Feedback(decision_id="d", error_kind=ErrorKind.TIMEOUT).error_kind == "timeout"
