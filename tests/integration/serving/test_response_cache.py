"""The response cache shared through a real Redis: the hits and misses awaiting feedback
(:class:`serving.response_cache.SharedPending`) and the cached answers
(:class:`serving.response_cache.SharedEntries`), two or three workers' caches on one Redis,
then Redis gone. The HTTP path (two gateway services): ``test_gateway_cache.py``."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from llmopt.schemas import Feedback
from serving.response_cache import (
    CacheKey,
    HitFeedbackConflict,
    Probe,
    ResponseCache,
    SharedEntries,
    SharedPending,
)
from serving.shared_state import RedisHealth, redis_client

pytestmark = [pytest.mark.integration, pytest.mark.services]

PROMPT = "How do I reverse a list in Python?"


def worker(url: str, prefix: str, seed: int) -> ResponseCache:
    shared = SharedPending(redis_client(url), prefix=prefix, health=RedisHealth(url, retry_s=60.0))
    return ResponseCache(["acme"], ttl_s=60, max_entries=10, seed=seed, shared=shared)


def probe_of(cache: ResponseCache, *, hit: bool) -> Probe:
    body = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}]}
    key = cache.key(body, {"tenant": "acme"}, PROMPT)
    cache.store("acme", key, "m", {"choices": [{"message": {"content": "a"}}]}, "d0")
    for _ in range(100):
        probe = cache.probe("acme", key)
        assert probe is not None
        if probe.hit == hit and probe.arm is not None:
            return probe
    raise AssertionError(f"no {'hit' if hit else 'miss'} with an arm")


def answer(cache: ResponseCache, fb: Feedback) -> tuple[str, float]:
    """A hit's feedback answer, its reward rounded."""
    status, reward = cache.hit_feedback(fb)
    return status, round(reward, 9)


def learned(cache: ResponseCache) -> dict[str, float]:
    """The arms with a mean reward (learned from feedback), and their means."""
    return {a: m for a, m in cache.stats("acme")["means"].items() if m is not None}


def test_a_hit_is_learned_once_by_whichever_worker_takes_its_feedback(
    redis_url: str, prefix: str
) -> None:
    a, b = worker(redis_url, prefix, 0), worker(redis_url, prefix, 1)
    probe = probe_of(a, hit=True)
    hit = a.served_hit(probe, latency_ms=3.0, willingness_to_pay=0.05, latency_weight=0.0)
    assert b.hit_tenant(hit) == "acme" and not b.watches(hit)
    fb = Feedback(decision_id=hit, quality=0.7)
    assert answer(b, fb) == ("stored", 0.7)
    assert learned(b) == {probe.arm: pytest.approx(0.7)}
    assert answer(a, fb) == ("duplicate", 0.7)  # a held it: not learned again
    assert answer(b, fb) == ("duplicate", 0.7)
    with pytest.raises(HitFeedbackConflict):
        a.hit_feedback(Feedback(decision_id=hit, quality=0.2))
    assert learned(a) == {}
    assert (a.stats("acme")["rated_hits"], b.stats("acme")["rated_hits"]) == (0, 1)
    with pytest.raises(KeyError):
        b.hit_feedback(Feedback(decision_id="never-served", quality=1.0))


def test_a_miss_teaches_its_arm_where_its_feedback_is_stored(redis_url: str, prefix: str) -> None:
    a, b = worker(redis_url, prefix, 0), worker(redis_url, prefix, 1)
    miss = probe_of(a, hit=False)
    a.served_miss(miss, "routed-1", stored=False)
    assert b.watches("routed-1") and b.hit_tenant("routed-1") is None
    b.routed_feedback("routed-1", 0.9, 0.85)  # the service stored it on b
    assert learned(b) == {miss.arm: pytest.approx(0.85)}
    assert learned(a) == {}


def test_redis_gone_each_worker_knows_its_own(redis_url: str, prefix: str) -> None:
    url = "redis://127.0.0.1:1/0"  # nothing listens there
    a, b = worker(url, prefix, 0), worker(url, prefix, 1)
    started = time.monotonic()
    hit = a.served_hit(
        probe_of(a, hit=True), latency_ms=3.0, willingness_to_pay=0.05, latency_weight=0.0
    )
    assert b.hit_tenant(hit) is None  # another worker's hit: unknown here, as without sharing
    assert a.hit_feedback(Feedback(decision_id=hit, quality=0.7))[0] == "stored"
    assert time.monotonic() - started < 3.0  # refused at once, no hang
    assert a.shared is not None and a.shared.health.degraded is not None


