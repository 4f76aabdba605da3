"""Per-arm ridge regressions of the target on the context, stacked for speed (contextual policies).

Every arm keeps ``A^-1`` for ``A = ridge * I + sum x x'`` (plus prior pseudo-observations) and
``b = sum r x``, updated by Sherman-Morrison (no per-step inversion). Arms are stacked in arrays,
so a pull is a few vectorised numpy operations; features and arms unseen so far are added at
runtime without disturbing what was learned (a new feature dimension is exactly a new
ridge-prior block). ``A - ridge * I`` and ``b`` are additive sufficient statistics, which is
what merging replicas needs (``A`` is recovered from ``A^-1`` by one inversion per arm at merge
time, rather than being maintained at every step).

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
from models.base import BasePolicy


class LinearPolicy(BasePolicy):
    """Base of the contextual policies: stacked per-arm ridge regressions.

    Parameters
    ----------
    ridge
        Prior precision of every coefficient but the bias: how much evidence a context
        feature needs before it sways a choice (larger: the policy starts as a per-arm mean
        and turns contextual as data accrues).
    bias_ridge
        Prior precision of the bias coefficient (None: ``ridge``); small lets each arm's mean
        be learned from its first few rewards.
    discount
        Weight kept by an arm's past observations at each new one (1: remember all).
    bias_feature
        Name of the always-1 feature that priors (``set_prior``) act on.
    pooled_prior
        Centre every arm's bias prior on the mean target of all arms so far (empirical
        Bayes) instead of 0: a model's first unlucky rewards then read as "about average",
        not "worthless", which keeps a greedy rule from writing off a good model.
    context_gate
        Use the context only while it predicts better. Every reward is first predicted by the
        contextual model and by a context-free per-arm mean (progressive validation: each
        prediction is made before the reward is learned); pulls rank arms with whichever
        model has the lower squared error so far. Where request features carry no signal
        (few samples, noisy quality) the policy behaves like a cost-aware UCB on per-arm
        means instead of paying for a noisy regression; where they do, it routes on them.
    burn_in, max_reward, exploration_floor, explore_decay, cost_aware, seed
        See :class:`models.base.BasePolicy`.
    """

    refresh_every = 64

    def __init__(
        self,
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
            burn_in=burn_in,
            max_reward=max_reward,
            exploration_floor=exploration_floor,
            explore_decay=explore_decay,
            cost_aware=cost_aware,
            seed=seed,
        )
        if ridge <= 0:
            raise ValueError(f"ridge must be > 0, got {ridge}")
        if bias_ridge is not None and bias_ridge <= 0:
            raise ValueError(f"bias_ridge must be > 0 or None, got {bias_ridge}")
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        self.ridge = ridge
        self.bias_ridge = bias_ridge
        self.discount = discount
        self.bias_feature = bias_feature
        self.pooled_prior = pooled_prior
        self.context_gate = context_gate
        self._pool = [0.0, 0.0]  # (count, sum) of every target, all arms together
        self._errors = [0.0, 0.0]  # prequential squared errors: (contextual, context-free)
        self._features: dict[str, int] = {}
        self._arms: dict[ArmID, int] = {}
        self._a_inv = np.zeros((0, 0, 0))
        self._b = np.zeros((0, 0))
        self._prior_scale = np.ones(0)  # share of the ridge prior left in A (discounting)
        self._since_refresh = np.zeros(0, dtype=np.int64)
        self._free: list[list[float]] = []  # per arm [count, sum]: the context-free model
        self._vec_keys: tuple[str, ...] = ()
        self._vec_idx = np.zeros(0, dtype=np.intp)

    # -- growth of the feature space and of the arm set -----------------------------------------
    def _grow(self, arm_ids: list[ArmID], context: dict[str, float]) -> None:
        feats, arms = self._features, self._arms
        if feats.keys() >= context.keys() and arms.keys() >= set(arm_ids):
            return
        self._grow_to([k for k in context if k not in feats], [a for a in arm_ids if a not in arms])

    def _grow_to(self, new_feats: list[str], new_arms: list[ArmID]) -> None:
        d_old, k_old = len(self._features), len(self._arms)
        for name in new_feats:
            self._features[name] = len(self._features)
        for arm in new_arms:
            self._arms[arm] = len(self._arms)
        d, k = len(self._features), len(self._arms)
        idx = np.arange(d)
        prior = self._prior_precision()
        a_inv = np.zeros((k, d, d))
        a_inv[:k_old, :d_old, :d_old] = self._a_inv
        # A new feature adds a prior block to every arm (scaled like the rest of its prior).
        a_inv[:k_old, idx[d_old:], idx[d_old:]] = 1.0 / (
            self._prior_scale[:, None] * prior[None, d_old:]
        )
        a_inv[k_old:, idx, idx] = 1.0 / prior  # new arms start from the prior
        b = np.zeros((k, d))
        b[:k_old, :d_old] = self._b
        scale = np.ones(k)
        scale[:k_old] = self._prior_scale
        since = np.zeros(k, dtype=np.int64)
        since[:k_old] = self._since_refresh
        self._free += [[0.0, 0.0] for _ in new_arms]
        self._a_inv, self._b, self._prior_scale = a_inv, b, scale
        self._since_refresh = since
        self._vec_keys = ()  # the feature index changed

    def _prior_precision(self) -> np.ndarray:
        prior = np.full(len(self._features), self.ridge)
        j = self._features.get(self.bias_feature)
        if j is not None and self.bias_ridge is not None:
            prior[j] = self.bias_ridge
        return prior

    def _vector(self, context: dict[str, float]) -> np.ndarray:
        """The context as a dense vector over the known features (unknown keys ignored)."""
        keys = tuple(context)
        if keys != self._vec_keys:  # a new key layout: map it once, reuse while it repeats
            feats = self._features
            self._vec_idx = np.array([feats.get(k, -1) for k in keys], dtype=np.intp)
            self._vec_keys = keys
        x = np.zeros(len(self._features) + 1)  # last slot swallows unknown keys
        x[self._vec_idx] = np.fromiter(context.values(), dtype=float, count=len(keys))
        return x[:-1]

    def _gram(self, i: int) -> np.ndarray:
        """``sum x x'`` of arm ``i`` (discounted), recovered from ``A^-1`` when needed."""
        out: np.ndarray = np.linalg.inv(self._a_inv[i]) - np.diag(
            self._prior_scale[i] * self._prior_precision()
        )
        return out

    # -- estimates --------------------------------------------------------------------------------
    gate_warmup = 30
    """Rewards predicted by both models before the gate may turn the context off."""

    def _context_off(self) -> bool:
        return (
            self.context_gate
            and self._n_updates >= self.gate_warmup
            and self._errors[0] > self._errors[1]
        )

    def _rows(self, arm_ids: list[ArmID]) -> slice | np.ndarray:
        arms = self._arms
        if len(arm_ids) == len(arms) and list(arms) == arm_ids:
            return slice(None)
        return np.fromiter((arms[a] for a in arm_ids), dtype=np.intp, count=len(arm_ids))

    def _context_free(self, rows: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per arm: pooled-prior mean and width ``1 / sqrt(n + bias_ridge)``."""
        lam = self.bias_ridge if self.bias_ridge is not None else self.ridge
        mu = self._pool[1] / self._pool[0] if self.pooled_prior and self._pool[0] > 0 else 0.0
        stats = np.array(self._free).reshape(-1, 2)[rows]
        n_eff = stats[..., 0] + lam
        return (stats[..., 1] + lam * mu) / n_eff, 1.0 / np.sqrt(n_eff)

    def _mean_width(
        self, arm_ids: list[ArmID], context: dict[str, float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per arm: point estimate ``theta . x`` and width ``sqrt(x' A^-1 x)``."""
        self._grow(arm_ids, context)
        rows = self._rows(arm_ids)
        if self._context_off():
            return self._context_free(rows)
        x = self._vector(context)
        a_inv_x = self._a_inv[rows] @ x  # (k, d)
        mean = np.einsum("kd,kd->k", self._b[rows], a_inv_x)  # theta . x, A^-1 symmetric
        mean += self._pooled_offset(a_inv_x)
        width = np.sqrt(np.maximum(a_inv_x @ x, 0.0))
        return mean, width

    def _pooled_offset(self, a_inv_x: np.ndarray) -> np.ndarray | float:
        """Prior-mean term ``x' A^-1 Lambda m``, m = pooled mean on the bias coefficient."""
        j = self._features.get(self.bias_feature)
        if not self.pooled_prior or j is None or self._pool[0] <= 0:
            return 0.0
        mu = self._pool[1] / self._pool[0]
        lam = self.bias_ridge if self.bias_ridge is not None else self.ridge
        out: np.ndarray | float = mu * lam * a_inv_x[..., j]
        return out

    def arm_mean(self, arm_id: ArmID) -> float | None:
        i = self._arms.get(arm_id)
        if i is None or self._free[i][0] <= 0:
            return None
        return self._free[i][1] / self._free[i][0]

    def predict_one(self, arm_id: ArmID, context: dict[str, float] | None = None) -> float:
        """Point estimate of the target of ``arm_id`` (0 for an arm never seen)."""
        if arm_id not in self._arms:
            return 0.0
        x = self._vector(self._check_context(context))
        i = self._arms[arm_id]
        a_inv_x = self._a_inv[i] @ x
        return float(self._b[i] @ a_inv_x + self._pooled_offset(a_inv_x))

    # -- learning ---------------------------------------------------------------------------------
    def _update(self, arm_id: ArmID, context: dict[str, float], reward: float) -> None:
        self._grow([arm_id], context)
        x = self._vector(context)
        i = self._arms[arm_id]
        g = self.discount
        a_inv_x = self._a_inv[i] @ x
        if self.context_gate:
            ctx_pred = float(self._b[i] @ a_inv_x + self._pooled_offset(a_inv_x))
            lam = self.bias_ridge if self.bias_ridge is not None else self.ridge
            pool_n, pool_sum = self._pool
            mu = pool_sum / pool_n if self.pooled_prior and pool_n > 0 else 0.0
            n, total = self._free[i]
            free_pred = (total + lam * mu) / (n + lam)
            self._errors = [
                g * self._errors[0] + (reward - ctx_pred) ** 2,
                g * self._errors[1] + (reward - free_pred) ** 2,
            ]
        free = self._free[i]
        free[0] = g * free[0] + 1.0
        free[1] = g * free[1] + reward
        self._observe(i, x, reward, 1.0, a_inv_x)
        self._pool = [g * self._pool[0] + 1.0, g * self._pool[1] + reward]

    def _observe(
        self, i: int, x: np.ndarray, reward: float, weight: float, a_inv_x: np.ndarray
    ) -> None:
        g = self.discount
        a_inv = self._a_inv[i]
        b = self._b[i]
        if g < 1.0:
            b *= g
            a_inv /= g
            a_inv_x = a_inv_x / g
            self._prior_scale[i] *= g
        # Sherman-Morrison: (A + w x x')^-1 = A^-1 - w A^-1 x x' A^-1 / (1 + w x' A^-1 x)
        a_inv -= np.outer(a_inv_x, a_inv_x * (weight / (1.0 + weight * float(x @ a_inv_x))))
        b += (weight * reward) * x
        if g < 1.0:
            self._since_refresh[i] += 1
            if self._since_refresh[i] >= self.refresh_every:
                self._refresh(i)

    def _refresh(self, i: int) -> None:
        """Exact ``A^-1`` with the full ridge prior restored (after discounting shrank it)."""
        gram = self._gram(i)
        self._a_inv[i] = np.linalg.inv(gram + np.diag(self._prior_precision()))
        self._prior_scale[i] = 1.0
        self._since_refresh[i] = 0

    def set_prior(self, arm_id: ArmID, mean: float, weight: float = 1.0) -> Self:
        """Start ``arm_id`` at ``mean`` (on the bias feature) as if observed ``weight`` times.

        Use it for a new model: the mean of its price tier, or what the logs say.
        """
        if not (math.isfinite(mean) and math.isfinite(weight)) or weight < 0:
            raise ValueError("prior mean must be finite and weight a finite number >= 0")
        self._grow([arm_id], {self.bias_feature: 1.0})
        x = self._vector({self.bias_feature: 1.0})
        i = self._arms[arm_id]
        self._observe(i, x, float(mean), float(weight), self._a_inv[i] @ x)
        return self

    def _discount_arm(self, arm_id: ArmID, factor: float) -> None:
        """Scale the arm's ``sum x x'``, ``b`` and context-free counts; the ridge prior stays
        whole (a prior set by ``set_prior`` is part of the statistics and is scaled too)."""
        i = self._arms.get(arm_id)
        if i is None:
            return
        gram = self._gram(i)
        self._a_inv[i] = np.linalg.inv(factor * gram + np.diag(self._prior_precision()))
        self._prior_scale[i] = 1.0
        self._since_refresh[i] = 0
        self._b[i] *= factor
        self._free[i] = [factor * v for v in self._free[i]]

    def _arm_weight(self, arm_id: ArmID) -> float:
        i = self._arms.get(arm_id)
        return self._free[i][0] if i is not None else 0.0  # discounted count

    # -- merging and state ------------------------------------------------------------------------
    def _merge_stats(self, a: Self, b: Self, base: Self) -> None:
        feats = list(a._features)
        feats += [f for f in b._features if f not in a._features]
        feats += [f for f in base._features if f not in feats]
        arms = list(a._arms)
        arms += [x for x in b._arms if x not in a._arms]
        arms += [x for x in base._arms if x not in arms]
        self._features, self._arms = {}, {}
        self._a_inv, self._b = np.zeros((0, 0, 0)), np.zeros((0, 0))
        self._prior_scale, self._since_refresh = np.ones(0), np.zeros(0, dtype=np.int64)
        self._free = []
        self._grow_to(feats, arms)
        d = len(self._features)
        grams = np.zeros((len(self._arms), d, d))
        for src, sign in ((a, 1.0), (b, 1.0), (base, -1.0)):
            fi = np.array([self._features[f] for f in src._features], dtype=np.intp)
            for arm, j in src._arms.items():
                i = self._arms[arm]
                grams[i][np.ix_(fi, fi)] += sign * src._gram(j)
                self._b[i][fi] += sign * src._b[j]
                self._free[i] = [
                    p + sign * q for p, q in zip(self._free[i], src._free[j], strict=False)
                ]
        prior = np.diag(self._prior_precision())
        for i in range(len(self._arms)):
            self._a_inv[i] = np.linalg.inv(grams[i] + prior)
        self._pool = [a._pool[j] + b._pool[j] - base._pool[j] for j in range(2)]
        self._errors = [a._errors[j] + b._errors[j] - base._errors[j] for j in range(2)]

    def _get_state(self) -> dict[str, Any]:
        return {
            **super()._get_state(),
            "features": list(self._features),
            "arms": list(self._arms),
            "a_inv": self._a_inv,
            "b": self._b,
            "prior_scale": self._prior_scale,
            "since_refresh": self._since_refresh,
            "free": [list(v) for v in self._free],
            "pool": list(self._pool),
            "errors": list(self._errors),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        super()._set_state(state)
        self._features = {str(f): i for i, f in enumerate(state["features"])}
        self._arms = {str(a): i for i, a in enumerate(state["arms"])}
        k, d = len(self._arms), len(self._features)
        self._a_inv = np.asarray(state["a_inv"], dtype=float).reshape(k, d, d)
        self._b = np.asarray(state["b"], dtype=float).reshape(k, d)
        self._prior_scale = np.asarray(state["prior_scale"], dtype=float).reshape(k)
        self._since_refresh = np.asarray(state["since_refresh"], dtype=np.int64).reshape(k)
        self._free = [[float(n), float(t)] for n, t in state["free"]]
        self._pool = [float(v) for v in state["pool"]]
        self._errors = [float(v) for v in state["errors"]]
        self._vec_keys = ()
