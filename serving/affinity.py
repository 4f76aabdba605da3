"""One model per conversation: the gateway's conversation affinity.

A provider's prompt cache (OpenAI, Anthropic, vLLM's prefix cache) only pays off when every turn
of a conversation goes to the same model; a router that re-decides each turn throws that cache
away, and users notice the style changing mid-conversation (plano #813, semantic-router #2503).
A request that names its conversation (``"llmopt": {"conversation": "c-123"}`` in the gateway's
body) keeps the model its first turn got, as long as that model stays allowed for the request
and its circuit breaker is closed; otherwise the router decides again and the conversation
moves to the new model. The pinned decision is logged like any other (its propensity is 1:
given the conversation, nothing else could have been chosen).

A conversation belongs to its tenant: the map's key is :func:`conversation_key`, so two
tenants naming the same conversation id never share (or move) each other's pins.

Every answered turn pins again, so a conversation is forgotten ``ttl_s``
(``LLMOPT_SERVING_AFFINITY_TTL_S``, 24 h) after its last turn. Where the map lives:

- :class:`ConversationAffinity` (``LLMOPT_SERVING_SHARED_STATE=local``): per worker process,
  bounded (least recently used conversations are forgotten first), so with several workers or
  replicas a conversation stays pinned only where its turns land.
- :class:`RedisConversationAffinity` (``redis``): one map for every worker and replica, a key
  per conversation (``<prefix>affinity:<key>``, expiring ``ttl_s`` after its last pin,
  so the TTL bounds it, not a count). A turn that names a conversation costs one GET, and one
  ``SET ... PX`` once answered; other requests cost nothing. Redis down: the calls go through
  the process's :class:`serving.shared_state.RedisHealth` like the other shared guards, and are
  answered by this worker's own map, which every pin also fills (so it holds the conversations
  this worker served, and those pinned during the outage; a conversation Redis does not know
  is looked up there too, so those return to Redis with their next turn). ``/readyz`` says
  ``degraded`` meanwhile, never a 500.

>>> pins = ConversationAffinity(max_conversations=2)
>>> pins.pin("c1", "gpt-4o"); pins.pin("c2", "o3-mini"); pins.pin("c3", "gpt-4o-mini")
>>> pins.model("c1") is None, pins.model("c3")  # c1 was the least recently used
(True, 'gpt-4o-mini')
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import redis

from llmopt.settings import Settings
from serving.shared_state import PREFIX, RedisHealth, SharedState, where

DEFAULT_MAX_CONVERSATIONS = 100_000
"""Conversations one worker's own map holds (the least recently used go first)."""
DEFAULT_TTL_S = 86_400.0
"""A conversation is forgotten this long after its last pin."""


def conversation_key(tenant: str, conversation: str) -> str:
    """The map's key of a tenant's conversation (the tenant's length first: unambiguous
    whatever either contains).

    >>> conversation_key("acme", "c-123"), conversation_key("a:1", "c")
    ('4:acme:c-123', '3:a:1:c')
    """
    return f"{len(tenant)}:{tenant}:{conversation}"


class ConversationAffinity:
    """Conversation id -> the model its turns go to (bounded LRU with a TTL, thread-safe).

    Parameters
    ----------
    max_conversations
        Conversations held (the least recently used are forgotten first).
    ttl_s
        Seconds after its last pin at which a conversation is forgotten.
    clock
        Monotonic seconds (tests set it).
    """

    def __init__(
        self,
        max_conversations: int = DEFAULT_MAX_CONVERSATIONS,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_conversations < 1:
            raise ValueError(f"max_conversations must be >= 1, got {max_conversations}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.max_conversations = max_conversations
        self.ttl_s = ttl_s
        self._clock = clock
        self._pins: OrderedDict[str, tuple[str, float]] = OrderedDict()
        """Conversation -> (model, when it expires)."""
        self._lock = threading.Lock()

    def model(self, conversation: str) -> str | None:
        """The conversation's model (None: a new or forgotten conversation)."""
        with self._lock:
            pinned = self._pins.get(conversation)
            if pinned is None:
                return None
            model, expires = pinned
            if self._clock() >= expires:
                del self._pins[conversation]
                return None
            self._pins.move_to_end(conversation)
            return model

    def pin(self, conversation: str, model: str) -> None:
        """The conversation's turns go to ``model`` from now on (for ``ttl_s``)."""
        with self._lock:
            self._pins[conversation] = (model, self._clock() + self.ttl_s)
            self._pins.move_to_end(conversation)
            while len(self._pins) > self.max_conversations:
                self._pins.popitem(last=False)

    def __len__(self) -> int:
        return len(self._pins)


class RedisConversationAffinity(ConversationAffinity):
    """:class:`ConversationAffinity` shared by every worker and replica through Redis (see the
    module docstring); this worker's own map answers while Redis does not.

    Parameters
    ----------
    client
        Redis client (:func:`serving.shared_state.redis_client`).
    prefix
        Key prefix.
    health
        Shared with the process's other shared objects (default: a fresh one).
    max_conversations, ttl_s, clock
        As for :class:`ConversationAffinity` (``ttl_s`` is the keys' expiry too).

    Examples
    --------
    Nothing listens on port 1: the worker's own map answers, and says why.

    >>> from serving.shared_state import redis_client
    >>> pins = RedisConversationAffinity(redis_client("redis://127.0.0.1:1/0"))
    >>> pins.pin("c1", "gpt-4o"); pins.model("c1"), pins.shared
    ('gpt-4o', False)
    >>> pins.degraded.split(" since")[0]
    'shared state unavailable'
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = PREFIX,
        health: RedisHealth | None = None,
        max_conversations: int = DEFAULT_MAX_CONVERSATIONS,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(max_conversations, ttl_s=ttl_s, clock=clock)
        self._r = client
        self.prefix = prefix
        self.health = health or RedisHealth(where(client))
        self._ttl_ms = max(1, round(ttl_s * 1000))

    def key(self, conversation: str) -> str:
        """The conversation's key in Redis."""
        return f"{self.prefix}affinity:{conversation}"

    @property
    def shared(self) -> bool:
        """True while Redis holds the map."""
        return self.health.up

    @property
    def degraded(self) -> str | None:
        """Why the shared map is not in use (None: it is)."""
        return self.health.degraded

    def model(self, conversation: str) -> str | None:
        """The conversation's model: one GET; unknown to Redis (or Redis down), this worker's."""

        def shared() -> str | None:
            raw = self._r.get(self.key(conversation))
            return raw.decode() if isinstance(raw, bytes) else None

        def local() -> str | None:
            return ConversationAffinity.model(self, conversation)

        return self.health.call(shared, lambda: None) or local()

    def pin(self, conversation: str, model: str) -> None:
        """Pin in Redis (one ``SET ... PX``) and in this worker's own map (the fallback)."""
        ConversationAffinity.pin(self, conversation, model)
        self.health.call(
            lambda: self._r.set(self.key(conversation), model, px=self._ttl_ms), lambda: None
        )


def conversation_affinity(
    settings: Settings, shared: SharedState | None = None
) -> ConversationAffinity:
    """The affinity the settings ask for: in Redis with the process's shared state (its client,
    prefix and health), else this worker's own; both forget after ``serving_affinity_ttl_s``."""
    ttl_s = settings.serving_affinity_ttl_s
    if shared is None:
        return ConversationAffinity(ttl_s=ttl_s)
    return RedisConversationAffinity(
        shared.client, prefix=shared.prefix, health=shared.health, ttl_s=ttl_s
    )
