from __future__ import annotations

from collections.abc import Callable

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


def _policy_decision() -> Decision:
    from models.kinds import make_policy  # noqa: PLC0415 - the policies build deferred decisions

    policy = make_policy("cost_aware_linucb", seed=3)
    arms = ["a", "b", "c"]
    for k in range(12):
        d = policy.pull(arms, {"x": k / 12})
        policy.update(d.model, {"x": k / 12}, float(d.model == "b"))
    return policy.pull(arms, {"x": 0.5}, penalties={"a": 0.1})


def _whole(d: Decision) -> Decision:
    """The same decision, validated from its values: every field computed now."""
    return Decision.model_validate(d.model_dump())


def test_a_deferred_decision_serialises_exactly_like_one_built_whole() -> None:
    d = _policy_decision()
    assert "scores" not in d.__dict__  # computed on first read only
    text = d.model_dump_json()  # the first read is the serialisation
    whole = _whole(d)
    assert text == whole.model_dump_json()
    assert list(d.model_dump()) == list(Decision.model_fields)
    assert d.model_fields_set == whole.model_fields_set - {"parameters_reason"}


def test_every_way_of_reading_a_deferred_decision_fills_it_in() -> None:
    import copy  # noqa: PLC0415
    import pickle  # noqa: PLC0415

    from pydantic import BaseModel  # noqa: PLC0415

    class Wrapper(BaseModel):
        decision: Decision

    readers: dict[str, Callable[[Decision], object]] = {
        "attribute": lambda d: (d.explanation, d.scores, d.created_at),
        "dict": dict,
        "repr": repr,
        "eq": lambda d: d == d.model_copy(),
        "pickle": lambda d: pickle.loads(pickle.dumps(d)),
        "copy": copy.copy,
        "deepcopy": copy.deepcopy,
        "model_copy": lambda d: d.model_copy(update={"notes": ["x"]}),
        "nested": lambda d: Wrapper(decision=d).model_dump(),
        "json": lambda d: d.model_dump_json(),
    }
    for name, read in readers.items():
        d = _policy_decision()
        out = read(d)
        if isinstance(out, Decision):  # a copy made before the fill fills in alike
            same = out.model_copy(update={"notes": d.notes}) if name == "model_copy" else out
            assert same == d, name
            assert out.explanation == d.explanation and out.scores == d.scores, name
        whole = _whole(d)
        assert d == whole and whole == d, name
        assert d.explanation is not None and d.explanation.reason, name
        assert set(d.scores) == {"a", "b", "c"}, name
        assert "explanation=" in repr(d) and dict(d)["scores"] == d.scores, name
        assert Wrapper(decision=d).model_dump()["decision"] == whole.model_dump(), name


def test_a_field_set_before_the_fill_is_kept_in_its_place() -> None:
    d = _policy_decision()
    d.explanation = None
    assert d.explanation is None and d.scores  # the others are still computed
    assert list(d.model_dump()) == list(Decision.model_fields)
    assert d.model_dump()["explanation"] is None


def test_decision_ids_sort_by_their_time_of_issue() -> None:
    import time  # noqa: PLC0415

    from llmopt.schemas import new_decision_id  # noqa: PLC0415

    before = time.time_ns() // 1_000_000
    first = new_decision_id()
    time.sleep(0.003)
    later = [new_decision_id() for _ in range(100)]  # across a refill of the random parts
    after = time.time_ns() // 1_000_000
    assert before <= int(first[:12], 16) <= after
    assert all(first < i for i in later) and len(set(later)) == 100


def test_decision_ids_stay_unique_across_threads_and_forks() -> None:
    import multiprocessing  # noqa: PLC0415
    import os  # noqa: PLC0415
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    from llmopt.schemas import new_decision_id  # noqa: PLC0415

    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(lambda _: [new_decision_id() for _ in range(500)], range(8)))
    ids = [i for batch in batches for i in batch]
    assert len(set(ids)) == len(ids) and all(len(i) == 32 for i in ids)
    if not hasattr(os, "fork"):
        return
    new_decision_id()  # the parent holds drawn ids
    ctx = multiprocessing.get_context("fork")
    queue = ctx.SimpleQueue()
    child = ctx.Process(target=lambda: queue.put([new_decision_id() for _ in range(3)]))
    child.start()
    child.join(30)
    in_child = queue.get()
    in_parent = [new_decision_id() for _ in range(3)]
    assert not set(in_child) & set(in_parent)  # the child drew its own
