"""The semantic response cache's logic: keys, similarity, tenants, bounds, expiry, the threshold
learner and what its feedback teaches (serving/response_cache.py, with the real embedder)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from llmopt.embeddings import MAX_EMBED_CHARS
from llmopt.schemas import Feedback
from serving.response_cache import (
    ARMS,
    DROP_BELOW,
    NEVER,
    PENDING_FEEDBACK_S,
    CacheKey,
    HitFeedbackConflict,
    Probe,
    ResponseCache,
    ThresholdLearner,
    assemble,
    replay,
)


class Clock:
    """Seconds that the test moves on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(content: str) -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def body(prompt: str | list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return {"model": "auto", "messages": messages, **extra}


def key(cache: ResponseCache, prompt: str | list[dict[str, Any]], **extra: Any) -> CacheKey:
    b = body(prompt, **extra)
    options = b.pop("llmopt", {"tenant": "acme"})
    text = "\n".join(m["content"] for m in b["messages"])
    return cache.key(b, options, text)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> ResponseCache:
    return ResponseCache(["acme", "beta"], ttl_s=60, max_entries=3, seed=0, clock=clock)


def nearest(cache: ResponseCache, tenant: str, k: CacheKey) -> float | None:
    probe = cache.probe(tenant, k)
    assert probe is not None
    return probe.similarity


def test_exact_paraphrase_and_unrelated(cache: ResponseCache) -> None:
    cache.store("acme", key(cache, "How do I reverse a list in Python?"), "m", answer("a"), "d1")
    assert nearest(cache, "acme", key(cache, "How do I reverse a list in Python?")) == 1.0
    paraphrase = nearest(cache, "acme", key(cache, "How can I reverse a Python list?"))
    assert paraphrase is not None and 0.97 < paraphrase < 1.0
    # similar words, another question: below every threshold, so no candidate (no arm drawn)
    assert nearest(cache, "acme", key(cache, "What is the capital of France?")) is None
    assert nearest(cache, "acme", key(cache, "Write a poem about the sea.")) is None


def test_scope_model_and_options_but_not_sampling(cache: ResponseCache) -> None:
    q = "How do I reverse a list in Python?"
    cache.store("acme", key(cache, q, max_tokens=50), "m", answer("a"), "d1")
    assert nearest(cache, "acme", key(cache, q, max_tokens=50, temperature=0.2, seed=3)) == 1.0
    assert nearest(cache, "acme", key(cache, q, max_tokens=50, stream=True)) == 1.0
    assert nearest(cache, "acme", key(cache, q, max_tokens=500)) is None
    assert nearest(cache, "acme", key(cache, q, max_tokens=50, model="gpt-4o")) is None
    other = {"tenant": "acme", "willingness_to_pay": 0.2}
    assert nearest(cache, "acme", key(cache, q, max_tokens=50, llmopt=other)) is None
    same = {"tenant": "acme", "conversation": "c-1"}  # the conversation is no scope
    assert nearest(cache, "acme", key(cache, q, max_tokens=50, llmopt=same)) == 1.0


def test_tenants_never_share_and_the_cache_is_off_for_others(cache: ResponseCache) -> None:
    k = key(cache, "How do I reverse a list in Python?")
    assert cache.store("acme", k, "m", answer("acme's"), "d1")
    assert nearest(cache, "beta", k) is None  # opted in, but its own store is empty
    assert cache.probe("globex", k) is None  # not opted in: off
    assert not cache.store("globex", k, "m", answer("x"), "d2")
    assert cache.stats("globex")["entries"] == 0


def test_least_recently_used_out_first(cache: ResponseCache) -> None:
    prompts = ["Name a prime number.", "Describe a cat.", "Explain gravity briefly."]
    for i, p in enumerate(prompts):
        cache.store("acme", key(cache, p), "m", answer(p), f"d{i}")
    assert nearest(cache, "acme", key(cache, prompts[0])) == 1.0  # used: now the newest
    cache.store("acme", key(cache, "Tell me a joke."), "m", answer("j"), "d3")
    assert cache.stats("acme")["entries"] == 3
    assert nearest(cache, "acme", key(cache, prompts[1])) is None  # the least recently used
    assert nearest(cache, "acme", key(cache, prompts[0])) == 1.0
    for i in range(10):  # the table of vectors recycles its slots
        cache.store("acme", key(cache, f"Count to {i} in French."), "m", answer("n"), f"e{i}")
    assert cache.stats("acme")["entries"] == 3


def test_entries_expire(cache: ResponseCache, clock: Clock) -> None:
    k = key(cache, "How do I reverse a list in Python?")
    cache.store("acme", k, "m", answer("a"), "d1")
    paraphrase = key(cache, "How can I reverse a Python list?")
    clock.now += 59
    assert nearest(cache, "acme", k) == 1.0 and nearest(cache, "acme", paraphrase) is not None
    clock.now += 2
    assert nearest(cache, "acme", paraphrase) is None and nearest(cache, "acme", k) is None


def test_a_prompt_longer_than_the_embedding_matches_exactly_only(cache: ResponseCache) -> None:
    long = "Please read this carefully. " * (MAX_EMBED_CHARS // 20)
    k = key(cache, long + "What is 2 + 2?")
    assert k.whole is None
    cache.store("acme", k, "m", answer("4"), "d1")
    assert nearest(cache, "acme", key(cache, long + "What is 2 + 2?")) == 1.0
    assert nearest(cache, "acme", key(cache, long + "What is 3 + 3?")) is None


def test_a_shared_system_prompt_does_not_make_questions_alike(cache: ResponseCache) -> None:
    system = {"role": "system", "content": "You are a helpful assistant. " * 30}

    def convo(q: str) -> list[dict[str, Any]]:
        return [system, {"role": "user", "content": q}]

    cache.store(
        "acme", key(cache, convo("How do I reverse a list in Python?")), "m", answer("a"), "d"
    )
    assert nearest(cache, "acme", key(cache, convo("What is the capital of France?"))) is None
    near = nearest(cache, "acme", key(cache, convo("How can I reverse a Python list?")))
    assert near is not None and near > 0.97


def hit_of(cache: ResponseCache, k: CacheKey, tenant: str = "acme") -> Probe:
    for _ in range(50):
        probe = cache.probe(tenant, k)
        assert probe is not None
        if probe.hit:
            return probe
    raise AssertionError("no hit")


def serve_hit(cache: ResponseCache, probe: Probe) -> str:
    return cache.served_hit(probe, latency_ms=2.0, willingness_to_pay=0.05, latency_weight=0.0)


def test_a_hit_without_feedback_teaches_nothing(cache: ResponseCache, clock: Clock) -> None:
    k = key(cache, "How do I reverse a list in Python?")
    cache.store("acme", k, "m", answer("a"), "d1")
    for _ in range(5):
        serve_hit(cache, hit_of(cache, k))
    stats = cache.stats("acme")
    assert stats["hits"] == 5 and stats["rated_hits"] == 0
    assert all(m is None for m in stats["means"].values())  # no success, no failure
    clock.now += PENDING_FEEDBACK_S + 1
    cache.store("acme", key(cache, "Describe a cat."), "m", answer("c"), "d2")
    miss = cache.probe("acme", key(cache, "Describe a cat in one line."))
    assert miss is not None
    cache.served_miss(miss, "d3", stored=False)  # waiting starts: the old hits are forgotten
    assert cache.stats("acme")["unrated_expired"] == 5


def test_hit_feedback_is_learned_once_with_the_reward_of_quality_at_cost_zero(
    cache: ResponseCache,
) -> None:
    k = key(cache, "How do I reverse a list in Python?")
    cache.store("acme", k, "m", answer("a"), "d1")
    probe = hit_of(cache, k)
    decision_id = serve_hit(cache, probe)
    assert cache.hit_tenant(decision_id) == "acme" and not cache.watches(decision_id)
    status, reward = cache.hit_feedback(Feedback(decision_id=decision_id, quality=0.8))
    assert status == "stored" and reward == pytest.approx(0.8)
    assert probe.arm is not None and cache.learner("acme").means()[probe.arm] == 0.8
    status, reward = cache.hit_feedback(Feedback(decision_id=decision_id, quality=0.8))
    assert status == "duplicate" and reward == pytest.approx(0.8)
    with pytest.raises(HitFeedbackConflict):
        cache.hit_feedback(Feedback(decision_id=decision_id, thumbs="down"))
    with pytest.raises(KeyError):
        cache.hit_feedback(Feedback(decision_id="unknown", quality=1.0))
    assert cache.stats("acme")["rated_hits"] == 1


def test_a_miss_teaches_its_arm_only_when_it_had_a_candidate(cache: ResponseCache) -> None:
    cold = cache.probe("acme", key(cache, "Describe a cat."))
    assert cold is not None and cold.arm is None  # empty store: every arm would miss
    cache.served_miss(cold, "r0", stored=False)
    assert not cache.watches("r0")  # nothing to learn from it
    k = key(cache, "How do I reverse a list in Python?")
    cache.store("acme", k, "m", answer("a"), "d1")
    probe = hit_of(cache, k)
    while probe.hit:
        probe = cache.probe("acme", k) or probe
    assert probe.arm == NEVER  # similarity 1.0: only "never" misses
    cache.served_miss(probe, "r1", stored=False)
    assert cache.watches("r1")
    cache.routed_feedback("r1", quality=0.9, reward=0.85)
    assert cache.learner("acme").means()[NEVER] == 0.85
    assert not cache.watches("r1")  # learned once


def test_bad_quality_drops_the_answer_it_concerns(cache: ResponseCache) -> None:
    k = key(cache, "How do I reverse a list in Python?")
    cache.store("acme", k, "m", answer("a"), "routed-1")
    cache.served_miss(Probe("acme", k), "routed-1", stored=True)
    cache.routed_feedback("routed-1", quality=DROP_BELOW - 0.1, reward=0.3)
    assert cache.stats("acme")["entries"] == 0 and cache.stats("acme")["dropped"] == 1
    # a hit judged bad drops the answer it served, unless a newer answer replaced it
    cache.store("acme", k, "m", answer("b"), "routed-2")
    decision_id = serve_hit(cache, hit_of(cache, k))
    cache.store("acme", k, "m", answer("c"), "routed-3")
    cache.hit_feedback(Feedback(decision_id=decision_id, thumbs="down"))
    assert cache.stats("acme")["entries"] == 1
    decision_id = serve_hit(cache, hit_of(cache, k))
    cache.hit_feedback(Feedback(decision_id=decision_id, thumbs="down"))
    assert cache.stats("acme")["entries"] == 0


def simulate(seed: int, hit_quality: float, miss_quality: float, rounds: int = 150) -> list[str]:
    """A tenant asking paraphrases of a few questions; every answer gets feedback; the arms
    drawn, in order."""
    clock = Clock()
    cache = ResponseCache(["acme"], ttl_s=3600, max_entries=100, seed=seed, clock=clock)
    rng = random.Random(seed)
    questions = [
        ["How do I reverse a list in Python?", "How can I reverse a Python list?"],
        ["What is the capital of France?", "Tell me the capital city of France."],
        ["Translate 'good morning' to French.", "Translate 'good morning' into French."],
    ]
    keys = [[key(cache, q) for q in group] for group in questions]
    arms = []
    for i in range(rounds):
        clock.now += 1
        k = rng.choice(rng.choice(keys))
        probe = cache.probe("acme", k)
        assert probe is not None
        if probe.arm is not None:
            arms.append(probe.arm)
        noise = rng.gauss(0, 0.05)
        if probe.hit:
            decision_id = serve_hit(cache, probe)
            q = min(max(hit_quality + noise, 0.0), 1.0)
            cache.hit_feedback(Feedback(decision_id=decision_id, quality=q))
        else:
            stored = cache.store("acme", k, "m", answer("fresh"), f"r{i}")
            cache.served_miss(probe, f"r{i}", stored)
            q = min(max(miss_quality + noise, 0.0), 1.0)
            cache.routed_feedback(f"r{i}", quality=q, reward=q - 0.05)  # the model's cost
    assert cache.stats("acme")["rated_hits"] + cache.stats("acme")["rated_misses"] == len(arms)
    return arms


@pytest.mark.parametrize("seed", range(5))
def test_bad_hits_teach_never_and_good_hits_keep_the_cache(seed: int) -> None:
    bad = simulate(seed, hit_quality=0.2, miss_quality=0.9)
    assert bad[-30:].count(NEVER) >= 27, bad[-30:]
    good = simulate(seed, hit_quality=0.95, miss_quality=0.6)
    assert good[-30:].count(NEVER) <= 3, good[-30:]


def test_the_learner_draws_every_arm_first_and_keeps_a_floor() -> None:
    t = ThresholdLearner(seed=3)
    first = []
    for _ in range(len(ARMS)):
        arm, propensity = t.draw()
        first.append(arm)
        t.learn(arm, 1.0 if arm == NEVER else 0.0)
        assert 0 < propensity <= 1
    assert sorted(first) == sorted(ARMS) and t.best() == NEVER
    draws = [t.draw() for _ in range(200)]
    assert all(p >= 0.02 / len(ARMS) - 1e-9 for _, p in draws)
    assert t.pulls[NEVER] > 180


def test_a_streamed_answer_is_reassembled_and_replayed() -> None:
    chunks: list[dict[str, Any]] = [
        {"id": "c", "created": 5, "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"choices": [{"index": 0, "delta": {"content": "x" * 100}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
        {"choices": [], "usage": {"total_tokens": 9}},
    ]
    whole = assemble(chunks, "gpt-4o", {"total_tokens": 9})
    assert whole is not None and whole["choices"][0]["message"]["content"] == "x" * 100
    out = replay(whole, "gpt-4o", "chatcmpl-1", include_usage=False)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in out) == "x" * 100
    assert out[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["model"] == "gpt-4o" and c["id"] == "chatcmpl-1" for c in out)
    tools = [{"choices": [{"index": 0, "delta": {"tool_calls": [{"id": "t"}]}}]}]
    assert assemble(tools, "gpt-4o", None) is None
    assert assemble([{"choices": []}], "gpt-4o", None) is None


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        ResponseCache(["a"], ttl_s=0, max_entries=1)
    with pytest.raises(ValueError, match="max_entries"):
        ResponseCache(["a"], ttl_s=1, max_entries=0)
