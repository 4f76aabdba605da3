"""The gateway's semantic response cache: a similar enough prompt gets a stored answer.

Opt-in per tenant (``LLMOPT_RESPONSE_CACHE_TENANTS``), never across tenants: each tenant has its
own store and its own threshold learner, and no lookup reads another tenant's store.

**What is stored.** For each answered request of an opted-in tenant (no tools or images, one
choice, no logprobs): the SHA-256 of its messages (roles and content, canonical JSON), the
request's *scope* (the SHA-256 of the requested model and of every option that shapes the
answer: ``max_tokens``, ``stop``, ``response_format``, the ``llmopt`` routing options, ...;
sampling options, ``temperature``, ``top_p`` and ``seed``, are left out, so any temperature may
be served), two unit WordLlama vectors (:meth:`llmopt.embeddings.PromptEmbedder.raw`, 256-d) of
the conversation's text (:func:`serving.gateway.prompt_text`) and of its last user message, the
answer (a chat completion) and the model that gave it. Never the prompt's text. It all lives in
this process's memory (nothing reaches the event log or the disk; with
``LLMOPT_RESPONSE_CACHE_SHARED``, Redis too: :class:`SharedEntries`), bounded per tenant
(``LLMOPT_RESPONSE_CACHE_MAX_ENTRIES``, least recently used out first) and expiring
(``LLMOPT_RESPONSE_CACHE_TTL_S``).

**Similarity.** Only entries of the same tenant and scope are compared. The same messages (same
SHA-256) have similarity 1.0; otherwise it is the smaller of two cosines, the whole
conversation's and the last user message's, so that a long shared system prompt or history
cannot make two different questions look alike. A conversation longer than the embedded
:data:`llmopt.embeddings.MAX_EMBED_CHARS` characters is matched exactly or not at all (its
embedding would not see its end). The raw 256-d vectors, not the 32 projected features, because
they tell near questions apart better: "capital of France" / "of Germany" have cosine 0.44 raw,
0.86 projected; "reverse a list in Python" / "How can I reverse a Python list?" 0.985 and 0.988.

**The threshold is learned, per tenant.** When the nearest entry is at least as similar as the
lowest threshold (a *candidate*), a Gaussian Thompson sampler (:class:`models.thompson.
GaussianThompson`) draws one arm of :data:`ARMS`: a threshold (0.90, 0.94, 0.97, 0.99) or
``never``. Similarity at or above the threshold serves the entry (a *hit*, with its own decision
id and the arm's propensity); below it, the request goes to a model as usual (a *miss*). The arm
learns the reward of what was served, from the client's feedback:

- a hit's ``POST /feedback`` (its decision id): :func:`llmopt.reward.reward` of the quality with
  cost 0 (unless the client reports one) and the hit's own latency, under the request's
  trade-off, as the router scores any answer; it is answered here, and never reaches the model
  policies or the event log (a cached answer says nothing about what its model costs now);
- a miss's ``POST /feedback`` (the routed decision's id): the reward the service computed for
  that decision (quality, cost and latency of the model's answer).

So each arm's mean is the mean reward of the requests *with a candidate* on which it was drawn,
hits and misses alike: a plain bandit over those requests, unbiased because the draw does not
depend on the similarity. Nothing else is learned, on purpose:

- a request without a candidate would be a miss under every arm: it says nothing about them;
- a hit at similarity ``s`` would have been the same hit under every threshold up to ``s``
  (and a miss the same miss under every threshold above it), but whether the drawn arm lands on
  the same side depends on ``s``, so teaching those arms too would weigh low- or high-similarity
  requests more than their share; only importance weights could correct it, and the learner
  takes none;
- a hit or miss without feedback teaches nothing: it is neither a success nor a failure. A hit
  waits :data:`PENDING_FEEDBACK_S` for its feedback, then is forgotten (counted as unrated).

A hit or an answer whose feedback has a quality below :data:`DROP_BELOW` removes that answer
from the cache. The stores and the learners are per worker process. What awaits feedback is too,
unless it is shared (:class:`SharedPending`, with ``LLMOPT_SERVING_SHARED_STATE=redis``):
then any worker or replica takes a hit's feedback (once: the first feedback claims the hit in
Redis; the same again is a duplicate, a different one a 409) and teaches its own learner, and
a miss's feedback teaches the arm it drew wherever the service stores it. With
``LLMOPT_RESPONSE_CACHE_SHARED`` as well (:class:`SharedEntries`), every worker also takes the
answers the others cached and removed, and the rewards their learners learned. Without Redis
(or while it is down), a hit's feedback is known only to the worker that served it (another
answers 404).

>>> cache = ResponseCache(["acme"], ttl_s=60, max_entries=100, seed=0)
>>> key = cache.key({"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}]},
...                 {"tenant": "acme"}, "What is 2 + 2?")
>>> cache.probe("acme", key).similarity is None  # nothing stored yet: no candidate
True
>>> cache.store("acme", key, "gpt-4o-mini", {"choices": [{"message": {"content": "4"}}]}, "d1")
True
>>> probe = cache.probe("acme", key)
>>> probe.similarity, probe.arm in ARMS
(1.0, True)
>>> cache.probe("globex", key) is None  # a tenant not opted in: the cache is off for it
True
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import redis

from llmopt import fast_json
from llmopt.embeddings import MAX_EMBED_CHARS, get_embedder
from llmopt.reward import reward as reward_of
from llmopt.schemas import Feedback, new_decision_id
from llmopt.settings import Settings
from models.thompson import GaussianThompson
from serving.shared_state import PREFIX, RedisHealth, SharedState, where

log = logging.getLogger(__name__)

THRESHOLDS = (0.90, 0.94, 0.97, 0.99)
"""Similarities at or above which a cached answer may be served: the learner's arms."""
NEVER = "never"
"""The arm that never serves from the cache."""
ARMS = (*(f"{t:.2f}" for t in THRESHOLDS), NEVER)
"""The threshold learner's arms, as the ``x-llmopt-cache-threshold`` header names them."""
POLICY_VERSION = "response_cache"
"""``x-llmopt-policy-version`` of a hit."""
SAMPLING_FIELDS = frozenset(
    {"messages", "stream", "stream_options", "temperature", "top_p", "seed"}
)
"""Body fields left out of the scope: the prompt itself, delivery, and sampling randomness."""
UNSCOPED_OPTIONS = frozenset({"tenant", "conversation"})
"""``llmopt`` options left out of the scope (the tenant has its own store)."""
PENDING_FEEDBACK_S = 86_400.0
"""How long a hit (or a miss that drew an arm) waits for its feedback."""
MAX_PENDING = 100_000
"""Most hits and misses waiting for feedback, all tenants together (the oldest go first)."""
DROP_BELOW = 0.5
"""A served answer whose feedback has a lower quality leaves the cache."""
FIRST_CAPACITY = 64
"""Rows of a tenant's first vector table (doubled as needed, up to its maximum)."""
ENTRY_SYNC_S = 0.5
"""Shared entries: seconds between a worker's reads of a tenant's new entries from Redis."""
MAX_SHARED_REWARDS = 10_000
"""Shared entries: the threshold learners' latest rewards kept per tenant in Redis."""


