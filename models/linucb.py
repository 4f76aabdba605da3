"""Disjoint LinUCB: one ridge regression of reward on context per arm, optimistic choice.

Written with numpy rather than River's ``LinUCBDisjoint``: River returns no propensities or
per-arm scores, inverts per step, and its constructor passes ``burn_in`` into the wrong slot.
Here every arm keeps ``A^-1`` directly and updates it by Sherman-Morrison (no inversion), the arms
are stacked so a pull is a few vectorised numpy operations, and features or arms unseen so far are
added at runtime without disturbing what was learned (a new feature dimension is exactly a new
ridge-prior block).
"""

from __future__ import annotations

import numpy as np

from llmopt.types import ArmID
from models.base import Policy


class LinUCB(Policy):
    """Upper confidence bound on a per-arm linear model of the reward.

    Score of arm ``a`` for context ``x``: ``theta_a . x + alpha * sqrt(x' A_a^-1 x)`` where
    ``A_a = ridge * I + sum x x'`` and ``theta_a = A_a^-1 b_a``. The arm with the highest score is
    chosen (ties split evenly), so the propensity is 1 unless scores tie.

    Parameters
    ----------
    alpha
        Width of the confidence bonus: exploration strength.
    ridge
        Ridge (prior precision) of every arm's regression.
    burn_in
        See :class:`models.base.Policy`.
    seed
        Seed of the policy's random generator (tie-breaking).

    Examples
    --------
    >>> import random
    >>> rng = random.Random(0)
    >>> p = LinUCB(alpha=0.3, seed=0)
    >>> for _ in range(300):
    ...     x = {"bias": 1.0, "code": float(rng.random() < 0.5)}
    ...     d = p.pull(["coder", "chatter"], x)
    ...     good = (d.model == "coder") == (x["code"] == 1.0)
    ...     _ = p.update(d.model, x, 1.0 if good else 0.0)
    >>> p.pull(["coder", "chatter"], {"bias": 1.0, "code": 1.0}).model
    'coder'
    >>> p.pull(["coder", "chatter"], {"bias": 1.0, "code": 0.0}).model
    'chatter'

    References
    ----------
    Li, Chu, Langford, Schapire (2010). A contextual-bandit approach to personalized news
    article recommendation. WWW.
    """

    name = "linucb"

    def __init__(
        self,
        alpha: float = 0.5,
        *,
        ridge: float = 1.0,
        burn_in: int = 1,
        seed: int | None = None,
    ) -> None:
        super().__init__(burn_in=burn_in, seed=seed)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if ridge <= 0:
            raise ValueError(f"ridge must be > 0, got {ridge}")
        self.alpha = alpha
        self.ridge = ridge
        self._features: dict[str, int] = {}
        self._arms: dict[ArmID, int] = {}
        self._a_inv = np.zeros((0, 0, 0))
        self._b = np.zeros((0, 0))

    # -- growth of the feature space and of the arm set -----------------------------------------
    def _grow(self, arm_ids: list[ArmID], context: dict[str, float]) -> None:
        new_feats = [k for k in context if k not in self._features]
        new_arms = [a for a in arm_ids if a not in self._arms]
        if not new_feats and not new_arms:
            return
        d_old, k_old = len(self._features), len(self._arms)
        for name in new_feats:
            self._features[name] = len(self._features)
        for arm in new_arms:
            self._arms[arm] = len(self._arms)
        d, k = len(self._features), len(self._arms)
        a_inv = np.zeros((k, d, d))
        a_inv[:k_old, :d_old, :d_old] = self._a_inv
        idx = np.arange(d)
        a_inv[:k_old, idx[d_old:], idx[d_old:]] = 1.0 / self.ridge  # prior of new features
        a_inv[k_old:, idx, idx] = 1.0 / self.ridge  # new arms start from the prior
        b = np.zeros((k, d))
        b[:k_old, :d_old] = self._b
        self._a_inv, self._b = a_inv, b

    def _vector(self, context: dict[str, float]) -> np.ndarray:
        x = np.zeros(len(self._features))
        for k, v in context.items():
            x[self._features[k]] = v
        return x

    # -- hooks ------------------------------------------------------------------------------------
    def _pull(
        self, arm_ids: list[ArmID], context: dict[str, float]
    ) -> tuple[dict[ArmID, float], dict[ArmID, float]]:
        self._grow(arm_ids, context)
        x = self._vector(context)
        rows = np.fromiter((self._arms[a] for a in arm_ids), dtype=np.intp, count=len(arm_ids))
        a_inv = self._a_inv[rows]
        a_inv_x = a_inv @ x  # (k, d)
        mean = np.einsum("kd,kd->k", self._b[rows], a_inv_x)  # theta . x, A^-1 symmetric
        width = np.sqrt(np.maximum(a_inv_x @ x, 0.0))
        ucb = mean + self.alpha * width
        scores = {a: float(s) for a, s in zip(arm_ids, ucb, strict=True)}
        return self._argmax_probs(scores), scores

    def _update(self, arm_id: ArmID, context: dict[str, float], reward: float) -> None:
        self._grow([arm_id], context)
        x = self._vector(context)
        i = self._arms[arm_id]
        a_inv = self._a_inv[i]
        a_inv_x = a_inv @ x
        # Sherman-Morrison: (A + x x')^-1 = A^-1 - A^-1 x x' A^-1 / (1 + x' A^-1 x)
        a_inv -= np.outer(a_inv_x, a_inv_x) / (1.0 + x @ a_inv_x)
        self._b[i] += reward * x

    def predict_one(self, arm_id: ArmID, context: dict[str, float]) -> float:
        """Point estimate of the reward of ``arm_id`` (0 for an arm never seen)."""
        if arm_id not in self._arms:
            return 0.0
        ctx = {k: v for k, v in self._check_context(context).items() if k in self._features}
        x = self._vector(ctx)
        i = self._arms[arm_id]
        return float(self._b[i] @ (self._a_inv[i] @ x))
