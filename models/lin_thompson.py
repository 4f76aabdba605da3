"""Linear Thompson sampling: per-arm Bayesian ridge regression, play the best posterior draw."""

from __future__ import annotations

from typing import Any

import numpy as np

from llmopt.types import ArmID
from models.linear import LinearPolicy


class LinThompson(LinearPolicy):
    """Thompson sampling on a per-arm linear model of the target.

    The posterior of ``theta_a`` is ``N(A_a^-1 b_a, v^2 A_a^-1)``; only ``x . theta_a`` matters
    for the choice, and its posterior is exactly ``N(x . theta_a, v^2 x' A_a^-1 x)``, so a pull
    draws one scalar per arm instead of a d-dimensional vector (no Cholesky factor per step).
    The propensity is the Monte-Carlo share of ``n_propensity_draws`` draws that each arm wins,
    and the arm is sampled from exactly those probabilities.

    Parameters
    ----------
    v
        Scale of the posterior (exploration strength).
    ridge, bias_ridge, discount, bias_feature, pooled_prior,
        context_gate, burn_in, max_reward, exploration_floor, explore_decay, cost_aware, seed
        See :class:`models.linear.LinearPolicy`.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(0)
    >>> p = LinThompson(v=0.2, seed=0)
    >>> for _ in range(300):
    ...     x = {"bias": 1.0, "code": float(rng.random() < 0.5)}
    ...     d = p.pull(["coder", "chatter"], x)
    ...     good = (d.model == "coder") == (x["code"] == 1.0)
    ...     _ = p.update(d.model, x, 1.0 if good else 0.0)
    >>> d = p.pull(["coder", "chatter"], {"bias": 1.0, "code": 1.0})
    >>> d.model, d.propensity > 0.9
    ('coder', True)

    References
    ----------
    Agrawal & Goyal (2013). Thompson sampling for contextual bandits with linear payoffs. ICML.
    """

    name = "lin_thompson"
    n_propensity_draws = 128

    def __init__(
        self,
        v: float = 0.2,
        *,
        ridge: float = 1.0,
        bias_ridge: float | None = None,
        discount: float = 1.0,
        bias_feature: str = "bias",
        pooled_prior: bool = False,
        context_gate: bool = False,
        burn_in: int = 1,
        max_reward: float | None = None,
        exploration_floor: float = 0.0,
        explore_decay: float = 0.0,
        cost_aware: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            ridge=ridge,
            bias_ridge=bias_ridge,
            discount=discount,
            bias_feature=bias_feature,
            pooled_prior=pooled_prior,
            context_gate=context_gate,
            burn_in=burn_in,
            max_reward=max_reward,
            exploration_floor=exploration_floor,
            explore_decay=explore_decay,
            cost_aware=cost_aware,
            seed=seed,
        )
        if v < 0:
            raise ValueError(f"v must be >= 0, got {v}")
        self.v = v
        self._np_rng = np.random.default_rng(seed)

    def _pull(
        self, arm_ids: list[ArmID], context: dict[str, float], penalties: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mean, width = self._mean_width(arm_ids, context)
        z = self._np_rng.standard_normal((self.n_propensity_draws, len(arm_ids)))
        values = self._cap(mean + self.v * width * z) - penalties
        return self._win_shares(values), values[0], mean

    def _get_state(self) -> dict[str, Any]:
        return {**super()._get_state(), "np_rng": self._np_rng.bit_generator.state}

    def _set_state(self, state: dict[str, Any]) -> None:
        super()._set_state(state)
        self._np_rng.bit_generator.state = state["np_rng"]