class HitFeedbackConflict(ValueError):
    """A different feedback for a hit that already has one (409, as for any decision)."""


def sha256_json(doc: Any) -> str:
    """SHA-256 of a JSON document in canonical form (sorted keys, no spaces).

    >>> sha256_json({"b": 1, "a": [1, 2]}) == sha256_json({"a": [1, 2], "b": 1})
    True
    """
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def cacheable(body: Mapping[str, Any]) -> bool:
    """Whether an answer to ``body`` may be stored and served: one choice, no logprobs.

    Tools and images are checked by the gateway (:func:`serving.gateway.required_capabilities`).

    >>> cacheable({"messages": []}), cacheable({"messages": [], "n": 2})
    (True, False)
    """
    return body.get("n") in (None, 1) and not body.get("logprobs")


def _last_user_text(messages: list[Any], text_of: Callable[[list[Any]], str]) -> str:
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return text_of(users[-1:] or messages[-1:])


@dataclass(frozen=True)
class CacheKey:
    """What a request is looked up and stored by (never its text)."""

    scope: str
    """SHA-256 of the requested model and the options that shape the answer."""
    digest: str
    """SHA-256 of the messages (exact duplicates)."""
    whole: np.ndarray | None = None
    """Unit vector of the conversation's text (None: matched exactly only)."""
    last: np.ndarray | None = None
    """Unit vector of the last user message's text."""


@dataclass
class Entry:
    """One stored answer."""

    key: CacheKey
    model: str
    answer: dict[str, Any]
    decision_id: str
    """The decision that produced the answer."""
    expires_at: float
    slot: int = -1


@dataclass(frozen=True)
class Probe:
    """A request's look at the cache: the nearest entry, the drawn arm, hit or miss."""

    tenant: str
    key: CacheKey | None
    """None: the lookup failed (a miss, nothing stored)."""
    similarity: float | None = None
    """Similarity of the nearest candidate (None: no candidate, no arm drawn)."""
    arm: str | None = None
    propensity: float | None = None
    entry: Entry | None = None
    """The answer to serve (a hit), else None."""

    @property
    def hit(self) -> bool:
        return self.entry is not None

    def headers(self) -> dict[str, str]:
        """``x-llmopt-cache`` and, with a candidate, the similarity and the drawn arm."""
        out = {"x-llmopt-cache": "hit" if self.hit else "miss"}
        if self.similarity is not None and self.arm is not None:
            out["x-llmopt-cache-similarity"] = f"{self.similarity:.4f}"
            out["x-llmopt-cache-threshold"] = self.arm
        return out


@dataclass
class _Pending:
    """A hit, or a miss that drew an arm, waiting for its feedback."""

    tenant: str
    arm: str | None
    expires_at: float
    source: tuple[CacheKey, str] | None = None
    """The entry it served (a hit) or stored (a miss), and that entry's decision: dropped on a
    bad quality (unless a newer answer replaced it)."""
    hit: bool = False
    latency_ms: float = 0.0
    willingness_to_pay: float = 0.05
    latency_weight: float = 0.0
    feedback: Feedback | None = None
    reward: float | None = None


