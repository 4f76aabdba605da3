"""Per-arm ridge regressions of the target on the context, stacked for speed (contextual policies).

Every arm keeps ``A = ridge * I + sum x x'`` (plus prior pseudo-observations), ``b = sum r x``
and ``A^-1``, updated by Sherman-Morrison (no per-step inversion). Arms are stacked in arrays,
so a pull is a few vectorised numpy operations; features and arms unseen so far are added at
runtime without disturbing what was learned (a new feature dimension is exactly a new
ridge-prior block). ``A - ridge * I`` and ``b`` are additive sufficient statistics, which is
what merging replicas needs.

Non-stationarity: with ``discount`` gamma < 1 each new observation of an arm first multiplies
its statistics by gamma (discounted LinUCB, Russac, Vernade, Cappé 2019, with a per-arm clock).
``A^-1`` then follows by Sherman-Morrison on ``A^-1 / gamma``, which also shrinks the ridge
prior; the exact ``A^-1`` (prior restored) is recomputed every ``refresh_every`` updates of the
arm, an amortised cost of well under a microsecond per step.
"""

from __future__ import annotations

import math
from typing import Any, Self

import numpy as np

from llmopt.types import ArmID
from models.base import Policy


class LinearPolicy(Policy):
    """Base of the contextual policies: stacked per-arm ridge regressions.

    Parameters
    ----------
    ridge
        Prior precision of every coefficient.
    discount
        Weight kept by an arm's past observations at each new one (1: remember all).
    bias_feature
        Name of the always-1 feature that priors (``set_prior``) act on.
    burn_in, max_reward, exploration_floor, cost_aware, seed
        See :class:`models.base.Policy`.
    """

    refresh_every = 64

    def __init__(
        self,
        *,
        ridge: float = 1.0,
        discount: float = 1.0,
        bias_feature: str = "bias",
        burn_in: int = 1,
        max_reward: float | None = None,
        exploration_floor: float = 0.0,
        cost_aware: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            burn_in=burn_in,
            max_reward=max_reward,
            exploration_floor=exploration_floor,
            cost_aware=cost_aware,
            seed=seed,
        )
        if ridge <= 0:
            raise ValueError(f"ridge must be > 0, got {ridge}")
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        self.ridge = ridge
        self.discount = discount
        self.bias_feature = bias_feature
        self._features: dict[str, int] = {}
        self._arms: dict[ArmID, int] = {}
        self._gram = np.zeros((0, 0, 0))  # A - ridge * I: additive statistics
        self._a_inv = np.zeros((0, 0, 0))
        self._b = np.zeros((0, 0))
        self._since_refresh = np.zeros(0, dtype=np.int64)

    # -- growth of the feature space and of the arm set -----------------------------------------
    def _grow(self, arm_ids: list[ArmID], context: dict[str, float]) -> None:
        new_feats = [k for k in context if k not in self._features]
        new_arms = [a for a in arm_ids if a not in self._arms]
        if not new_feats and not new_arms:
            return
        self._grow_to(new_feats, new_arms)

    def _grow_to(self, new_feats: list[str], new_arms: list[ArmID]) -> None:
        d_old, k_old = len(self._features), len(self._arms)
        for name in new_feats:
            self._features[name] = len(self._features)
        for arm in new_arms:
            self._arms[arm] = len(self._arms)
        d, k = len(self._features), len(self._arms)
        idx = np.arange(d)
        a_inv = np.zeros((k, d, d))
        a_inv[:k_old, :d_old, :d_old] = self._a_inv
        a_inv[:k_old, idx[d_old:], idx[d_old:]] = 1.0 / self.ridge  # prior of new features
        a_inv[k_old:, idx, idx] = 1.0 / self.ridge  # new arms start from the prior
        gram = np.zeros((k, d, d))
        gram[:k_old, :d_old, :d_old] = self._gram
        b = np.zeros((k, d))
        b[:k_old, :d_old] = self._b
        since = np.zeros(k, dtype=np.int64)
        since[:k_old] = self._since_refresh
        self._a_inv, self._gram, self._b, self._since_refresh = a_inv, gram, b, since

    def _vector(self, context: dict[str, float]) -> np.ndarray:
        x = np.zeros(len(self._features))
        feats = self._features
        for k, v in context.items():
            j = feats.get(k)
            if j is not None:
                x[j] = v
        return x

    # -- estimates --------------------------------------------------------------------------------
    def _mean_width(
        self, arm_ids: list[ArmID], context: dict[str, float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per arm: point estimate ``theta . x`` and width ``sqrt(x' A^-1 x)``."""
        self._grow(arm_ids, context)
        x = self._vector(context)
        if len(arm_ids) == len(self._arms) and all(
            self._arms[a] == i for i, a in enumerate(arm_ids)
        ):
            a_inv, b = self._a_inv, self._b
        else:
            rows = np.fromiter((self._arms[a] for a in arm_ids), dtype=np.intp, count=len(arm_ids))
            a_inv, b = self._a_inv[rows], self._b[rows]
        a_inv_x = a_inv @ x  # (k, d)
        mean = np.einsum("kd,kd->k", b, a_inv_x)  # theta . x, A^-1 symmetric
        width = np.sqrt(np.maximum(a_inv_x @ x, 0.0))
        return mean, width

    def predict_one(self, arm_id: ArmID, context: dict[str, float] | None = None) -> float:
        """Point estimate of the target of ``arm_id`` (0 for an arm never seen)."""
        if arm_id not in self._arms:
            return 0.0
        x = self._vector(self._check_context(context))
        i = self._arms[arm_id]
        return float(self._b[i] @ (self._a_inv[i] @ x))

    # -- learning ---------------------------------------------------------------------------------
    def _update(self, arm_id: ArmID, context: dict[str, float], reward: float) -> None:
        self._grow([arm_id], context)
        self._observe(self._arms[arm_id], self._vector(context), reward, 1.0)

    def _observe(self, i: int, x: np.ndarray, reward: float, weight: float) -> None:
        g = self.discount
        a_inv = self._a_inv[i]
        if g < 1.0:
            self._gram[i] *= g
            self._b[i] *= g
            a_inv /= g
        a_inv_x = a_inv @ x
        # Sherman-Morrison: (A + w x x')^-1 = A^-1 - w A^-1 x x' A^-1 / (1 + w x' A^-1 x)
        a_inv -= weight * np.outer(a_inv_x, a_inv_x) / (1.0 + weight * (x @ a_inv_x))
        self._gram[i] += weight * np.outer(x, x)
        self._b[i] += weight * reward * x
        if g < 1.0:
            self._since_refresh[i] += 1
            if self._since_refresh[i] >= self.refresh_every:
                self._refresh(i)

    def _refresh(self, i: int) -> None:
        d = len(self._features)
        self._a_inv[i] = np.linalg.inv(self._gram[i] + self.ridge * np.eye(d))
        self._since_refresh[i] = 0

    def set_prior(self, arm_id: ArmID, mean: float, weight: float = 1.0) -> Self:
        """Start ``arm_id`` at ``mean`` (on the bias feature) as if observed ``weight`` times.

        Use it for a new model: the mean of its price tier, or what the logs say.
        """
        if not (math.isfinite(mean) and math.isfinite(weight)) or weight < 0:
            raise ValueError("prior mean must be finite and weight a finite number >= 0")
        self._grow([arm_id], {self.bias_feature: 1.0})
        x = self._vector({self.bias_feature: 1.0})
        self._observe(self._arms[arm_id], x, float(mean), float(weight))
        return self

    # -- merging and state ------------------------------------------------------------------------
    def _merge_stats(self, a: Self, b: Self, base: Self) -> None:
        feats = list(a._features)
        feats += [f for f in b._features if f not in a._features]
        feats += [f for f in base._features if f not in feats]
        arms = list(a._arms)
        arms += [x for x in b._arms if x not in a._arms]
        arms += [x for x in base._arms if x not in arms]
        self._features, self._arms = {}, {}
        self._a_inv, self._gram = np.zeros((0, 0, 0)), np.zeros((0, 0, 0))
        self._b, self._since_refresh = np.zeros((0, 0)), np.zeros(0, dtype=np.int64)
        self._grow_to(feats, arms)
        for src, sign in ((a, 1.0), (b, 1.0), (base, -1.0)):
            fi = np.array([self._features[f] for f in src._features], dtype=np.intp)
            for arm, j in src._arms.items():
                i = self._arms[arm]
                self._gram[i][np.ix_(fi, fi)] += sign * src._gram[j]
                self._b[i][fi] += sign * src._b[j]
        for i in range(len(self._arms)):
            self._refresh(i)

    def _get_state(self) -> dict[str, Any]:
        return {
            **super()._get_state(),
            "features": list(self._features),
            "arms": list(self._arms),
            "gram": self._gram,
            "a_inv": self._a_inv,
            "b": self._b,
            "since_refresh": self._since_refresh,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        super()._set_state(state)
        self._features = {str(f): i for i, f in enumerate(state["features"])}
        self._arms = {str(a): i for i, a in enumerate(state["arms"])}
        k, d = len(self._arms), len(self._features)
        self._gram = np.asarray(state["gram"], dtype=float).reshape(k, d, d)
        self._a_inv = np.asarray(state["a_inv"], dtype=float).reshape(k, d, d)
        self._b = np.asarray(state["b"], dtype=float).reshape(k, d)
        self._since_refresh = np.asarray(state["since_refresh"], dtype=np.int64).reshape(k)
