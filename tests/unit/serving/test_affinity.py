"""Conversation affinity: pinned, refreshed on use, bounded."""

from __future__ import annotations

import pytest

from serving.affinity import ConversationAffinity


def test_use_refreshes_and_the_oldest_is_forgotten() -> None:
    pins = ConversationAffinity(max_conversations=2)
    pins.pin("a", "m1")
    pins.pin("b", "m2")
    assert pins.model("a") == "m1"  # a is now the most recently used
    pins.pin("c", "m3")
    assert pins.model("b") is None and pins.model("a") == "m1" and len(pins) == 2
    pins.pin("a", "m4")  # a conversation moves to another model
    assert pins.model("a") == "m4"
    with pytest.raises(ValueError):
        ConversationAffinity(0)