class _TenantStore:
    """One tenant's entries: an LRU map plus a table of their vectors (searched at once)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self.keys: list[tuple[str, str] | None] = []  # slot -> its entry's key
        self.free: list[int] = []
        self.whole = np.zeros((0, 0), dtype=np.float32)
        self.last = np.zeros((0, 0), dtype=np.float32)
        self.scope = np.zeros(0, dtype=np.int64)
        self.expires = np.full(0, -math.inf)

    @staticmethod
    def scope_code(scope: str) -> int:
        return int(scope[:15], 16)  # 60 bits of the SHA-256: one tenant's scopes never collide

    def _grow(self, dim: int) -> None:
        n = len(self.keys)
        size = min(self.max_entries, max(FIRST_CAPACITY, 2 * n))
        whole = np.zeros((size, dim), dtype=np.float32)
        last = np.zeros((size, dim), dtype=np.float32)
        if n:
            whole[:n], last[:n] = self.whole, self.last
        scope = np.zeros(size, dtype=np.int64)
        scope[:n] = self.scope
        expires = np.full(size, -math.inf)
        expires[:n] = self.expires
        self.whole, self.last, self.scope, self.expires = whole, last, scope, expires
        self.keys += [None] * (size - n)
        self.free += range(size - 1, n - 1, -1)

    def remove(self, k: tuple[str, str]) -> None:
        entry = self.entries.pop(k, None)
        if entry is not None and entry.slot >= 0:
            self.expires[entry.slot] = -math.inf
            self.keys[entry.slot] = None
            self.free.append(entry.slot)

    def put(self, entry: Entry, now: float) -> None:
        k = (entry.key.scope, entry.key.digest)
        self.remove(k)
        if len(self.entries) >= self.max_entries:  # full: the expired go first, then the LRU
            for old in [k2 for k2, e in self.entries.items() if e.expires_at <= now]:
                self.remove(old)
        while len(self.entries) >= self.max_entries:
            self.remove(next(iter(self.entries)))
        key = entry.key
        if key.whole is not None and key.last is not None:
            dim = len(key.whole)
            if not self.keys or self.whole.shape[1] == dim:
                if not self.free:
                    self._grow(dim)
                slot = self.free.pop()
                self.whole[slot], self.last[slot] = key.whole, key.last
                self.scope[slot] = self.scope_code(key.scope)
                self.expires[slot] = entry.expires_at
                self.keys[slot] = k
                entry.slot = slot
        self.entries[k] = entry

    def nearest(self, key: CacheKey, now: float) -> tuple[Entry, float] | None:
        """The most similar live entry of ``key``'s scope, and its similarity."""
        k = (key.scope, key.digest)
        exact = self.entries.get(k)
        if exact is not None:
            if exact.expires_at > now:
                self.entries.move_to_end(k)
                return exact, 1.0
            self.remove(k)
        if key.whole is None or key.last is None or not self.keys:
            return None
        if self.whole.shape[1] != len(key.whole):
            return None
        live = (self.scope == self.scope_code(key.scope)) & (self.expires > now)
        if not live.any():
            return None
        sims = np.where(live, np.minimum(self.whole @ key.whole, self.last @ key.last), -np.inf)
        slot = int(np.argmax(sims))
        found = self.keys[slot]
        if found is None:  # pragma: no cover - a live slot always has its entry
            return None
        self.entries.move_to_end(found)
        return self.entries[found], min(float(sims[slot]), 1.0)


class ThresholdLearner:
    """One tenant's threshold: Gaussian Thompson sampling over :data:`ARMS`.

    Parameters
    ----------
    seed
        Seed of the sampler.

    Examples
    --------
    >>> t = ThresholdLearner(seed=1)
    >>> for _ in range(60):
    ...     arm, _ = t.draw()
    ...     t.learn(arm, 0.9 if arm == "never" else 0.1)  # cached answers judged bad
    >>> t.best()
    'never'
    """

    def __init__(self, *, seed: int | None = None) -> None:
        self.policy = GaussianThompson(sigma=0.1, discount=0.995, exploration_floor=0.02, seed=seed)
        self.pulls = dict.fromkeys(ARMS, 0)

    def draw(self) -> tuple[str, float]:
        """An arm and its propensity."""
        d = self.policy.pull(list(ARMS))
        self.pulls[d.model] += 1
        return d.model, d.propensity

    def learn(self, arm: str, reward: float) -> None:
        """The reward of what was served under ``arm``."""
        self.policy.update(arm, None, reward)

    def means(self) -> dict[str, float | None]:
        """Each arm's mean reward so far (None: no feedback yet)."""
        return {a: self.policy.arm_mean(a) for a in ARMS}

    def best(self) -> str | None:
        """The arm with the highest mean reward (None before any feedback): the learned
        threshold."""
        known = {a: m for a, m in self.means().items() if m is not None}
        return max(known, key=known.__getitem__) if known else None


def arm_threshold(arm: str) -> float:
    """The similarity an arm needs (``never``: more than any).

    >>> arm_threshold("0.97"), arm_threshold("never")
    (0.97, inf)
    """
    return math.inf if arm == NEVER else float(arm)


@dataclass
class TenantStats:
    """What one tenant's cache did (this worker, since it started)."""

    hits: int = 0
    misses: int = 0
    rated_hits: int = 0
    rated_misses: int = 0
    unrated_expired: int = 0
    dropped: int = 0


