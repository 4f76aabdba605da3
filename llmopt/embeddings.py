"""Prompt embeddings, offline: WordLlama's static token vectors, averaged, projected to 32 dims.

The ``wordllama`` wheel carries its weights (``weights/l2_supercat_256.safetensors``, 16 MB) and
its tokenizer (``tokenizers/l2_supercat_tokenizer_config.json``). They are read straight from
the installed package's folder with ``tokenizers`` and ``safetensors``; nothing is downloaded.
We do not go through ``WordLlama.load``: its default path looks in a misspelt folder and then
tries the network, and importing ``wordllama`` configures the root logger (an import-time side
effect). The maths is WordLlama's own (``WordLlamaInference.embed``: the mean of the prompt's
token vectors), checked against it in the tests.

The 256-dimensional mean is L2-normalised, centred and projected onto 32 principal directions
(``llmopt/data/prompt_projection.npz``), fitted *without labels* on the prompts of three public
routing sets (RouterBench ARC/Winogrande, AlpacaEval, RouteLLM MMLU; none of the mixed-task
workload's prompts); :func:`fit_projection` refits one from any prompts. The projected vector
is L2-normalised again, so ``emb_0`` .. ``emb_31`` lie on the unit sphere (a dot product is a
cosine). :data:`EMBEDDING_VERSION` names the weights and the projection (its SHA-256 prefix):
the feature service and every registered policy record it.

Only the first :data:`MAX_EMBED_CHARS` characters are embedded: a prompt's opening says what it
is, and a huge prompt then costs no more than a long one.

Examples
--------
>>> embedder = get_embedder()
>>> f = embedder.features("How do I reverse a list in Python?")
>>> len(f), sorted(f)[:2], round(sum(v * v for v in f.values()), 6)
(32, ['emb_0', 'emb_1'], 1.0)
>>> same = embedder.features("How do I reverse a list in Python?")
>>> same == f
True
>>> embedder.features("") == {f"emb_{i}": 0.0 for i in range(N_DIMS)}
True
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

N_DIMS = 32
"""Dimensions of the projected embedding (``emb_0`` .. ``emb_31``)."""

PREFIX = "emb_"
"""Name prefix of the embedding features."""

MAX_EMBED_CHARS = 2000
"""Characters of a prompt that are embedded."""

WEIGHTS = "weights/l2_supercat_256.safetensors"
TOKENIZER = "tokenizers/l2_supercat_tokenizer_config.json"
PROJECTION_FILE = Path(__file__).resolve().parent / "data" / "prompt_projection.npz"
CACHE_SIZE = 4096
"""Prompts whose features are kept (a retry or a cascade step embeds once)."""
WORD_CACHE_SIZE = 200_000
"""Distinct words whose token ids are kept (cleared, not evicted, when full)."""
SPACE = "\u2581"
"""The tokenizer's ``▁``: what a space becomes, the first character of each word's first token."""
ONES_SIZE = 4096
"""Tokens summed with the shared vector of ones (a longer prompt gets its own)."""

FEATURE_NAMES = tuple(f"{PREFIX}{i}" for i in range(N_DIMS))


class EmbeddingError(RuntimeError):
    """The embedding model's files are missing or unreadable (a broken install)."""


