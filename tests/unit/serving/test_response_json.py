"""The fast path writes /decide's answer directly (``response_json``): the very bytes of the
response model's JSON, for every kind of decision."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from feature_store.reader import RouterFeatures
from llmopt.catalog import load_catalog
from llmopt.event_log import EventLog
from llmopt.schemas import RequestContext
from models.kinds import RECOMMENDED, make_policy
from serving.router import Routed, Router
from serving.schemas import BatchItemError, DecideBatchResponse
from serving.service import batch_response_json, response_json, to_response


def _same(routed: Routed, state: str = "open") -> str:
    direct = response_json(routed, state)
    assert direct == to_response(routed, state).model_dump_json().encode()
    return direct.decode()


@pytest.fixture
def router() -> Router:
    r = Router(load_catalog(), EventLog("sqlite://"))
    r.swap(champion=(make_policy(RECOMMENDED, seed=3), "v1"))
    return r


def test_the_same_bytes_as_the_response_model_for_every_kind_of_decision(router: Router) -> None:
    requests = [
        RequestContext(tenant="acme", prompt="What is 2 + 2?"),
        RequestContext(tenant="acme", prompt="Write a haiku.", task_hints=["creative"]),
        RequestContext(tenant="acme", prompt="Sum 1..9", max_cost_usd=1e-6),  # notes
        RequestContext(tenant="acme", prompt="x" * 40, max_latency_ms=10, willingness_to_pay=5),
        RequestContext(tenant="acme", prompt="Prove it.", mode="cascade"),  # a plan
        RequestContext(tenant="acme"),  # no prompt
    ]
    kinds = set()
    for i in range(60):
        routed = router.decide(requests[i % len(requests)])
        text = _same(routed, state=("open", "off", "starting", "unavailable")[i % 4])
        kinds.add((routed.plan is not None, bool(routed.decision.notes)))
        assert '"created_at":"' in text and text.endswith('Z"}')
    assert (True, True) in kinds and (False, True) in kinds  # plans and notes were covered


def test_the_same_bytes_with_features_shadow_static_default_and_odd_numbers(
    router: Router,
) -> None:
    ctx = RequestContext(tenant="acme", prompt="What is 2 + 2?")
    routed = router.decide(ctx)
    features = RouterFeatures(values={}, degraded=True, reason="store late", elapsed_ms=3.25)
    _same(dataclasses.replace(routed, features=features))
    on_the_second = routed.decision.model_copy(
        update={
            "created_at": datetime(2026, 12, 6, 10, 0, 0, tzinfo=UTC),  # no microseconds
            "propensity": 1 / 3,
            "scores": {"a": float("inf"), "b": -0.0, "c": 1e-300},
            "parameters": {"temperature": 0.7, "max_tokens": 1024, "prompt_template": "plain"},
        }
    )
    _same(dataclasses.replace(routed, decision=on_the_second, predicted_cost_usd=None))
    router.swap(challenger=(make_policy(RECOMMENDED, seed=4), "v2"))
    router.set_traffic("shadow")
    shadowed = router.decide(ctx)
    assert shadowed.shadow is not None
    _same(shadowed)
    static = Router(load_catalog(), EventLog("sqlite://")).decide(ctx)  # nothing loaded
    assert static.slot.role == "static_default"
    _same(static)


def test_a_batch_answer_is_the_batch_models_bytes(router: Router) -> None:
    routed = [
        router.decide(RequestContext(tenant="acme", prompt=p, mode=m))
        for p, m in (("What is 2 + 2?", "single"), ("Prove it.", "cascade"))
    ]
    errors = [BatchItemError(index=1, status=402, message='budget: "acme" spent')]
    items = [routed[0], None, routed[1]]
    expected = DecideBatchResponse(
        decisions=[to_response(r, "open") if r is not None else None for r in items],
        errors=errors,
    ).model_dump_json()
    assert batch_response_json(items, errors, "open") == expected.encode()
    empty = DecideBatchResponse(decisions=[], errors=[]).model_dump_json().encode()
    assert batch_response_json([], [], "open") == empty