class ResponseCache:
    """The tenants' stores, their threshold learners, and the hits and misses awaiting feedback.

    Parameters
    ----------
    tenants
        Tenants that opted in (every other tenant: the cache is off).
    ttl_s
        Seconds an answer stays servable.
    max_entries
        Answers kept per tenant (the least recently used go first).
    seed
        Base seed of the threshold learners (each tenant's is derived from it and its name).
    clock
        Monotonic seconds (tests pass their own).
    shared
        Where the hits and misses awaiting feedback are shared with the other workers and
        replicas (None: this worker only).
    entries
        Where the cached answers and the learners' rewards are shared with the other workers
        and replicas (None: each serves its own answers and learns from its own feedback).

    Thread-safe: one lock around each call (a lookup among 1,000 answers takes ~0.1 ms; the
    embeddings of :meth:`key`, ~0.2 ms, are computed outside it).
    """

    def __init__(
        self,
        tenants: Collection[str],
        *,
        ttl_s: float,
        max_entries: int,
        seed: int | None = 0,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedPending | None = None,
        entries: SharedEntries | None = None,
    ) -> None:
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.tenants = frozenset(tenants)
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.seed = seed
        self.clock = clock
        self.shared = shared
        self.entries = entries
        self._synced: dict[str, tuple[float, str, str]] = {}  # tenant -> next read, last ids
        self._outbox: list[Callable[[SharedEntries], None]] = []  # to publish, outside the lock
        self._stores: dict[str, _TenantStore] = {}
        self._learners: dict[str, ThresholdLearner] = {}
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._stats: dict[str, TenantStats] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: Settings, shared: SharedState | None = None
    ) -> ResponseCache | None:
        """The cache of the settings (None: no tenant opted in, the cache is off); with the
        process's ``shared`` state, what awaits feedback is shared (:class:`SharedPending`),
        and with ``response_cache_shared`` the answers and learning too
        (:class:`SharedEntries`)."""
        if not settings.response_cache_tenants:
            return None
        return cls(
            settings.response_cache_tenants,
            ttl_s=settings.response_cache_ttl_s,
            max_entries=settings.response_cache_max_entries,
            shared=(
                SharedPending(shared.client, prefix=shared.prefix, health=shared.health)
                if shared is not None
                else None
            ),
            entries=(
                SharedEntries(
                    shared.client,
                    prefix=shared.prefix,
                    health=shared.health,
                    max_entries=settings.response_cache_max_entries,
                    ttl_s=settings.response_cache_ttl_s,
                )
                if shared is not None and settings.response_cache_shared
                else None
            ),
        )

    def enabled(self, tenant: str) -> bool:
        """Whether ``tenant`` opted in."""
        return tenant in self.tenants

    # -- keys -----------------------------------------------------------------------------------
    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit raw embeddings of ``texts`` (a zero row for an empty text)."""
        x = np.asarray(get_embedder().raw(texts), dtype=np.float32)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(norm > 0, norm, 1.0)

    def key(
        self,
        body: Mapping[str, Any],
        options: Mapping[str, Any],
        text: str,
        text_of: Callable[[list[Any]], str] | None = None,
    ) -> CacheKey:
        """The key of a request: ``body`` (its ``llmopt`` object removed), its ``options`` and
        its conversation's text; ``text_of`` turns messages into text (default: their string
        contents)."""
        messages = list(body.get("messages") or [])
        scope = sha256_json(
            {
                "body": {k: v for k, v in body.items() if k not in SAMPLING_FIELDS},
                "llmopt": {k: v for k, v in options.items() if k not in UNSCOPED_OPTIONS},
            }
        )
        digest = sha256_json(messages)
        if not text or len(text) > MAX_EMBED_CHARS:
            return CacheKey(scope, digest)
        last = _last_user_text(messages, text_of or _string_contents)
        vectors = self.embed([text, last or text])
        if not (vectors[0].any() and vectors[1].any()):
            return CacheKey(scope, digest)
        return CacheKey(scope, digest, vectors[0], vectors[1])

    # -- serving --------------------------------------------------------------------------------
    def _learner(self, tenant: str) -> ThresholdLearner:
        learner = self._learners.get(tenant)
        if learner is None:
            seed = None
            if self.seed is not None:
                seed = self.seed + int(hashlib.sha256(tenant.encode()).hexdigest()[:8], 16)
            learner = self._learners[tenant] = ThresholdLearner(seed=seed)
        return learner

    def _stat(self, tenant: str) -> TenantStats:
        return self._stats.setdefault(tenant, TenantStats())

    def probe(self, tenant: str, key: CacheKey) -> Probe | None:
        """Look ``key`` up in ``tenant``'s store and, with a candidate, draw an arm (None: the
        cache is off for ``tenant``)."""
        if not self.enabled(tenant):
            return None
        if self.entries is not None:
            self._sync(tenant)
        with self._lock:
            store = self._stores.get(tenant)
            found = store.nearest(key, self.clock()) if store is not None else None
            if found is None or found[1] < THRESHOLDS[0]:
                self._stat(tenant).misses += 1
                return Probe(tenant, key)
            entry, similarity = found
            arm, propensity = self._learner(tenant).draw()
            hit = similarity >= arm_threshold(arm)
            stats = self._stat(tenant)
            if hit:
                stats.hits += 1
            else:
                stats.misses += 1
            return Probe(tenant, key, similarity, arm, propensity, entry if hit else None)

    def store(
        self,
        tenant: str,
        key: CacheKey,
        model: str,
        answer: Mapping[str, Any],
        decision_id: str,
    ) -> bool:
        """Keep ``model``'s ``answer`` to the request of ``key`` (its decision: ``decision_id``);
        False: not kept (the tenant did not opt in, or the answer has no text)."""
        if not self.enabled(tenant) or answer_text(answer) is None:
            return False
        entry = Entry(key, model, dict(answer), decision_id, 0.0)
        with self._lock:
            now = self.clock()
            entry.expires_at = now + self.ttl_s
            self._store_of(tenant).put(entry, now)
        if self.entries is not None:
            self.entries.put(tenant, entry)
        return True

    def _store_of(self, tenant: str) -> _TenantStore:
        store = self._stores.get(tenant)
        if store is None:
            store = self._stores[tenant] = _TenantStore(self.max_entries)
        return store

    def _sync(self, tenant: str) -> None:
        """Take the entries other workers cached (and removed) for ``tenant`` since the last
        read, at most every :data:`ENTRY_SYNC_S` (Redis is read outside the lock)."""
        assert self.entries is not None
        with self._lock:
            now = self.clock()
            due, after, rewards_after = self._synced.get(tenant, (-math.inf, "0", "0"))
            if now < due:
                return
            self._synced[tenant] = (now + ENTRY_SYNC_S, after, rewards_after)
        changes = self.entries.read(tenant, after, rewards_after, clock=self.clock)
        if not changes:
            return
        with self._lock:
            now = self.clock()
            store = self._store_of(tenant)
            for change in changes.items:
                if not isinstance(change, Entry):
                    _drop(store, change[0], change[1])
                elif change.expires_at > now:
                    store.put(change, now)
            learner = self._learner(tenant)
            for arm, reward in changes.rewards:
                learner.learn(arm, reward)
            due = self._synced[tenant][0]
            self._synced[tenant] = (due, changes.last_id, changes.rewards_last_id)

    def served_hit(
        self,
        probe: Probe,
        *,
        latency_ms: float,
        willingness_to_pay: float,
        latency_weight: float,
    ) -> str:
        """A new decision id for the hit of ``probe``, awaiting its feedback."""
        decision_id = new_decision_id()
        self._wait(
            decision_id,
            _Pending(
                probe.tenant,
                probe.arm,
                0.0,
                source=(probe.entry.key, probe.entry.decision_id) if probe.entry else None,
                hit=True,
                latency_ms=latency_ms,
                willingness_to_pay=willingness_to_pay,
                latency_weight=latency_weight,
            ),
        )
        return decision_id

    def served_miss(self, probe: Probe, decision_id: str, stored: bool) -> None:
        """The routed decision that answered a miss: its feedback teaches the drawn arm (if
        any) and judges the answer stored from it (if ``stored``)."""
        if (probe.arm is None and not stored) or probe.key is None:
            return
        self._wait(
            decision_id,
            _Pending(
                probe.tenant, probe.arm, 0.0, source=(probe.key, decision_id) if stored else None
            ),
        )

    def _wait(self, decision_id: str, pending: _Pending) -> None:
        with self._lock:
            now = self.clock()
            pending.expires_at = now + PENDING_FEEDBACK_S
            self._keep(decision_id, pending, now)
        if self.shared is not None:
            self.shared.put(decision_id, pending)

    def _keep(self, decision_id: str, pending: _Pending, now: float) -> None:
        self._expire(now)
        self._pending[decision_id] = pending
        while len(self._pending) > MAX_PENDING:
            _, old = self._pending.popitem(last=False)
            self._forget(old)

    def _pending_of(self, decision_id: str) -> _Pending | None:
        """The hit or miss ``decision_id`` awaiting feedback: this worker's, else (shared) the
        one another worker published, kept here from then on (Redis is read outside the
        lock)."""
        with self._lock:
            pending = self._pending.get(decision_id)
        if pending is not None or self.shared is None:
            return pending
        published = self.shared.get(decision_id)
        if published is None:
            return None
        with self._lock:  # another thread may have kept it meanwhile: one copy only
            pending = self._pending.get(decision_id)
            if pending is None:
                now = self.clock()
                published.expires_at = now + PENDING_FEEDBACK_S
                self._keep(decision_id, published, now)
                pending = published
        return pending

    def _forget(self, pending: _Pending) -> None:
        if pending.feedback is None and pending.arm is not None:
            self._stat(pending.tenant).unrated_expired += 1

    def _expire(self, now: float) -> None:
        while self._pending:
            decision_id, first = next(iter(self._pending.items()))
            if first.expires_at > now:
                break
            del self._pending[decision_id]
            self._forget(first)

    # -- feedback -------------------------------------------------------------------------------
    def lookup(self, decision_id: str) -> tuple[str | None, bool]:
        """What a feedback of ``decision_id`` is to the cache, from one lookup (shared: at
        most one Redis read): ``(tenant, False)`` for a hit awaiting (or holding) feedback,
        ``(None, True)`` for a routed decision whose feedback teaches the cache
        (:meth:`routed_feedback`), ``(None, False)`` for anything else."""
        pending = self._pending_of(decision_id)
        if pending is None:
            return None, False
        return (pending.tenant, False) if pending.hit else (None, True)

    def hit_tenant(self, decision_id: str) -> str | None:
        """The tenant of a hit awaiting (or holding) feedback; None: not a hit (of this worker,
        or, shared, of any)."""
        return self.lookup(decision_id)[0]

    def watches(self, decision_id: str) -> bool:
        """Whether a routed decision's feedback matters to the cache (:meth:`routed_feedback`)."""
        return self.lookup(decision_id)[1]

    def hit_feedback(self, fb: Feedback) -> tuple[Literal["stored", "duplicate"], float]:
        """Learn a hit's feedback: ``(status, reward)``; :class:`HitFeedbackConflict` for a
        different feedback after one, :class:`KeyError` for an unknown hit."""
        try:
            return self._hit_feedback(fb)
        finally:
            if self._outbox:
                self._publish()

    def _hit_feedback(self, fb: Feedback) -> tuple[Literal["stored", "duplicate"], float]:
        pending = self._pending_of(fb.decision_id)
        if pending is None or not pending.hit:
            raise KeyError(fb.decision_id)
        with self._lock:
            if pending.feedback is not None:
                return self._again(pending, fb)
            if self.shared is None:
                return self._rated(pending, fb)
        # Shared: the first feedback anywhere claims the hit in Redis (outside the lock), and
        # only its claimer learns it, whatever raced here or on other workers meanwhile.
        first = self.shared.claim(fb)
        with self._lock:
            if first is None and pending.feedback is None:
                return self._rated(pending, fb)
            if first is not None and pending.feedback is None:  # another worker's, learnt there
                pending.feedback, pending.reward = first, _hit_reward(pending, first)
            return self._again(pending, fb)

    def _rated(
        self, pending: _Pending, fb: Feedback
    ) -> tuple[Literal["stored", "duplicate"], float]:
        """Learn a hit's first feedback (locked)."""
        r = _hit_reward(pending, fb)
        pending.feedback, pending.reward = fb, r
        self._learn(pending, fb.normalized_quality(), r)
        self._stat(pending.tenant).rated_hits += 1
        return "stored", r

    @staticmethod
    def _again(pending: _Pending, fb: Feedback) -> tuple[Literal["stored", "duplicate"], float]:
        """A feedback after the hit's first (locked): a duplicate, or a conflict."""
        if pending.feedback == fb and pending.reward is not None:
            return "duplicate", pending.reward
        raise HitFeedbackConflict(f"decision {fb.decision_id!r} already has a different feedback")

    def routed_feedback(self, decision_id: str, quality: float, reward: float) -> None:
        """A routed decision's stored feedback (quality and the service's reward)."""
        with self._lock:
            pending = self._pending.get(decision_id)
            if pending is None or pending.hit:
                return
            del self._pending[decision_id]
            if pending.arm is not None:
                self._stat(pending.tenant).rated_misses += 1
            self._learn(pending, quality, reward)
        if self._outbox:
            self._publish()

    def _learn(self, pending: _Pending, quality: float, reward: float) -> None:
        tenant, arm = pending.tenant, pending.arm
        if arm is not None:
            self._learner(tenant).learn(arm, reward)
            if self.entries is not None:
                self._outbox.append(lambda e: e.learned(tenant, arm, reward))
        if pending.source is not None and quality < DROP_BELOW:
            store = self._stores.get(pending.tenant)
            key, produced_by = pending.source
            k = (key.scope, key.digest)
            if store is not None and _drop(store, k, produced_by):
                self._stat(pending.tenant).dropped += 1
                if self.entries is not None:
                    self._outbox.append(lambda e: e.remove(tenant, k, produced_by))

    def _publish(self) -> None:
        """Tell the other workers what feedback taught here: rewards and removed answers
        (outside the lock)."""
        with self._lock:
            outbox, self._outbox = self._outbox, []
        if self.entries is not None:
            for publish in outbox:
                publish(self.entries)

    # -- reading --------------------------------------------------------------------------------
    def learner(self, tenant: str) -> ThresholdLearner:
        """``tenant``'s threshold learner."""
        with self._lock:
            return self._learner(tenant)

    def stats(self, tenant: str) -> dict[str, Any]:
        """Counts, entries and the learned threshold of ``tenant`` (this worker)."""
        with self._lock:
            store = self._stores.get(tenant)
            learner = self._learners.get(tenant)
            return {
                **self._stats.get(tenant, TenantStats()).__dict__,
                "entries": len(store.entries) if store is not None else 0,
                "pulls": dict(learner.pulls) if learner is not None else {},
                "means": learner.means() if learner is not None else {},
                "threshold": learner.best() if learner is not None else None,
            }


