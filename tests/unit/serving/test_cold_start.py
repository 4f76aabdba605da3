"""A fresh service (empty registry, empty log): current models only, the catalog's priors."""

from __future__ import annotations

from collections import Counter

import pytest

from llmopt.catalog import ModelCatalog, load_catalog
from llmopt.event_log import EventLog
from llmopt.schemas import Feedback, RequestContext
from serving.router import Router
from serving.runtime import fresh_policy


@pytest.fixture(scope="module")
def catalog() -> ModelCatalog:
    return load_catalog()


def _fresh_router(catalog: ModelCatalog) -> Router:
    log = EventLog("sqlite://")
    router = Router(catalog, log)
    policy, label = fresh_policy(log, catalog=catalog, arms=router.arms)
    router.swap((policy, label))
    return router


def test_the_catalog_marks_the_demo_datas_models_legacy(catalog: ModelCatalog) -> None:
    assert "text_davinci_001" in catalog and catalog["text_davinci_001"].legacy
    assert "gpt-4o-mini" in catalog.current_ids and "text_davinci_001" not in catalog.current_ids
    assert all(catalog[m].quality_tier is not None for m in catalog.current_ids)


def test_a_fresh_service_answers_with_current_models_only(catalog: ModelCatalog) -> None:
    router = _fresh_router(catalog)
    chosen: Counter[str] = Counter()
    for step in range(400):
        d = router.decide(RequestContext(tenant="acme", prompt="What is 2 + 2?")).decision
        if step >= 200:
            chosen[d.model] += 1
        # every model answers this one equally well: only the price should matter
        router.feedback(Feedback(decision_id=d.decision_id, quality=0.9))
    assert set(chosen) <= set(catalog.current_ids), chosen
    cheap = {m for m in catalog.current_ids if catalog[m].expected_cost_usd(10, 256) < 0.0005}
    dear = {m for m in catalog.current_ids if catalog[m].expected_cost_usd(10, 256) > 0.0015}
    assert len(cheap) == 6 and len(dear) == 4
    assert sum(chosen[m] for m in cheap) > 110, chosen  # most of the later traffic
    assert sum(chosen[m] for m in cheap) > 3 * sum(chosen[m] for m in dear), chosen


def test_a_request_may_still_name_a_legacy_model(catalog: ModelCatalog) -> None:
    router = _fresh_router(catalog)
    d = router.decide(
        RequestContext(tenant="acme", prompt="hi", models=["text_davinci_001", "claude-2"])
    ).decision
    assert d.model in {"text_davinci_001", "claude-2"}


def test_the_fresh_policy_starts_at_the_quality_tiers(catalog: ModelCatalog) -> None:
    policy, label = fresh_policy(None, catalog=catalog, arms=catalog.ids)
    assert label.startswith("fresh/")
    assert policy.arm_mean("claude-sonnet-4") > policy.arm_mean("llama-3.1-8b-instruct")
    assert policy.arm_mean("text_davinci_001") is None  # no tier: the pooled prior