def race(ratings: list[tuple[ResponseCache, Feedback]]) -> list[str]:
    """Each cache takes its feedback on a thread of its own, all at once: their answers."""
    gate = threading.Barrier(len(ratings))
    out = [""] * len(ratings)

    def rate(i: int) -> None:
        cache, fb = ratings[i]
        gate.wait()
        try:
            out[i] = cache.hit_feedback(fb)[0]
        except HitFeedbackConflict:
            out[i] = "conflict"

    threads = [threading.Thread(target=rate, args=(i,)) for i in range(len(ratings))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_racing_feedback_on_two_workers_is_learned_exactly_once(
    redis_url: str, prefix: str
) -> None:
    rated = 0
    for n in range(20):  # fresh workers each round: a learner taught bad hits stops hitting
        a, b = worker(redis_url, prefix, 2 * n), worker(redis_url, prefix, 2 * n + 1)
        hit = a.served_hit(
            probe_of(a, hit=True), latency_ms=3.0, willingness_to_pay=0.05, latency_weight=0.0
        )
        same = n % 2 == 1
        answers = race(
            [
                (a, Feedback(decision_id=hit, quality=0.6)),
                (b, Feedback(decision_id=hit, quality=0.6 if same else 0.3)),
            ]
        )
        assert sorted(answers) == sorted(["stored", "duplicate" if same else "conflict"])
        rated += a.stats("acme")["rated_hits"] + b.stats("acme")["rated_hits"]
    assert rated == 20


def sharing(url: str, prefix: str, seed: int) -> ResponseCache:
    """A worker's cache whose answers are shared too."""
    health = RedisHealth(url, retry_s=60.0)
    client = redis_client(url)
    return ResponseCache(
        ["acme"],
        ttl_s=60,
        max_entries=10,
        seed=seed,
        shared=SharedPending(client, prefix=prefix, health=health),
        entries=SharedEntries(client, prefix=prefix, health=health, max_entries=10, ttl_s=60),
    )


def cache_key(cache: ResponseCache, prompt: str) -> CacheKey:
    body = {"model": "auto", "messages": [{"role": "user", "content": prompt}]}
    return cache.key(body, {"tenant": "acme"}, prompt)


def probe_until_hit(cache: ResponseCache) -> Probe:
    """The same request until a drawn threshold serves it (its similarity is 1.0 each time)."""
    for _ in range(100):
        probe = cache.probe("acme", cache_key(cache, PROMPT))
        assert probe is not None and probe.similarity == 1.0
        if probe.hit:
            return probe
    raise AssertionError("no hit")


def test_an_answer_cached_by_one_worker_is_served_by_another(redis_url: str, prefix: str) -> None:
    a, b = sharing(redis_url, prefix, 0), sharing(redis_url, prefix, 1)
    answer = {"choices": [{"message": {"content": "use reversed() or [::-1]"}}]}
    assert a.store("acme", cache_key(a, PROMPT), "gpt-4o-mini", answer, "d-a")
    near = b.probe("acme", cache_key(b, "How can I reverse a Python list?"))
    assert near is not None and near.similarity is not None and near.similarity > 0.97
    probe = probe_until_hit(b)
    assert probe.entry is not None
    assert (probe.entry.model, probe.entry.answer) == ("gpt-4o-mini", answer)
    # judged bad where it was served: it leaves every worker's cache
    hit = b.served_hit(probe, latency_ms=1.0, willingness_to_pay=0.05, latency_weight=0.0)
    b.hit_feedback(Feedback(decision_id=hit, quality=0.1))
    assert b.probe("acme", cache_key(b, PROMPT)).similarity is None  # type: ignore[union-attr]
    gone = a.probe("acme", cache_key(a, PROMPT))  # a's first probe reads the stream at once
    assert gone is not None and gone.similarity is None
    # a worker started later takes what the others cached
    a.store("acme", cache_key(a, "Describe a cat."), "m", answer, "d-cat")
    late = sharing(redis_url, prefix, 2)
    found = late.probe("acme", cache_key(late, "Describe a cat."))
    assert found is not None and found.similarity == 1.0


def test_without_redis_each_worker_serves_its_own_answers(prefix: str) -> None:
    url = "redis://127.0.0.1:1/0"  # nothing listens there
    a, b = sharing(url, prefix, 0), sharing(url, prefix, 1)
    started = time.monotonic()
    answer = {"choices": [{"message": {"content": "a"}}]}
    assert a.store("acme", cache_key(a, PROMPT), "m", answer, "d-a")
    probe = b.probe("acme", cache_key(b, PROMPT))
    assert probe is not None and probe.similarity is None
    probe = a.probe("acme", cache_key(a, PROMPT))
    assert probe is not None and probe.similarity == 1.0
    assert time.monotonic() - started < 3.0


def test_every_workers_learner_learns_the_fleets_feedback(redis_url: str, prefix: str) -> None:
    a, b = sharing(redis_url, prefix, 0), sharing(redis_url, prefix, 1)
    answer = {"choices": [{"message": {"content": "a"}}]}
    a.store("acme", cache_key(a, PROMPT), "m", answer, "d-a")
    probe = probe_until_hit(a)
    hit = a.served_hit(probe, latency_ms=1.0, willingness_to_pay=0.05, latency_weight=0.0)
    a.hit_feedback(Feedback(decision_id=hit, quality=0.8))
    assert learned(b) == {}  # not read yet
    b.probe("acme", cache_key(b, "Describe a cat."))  # b's next probe of the tenant reads it
    assert learned(b) == learned(a) == {probe.arm: pytest.approx(0.8)}
    assert learned(sharing(redis_url, prefix, 2)) == {}  # a new worker learns on its first probe
    late = sharing(redis_url, prefix, 3)
    late.probe("acme", cache_key(late, "Describe a cat."))
    assert learned(late) == {probe.arm: pytest.approx(0.8)}


def test_an_unreadable_shared_record_is_skipped(redis_url: str, prefix: str) -> None:
    a, b = sharing(redis_url, prefix, 0), sharing(redis_url, prefix, 1)
    client = redis.Redis.from_url(redis_url)
    assert b.entries is not None
    client.xadd(b.entries.key("acme"), {"w": "someone", "scope": "x"})  # no digest, no answer
    client.xadd(b.entries.key("acme", "rewards"), {"w": "someone", "arm": "0.90", "reward": "?"})
    client.close()
    answer = {"choices": [{"message": {"content": "a"}}]}
    a.store("acme", cache_key(a, PROMPT), "m", answer, "d-a")
    probe = b.probe("acme", cache_key(b, PROMPT))  # the records after the bad ones are taken
    assert probe is not None and probe.similarity == 1.0
    assert learned(b) == {}