def _drop(store: _TenantStore, k: tuple[str, str], produced_by: str) -> bool:
    """Remove the entry ``k`` if it is still the answer of decision ``produced_by`` (a newer
    answer to the same request stays); whether it was removed."""
    entry = store.entries.get(k)
    if entry is None or entry.decision_id != produced_by:
        return False
    store.remove(k)
    return True


@dataclass
class EntryChanges:
    """What other workers cached and removed since a read (:meth:`SharedEntries.read`)."""

    items: list[Entry | tuple[tuple[str, str], str]]
    """In order: an entry to keep (its ``expires_at`` on this process's clock), or the key
    and decision of an answer to drop."""
    last_id: str
    """The entries stream's id to read after next time."""
    rewards: list[tuple[str, float]]
    """The threshold learner's rewards other workers learned: ``(arm, reward)``."""
    rewards_last_id: str
    """The rewards stream's id to read after next time."""


class SharedEntries:
    """The cached answers and the threshold learners' rewards of every worker and replica, in
    Redis (``LLMOPT_RESPONSE_CACHE_SHARED``).

    Two streams per tenant. ``<prefix>rcache:rewards:<tenant>``: each reward a worker's
    threshold learner learns, which the others learn too, so the threshold is learned from the
    fleet's feedback. ``<prefix>rcache:entries:<tenant>``: each answer a worker caches is
    added (its scope and message digests, its two vectors, the model, the answer, its decision
    and its expiry on the wall clock), and so is each removal after a bad quality. The stream
    is capped near twice ``max_entries`` (``XADD MAXLEN ~``) and expires ``ttl_s`` (the
    cache's TTL) after its last addition. Each worker reads the new part when it probes that
    tenant, at most every :data:`ENTRY_SYNC_S`, and keeps those entries in its own store, so a
    lookup never waits for Redis; another worker's answer is served here within that
    interval. A worker started later reads both streams whole first. A record it cannot read
    is skipped (logged). Redis down: the calls go through the process's
    :class:`serving.shared_state.RedisHealth`, and each worker serves its own.

    >>> from serving.shared_state import redis_client
    >>> entries = SharedEntries(redis_client("redis://127.0.0.1:1/0"))  # nothing listens there
    >>> entries.read("acme", "0") is None
    True
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = PREFIX,
        health: RedisHealth | None = None,
        max_entries: int = 1000,
        ttl_s: float = 3600.0,
    ) -> None:
        self._r = client
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.health = health or RedisHealth(where(client))
        self.max_len = 2 * max_entries
        self.worker = new_decision_id()
        """This process's name in the stream: its own additions are not read back."""

    def key(self, tenant: str, kind: str = "entries") -> str:
        """The tenant's stream of answers (or, ``kind="rewards"``, of its learner's rewards)."""
        return f"{self.prefix}rcache:{kind}:{tenant}"

    def _add(self, key: str, fields: Mapping[str, str | bytes], max_len: int, ttl_s: float) -> None:
        def shared() -> None:
            pipe = self._r.pipeline(transaction=False)
            pipe.xadd(key, fields, maxlen=max_len, approximate=True)  # type: ignore[arg-type]
            pipe.expire(key, max(1, math.ceil(ttl_s)))
            pipe.execute()

        self.health.call(shared, lambda: None)

    def put(self, tenant: str, entry: Entry) -> None:
        """Publish an answer this worker cached (valid ``ttl_s`` from now)."""
        k = entry.key
        fields: dict[str, str | bytes] = {
            "w": self.worker,
            "scope": k.scope,
            "digest": k.digest,
            "decision": entry.decision_id,
            "model": entry.model,
            "answer": fast_json.dumps_bytes(entry.answer),
            "whole": k.whole.astype(np.float32).tobytes() if k.whole is not None else b"",
            "last": k.last.astype(np.float32).tobytes() if k.last is not None else b"",
            "expires": repr(time.time() + self.ttl_s),
        }
        self._add(self.key(tenant), fields, self.max_len, self.ttl_s)

    def remove(self, tenant: str, k: tuple[str, str], produced_by: str) -> None:
        """Publish that the answer ``k`` of decision ``produced_by`` left this worker's cache."""
        fields = {"w": self.worker, "scope": k[0], "digest": k[1], "decision": produced_by}
        self._add(self.key(tenant), {**fields, "drop": "1"}, self.max_len, self.ttl_s)

    def learned(self, tenant: str, arm: str, reward: float) -> None:
        """Publish a reward this worker's threshold learner learned (the stream keeps the last
        :data:`MAX_SHARED_REWARDS`, for a day after the last)."""
        fields = {"w": self.worker, "arm": arm, "reward": repr(reward)}
        self._add(self.key(tenant, "rewards"), fields, MAX_SHARED_REWARDS, PENDING_FEEDBACK_S)

    def read(
        self,
        tenant: str,
        after: str,
        rewards_after: str = "0",
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> EntryChanges | None:
        """Other workers' additions, removals and rewards after the stream ids ``after`` and
        ``rewards_after`` ("0": all), each entry's expiry converted to ``clock`` (None: nothing
        new, or Redis down). One ``XREAD`` of both streams."""
        entries_key, rewards_key = self.key(tenant), self.key(tenant, "rewards")

        def shared() -> Any:
            return self._r.xread(
                {entries_key: after, rewards_key: rewards_after},
                count=max(self.max_len, MAX_SHARED_REWARDS),
            )

        answer = self.health.call(shared, lambda: None)
        if not answer:
            return None
        changes = EntryChanges([], after, [], rewards_after)
        for stream, records in answer:
            if stream.decode() == rewards_key:
                changes.rewards_last_id = records[-1][0].decode()
                changes.rewards += self._rewards(records)
            else:
                changes.last_id = records[-1][0].decode()
                changes.items += self._entries(records, clock)
        return changes

    def _rewards(self, records: list[Any]) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        for record_id, f in records:
            try:
                if f[b"w"].decode() != self.worker:
                    out.append((f[b"arm"].decode(), float(f[b"reward"])))
            except (KeyError, ValueError) as exc:  # not ours to fail a request: skipped
                log.warning(
                    "response cache: unreadable shared reward %r skipped: %r", record_id, exc
                )
        return out

    def _entries(
        self, records: list[Any], clock: Callable[[], float]
    ) -> list[Entry | tuple[tuple[str, str], str]]:
        now, wall = clock(), time.time()
        items: list[Entry | tuple[tuple[str, str], str]] = []
        for record_id, f in records:
            try:
                item = self._entry(f, now, wall)
            except (KeyError, ValueError) as exc:  # not ours to fail a request: skipped
                log.warning(
                    "response cache: unreadable shared entry %r skipped: %r", record_id, exc
                )
                continue
            if item is not None:
                items.append(item)
        return items

    def _entry(
        self, f: Mapping[bytes, bytes], now: float, wall: float
    ) -> Entry | tuple[tuple[str, str], str] | None:
        """One record: an entry, a removal, or None (this worker's own)."""
        if f[b"w"].decode() == self.worker:
            return None
        k = (f[b"scope"].decode(), f[b"digest"].decode())
        decision = f[b"decision"].decode()
        if b"drop" in f:
            return k, decision
        whole, last = f[b"whole"], f[b"last"]
        key = CacheKey(
            k[0],
            k[1],
            np.frombuffer(whole, dtype=np.float32).copy() if whole else None,
            np.frombuffer(last, dtype=np.float32).copy() if last else None,
        )
        answer = fast_json.loads(f[b"answer"])
        if not isinstance(answer, dict):
            raise ValueError("the answer is not a JSON object")
        expires = now + float(f[b"expires"]) - wall
        return Entry(key, f[b"model"].decode(), answer, decision, expires)


def _hit_reward(pending: _Pending, fb: Feedback) -> float:
    """The reward of a hit's feedback: its quality at the cost it reports (else 0) and its
    latency (else the hit's own), under the request's trade-off."""
    return reward_of(
        fb.normalized_quality(),
        fb.cost_usd if fb.cost_usd is not None else 0.0,
        fb.latency_ms if fb.latency_ms is not None else pending.latency_ms,
        willingness_to_pay=pending.willingness_to_pay,
        latency_weight=pending.latency_weight,
    )


class SharedPending:
    """The hits and misses awaiting feedback, in Redis, for every worker and replica.

    Each is one key, ``<prefix>rcache:pending:<decision id>`` (its tenant, drawn arm, whether
    it was a hit, the hit's latency and the request's trade-off; never the prompt or the
    answer), written when it is served and expiring after :data:`PENDING_FEEDBACK_S`. A
    worker asked for feedback it does not hold reads it (one GET) and keeps it. A hit's first
    feedback claims it (``<prefix>rcache:feedback:<decision id>``, ``SET NX``), so exactly one
    worker learns it. Redis down: the calls go through the process's
    :class:`serving.shared_state.RedisHealth` and each worker knows only its own, as without
    sharing.

    >>> from serving.shared_state import redis_client
    >>> shared = SharedPending(redis_client("redis://127.0.0.1:1/0"))  # nothing listens there
    >>> shared.put("d1", _Pending("acme", "0.94", 0.0, hit=True)); shared.get("d1") is None
    True
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str = PREFIX, health: RedisHealth | None = None
    ) -> None:
        self._r = client
        self.prefix = prefix
        self.health = health or RedisHealth(where(client))
        self._ttl_ms = round(PENDING_FEEDBACK_S * 1000)

    def key(self, decision_id: str, kind: str = "pending") -> str:
        """The Redis key of a decision's pending record (or, ``kind="feedback"``, its claim)."""
        return f"{self.prefix}rcache:{kind}:{decision_id}"

    def put(self, decision_id: str, pending: _Pending) -> None:
        """Publish what ``decision_id`` waits for (one ``SET ... PX``)."""
        doc = {
            "tenant": pending.tenant,
            "arm": pending.arm,
            "hit": pending.hit,
            "latency_ms": pending.latency_ms,
            "willingness_to_pay": pending.willingness_to_pay,
            "latency_weight": pending.latency_weight,
        }
        self.health.call(
            lambda: self._r.set(self.key(decision_id), fast_json.dumps_bytes(doc), px=self._ttl_ms),
            lambda: None,
        )

    def get(self, decision_id: str) -> _Pending | None:
        """What another worker published for ``decision_id`` (None: nothing, or Redis down).
        Its answer's entry stays that worker's: a bad quality does not remove it here."""
        raw = self.health.call(lambda: self._r.get(self.key(decision_id)), lambda: None)
        if not isinstance(raw, bytes):
            return None
        doc = fast_json.loads(raw)
        return _Pending(
            str(doc["tenant"]),
            doc["arm"],
            0.0,
            hit=bool(doc["hit"]),
            latency_ms=float(doc["latency_ms"]),
            willingness_to_pay=float(doc["willingness_to_pay"]),
            latency_weight=float(doc["latency_weight"]),
        )

    def claim(self, fb: Feedback) -> Feedback | None:
        """Claim a hit for ``fb`` (None: claimed, or Redis down), else the feedback that
        claimed it first."""
        key, doc = self.key(fb.decision_id, "feedback"), fb.model_dump_json()

        def shared() -> Feedback | None:
            if self._r.set(key, doc, nx=True, px=self._ttl_ms):
                return None
            first = self._r.get(key)
            return Feedback.model_validate_json(first) if isinstance(first, bytes) else None

        return self.health.call(shared, lambda: None)


def _string_contents(messages: Iterable[Any]) -> str:
    return "\n".join(
        m["content"] for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)
    )


