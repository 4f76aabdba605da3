"""Decisions share per-shape work (a batch's ``Router.decide(memo=...)``, and single decisions
the router's own until something is learned) and stay exactly the decisions worked out alone:
same models, propensities, scores, parameters, notes and log rows."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from feature_store.reader import RouterFeatures
from llmopt.catalog import ModelCatalog, load_catalog
from llmopt.event_log import EventLog
from llmopt.features import request_features
from llmopt.schemas import Feedback, RequestContext
from models.cluster_thompson import ClusterThompson
from models.kinds import make_policy
from serving.guards import BudgetLedger
from serving.live_features import (
    ERROR_RATE,
    LATENCY_P95,
    REQUESTS_1H,
    TASK_QUALITY_24H,
    TASK_REQUESTS_24H,
)
from serving.router import BATCH, BatchPlan, Router

ARMS = ["gpt-4o", "gpt-4o-mini", "gpt-4.1-nano", "gpt-4.1", "gpt-3.5-turbo-0301"]


class FixedFeatures:
    """The online features: one read, the same for every decision (as the cache serves)."""

    def __init__(self, features: RouterFeatures) -> None:
        self.features = features

    def get(self, models: Sequence[str], *, tenant: str, task_type: str) -> RouterFeatures:
        return self.features


@pytest.fixture(scope="module")
def catalog() -> ModelCatalog:
    return load_catalog()


def _router(catalog: ModelCatalog, live: RouterFeatures | None, **kwargs: Any) -> Router:
    """A router serving a trained cost-aware cluster policy, the same for every call."""
    policy = make_policy("cost_aware_cluster_thompson", seed=7)
    rng = random.Random(0)
    for i in range(300):
        feats = request_features(f"Question {i}: what is {i} + {rng.randint(0, 99)}?")
        policy.update(ARMS[i % len(ARMS)], feats, rng.random())
    router = Router(catalog, EventLog("sqlite://"), arms=ARMS, **kwargs)
    router.swap(champion=(policy, "v1"))
    if live is not None:
        router.features = FixedFeatures(live)  # type: ignore[assignment]
    return router


def _requests() -> list[RequestContext]:
    out = []
    for i in range(40):
        extra: dict[str, Any] = {}
        if i % 5 == 1:
            extra["willingness_to_pay"] = 0.5
        if i % 7 == 2:
            extra["latency_weight"] = 0.2
        if i % 9 == 3:
            extra["models"] = ["gpt-4o", "gpt-4o-mini"]
        if i % 11 == 4:
            extra["max_cost_usd"] = 0.0005  # a cap: decided alone
        prompt = f"Question {i}: explain step by step why {i} * {i + 3} is what it is. " * (
            1 + i % 4
        )
        if i == 20:
            prompt = "word " * 30_000  # too long for a 16k window: decided alone, with its note
        out.append(RequestContext(tenant="acme", prompt=prompt, **extra))
    return out


def _view(router: Router, routed: Any) -> dict[str, Any]:
    d = routed.decision
    row = router.event_log.get_decision(d.decision_id)
    context = {k: v for k, v in row["context"].items() if k != "prompt_sha256"}
    return {
        "model": d.model,
        "propensity": d.propensity,
        "policy": (d.policy_name, d.policy_version, row["policy_name"], row["policy_version"]),
        "scores": d.scores,
        "parameters": d.parameters,
        "notes": d.notes,
        "explanation": d.explanation.model_dump() if d.explanation else None,
        "predicted": routed.predicted_cost_usd,
        "row": (row["model"], row["propensity"], row["features"], context),
    }


def _decide_all(router: Router, requests: list[RequestContext], memo: dict | None) -> list:
    with router.event_log.deferred_writes(hold=True) as writes:
        routed = [router.decide(r, memo=memo) for r in requests]
    writes.wait()
    return [_view(router, r) for r in routed]


LIVE = RouterFeatures(
    values={
        "gpt-4o": {ERROR_RATE: 0.2, LATENCY_P95: 2500.0, REQUESTS_1H: 50.0},
        "gpt-4o-mini": {ERROR_RATE: 0.0, LATENCY_P95: 900.0, REQUESTS_1H: 50.0},
        "gpt-4.1": {TASK_QUALITY_24H: 0.8, TASK_REQUESTS_24H: 40.0},
    }
)


@pytest.mark.parametrize("live", [None, LIVE], ids=["no-online-features", "online-features"])
def test_a_batch_decides_exactly_as_one_by_one(catalog: ModelCatalog, live) -> None:
    requests = _requests()
    shared = _decide_all(_router(catalog, live), requests, memo={})
    alone = _decide_all(_router(catalog, live), requests, memo=None)
    assert shared == alone
    assert len({v["model"] for v in shared}) > 1  # the policy chose, not a constant
    long = shared[20]["notes"]
    assert any("exceeds its context window" in n for n in long)
    if live is not None:
        assert any("live" in n for n in shared[0]["notes"])  # the live terms were used


def test_the_memo_is_the_batchs_only(catalog: ModelCatalog) -> None:
    router = _router(catalog, LIVE)
    memo: dict[Any, Any] = {}
    router.decide(RequestContext(tenant="acme", prompt="What is 2 + 2?"), memo=memo)
    assert memo  # the shape's work was kept for the batch's next requests
    assert router.lineup.champion.loop.batch_memo is None  # and not for anyone else's


def test_an_open_breaker_is_decided_alone_and_said(catalog: ModelCatalog) -> None:
    requests = [RequestContext(tenant="acme", prompt=f"What is {i} + {i}?") for i in range(10)]
    views = []
    for memo in ({}, None):
        router = _router(catalog, None)
        for _ in range(10):
            router.breaker.record("gpt-4o", ok=False)
        views.append(_decide_all(router, requests, memo=memo))
    assert views[0] == views[1]
    assert all(v["model"] != "gpt-4o" for v in views[0])
    assert all(any("circuit breaker open" in n for n in v["notes"]) for v in views[0])


def test_a_budget_is_decided_alone(catalog: ModelCatalog) -> None:
    """Under a daily budget what is left changes with each reservation: no sharing."""
    requests = [RequestContext(tenant="acme", prompt=f"What is {i} + {i}?") for i in range(10)]
    views = []
    for memo in ({}, None):
        router = _router(catalog, None, ledger=BudgetLedger(per_tenant={"acme": 1.0}))
        views.append(_decide_all(router, requests, memo=memo))
    assert views[0] == views[1]


def _interleaved(router: Router, requests: list[RequestContext]) -> list[dict[str, Any]]:
    """Single decisions with what changes their inputs in between: feedback (learning, costs,
    the breaker), outcomes recorded on the breaker directly, a new online-features read."""
    views = []
    for i, r in enumerate(requests):
        routed = router.decide(r)
        views.append(_view(router, routed))
        if i % 4 == 1:
            router.feedback(
                Feedback(
                    decision_id=routed.decision.decision_id,
                    quality=0.3 + 0.05 * (i % 7),
                    cost_usd=0.002,
                )
            )
        if i % 2 == 0:  # one failure in four: a recent error rate, never an open breaker
            router.breaker.record("gpt-4o-mini", ok=i % 8 != 0)
        if i == 20 and router.features is not None:
            router.features = FixedFeatures(RouterFeatures(values=dict(LIVE.values)))
    return views


@pytest.mark.parametrize("live", [None, LIVE], ids=["no-online-features", "online-features"])
def test_single_decisions_share_until_something_changes(catalog: ModelCatalog, live) -> None:
    requests = [r for r in _requests() if r.max_cost_usd is None]
    shared = _router(catalog, live)
    alone = _router(catalog, live)
    alone.shapes_ttl_s = 0.0  # every decision worked out alone
    assert _interleaved(shared, requests) == _interleaved(alone, requests)
    assert shared._shapes and not alone._shapes


def test_what_single_decisions_share_is_dropped_on_learning_and_with_time(
    catalog: ModelCatalog,
) -> None:
    now = [0.0]
    router = _router(catalog, LIVE, clock=lambda: now[0])
    first = router.decide(RequestContext(tenant="acme", prompt="What is 2 + 2?"))
    assert router._shapes
    router.feedback(Feedback(decision_id=first.decision.decision_id, quality=0.9))
    assert not router._shapes  # learned: what was shared is stale
    router.decide(RequestContext(tenant="acme", prompt="What is 3 + 3?"))
    kept = router._shapes
    now[0] += router.shapes_ttl_s / 2
    router.decide(RequestContext(tenant="acme", prompt="What is 4 + 4?"))
    assert router._shapes is kept
    now[0] += router.shapes_ttl_s
    router.decide(RequestContext(tenant="acme", prompt="What is 5 + 5?"))
    assert router._shapes is not kept  # too old: worked out again


def _ahead(requests: list[RequestContext]) -> dict[Any, Any]:
    """A batch memo as ``/decide_batch`` makes it: later requests drawn ahead."""
    return {BATCH: BatchPlan(requests)}


@pytest.fixture
def draws(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """How many contexts each single pull and each batch pull of the cluster policy drew."""
    seen: dict[str, list[int]] = {"one": [], "many": []}
    one, many = ClusterThompson._pull, ClusterThompson._pull_many

    def counted_one(self: ClusterThompson, *args: Any) -> Any:
        seen["one"].append(1)
        return one(self, *args)

    def counted_many(self: ClusterThompson, arms: Any, contexts: Any, pens: Any) -> Any:
        seen["many"].append(len(contexts))
        return many(self, arms, contexts, pens)

    monkeypatch.setattr(ClusterThompson, "_pull", counted_one)
    monkeypatch.setattr(ClusterThompson, "_pull_many", counted_many)
    return seen


@pytest.mark.parametrize("live", [None, LIVE], ids=["no-online-features", "online-features"])
def test_a_batch_of_one_kind_is_drawn_at_once_exactly_as_one_by_one(
    catalog: ModelCatalog, live: RouterFeatures | None, draws: dict[str, list[int]]
) -> None:
    requests = [  # one kind, prompts of every length: each request at its own penalties
        RequestContext(tenant="acme", prompt=f"Question {i}: why is {i} odd? " * (1 + i % 9))
        for i in range(40)
    ]
    ahead = _decide_all(_router(catalog, live), requests, memo=_ahead(requests))
    assert draws == {"one": [], "many": [40]}  # all drawn with the first request
    alone = _decide_all(_router(catalog, live), requests, memo=None)
    assert ahead == alone
    assert {v["policy"] for v in ahead} == {("cost_aware_cluster_thompson", "v1") * 2}
    assert len({v["model"] for v in ahead}) > 1
    assert len({v["propensity"] for v in ahead}) > 1


def test_a_mixed_batch_uses_only_the_draws_made_for_its_offer_and_penalties(
    catalog: ModelCatalog, draws: dict[str, list[int]]
) -> None:
    requests = _requests()  # trade-offs, model lists, a cap, a prompt too long for some windows
    ahead = _decide_all(_router(catalog, LIVE), requests, memo=_ahead(requests))
    alone = _decide_all(_router(catalog, LIVE), requests, memo=None)
    assert len(draws["many"]) > 1  # one draw per kind of request at least
    assert sum(draws["many"]) + len(draws["one"]) >= 2 * len(requests)  # and the alone run
    for a, b in zip(ahead, alone, strict=True):
        assert a["notes"] == b["notes"] and set(a["scores"]) == set(b["scores"])
        assert a["row"][:2] == (a["model"], a["propensity"])  # logged as served
        assert a["model"] in a["scores"] and 0 < a["propensity"] <= 1


def test_feedback_learnt_during_a_batch_draws_the_rest_again(
    catalog: ModelCatalog, draws: dict[str, list[int]]
) -> None:
    router = _router(catalog, None)
    requests = [RequestContext(tenant="acme", prompt=f"Add {i} and {i}.") for i in range(10)]
    memo = _ahead(requests)
    with router.event_log.deferred_writes(hold=True) as writes:
        first = [router.decide(r, memo=memo) for r in requests[:4]]
    writes.wait()
    router.feedback(Feedback(decision_id=first[0].decision.decision_id, quality=0.9))
    with router.event_log.deferred_writes(hold=True) as writes:
        rest = [router.decide(r, memo=memo) for r in requests[4:]]
    writes.wait()
    # drawn for all 10 with the first; after learning, the 6 left from the fifth, afresh
    assert draws == {"one": [], "many": [10, 6]}
    assert len({r.decision.decision_id for r in first + rest}) == 10


def test_a_request_whose_penalties_moved_since_the_draw_pulls_alone(
    catalog: ModelCatalog, draws: dict[str, list[int]]
) -> None:
    router = _router(catalog, None)
    requests = [RequestContext(tenant="acme", prompt=f"Add {i} and {i}.") for i in range(6)]
    memo = _ahead(requests)
    with router.event_log.deferred_writes(hold=True) as writes:
        router.decide(requests[0], memo=memo)
        # a model's cost learnt meanwhile, without a policy update (as another path could)
        router.lineup.champion.loop.cost_model.learn("gpt-4o", 1_000, 5.0)
        later = [router.decide(r, memo=memo) for r in requests[1:]]
    writes.wait()
    assert draws["many"] == [6]  # drawn ahead at the old prices ...
    assert len(draws["one"]) == 5  # ... so each later request pulled alone, at the new ones
    assert all(r.decision.model != "gpt-4o" for r in later)  # priced out now


def test_a_labelled_policy_draws_many_labelled_with_or_without_a_batch_form(
    catalog: ModelCatalog,
) -> None:
    from serving.router import LabelledPolicy, StaticDefaultPolicy  # noqa: PLC0415

    learner = LabelledPolicy(make_policy("cost_aware_cluster_thompson", seed=1), "v7")
    static = LabelledPolicy(StaticDefaultPolicy(catalog), "static")  # no pull_many of its own
    contexts = [request_features("What is 2 + 2?"), None]
    pens = [{"gpt-4o": 0.1}, None]
    for policy, label in ((learner, "v7"), (static, "static")):
        drawn = policy.pull_many(ARMS, contexts, penalties=pens if policy is learner else None)
        assert [(d.policy_name, d.policy_version) for d in drawn] == [(policy.name, label)] * 2
        assert all(d.model in ARMS for d in drawn)
