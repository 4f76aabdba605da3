from __future__ import annotations

import math
import zlib

import pytest

from llmopt.features import (
    N_CLIENT_BUCKETS,
    N_HASH_BUCKETS,
    estimate_tokens,
    request_features,
)
from llmopt.tasks import KNOWN_HINTS

PROMPTS = [
    None,
    "",
    "hi",
    "What is the capital of France?",
    "Write a Python function that reverses a list.\n```python\ndef rev(xs): return xs[::-1]\n```",
    "Solve for x: 3x + 5 = 20. Show the equation steps.",
    "Which is correct?\nA) red\nB) blue\nC) green\nAnswer:",
    "Привет! Как дела? Расскажи о погоде.",
    "请解释一下量子计算的基本原理",
    "مرحبا كيف حالك",
    "x" * 500_000,
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_same_keys_finite_and_bounded(prompt: str | None) -> None:
    f = request_features(prompt)
    assert set(f) == set(request_features("reference prompt"))
    assert all(math.isfinite(v) for v in f.values())
    assert all(-1.0 <= v <= 1.0 for v in f.values())
    assert f["bias"] == 1.0


def test_markers() -> None:
    code = request_features(PROMPTS[4])
    math_ = request_features(PROMPTS[5])
    plain = request_features(PROMPTS[3])
    assert code["code"] > 0.5 > plain["code"]
    assert math_["math"] > 0.5 > plain["math"]
    assert request_features(PROMPTS[6])["choices"] > 0.5
    assert plain["q_wh"] == 1.0 and plain["q_mark"] == 1.0
    assert request_features("Write a poem")["q_imperative"] == 1.0
    assert request_features("Is it raining?")["q_yesno"] == 1.0
    assert plain["lang_en"] > 0.5


@pytest.mark.parametrize(
    ("prompt", "script"),
    [
        (PROMPTS[7], "script_cyrillic"),
        (PROMPTS[8], "script_cjk"),
        (PROMPTS[9], "script_arabic"),
        (PROMPTS[3], "script_latin"),
    ],
)
def test_script(prompt: str, script: str) -> None:
    f = request_features(prompt)
    assert f[script] > 0.8
    assert sum(v for k, v in f.items() if k.startswith("script_")) == pytest.approx(1.0)


def test_task_hints_and_client_features() -> None:
    f = request_features(
        "x", task_hints=["Code", "banana"], client_features={"tier": "gold", "load": 0.3}
    )
    assert f["hint_code"] == 1.0 and f["hint_other"] == 1.0
    assert all(f[f"hint_{h}"] == 0.0 for h in KNOWN_HINTS if h != "code")
    cf = {k: v for k, v in f.items() if k.startswith("cf_")}
    assert sorted(round(abs(v), 6) for v in cf.values() if v) == [0.3, 1.0]


def test_client_feature_names_cannot_grow_the_dimension() -> None:
    # New names on every request must not add features (each would grow every linear model).
    seen: set[str] = set()
    for i in range(50):
        f = request_features("x", client_features={f"k{i}_{j}": 1.0 for j in range(256)})
        seen |= set(f)
    assert len(seen - set(request_features("x"))) <= N_CLIENT_BUCKETS


def test_hashed_words_stable_normalised_and_sized() -> None:
    a = request_features("the quick brown fox jumps")
    b = request_features("The QUICK brown fox jumps")
    hw = [a[f"hw_{i}"] for i in range(N_HASH_BUCKETS)]
    assert hw == [b[f"hw_{i}"] for i in range(N_HASH_BUCKETS)]
    assert math.sqrt(sum(v * v for v in hw)) == pytest.approx(1.0)
    assert len([k for k in request_features("x y", n_hash_buckets=4) if k.startswith("hw_")]) == 4


def test_hashed_words_the_same_whatever_the_word_cache_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The words' hashes are kept in a bounded cache: cold, warm or cleared when full, the
    buckets are the same (CRC-32 of each word, as computed afresh)."""
    from llmopt import features  # noqa: PLC0415

    words = [f"w{i}x" for i in range(40)]
    monkeypatch.setattr(features, "_WORD_HASHES", {})
    cold = features.hashed_words(words)
    warm = features.hashed_words(words)
    monkeypatch.setattr(features, "_WORD_HASHES", {})
    monkeypatch.setattr(features, "WORD_HASH_CACHE_SIZE", 7)  # cleared several times per call
    small = features.hashed_words(words)
    assert cold == warm == small
    assert len(features._WORD_HASHES) <= 7
    buckets = [0.0] * N_HASH_BUCKETS
    for w in words:
        h = zlib.crc32(w.encode())
        buckets[h % N_HASH_BUCKETS] += 1.0 if (h >> 16) & 1 else -1.0
    norm = math.sqrt(sum(b * b for b in buckets))
    assert [cold[f"hw_{i}"] for i in range(N_HASH_BUCKETS)] == [b / norm for b in buckets]


def test_lengths_grow_with_text() -> None:
    short, long = request_features("a b c"), request_features("word " * 2000)
    assert long["len_chars"] > short["len_chars"] and long["len_words"] > short["len_words"]
    assert estimate_tokens("") == 0 and estimate_tokens("abcde") == 2
