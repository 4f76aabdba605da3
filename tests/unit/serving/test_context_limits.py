"""Context limits: no model whose context window the prompt exceeds; none fits -> an error."""

from __future__ import annotations

import pytest

from llmopt.catalog import ModelCatalog, load_catalog
from llmopt.event_log import EventLog
from llmopt.loop import CONTEXT_RESERVE_TOKENS, ContextWindowError, NoCandidateError
from llmopt.schemas import RequestContext
from serving.router import Router


class Greedy:
    """Picks the first arm offered (so the test sees what was offered)."""

    name = "first"

    def pull(self, arm_ids, context=None):  # type: ignore[no-untyped-def]
        from llmopt.schemas import Decision  # noqa: PLC0415

        return Decision(model=arm_ids[0], propensity=1.0, policy_name=self.name)

    def update(self, arm_id, context, reward):  # type: ignore[no-untyped-def]
        return self


@pytest.fixture(scope="module")
def catalog() -> ModelCatalog:
    return load_catalog()


def router(catalog: ModelCatalog) -> Router:
    r = Router(catalog, EventLog("sqlite://"), arms=["gpt-3.5-turbo-0301", "gpt-4o", "gpt-4.1"])
    r.swap((Greedy(), "test/1"))
    return r


def test_a_prompt_too_long_for_a_small_window_skips_that_model(catalog: ModelCatalog) -> None:
    prompt = "word " * 8000  # ~10,000 tokens: over gpt-3.5-turbo-0301's 4,096
    d = router(catalog).decide(RequestContext(tenant="acme", prompt=prompt)).decision
    assert d.model == "gpt-4o"
    assert any("gpt-3.5-turbo-0301 excluded" in n and "context window" in n for n in d.notes)


def test_a_short_prompt_keeps_every_model(catalog: ModelCatalog) -> None:
    d = router(catalog).decide(RequestContext(tenant="acme", prompt="hi")).decision
    assert d.model == "gpt-3.5-turbo-0301"
    assert not any("context window" in n for n in d.notes)


def test_the_reserve_for_the_answer_counts(catalog: ModelCatalog) -> None:
    window = catalog["gpt-3.5-turbo-0301"].context_window
    fits = "x" * (4 * (window - CONTEXT_RESERVE_TOKENS))
    over = fits + "x" * 4
    r = router(catalog)
    assert r.decide(RequestContext(tenant="a", prompt=fits)).decision.model == "gpt-3.5-turbo-0301"
    assert r.decide(RequestContext(tenant="a", prompt=over)).decision.model == "gpt-4o"


def test_no_allowed_model_fits_raises_naming_the_context_window(catalog: ModelCatalog) -> None:
    ctx = RequestContext(tenant="acme", prompt="x" * 900_000, models=["gpt-4o", "gpt-4o-mini"])
    r = Router(catalog, EventLog("sqlite://"))
    with pytest.raises(ContextWindowError, match="context window") as err:
        r.decide(ctx)
    assert isinstance(err.value, NoCandidateError)  # the service's 400
    assert "128000" in str(err.value)
    # a model with a larger window, when allowed, answers
    ok = ctx.model_copy(update={"models": ["gpt-4o", "gpt-4.1"]})
    assert r.decide(ok).decision.model == "gpt-4.1"
