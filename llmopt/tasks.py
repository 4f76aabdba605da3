"""Task hints and task types: the one vocabulary of what kind of work a request is.

A client may send ``task_hints`` with a request (``["code"]``, ``["Math", "reasoning"]``). They
are cleaned once, here (:func:`clean_hints`: trimmed, lower-cased, empty ones dropped, duplicates
removed, order kept), then used as features (``hint_<name>``, :mod:`llmopt.features`), as the
task type that keys the per-task statistics of the feature store and of the tuned parameters
(:func:`task_type`), and as a report column (monitoring).

Examples
--------
>>> clean_hints([" Code", "math", "", "code"])
['code', 'math']
>>> task_type(["Code", "math"]), task_type([]), task_type(["poetry"])
('code', 'general', 'other')
"""

from __future__ import annotations

from collections.abc import Iterable

KNOWN_HINTS = (
    "code",
    "math",
    "reasoning",
    "summarize",
    "translate",
    "extraction",
    "classification",
    "creative",
    "chat",
)
"""Hints the router knows; each is a one-hot request feature and a task type of its own."""

GENERAL_TASK = "general"
"""Task type of a request without hints."""
OTHER_TASK = "other"
"""Task type of a request whose hints are all unknown."""


def clean_hints(hints: Iterable[object] | None) -> list[str]:
    """The hints trimmed and lower-cased, empty ones dropped, each once, in their order."""
    if not hints:
        return []
    cleaned = (str(h).strip().lower() for h in hints)
    return list(dict.fromkeys(h for h in cleaned if h))


def task_type(hints: Iterable[object] | None) -> str:
    """The task type of a request: its first known hint, else ``other`` / ``general``."""
    if not hints:
        return GENERAL_TASK
    cleaned = clean_hints(hints)
    for hint in cleaned:
        if hint in KNOWN_HINTS:
            return hint
    return OTHER_TASK if cleaned else GENERAL_TASK
