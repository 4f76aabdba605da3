"""Prompt embeddings: WordLlama's own vectors from the wheel's files, projected, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmopt.embeddings import (
    FEATURE_NAMES,
    MAX_EMBED_CHARS,
    EmbeddingError,
    Projection,
    PromptEmbedder,
    fit_projection,
    get_embedder,
    package_folder,
)
from llmopt.features import request_features
from llmopt.routing_data import DEMO_DATA, load_routing_data

TEXTS = [
    "How do I reverse a list in Python?",
    "Natalia sold clips to 48 of her friends in April. How many clips did she sell?",
    "运行中变压器温度最高的部分是\nA. 绕组\nB. 变压器油",
    "def add(a, b):\n    return a + b",
]


def test_raw_vectors_are_wordllamas_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any download attempt would fail loudly
    from wordllama import WordLlama  # type: ignore[import-untyped]  # noqa: PLC0415

    wl = WordLlama.load(cache_dir=package_folder(), disable_download=True)
    ours = get_embedder().raw(TEXTS)
    assert ours.shape == (len(TEXTS), 256)
    np.testing.assert_allclose(ours, wl.embed(TEXTS), atol=1e-6)


def test_word_by_word_tokenization_matches_the_whole_text() -> None:
    e = get_embedder()
    e.features("warm")  # loads
    for text in TEXTS:
        whole = e._tokenizer.encode(text, add_special_tokens=False).ids
        if "  " not in text:
            assert e._ids(text).tolist() == whole
        else:  # runs of spaces (indented code) tokenize a little differently: same direction
            a = e._weights[e._ids(text)].mean(axis=0)  # type: ignore[index]
            b = e._weights[whole].mean(axis=0)  # type: ignore[index]
            assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.95


def test_words_encoded_together_get_the_ids_each_gets_alone() -> None:
    e = PromptEmbedder()
    e.features("warm")  # loads
    words = [
        *"The quick brown fox jumps over the lazy dog, twice.".split(" "),
        *["naïve", "中文", "😀🚀", "x\ty", "\n\nA.", "snake_case", "3.14159", "(a+b)^2"],
        *["", "wor\u2581ld", "\u2581", "</s>", "a<s>b", "<unk>x"],  # each encoded alone
    ]
    tokenizer = e._tokenizer
    calls: list[str] = []

    class Counting:
        def encode(self, text: str, **kwargs: bool) -> Any:
            calls.append(text)
            return tokenizer.encode(text, **kwargs)

    e._tokenizer = Counting()
    got = e._encode_words(words)
    assert len(calls) == 1 + 6  # the plain words in one call, the six others one by one
    encode = tokenizer.encode
    for w in words:
        assert (
            np.frombuffer(got[w], dtype=np.int32).tolist()
            == encode(w, add_special_tokens=False).ids
        ), w


def _reference_features(e: PromptEmbedder, text: str) -> np.ndarray:
    """The formula as first written: the float32 mean of the token vectors of the words each
    encoded alone, normalised, centred, projected, normalised (issue 13 sped it up)."""
    key = text[:MAX_EMBED_CHARS]
    encode = e._tokenizer.encode
    ids = [i for w in key.split(" ") for i in encode(w, add_special_tokens=False).ids]
    out = np.zeros(len(FEATURE_NAMES))
    if key.strip() and ids:
        raw = e._weights[ids].mean(axis=0)  # type: ignore[index]
        p = e.projection
        z = (raw / (float(np.sqrt(raw @ raw)) or 1.0) - p.mean) @ p.components
        if z @ z > 0:
            out = z / np.sqrt(z @ z)
    return out


def test_features_match_the_mean_of_token_vectors_on_every_shipped_prompt() -> None:
    e = PromptEmbedder()
    e.features("warm")  # loads
    prompts = [*TEXTS, "  two  spaces ", "\n\n", *load_routing_data(DEMO_DATA).prompts]
    for text in prompts:
        got = np.array(list(e.features(text).values()))
        np.testing.assert_allclose(got, _reference_features(e, text), rtol=0, atol=1e-6)


def test_features_are_unit_vectors_named_emb_and_cached() -> None:
    e = get_embedder()
    for text in TEXTS:
        f = e.features(text)
        assert tuple(f) == FEATURE_NAMES
        assert sum(v * v for v in f.values()) == pytest.approx(1.0)
        assert e.features(text) is f  # cached
    assert set(e.features(None).values()) == {0.0} == set(e.features("   ").values())


def test_similar_prompts_are_closer_than_different_tasks() -> None:
    e = get_embedder()

    def vec(t: str) -> np.ndarray:
        return np.array(list(e.features(t).values()))

    maths1 = vec("John has 5 apples and buys 3 more. How many apples does he have now?")
    maths2 = vec("A train travels 60 miles in 2 hours. What is its average speed in mph?")
    chinese = vec("企业部部门关系建设的原则是\nA. 沟通与创新\nB. 沟通与协调")
    assert maths1 @ maths2 > maths1 @ chinese + 0.1


def test_only_the_opening_of_a_huge_prompt_is_embedded() -> None:
    e = get_embedder()
    head = "Summarise the following report. " * 100
    assert len(head) > MAX_EMBED_CHARS
    assert e.features(head + "x" * 100_000) == e.features(head + "y" * 50)


def test_request_features_carry_the_embedding_unless_asked_not_to() -> None:
    with_emb = request_features("What is 2 + 2?")
    assert all(name in with_emb for name in FEATURE_NAMES)
    without = request_features("What is 2 + 2?", embeddings=False)
    assert not any(name.startswith("emb_") for name in without)


def test_a_broken_install_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingError, match="cannot load WordLlama"):
        PromptEmbedder(folder=tmp_path).features("hello")


def test_version_names_weights_and_projection() -> None:
    e = get_embedder()
    assert e.version.startswith("wordllama-l2_supercat_256+pca32-")
    assert e.version.endswith(Projection.load().digest)


def test_fit_projection_is_unsupervised_and_round_trips(tmp_path: Path) -> None:
    vectors = get_embedder().raw(TEXTS * 10)
    p = fit_projection(vectors, n_dims=3)
    path = tmp_path / "p.npz"
    p.save(path)
    q = Projection.load(path)
    assert q.components.shape == (256, 3) and q.digest == p.digest
    np.testing.assert_allclose(np.linalg.norm(q.components, axis=0), 1.0, atol=1e-5)
