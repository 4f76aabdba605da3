"""Thompson sampling: draw each arm's value from its posterior, play the best draw.

Two conjugate families: Beta-Bernoulli for targets in [0, 1] (clicks, pass/fail, or a quality
score taken as a success probability: ``alpha += r, beta += 1 - r``) and Gaussian for real-valued
rewards (posterior of the mean with the arm's observed variance). Thompson sampling has no
closed-form propensity: it is estimated from ``n_propensity_draws`` extra posterior draws
(vectorised), and the arm is sampled from exactly those probabilities, so the logged propensity
is the true one, which is what off-policy evaluation needs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmopt.types import ArmID
from models.arm_stats import ArmStatsPolicy
from models.state import np_rng_state, set_np_rng_state


class _Thompson(ArmStatsPolicy):
    n_propensity_draws = 256

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._np_rng = np.random.default_rng(self.seed)

    def _posterior_draws(self, arm_ids: list[ArmID], size: int) -> tuple[np.ndarray, np.ndarray]:
        """(``size`` x arms) posterior draws and the posterior means."""
        raise NotImplementedError

    def _pull(
        self, arm_ids: list[ArmID], context: dict[str, float], penalties: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        draws, mean = self._posterior_draws(arm_ids, self.n_propensity_draws)
        values = self._cap(draws) - penalties
        return self._win_shares(values), values[0], mean

    def _get_state(self) -> dict[str, Any]:
        return {**super()._get_state(), "np_rng": np_rng_state(self._np_rng)}

    def _set_state(self, state: dict[str, Any]) -> None:
        super()._set_state(state)
        set_np_rng_state(self._np_rng, state["np_rng"])


class BetaThompson(_Thompson):
    """Beta-Bernoulli Thompson sampling for targets in [0, 1].

    Parameters
    ----------
    prior_alpha, prior_beta
        Beta prior of every arm (1, 1 is uniform).
    discount, window, pooled_prior, burn_in, max_reward, exploration_floor, explore_decay,
    cost_aware, seed
        See :class:`models.arm_stats.ArmStatsPolicy`.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(42)
    >>> p = BetaThompson(seed=0)
    >>> for _ in range(300):
    ...     d = p.pull(["a", "b"])
    ...     _ = p.update(d.model, None, float(rng.random() < (0.8 if d.model == "b" else 0.3)))
    >>> d = p.pull(["a", "b"])
    >>> round(p.predict_one("b"), 1), d.model
    (0.8, 'b')

    References
    ----------
    Thompson (1933); Chapelle & Li (2011). An empirical evaluation of Thompson sampling. NIPS.
    """

    name = "thompson_beta"

    def __init__(
        self,
        *,
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
        discount: float = 1.0,
        window: int | None = None,
        pooled_prior: float = 0.0,
        burn_in: int = 0,
        max_reward: float | None = None,
        exploration_floor: float = 0.0,
        explore_decay: float = 0.0,
        cost_aware: bool = False,
        seed: int | None = None,
    ) -> None:
        if prior_alpha <= 0 or prior_beta <= 0:
            raise ValueError("prior_alpha and prior_beta must be > 0")
        self.prior_alpha = prior_alpha
        self.prior_beta = prior_beta
        super().__init__(
            discount=discount,
            window=window,
            pooled_prior=pooled_prior,
            burn_in=burn_in,
            max_reward=max_reward,
            exploration_floor=exploration_floor,
            explore_decay=explore_decay,
            cost_aware=cost_aware,
            seed=seed,
        )

    def _check_reward(self, reward: float) -> None:
        if not 0.0 <= reward <= 1.0:
            raise ValueError(f"reward must be in [0, 1] for Beta-Bernoulli Thompson, got {reward}")

    def _posterior_draws(self, arm_ids: list[ArmID], size: int) -> tuple[np.ndarray, np.ndarray]:
        n, mean, _ = self._columns(arm_ids)
        a = self.prior_alpha + mean * n
        b = self.prior_beta + (1.0 - mean) * n
        return self._np_rng.beta(a, b, size=(size, len(arm_ids))), a / (a + b)


class GaussianThompson(_Thompson):
    """Gaussian Thompson sampling for real-valued rewards.

    Each arm's mean has posterior ``N(mean, s^2 / (n + 1))`` with ``s`` the arm's observed
    standard deviation, floored at ``sigma`` so that a few equal rewards do not end
    exploration.

    Parameters
    ----------
    sigma
        Floor (and prior) of the reward noise's standard deviation.
    discount, window, pooled_prior, burn_in, max_reward, exploration_floor, explore_decay,
    cost_aware, seed
        See :class:`models.arm_stats.ArmStatsPolicy`.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(0)
    >>> p = GaussianThompson(sigma=0.1, seed=0)
    >>> for _ in range(300):
    ...     d = p.pull(["a", "b"])
    ...     _ = p.update(d.model, None, rng.gauss(0.7 if d.model == "a" else 0.4, 0.2))
    >>> p.pull(["a", "b"]).model
    'a'

    References
    ----------
    Agrawal & Goyal (2013). Further optimal regret bounds for Thompson sampling. AISTATS.
    """

    name = "thompson_gaussian"

    def __init__(
        self,
        *,
        sigma: float = 0.1,
        discount: float = 1.0,
        window: int | None = None,
        pooled_prior: float = 0.0,
        burn_in: int = 1,
        max_reward: float | None = None,
        exploration_floor: float = 0.0,
        explore_decay: float = 0.0,
        cost_aware: bool = False,
        seed: int | None = None,
    ) -> None:
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma = sigma
        super().__init__(
            discount=discount,
            window=window,
            pooled_prior=pooled_prior,
            burn_in=burn_in,
            max_reward=max_reward,
            exploration_floor=exploration_floor,
            explore_decay=explore_decay,
            cost_aware=cost_aware,
            seed=seed,
        )

    def _posterior_draws(self, arm_ids: list[ArmID], size: int) -> tuple[np.ndarray, np.ndarray]:
        n, mean, var = self._columns(arm_ids)
        sd = np.maximum(np.sqrt(var), self.sigma) / np.sqrt(n + 1.0)
        return self._np_rng.normal(mean, sd, size=(size, len(arm_ids))), mean