def assemble(chunks: Iterable[Mapping[str, Any]], model: str, usage: Any) -> dict[str, Any] | None:
    """A streamed answer's chunks as one chat completion (None: not one plain text answer).

    >>> c = assemble([{"id": "x", "created": 1, "choices": [{"index": 0, "delta": {"role":
    ...     "assistant", "content": "Hel"}}]}, {"choices": [{"index": 0, "delta": {"content":
    ...     "lo"}, "finish_reason": "stop"}]}], "gpt-4o", None)
    >>> c["choices"][0]["message"], c["choices"][0]["finish_reason"], c["model"]
    ({'role': 'assistant', 'content': 'Hello'}, 'stop', 'gpt-4o')
    """
    text: list[str] = []
    finish: Any = None
    first: Mapping[str, Any] = {}
    for chunk in chunks:
        first = first or chunk
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                return None
            delta = choice.get("delta") or {}
            if delta.get("tool_calls") or delta.get("function_call"):
                return None
            if isinstance(delta.get("content"), str):
                text.append(delta["content"])
            finish = choice.get("finish_reason") or finish
    if not text:
        return None
    out: dict[str, Any] = {
        "id": first.get("id", ""),
        "object": "chat.completion",
        "created": first.get("created", int(time.time())),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(text)},
                "finish_reason": finish,
            }
        ],
    }
    if isinstance(usage, dict):
        out["usage"] = usage
    return out


