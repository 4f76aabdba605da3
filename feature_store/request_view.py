"""The on-demand request view's transformation: ``llmopt.features.request_features``, batched.

Feast's python-mode on-demand view calls :func:`transform` with columns (``prompt``,
``task_hints``: one list entry per row). Rows that share a request (the router asks for every
candidate model at once, so every row carries the same prompt) are computed once.
Client features (hashed into ``cf_<i>`` buckets) are not part of the view.

Examples
--------
>>> out = transform({"prompt": ["What is 2 + 2?", "What is 2 + 2?"], "task_hints": [["math"]] * 2})
>>> out["hint_math"], out["bias"]
([1.0, 1.0], [1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmopt.features import request_features
from llmopt.tasks import KNOWN_HINTS


def request_feature_columns() -> list[str]:
    """Names of the view's fields, in the order ``request_features`` produces them."""
    return list(request_features(""))


_PREFIXED = {
    "hint_": "1 if the client's task hints include '{}' (other: none of the known)",
    "hw_": "signed hashed-word bucket {}, L2-normalised over the prompt's words",
    "pfx_": "1 if the prompt's opening (its template) hashes to bucket {}",
    "script_": "share of letters in the {} script",
    "emb_": (
        "prompt embedding, dimension {} of 32 (WordLlama mean token vector, PCA-projected "
        "without labels, unit length; llmopt.embeddings)"
    ),
    "q_": "question type marker '{}' (wh-question, yes/no, imperative, '?')",
}


def _describe(name: str) -> str:
    for prefix, text in _PREFIXED.items():
        if name.startswith(prefix):
            return text.format(name[len(prefix) :])
    return {
        "bias": "constant 1 (intercept)",
        "has_prompt": "1 if the request carries a prompt",
        "len_chars": "log-scaled prompt length in characters (1 = 100k)",
        "len_words": "log-scaled prompt length in words (1 = 20k)",
        "len_tokens": "log-scaled estimated prompt tokens (1 = 25k)",
        "n_lines": "log-scaled number of lines in the scanned text (1 = 500)",
        "digits": "share of digits in the scanned text",
        "code": "code markers (symbols and keywords), capped at 1",
        "math": "math markers (formulas and keywords), capped at 1",
        "choices": "multiple-choice markers, capped at 1",
        "lang_en": "English stop-word density, capped at 1",
    }.get(name, name)


REQUEST_FEATURE_DESCRIPTIONS = {name: _describe(name) for name in request_feature_columns()}
"""Field name -> description of the on-demand request view."""

_HINTS = frozenset(KNOWN_HINTS)


def _hints(value: Any) -> Sequence[str]:
    if value is None:
        return ()
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def transform(inputs: dict[str, Any]) -> dict[str, Any]:
    """Request features for every row of ``inputs`` (columns), one computation per request."""
    prompts = list(inputs.get("prompt") or [])
    hints_col = list(inputs.get("task_hints") or [None] * len(prompts))
    names = request_feature_columns()
    out: dict[str, list[float]] = {name: [] for name in names}
    cache: dict[tuple[str | None, tuple[str, ...]], dict[str, float]] = {}
    for prompt, hints in zip(prompts, hints_col, strict=True):
        key = (prompt, tuple(_hints(hints)))
        feats = cache.get(key)
        if feats is None:
            feats = cache[key] = request_features(prompt, task_hints=key[1])
        for name in names:
            out[name].append(feats[name])
    return out
