"""One model per conversation: the gateway's conversation affinity.

A provider's prompt cache (OpenAI, Anthropic, vLLM's prefix cache) only pays off when every turn
of a conversation goes to the same model; a router that re-decides each turn throws that cache
away, and users notice the style changing mid-conversation (plano #813, semantic-router #2503).
A request that names its conversation (``"llmopt": {"conversation": "c-123"}`` in the gateway's
body) keeps the model its first turn got, as long as that model stays allowed for the request
and its circuit breaker is closed; otherwise the router decides again and the conversation
moves to the new model. The pinned decision is logged like any other (its propensity is 1:
given the conversation, nothing else could have been chosen).

The map is per worker process and bounded (least recently used conversations are forgotten
first), so with several workers or replicas a conversation stays pinned only where its turns
land; a shared map (Redis) is issue 18's shared state.

>>> pins = ConversationAffinity(max_conversations=2)
>>> pins.pin("c1", "gpt-4o"); pins.pin("c2", "o3-mini"); pins.pin("c3", "gpt-4o-mini")
>>> pins.model("c1") is None, pins.model("c3")  # c1 was the least recently used
(True, 'gpt-4o-mini')
"""

from __future__ import annotations

import threading
from collections import OrderedDict

DEFAULT_MAX_CONVERSATIONS = 100_000


class ConversationAffinity:
    """Conversation id -> the model its turns go to (bounded LRU, thread-safe)."""

    def __init__(self, max_conversations: int = DEFAULT_MAX_CONVERSATIONS) -> None:
        if max_conversations < 1:
            raise ValueError(f"max_conversations must be >= 1, got {max_conversations}")
        self.max_conversations = max_conversations
        self._pins: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def model(self, conversation: str) -> str | None:
        """The conversation's model (None: a new or forgotten conversation)."""
        with self._lock:
            model = self._pins.get(conversation)
            if model is not None:
                self._pins.move_to_end(conversation)
            return model

    def pin(self, conversation: str, model: str) -> None:
        """The conversation's turns go to ``model`` from now on."""
        with self._lock:
            self._pins[conversation] = model
            self._pins.move_to_end(conversation)
            while len(self._pins) > self.max_conversations:
                self._pins.popitem(last=False)

    def __len__(self) -> int:
        return len(self._pins)
