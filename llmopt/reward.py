"""The one reward function: quality minus cost and latency penalties.

Every learner maximises this number ("higher is better", docs/style.md #11). The tenant's
**willingness to pay** ``w`` (USD per unit of quality) converts cost into quality units: paying
``w`` dollars is worth exactly one unit of quality (the gap between a useless and a perfect answer).
The **latency weight** ``lam`` is the quality lost per second of waiting::

    reward = quality - cost_usd / w - lam * latency_ms / 1000

So with ``w = 0.01`` a call that costs 0.4 cents must be 0.4 better in quality to be worth it;
``w = inf`` ignores cost; ``lam = 0`` ignores latency.

Examples
--------
>>> round(reward(0.9, 0.002, 800.0, willingness_to_pay=0.01, latency_weight=0.1), 6)
0.62
>>> reward(1.0, 5.0, None, willingness_to_pay=float("inf"))
1.0
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field


class TradeOff(BaseModel):
    """A tenant's trade-off between quality, money and time."""

    model_config = ConfigDict(frozen=True)

    willingness_to_pay: float = Field(gt=0, description="USD per unit of quality (may be inf).")
    latency_weight: float = Field(default=0.0, ge=0, description="Quality units lost per second.")


def penalty(
    cost_usd: float,
    latency_ms: float | None = None,
    *,
    willingness_to_pay: float,
    latency_weight: float = 0.0,
) -> float:
    """What cost and latency take off the reward, in quality units (``quality - reward``).

    Cost-aware policies rank models by predicted quality minus this, computed from the
    *predicted* cost and latency before the call. Same validation as :func:`reward`.
    """
    if not (cost_usd >= 0 and math.isfinite(cost_usd)):
        raise ValueError(f"cost_usd must be a finite number >= 0, got {cost_usd}")
    if not willingness_to_pay > 0:
        raise ValueError(f"willingness_to_pay must be > 0, got {willingness_to_pay}")
    if not latency_weight >= 0:
        raise ValueError(f"latency_weight must be >= 0, got {latency_weight}")
    out = cost_usd / willingness_to_pay
    if latency_ms is not None:
        if not (latency_ms >= 0 and math.isfinite(latency_ms)):
            raise ValueError(f"latency_ms must be a finite number >= 0, got {latency_ms}")
        out += latency_weight * latency_ms / 1000.0
    return out


def reward(
    quality: float,
    cost_usd: float,
    latency_ms: float | None = None,
    *,
    willingness_to_pay: float,
    latency_weight: float = 0.0,
) -> float:
    """Reward of one answered request; see the module docstring for the formula.

    Raises ``ValueError`` on a quality outside [0, 1], a negative or non-finite cost or latency,
    a non-positive willingness to pay or a negative latency weight: silently learning from a
    corrupted reward is worse than failing loudly.
    """
    if not 0.0 <= quality <= 1.0:
        raise ValueError(f"quality must be in [0, 1], got {quality}")
    return quality - penalty(
        cost_usd,
        latency_ms,
        willingness_to_pay=willingness_to_pay,
        latency_weight=latency_weight,
    )
