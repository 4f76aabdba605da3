"""Priors for a model that joins the pool: what models of its price tier achieve.

A new model has no feedback yet. Rather than starting it at zero (never tried by a greedy rule)
or at the top (tried on everything), it starts at the mean learned target of the known models
whose price is within ``tier_ratio`` of its own; if no model is that close, at what a straight
line through (log price, mean target) of the known models predicts, clipped to their range.
Prices go in as one number per model (e.g. the catalog's cost of a typical request).

Examples
--------
>>> known = {"mini": (0.0002, 0.55), "nano": (0.0001, 0.45), "large": (0.004, 0.85)}
>>> price_tier_prior(0.00015, known)  # the mini/nano tier
0.5
>>> round(price_tier_prior(0.0008, known), 3)  # no model within 3x: the log-price trend
0.682
>>> price_tier_prior(0.001, {}) is None
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from llmopt.catalog import ModelCatalog
from llmopt.types import ArmID


def price_tier_prior(
    price: float,
    known: Mapping[ArmID, tuple[float, float]],
    *,
    tier_ratio: float = 3.0,
) -> float | None:
    """Prior mean of a new model priced ``price``, from ``known`` models' (price, mean)."""
    if not (math.isfinite(price) and price > 0):
        raise ValueError(f"price must be a positive number, got {price}")
    if tier_ratio < 1:
        raise ValueError(f"tier_ratio must be >= 1, got {tier_ratio}")
    pts = [(p, m) for p, m in known.values() if p > 0 and math.isfinite(p) and math.isfinite(m)]
    if not pts:
        return None
    same_tier = [m for p, m in pts if abs(math.log(p / price)) <= math.log(tier_ratio)]
    if same_tier:
        return float(np.mean(same_tier))
    means = [m for _, m in pts]
    if len({p for p, _ in pts}) < 2:  # noqa: PLR2004 - a line needs two prices
        return float(np.mean(means))
    slope, intercept = np.polyfit([math.log(p) for p, _ in pts], means, 1)
    return float(np.clip(intercept + slope * math.log(price), min(means), max(means)))


def apply_catalog_priors(
    policy: object, catalog: ModelCatalog, arms: Sequence[ArmID], *, weight: float = 2.0
) -> dict[ArmID, float]:
    """Start each of ``arms`` whose catalog entry has a ``quality_tier`` at that quality.

    For a fresh router (no registry version, no logs): a prior worth ``weight`` observations
    (``policy.set_prior``), so the first decisions follow the catalog's tiers within each
    request's cost bounds instead of a blind burn-in, and real feedback overrides it within a
    few requests. Returns the priors set (nothing for a policy without ``set_prior``).

    >>> from llmopt.catalog import load_catalog
    >>> from models.kinds import make_policy
    >>> p = make_policy("cost_aware_cluster_thompson", seed=0)
    >>> set_ = apply_catalog_priors(p, load_catalog(), ["gpt-4o", "gpt-4o-mini", "claude-2"])
    >>> sorted(set_)  # claude-2 (legacy demo data) has no tier
    ['gpt-4o', 'gpt-4o-mini']
    >>> p.arm_mean("gpt-4o") > p.arm_mean("gpt-4o-mini")
    True
    """
    set_prior = getattr(policy, "set_prior", None)
    if set_prior is None:
        return {}
    out: dict[ArmID, float] = {}
    for arm in arms:
        spec = catalog.get(arm)
        if spec is not None and spec.quality_tier is not None:
            set_prior(arm, spec.quality_tier, weight)
            out[arm] = spec.quality_tier
    return out
