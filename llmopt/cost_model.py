"""Predicted cost of a request on each model, before it runs, learned from what calls cost.

A model's cost is known up to the answer's length: the catalog's price times the prompt's
tokens plus an assumed output length. That assumption is often far off for a given workload
(multiple-choice answers are 2 tokens, essays 1,000), so the prediction is corrected by a
factor learned from the costs feedback reports: per model, the geometric mean of
``observed / predicted``, shrunk towards the factor shared by all models (the workload's output
length affects every model alike). A model the catalog does not price is predicted from its
own observed cost per token once it has been seen, and not at all (None) before.

Examples
--------
>>> from llmopt.catalog import load_catalog
>>> cm = CostModel(load_catalog())
>>> round(cm.predict("gpt-4o-mini", 1000) * 1e6)  # 1000 in + 256 out tokens at list price
304
>>> for _ in range(5):  # this workload's answers are much shorter than assumed
...     cm.learn("gpt-4o-mini", 1000, 0.000153)
>>> round(cm.predict("gpt-4o-mini", 1000) * 1e6)
153
>>> cm.predict("unknown-model", 1000) is None
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmopt.catalog import ModelCatalog
from llmopt.types import ArmID

ASSUMED_OUTPUT_TOKENS = 256
"""Output length assumed before anything is learned."""


@dataclass
class _LogRatio:
    n: float = 0.0
    total: float = 0.0


class CostModel:
    """Per-model cost prediction: catalog price, corrected by observed costs.

    Parameters
    ----------
    catalog
        Prices of the models it knows (None: learn every model from observed costs alone).
    shrinkage
        Weight, in observations, of the shared correction in each model's own.
    """

    def __init__(self, catalog: ModelCatalog | None = None, *, shrinkage: float = 3.0) -> None:
        self.catalog = catalog
        self.shrinkage = shrinkage
        self._own: dict[ArmID, _LogRatio] = {}
        self._shared = _LogRatio()

    def _base(self, model: ArmID, input_tokens: int) -> tuple[float, bool]:
        """(uncorrected prediction, whether the catalog priced it)."""
        spec = self.catalog.get(model) if self.catalog is not None else None
        if spec is not None:
            return spec.expected_cost_usd(input_tokens, ASSUMED_OUTPUT_TOKENS), True
        return float(input_tokens + ASSUMED_OUTPUT_TOKENS), False  # in tokens; factor = $/token

    def predict(self, model: ArmID, input_tokens: int) -> float | None:
        """Predicted cost in USD, or None for an unpriced model never observed."""
        base, priced = self._base(model, input_tokens)
        own = self._own.get(model, _LogRatio())
        if priced:
            shared = self._shared.total / self._shared.n if self._shared.n else 0.0
            log_factor = (own.total + self.shrinkage * shared) / (own.n + self.shrinkage)
        elif own.n:
            log_factor = own.total / own.n
        else:
            return None
        return base * math.exp(log_factor)

    def learn(self, model: ArmID, input_tokens: int, cost_usd: float) -> None:
        """Learn from what one call to ``model`` cost."""
        if not math.isfinite(cost_usd) or cost_usd < 0:
            raise ValueError(f"cost_usd must be a finite number >= 0, got {cost_usd}")
        base, priced = self._base(model, input_tokens)
        if base <= 0 or cost_usd <= 0:
            return  # free calls carry no information on the scale
        lr = math.log(cost_usd / base)
        own = self._own.setdefault(model, _LogRatio())
        own.n += 1
        own.total += lr
        if priced:
            self._shared.n += 1
            self._shared.total += lr
