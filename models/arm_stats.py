"""Per-arm reward statistics shared by the non-contextual policies.

Each arm keeps (count, sum, sum of squares) of its rewards: additive sufficient statistics, so
replicas merge by addition. Non-stationarity is handled per policy, by either

* ``discount`` (gamma < 1): each new reward of an arm multiplies its old statistics by gamma,
  so the arm's estimate follows the last ~1/(1-gamma) of its rewards (the per-arm clock of
  discounted UCB, Garivier & Moulines 2011), or
* ``window``: only the arm's last ``window`` rewards count (sliding-window UCB, same paper).

A prior (``set_prior``) enters as pseudo-observations: a new model can start from the mean of
its price tier, or from what the logs say, with the weight of a few real observations.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Self

import numpy as np

from llmopt.types import ArmID
from models.base import BasePolicy


class ArmStatsPolicy(BasePolicy):
    """Base of the non-contextual policies: per-arm discounted or windowed statistics.

    Parameters
    ----------
    discount
        Weight kept by an arm's past rewards at each of its new rewards (1: remember all).
    window
        If set, only each arm's last ``window`` rewards count (exclusive with ``discount``).
    pooled_prior
        Weight, in observations, of a prior at the mean reward of all arms so far (empirical
        Bayes; 0 disables it). Arms with an explicit ``set_prior`` keep theirs.
    burn_in, max_reward, exploration_floor, explore_decay, cost_aware, seed
        See :class:`models.base.BasePolicy`.
    """

    def __init__(
        self,
        *,
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
        super().__init__(
            burn_in=burn_in,
            max_reward=max_reward,
            exploration_floor=exploration_floor,
            explore_decay=explore_decay,
            cost_aware=cost_aware,
            seed=seed,
        )
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        if window is not None and discount != 1.0:
            raise ValueError("choose either a discount or a window, not both")
        if not (math.isfinite(pooled_prior) and pooled_prior >= 0):
            raise ValueError(f"pooled_prior must be a finite number >= 0, got {pooled_prior}")
        self.discount = discount
        self.window = window
        self.pooled_prior = pooled_prior
        self._pool = [0.0, 0.0]  # (count, sum) of every reward, all arms together
        self._stats: dict[ArmID, list[float]] = {}  # arm -> [n, sum, sum of squares]
        self._recent: dict[ArmID, deque[float]] = {}
        self._priors: dict[ArmID, tuple[float, float]] = {}

    # -- priors -----------------------------------------------------------------------------------
    def set_prior(self, arm_id: ArmID, mean: float, weight: float = 1.0) -> Self:
        """Start ``arm_id`` from ``mean`` as if it had been observed ``weight`` times."""
        if not (math.isfinite(mean) and math.isfinite(weight)) or weight < 0:
            raise ValueError("prior mean must be finite and weight a finite number >= 0")
        self._priors[arm_id] = (float(mean), float(weight))
        return self

    # -- statistics -------------------------------------------------------------------------------
    def _arm(self, arm_id: ArmID) -> tuple[float, float, float]:
        """(effective count, mean, variance) of an arm, prior included; mean 0 when unseen."""
        n, s, ss = self._stats.get(arm_id, (0.0, 0.0, 0.0))
        m0, w0 = self._priors.get(arm_id, (0.0, 0.0))
        if arm_id not in self._priors and self.pooled_prior > 0 and self._pool[0] > 0:
            m0, w0 = self._pool[1] / self._pool[0], self.pooled_prior
        n_eff = n + w0
        if n_eff <= 0:
            return 0.0, 0.0, 0.0
        mean = (s + m0 * w0) / n_eff
        var = max((ss + m0 * m0 * w0) / n_eff - mean * mean, 0.0)
        return n_eff, mean, var

    def _columns(self, arm_ids: list[ArmID]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = [self._arm(a) for a in arm_ids]
        arr = np.array(rows, dtype=float).reshape(len(arm_ids), 3)
        return arr[:, 0], arr[:, 1], arr[:, 2]

    def _update(self, arm_id: ArmID, context: dict[str, float], reward: float) -> None:
        g = self.discount
        self._pool = [g * self._pool[0] + 1.0, g * self._pool[1] + reward]
        if self.window is not None:
            recent = self._recent.setdefault(arm_id, deque(maxlen=self.window))
            recent.append(reward)
            self._stats[arm_id] = [
                float(len(recent)),
                float(sum(recent)),
                float(sum(r * r for r in recent)),
            ]
            return
        n, s, ss = self._stats.get(arm_id, [0.0, 0.0, 0.0])
        self._stats[arm_id] = [g * n + 1.0, g * s + reward, g * ss + reward * reward]

    def _discount_arm(self, arm_id: ArmID, factor: float) -> None:
        """Scale the arm's statistics (with a window: keep its latest ``factor`` share).

        An explicit prior (``set_prior``) stays; the pooled mean of all arms keeps the arm's
        past rewards (it only centres priors).
        """
        if self.window is not None:
            recent = self._recent.get(arm_id)
            if recent is None:
                return
            keep = list(recent)[len(recent) - int(len(recent) * factor) :]
            self._recent[arm_id] = deque(keep, maxlen=self.window)
            self._stats[arm_id] = [float(len(keep)), sum(keep), sum(r * r for r in keep)]
        elif arm_id in self._stats:
            self._stats[arm_id] = [factor * v for v in self._stats[arm_id]]

    def _arm_weight(self, arm_id: ArmID) -> float:
        return self._stats.get(arm_id, [0.0])[0]  # discounted or windowed count

    def _merge_stats(self, a: Self, b: Self, base: Self) -> None:
        self._pool = [a._pool[j] + b._pool[j] - base._pool[j] for j in range(2)]
        self._stats = {}
        for arm in set(a._stats) | set(b._stats):
            za, zb, zc = (x._stats.get(arm, [0.0, 0.0, 0.0]) for x in (a, b, base))
            self._stats[arm] = [max(p + q - r, 0.0) for p, q, r in zip(za, zb, zc, strict=True)]
        if self.window is not None:  # approximate: a's window, then b's rewards not in base
            self._recent = {}
            for arm in set(a._recent) | set(b._recent):
                seen = len(base._recent.get(arm, ()))
                merged = list(a._recent.get(arm, ())) + list(b._recent.get(arm, ()))[seen:]
                self._recent[arm] = deque(merged, maxlen=self.window)
                self._stats[arm] = [
                    float(len(self._recent[arm])),
                    float(sum(self._recent[arm])),
                    float(sum(r * r for r in self._recent[arm])),
                ]

    def _get_state(self) -> dict[str, Any]:
        return {
            **super()._get_state(),
            "stats": {a: list(v) for a, v in self._stats.items()},
            "recent": {a: list(v) for a, v in self._recent.items()},
            "priors": {a: list(v) for a, v in self._priors.items()},
            "pool": list(self._pool),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        super()._set_state(state)
        self._stats = {str(a): [float(x) for x in v] for a, v in state["stats"].items()}
        self._recent = {
            str(a): deque((float(x) for x in v), maxlen=self.window)
            for a, v in state["recent"].items()
        }
        self._priors = {str(a): (float(v[0]), float(v[1])) for a, v in state["priors"].items()}
        self._pool = [float(v) for v in state["pool"]]

    def arm_mean(self, arm_id: ArmID) -> float | None:
        n, total, _ = self._stats.get(arm_id, (0.0, 0.0, 0.0))
        return total / n if n > 0 else None

    def predict_one(self, arm_id: ArmID, context: dict[str, float] | None = None) -> float:
        """Point estimate of the target of ``arm_id`` (0 for an arm never seen)."""
        return self._arm(arm_id)[1]
