"""Predicted cost of a request on each model, before it runs, learned from what calls cost.

A call's cost is ``input price x prompt tokens + output price x answer tokens``: the prompt's
length is known before the call, the answer's is not. Per model, the cost is modelled as
``theta_0 + theta_1 * input_tokens / 1000`` and fitted online by ridge regression towards a
prior: the catalog's prices, with the answer length learned from every priced model's observed
costs (a workload's answers are about as long whichever model writes them), or, for a model
the catalog does not price, nothing (None until it is seen).

Per-request cost matters: a long prompt on an expensive model can cost ten times a short one,
so a router that knows it sends long prompts to the cheaper model of a pair and short ones to
the better model, which beats any fixed mix of the two at the same average cost.

Examples
--------
>>> from llmopt.catalog import load_catalog
>>> cm = CostModel(load_catalog())
>>> round(cm.predict("gpt-4o-mini", 1000) * 1e6)  # 1000 in + 256 out tokens at list price
304
>>> for t in (500, 1000, 2000, 4000):  # this workload's answers are 10 tokens
...     cm.learn("gpt-4o-mini", t, 0.15e-6 * t + 0.6e-6 * 10)
>>> round(cm.predict("gpt-4o-mini", 3000) * 1e6)
456
>>> cm.predict("unknown-model", 1000) is None
True
"""

from __future__ import annotations

import math

import numpy as np

from llmopt.catalog import ModelCatalog
from llmopt.types import ArmID

ASSUMED_OUTPUT_TOKENS = 256
"""Output length assumed before anything is learned."""


class _ArmFit:
    """Online ridge regression of cost on (1, input tokens / 1000), towards a prior mean."""

    __slots__ = ("a", "b", "theta")

    def __init__(self) -> None:
        self.a = np.zeros((2, 2))  # sum x x'
        self.b = np.zeros(2)  # sum cost x
        self.theta = np.zeros(2)

    def fit(self, prior: np.ndarray | None, weight: float) -> np.ndarray:
        if prior is None:  # unpriced: plain least squares (tiny ridge for the first points)
            prior, weight = np.zeros(2), 1e-6
        return np.linalg.solve(self.a + weight * np.eye(2), self.b + weight * prior)


class CostModel:
    """Per-model cost prediction: catalog prices as a prior, corrected by observed costs.

    Parameters
    ----------
    catalog
        Prices of the models it knows (None: learn every model from observed costs alone).
    prior_weight
        Weight, in observations, of the catalog prior in each model's fit.
    """

    def __init__(self, catalog: ModelCatalog | None = None, *, prior_weight: float = 1.0) -> None:
        self.catalog = catalog
        self.prior_weight = prior_weight
        self._fits: dict[ArmID, _ArmFit] = {}
        self._out_n = 0.0  # answers observed on priced models, and their implied tokens
        self._out_tokens = 0.0
        self._theta: dict[ArmID, tuple[float, float] | None] = {}
        """Per model, the (intercept, per-1000-token slope) in force: a decision predicts
        every offered model's cost several times, and the coefficients change only when a cost
        is learned or forgotten (which clears this)."""
        self.changes = 0
        """Costs learned or forgotten so far: :meth:`coefficients` may differ once it moved."""

    def _prior(self, model: ArmID) -> np.ndarray | None:
        """Catalog prior of (intercept, cost per 1000 input tokens), or None if unpriced."""
        spec = self.catalog.get(model) if self.catalog is not None else None
        if spec is None:
            return None
        per_k = spec.expected_cost_usd(1000, 0)
        return np.array([spec.expected_cost_usd(0, round(self.output_tokens())), per_k])

    def output_tokens(self) -> float:
        """Answer length of this workload, as implied by priced models' observed costs."""
        return (self._out_tokens + ASSUMED_OUTPUT_TOKENS) / (self._out_n + 1.0)

    def predict(self, model: ArmID, input_tokens: int) -> float | None:
        """Predicted cost in USD (never negative), or None for an unpriced model never seen."""
        coef = self.coefficients(model)
        if coef is None:
            return None
        return self.cost(coef, input_tokens)

    @staticmethod
    def cost(coef: tuple[float, float], input_tokens: int) -> float:
        """The cost in USD of ``input_tokens`` under :meth:`coefficients` ``coef``."""
        return max(coef[0] + coef[1] * input_tokens / 1000.0, 0.0)

    def coefficients(self, model: ArmID) -> tuple[float, float] | None:
        """``(intercept, slope)`` of :meth:`predict` for ``model`` in force now: its cost is
        ``max(intercept + slope * input_tokens / 1000, 0)`` USD (None: unpriced, never seen).

        >>> from llmopt.catalog import load_catalog
        >>> catalog = load_catalog()
        >>> cm, model = CostModel(catalog), next(iter(catalog)).id
        >>> intercept, slope = cm.coefficients(model)
        >>> cm.predict(model, 500) == max(intercept + slope * 500 / 1000.0, 0.0)
        True
        >>> CostModel.cost((intercept, slope), 500) == cm.predict(model, 500)
        True
        >>> CostModel().coefficients(model) is None  # no catalog, no observed cost
        True
        """
        try:
            return self._theta[model]
        except KeyError:
            coef = self._theta[model] = self._coefficients(model)
            return coef

    def _coefficients(self, model: ArmID) -> tuple[float, float] | None:
        fit = self._fits.get(model)
        prior = self._prior(model)
        if fit is None:
            if prior is None:
                return None
            theta = prior
        elif prior is None:
            theta = fit.theta
        else:
            theta = fit.fit(prior, self.prior_weight)
        return float(theta[0]), float(theta[1])

    def forget(self, model: ArmID) -> None:
        """Drop what ``model``'s observed costs taught (back to the catalog's price)."""
        self._fits.pop(model, None)
        self._theta.clear()
        self.changes += 1

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._theta = {}  # states pickled before the cache existed
        self.__dict__.setdefault("changes", 0)  # ... or before the counter

    def learn(self, model: ArmID, input_tokens: int, cost_usd: float) -> None:
        """Learn from what one call to ``model`` cost."""
        if not math.isfinite(cost_usd) or cost_usd < 0:
            raise ValueError(f"cost_usd must be a finite number >= 0, got {cost_usd}")
        self._theta.clear()  # the answer length and this model's fit change
        self.changes += 1
        prior = self._prior(model)
        spec = self.catalog.get(model) if self.catalog is not None else None
        if spec is not None and spec.output_per_mtok > 0:
            input_cost = spec.expected_cost_usd(input_tokens, 0)
            self._out_n += 1
            self._out_tokens += max(cost_usd - input_cost, 0.0) / spec.output_per_mtok * 1e6
        fit = self._fits.setdefault(model, _ArmFit())
        x = np.array([1.0, input_tokens / 1000.0])
        fit.a += np.outer(x, x)
        fit.b += cost_usd * x
        if prior is None:
            fit.theta = fit.fit(None, 0.0)