def package_folder() -> Path:
    """The installed ``wordllama`` package's folder, found without importing it."""
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingError("the 'wordllama' package is not installed (pip install wordllama)")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class Projection:
    """Centring vector and principal directions (256 -> ``N_DIMS``), fitted without labels."""

    mean: np.ndarray
    components: np.ndarray  # (256, N_DIMS)

    @property
    def digest(self) -> str:
        """First 12 hex digits of the SHA-256 of the projection's numbers."""
        h = hashlib.sha256(np.ascontiguousarray(self.mean, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(self.components, dtype=np.float32).tobytes())
        return h.hexdigest()[:12]

    def save(self, path: Path) -> None:
        """Write the projection as ``.npz`` (float32)."""
        np.savez(
            path,
            mean=self.mean.astype(np.float32),
            components=self.components.astype(np.float32),
        )

    @classmethod
    def load(cls, path: Path = PROJECTION_FILE) -> Projection:
        """Read a projection written by :meth:`save`."""
        with np.load(path) as z:
            return cls(mean=z["mean"].astype(np.float32), components=z["components"])


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    out: np.ndarray = x / np.where(norm > 0, norm, 1.0)
    return out


def fit_projection(vectors: np.ndarray, n_dims: int = N_DIMS) -> Projection:
    """Principal directions of (unit-normalised) raw prompt vectors: unsupervised, no labels.

    >>> rng = np.random.default_rng(0)
    >>> p = fit_projection(rng.normal(size=(100, 256)), n_dims=4)
    >>> p.components.shape
    (256, 4)
    """
    x = _unit(np.asarray(vectors, dtype=np.float64))
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return Projection(mean=mean.astype(np.float32), components=vt[:n_dims].T.astype(np.float32))


class PromptEmbedder:
    """Prompt -> raw 256-d WordLlama vector, or -> ``N_DIMS`` named, unit-length features.

    Thread-safe; the tokenizer and weights load on first use (~0.1-1 s), never at import.
    """

    def __init__(self, folder: Path | None = None, projection: Projection | None = None) -> None:
        self._folder = folder
        self._projection = projection
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._weights: np.ndarray | None = None
        self._cache: dict[str, dict[str, float]] = {}
        self._word_ids: dict[str, bytes] = {}
        self._specials: tuple[str, ...] = ()
        self._word_start = np.zeros(0, dtype=bool)
        self._ones = np.ones(ONES_SIZE, dtype=np.float32)
        self._components = np.zeros((0, N_DIMS))
        self._centre = np.zeros(N_DIMS)

    def _load(self) -> None:
        with self._lock:
            if self._weights is not None:
                return
            from safetensors.numpy import load_file  # noqa: PLC0415 - loaded on first use
            from tokenizers import Tokenizer  # noqa: PLC0415

            folder = self._folder or package_folder()
            try:
                tokenizer = Tokenizer.from_file(str(folder / TOKENIZER))
                weights = load_file(str(folder / WEIGHTS))["embedding.weight"]
            except Exception as exc:  # a missing or corrupt file: say which
                raise EmbeddingError(f"cannot load WordLlama from {folder}: {exc}") from exc
            tokenizer.no_padding()
            tokenizer.no_truncation()
            self._tokenizer = tokenizer
            self._specials = tuple(t.content for t in tokenizer.get_added_tokens_decoder().values())
            vocab = tokenizer.get_vocab()
            word_start = np.zeros(max(len(weights), max(vocab.values()) + 1), dtype=bool)
            word_start[[i for token, i in vocab.items() if token.startswith(SPACE)]] = True
            self._word_start = word_start
            p = self.projection  # in float64: only the sum of token vectors is float32
            self._components = p.components.astype(np.float64)
            self._centre = p.mean.astype(np.float64) @ self._components
            self._weights = np.ascontiguousarray(weights, dtype=np.float32)  # last: "loaded"

    @property
    def projection(self) -> Projection:
        """The projection in use (loads it if needed)."""
        if self._projection is None:
            self._projection = Projection.load()
        return self._projection

    @property
    def version(self) -> str:
        """Weights and projection, e.g. ``wordllama-l2_supercat_256+pca32-<digest>``."""
        return _version(self.projection.digest)

    def raw(self, texts: Iterable[str]) -> np.ndarray:
        """WordLlama's own embedding (mean of token vectors) of each text: ``(n, 256)``."""
        if self._weights is None:
            self._load()
        weights = self._weights
        assert weights is not None
        tokenizer = self._tokenizer
        texts = [t[:MAX_EMBED_CHARS] for t in texts]
        out = np.zeros((len(texts), weights.shape[1]), dtype=np.float32)
        encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
        top = weights.shape[0] - 1
        for i, enc in enumerate(encodings):
            ids = enc.ids
            if ids:
                out[i] = weights[np.clip(ids, 0, top)].mean(axis=0)
        return out

    def project(self, raw: np.ndarray) -> np.ndarray:
        """Raw vectors -> unit-length ``N_DIMS``-d vectors (zero stays zero)."""
        p = self.projection
        x = _unit(np.atleast_2d(raw).astype(np.float32))
        z = _unit((x - p.mean) @ p.components)
        z[~np.any(x != 0, axis=1)] = 0.0
        return z

    def vectors(self, texts: Iterable[str]) -> np.ndarray:
        """Projected embeddings of many texts at once: ``(n, N_DIMS)``."""
        return self.project(self.raw(texts))

    def _ids(self, text: str) -> np.ndarray:
        """Token ids (``int32``) of ``text``, tokenized word by word through a cache of words.

        WordLlama's tokenizer (Llama's BPE) turns each space into ``▁`` and has no merge across
        a ``▁``, so tokenizing the space-separated words one by one gives the whole text's ids
        (runs of spaces aside); a word seen before costs one dictionary lookup instead of a
        call into the tokenizer. Each word's ids are kept as the bytes of an ``int32`` array:
        a prompt's ids are one ``bytes.join`` of its words' entries, read by numpy in place.
        """
        words = text.split(" ")
        try:
            data = b"".join(map(self._word_ids.__getitem__, words))
        except KeyError:  # a word never seen (or the cache was just cleared by another thread)
            known = self._learn(words)
            data = b"".join(map(known.__getitem__, words))
        return np.frombuffer(data, dtype=np.int32)

    def _learn(self, words: list[str]) -> dict[str, bytes]:
        """The cached ids of each of ``words``, encoding (and caching) the ones not seen yet."""
        cache = self._word_ids
        known: dict[str, bytes] = {}
        missing: list[str] = []
        for w in dict.fromkeys(words):
            ids = cache.get(w)
            if ids is None:
                missing.append(w)
            else:
                known[w] = ids
        new = self._encode_words(missing)
        if len(cache) + len(new) > WORD_CACHE_SIZE:
            cache.clear()
        cache.update(new)
        known.update(new)
        return known

    def _encode_words(self, words: list[str]) -> dict[str, bytes]:
        """Ids of each of ``words`` (distinct), exactly as if each were encoded on its own.

        A call into the tokenizer costs ~2 us plus ~2 us per word, so the words are encoded in
        one call, joined by spaces, and its ids are cut before each token that starts with
        ``▁``: each word's first token does, and no other can (no token holds a ``▁`` after its
        start, so no merge crosses a word boundary, and BPE merges each word as it would alone).
        Words where that would not hold (empty, holding a ``▁`` themselves, or holding the text
        of a special token such as ``</s>``, which the tokenizer splits out before it adds the
        ``▁``) are encoded one by one, as are all of them if the cuts are not one per word.
        """
        out: dict[str, bytes] = {}
        specials = self._specials
        plain = [w for w in words if w and SPACE not in w and not any(s in w for s in specials)]
        if len(plain) > 1:
            enc = self._tokenizer.encode(" ".join(plain), add_special_tokens=False)
            ids = np.asarray(enc.ids, dtype=np.int32)
            cuts = np.flatnonzero(self._word_start[ids])
            if len(cuts) == len(plain) and cuts[0] == 0:
                data = ids.tobytes()
                bounds = [*(cuts * ids.itemsize).tolist(), len(data)]
                out = {w: data[a:b] for w, a, b in zip(plain, bounds, bounds[1:], strict=False)}
        encode = self._tokenizer.encode
        for w in words:
            if w not in out:
                out[w] = np.asarray(
                    encode(w, add_special_tokens=False).ids, dtype=np.int32
                ).tobytes()
        return out

    def features(self, text: str | None) -> dict[str, float]:
        """``emb_0`` .. ``emb_31`` of one prompt (cached; None or empty: all zeros).

        The mean of the token vectors is normalised before it is projected, so the plain sum
        (one gather and one matrix-vector product) has the same direction and the division by
        the token count is skipped; the centring and projection run in float64 on the 256-d
        sum (the outputs match the mean-of-vectors formula to ~1e-7).
        """
        key = (text or "")[:MAX_EMBED_CHARS]
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        values = [0.0] * N_DIMS
        if key.strip():
            if self._weights is None:
                self._load()
            weights = self._weights
            assert weights is not None
            ids = self._ids(key)
            n = len(ids)
            if n:
                ones = self._ones if n <= ONES_SIZE else np.ones(n, dtype=np.float32)
                total = (ones[:n] @ weights.take(ids, axis=0)).astype(np.float64)
                size = float(np.sqrt(total @ total))
                z = (total @ self._components) / (size or 1.0) - self._centre
                norm = float(np.sqrt(z @ z))
                if norm > 0:
                    values = (z / norm).tolist()
        feats = dict(zip(FEATURE_NAMES, values, strict=True))
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()  # cheaper than LRU bookkeeping on every hit
        self._cache[key] = feats
        return feats


def _version(digest: str) -> str:
    return f"wordllama-l2_supercat_256+pca{N_DIMS}-{digest}"


def embedding_version() -> str:
    """Version of the embedding features: weights and projection (reads only the projection)."""
    return _version(Projection.load().digest)


_default: PromptEmbedder | None = None
_default_lock = threading.Lock()


def get_embedder() -> PromptEmbedder:
    """The process's shared embedder (created on first call, weights loaded on first use)."""
    global _default  # noqa: PLW0603 - one lazily created instance per process
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = PromptEmbedder()
    return _default