def answer_text(answer: Mapping[str, Any]) -> str | None:
    """The text of a stored chat completion's first choice (None: it has none)."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else None


REPLAY_CHARS = 64
"""Characters per content chunk of a streamed hit."""


def replay(
    answer: Mapping[str, Any], model: str, completion_id: str, *, include_usage: bool
) -> list[dict[str, Any]]:
    """A cached answer as the chunks of a stream (the ``data: [DONE]`` line is the caller's).

    >>> chunks = replay({"choices": [{"message": {"role": "assistant", "content": "Hi"},
    ...     "finish_reason": "stop"}], "usage": {"total_tokens": 3}}, "gpt-4o", "c1",
    ...     include_usage=True)
    >>> [c["choices"][0]["delta"] if c["choices"] else c["usage"] for c in chunks]
    [{'role': 'assistant', 'content': ''}, {'content': 'Hi'}, {}, {'total_tokens': 3}]
    """
    text = answer_text(answer) or ""
    choice = answer["choices"][0] if answer.get("choices") else {}
    base = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish: Any = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out = [chunk({"role": "assistant", "content": ""})]
    out += [
        chunk({"content": text[i : i + REPLAY_CHARS]}) for i in range(0, len(text), REPLAY_CHARS)
    ]
    out.append(chunk({}, choice.get("finish_reason") or "stop"))
    if include_usage and isinstance(answer.get("usage"), dict):
        out.append({**base, "choices": [], "usage": answer["usage"]})
    return out
