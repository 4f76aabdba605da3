"""Hierarchical Thompson sampling over clusters of the prompt-embedding space.

The structure that makes routing pay is usually coarse: a workload is a mix of tasks (maths word
problems, code, multiple choice in one language or another) and each model is good at some of
them. Prompts of one task sit close together in embedding space (``emb_*`` features,
:mod:`llmopt.embeddings`), so:

1. the first ``fit_after`` distinct prompts the policy sees (their embedding, and optionally a
   few structural markers, ``cell_features``) are clustered (k-means++, Lloyd
   iterations, no labels) into ``n_clusters`` cells; the centroids are then frozen, so the
   statistics of a cell keep one meaning and replicas that share a snapshot merge by addition;
2. every (cell, model) pair keeps a count and a sum of its targets; its posterior mean is
   *shrunk* towards the model's global mean with the weight of ``prior_weight`` observations
   (hierarchical / empirical-Bayes pooling: a cell with few observations of a model borrows the
   model's overall level, a well-observed cell speaks for itself), and the model's global mean
   is itself shrunk towards the mean of everything learnt (all models, never discounted);
3. Thompson sampling on those Gaussian posteriors (standard deviation ``sigma / sqrt(n + m)``)
   picks the model; with ``max_reward`` the draws are capped and known ``penalties`` (predicted
   cost and latency in reward units) subtracted, so an arm whose price rules it out is not
   explored. The propensity is the share of ``n_propensity_draws`` posterior draws the played
   arm wins, and the arm is sampled from exactly those shares (as :mod:`models.thompson`).
   Picking the winner of one of the draws at random *is* Thompson sampling, whatever their
   number, and the share is the exact probability of what was played given the draws: 16 draws
   keep the logged propensity exact for off-policy evaluation at a quarter of 64's cost.

Before the cells exist, or for a request without embedding features, the policy is the same
Thompson sampler on the global statistics. Observations made before the cells exist are kept
and assigned to their cells when the cells are fitted (nothing learned is lost).

Cost: a pull is one ``k x d`` distance computation plus ``n_propensity_draws x arms`` normal
draws; an update is two additions. State grows with cells x arms, never with traffic.

Examples
--------
>>> import random
>>> rng = random.Random(0)
>>> p = ClusterThompson(n_clusters=2, fit_after=20, seed=0)
>>> good = {"maths": "metamath", "chinese": "qwen"}
>>> for _ in range(600):
...     task = rng.choice(["maths", "chinese"])
...     x = {"emb_0": 1.0, "emb_1": 0.0} if task == "maths" else {"emb_0": 0.0, "emb_1": 1.0}
...     d = p.pull(["metamath", "qwen"], x)
...     _ = p.update(d.model, x, float(rng.random() < (0.8 if d.model == good[task] else 0.3)))
>>> p.pull(["metamath", "qwen"], {"emb_0": 1.0, "emb_1": 0.0}).model
'metamath'
>>> p.pull(["metamath", "qwen"], {"emb_0": 0.0, "emb_1": 1.0}).model
'qwen'
>>> p.n_cells_fitted
2

References
----------
Gelman et al., Bayesian Data Analysis, ch. 5 (hierarchical models); Chapelle & Li (2011), An
empirical evaluation of Thompson sampling; Zhang et al. (2025), Avengers-Pro (embed, cluster,
score models per cluster).
"""

from __future__ import annotations

import math
import operator
from typing import Any, Self

import numpy as np

from llmopt.types import ArmID
from models.base import BasePolicy, _no_penalties
from models.state import np_rng_state, set_np_rng_state

EB_EVERY = 16
"""Updates between two empirical-Bayes estimates of the shrinkage weight."""
EB_BOUNDS = (0.5, 200.0)
"""Range of the estimated shrinkage weight, in observations."""
PENDING_LIMIT = 10
"""Observations kept before the cells exist, in multiples of ``fit_after``."""
KMEANS_RESTARTS = 3
KMEANS_ITERATIONS = 25
_EVERY = slice(None)
_CACHES = frozenset(
    {
        "_gden",
        "_gsd",
        "_gden_ok",
        "_cden",
        "_csd",
        "_den_m",
        "_rows_key",
        "_rows",
        "_tile",
        "_tile_of",
        "_cap_tile",
        "_cap_of",
        "_x",
    }
)
"""Attributes set by ``ClusterThompson._reset_caches``: derived, never pickled."""


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Centroids of ``x`` (k-means++ seeding, Lloyd iterations, best of a few restarts).

    Written out (20 lines of numpy) rather than through scikit-learn: it runs once per policy,
    on a few hundred points, inside the learner's seeded and serialised state.

    >>> pts = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    >>> np.round(np.sort(kmeans(pts, 2, np.random.default_rng(0))[:, 0]), 2).tolist()
    [0.05, 5.05]
    """
    k = min(k, len(np.unique(x, axis=0)))  # a few distinct prompts: fewer cells
    best, best_inertia = x[:k].copy(), math.inf
    sq = (x * x).sum(axis=1)
    for _ in range(KMEANS_RESTARTS):
        centres = [x[rng.integers(len(x))]]
        for _ in range(1, k):
            c = np.array(centres)
            d2 = np.maximum(sq[:, None] - 2 * x @ c.T + (c * c).sum(axis=1)[None, :], 0).min(1)
            total = d2.sum()
            if total <= 0:
                break
            centres.append(x[rng.choice(len(x), p=d2 / total)])
        c = np.array(centres)
        for _ in range(KMEANS_ITERATIONS):
            d2 = sq[:, None] - 2 * x @ c.T + (c * c).sum(axis=1)[None, :]
            labels = d2.argmin(axis=1)
            moved = np.array(
                [
                    x[labels == j].mean(axis=0) if (labels == j).any() else c[j]
                    for j in range(len(c))
                ]
            )
            if np.allclose(moved, c):
                break
            c = moved
        inertia = float(np.maximum(d2.min(axis=1), 0).sum())
        if inertia < best_inertia:
            best, best_inertia = c, inertia
    return best


class ClusterThompson(BasePolicy):
    """Thompson sampling per (embedding cluster, model), shrunk towards each model's global mean.

    Parameters
    ----------
    n_clusters
        Cells of the embedding space (k of k-means).
    prior_weight
        Weight, in observations, of a model's global mean in each cell's posterior (``m``);
        None: estimated from the data (:meth:`shrinkage_weight`, empirical Bayes).
    global_prior_weight
        Weight of the mean of all models in each model's global mean.
    sigma
        Scale of the posterior standard deviation (``sigma / sqrt(n + m)``): exploration.
    fit_after
        Distinct prompts seen before the cells are fitted (a warm start counts).
    feature_prefix
        Context features whose names start with this are the embedding (``emb_``).
    cell_features
        Named context features placed beside the embedding in the space the cells are fitted
        and looked up in (the request's structural markers,
        :data:`llmopt.features.STRUCTURE_FEATURES`): two kinds of request whose words look
        alike (a maths word problem, a history question) still fall in different cells. A
        request missing one of them is treated like one without embedding.
    cell_feature_weight
        Scale of the ``cell_features`` against the unit-length embedding.
    burn_in, max_reward, exploration_floor, explore_decay, cost_aware, seed
        See :class:`models.base.BasePolicy`.
    """

    name = "cluster_thompson"
    n_propensity_draws = 16

    def __init__(
        self,
        *,
        n_clusters: int = 8,
        prior_weight: float | None = 3.0,
        global_prior_weight: float = 2.0,
        sigma: float = 0.25,
        fit_after: int = 300,
        feature_prefix: str = "emb_",
        cell_features: tuple[str, ...] = (),
        cell_feature_weight: float = 1.0,
        burn_in: int = 0,
        max_reward: float | None = None,
        exploration_floor: float = 0.0,
        explore_decay: float = 0.0,
        cost_aware: bool = False,
        seed: int | None = None,
    ) -> None:
        if n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
        if not (
            (prior_weight is None or prior_weight > 0) and global_prior_weight > 0 and sigma > 0
        ):
            raise ValueError("prior_weight, global_prior_weight and sigma must be > 0")
        if fit_after < n_clusters:
            raise ValueError(f"fit_after must be >= n_clusters, got {fit_after}")
        if not feature_prefix:
            raise ValueError("feature_prefix must not be empty")
        super().__init__(
            burn_in=burn_in,
            max_reward=max_reward,
            exploration_floor=exploration_floor,
            explore_decay=explore_decay,
            cost_aware=cost_aware,
            seed=seed,
        )
        self.n_clusters = n_clusters
        self.prior_weight = prior_weight
        self.global_prior_weight = global_prior_weight
        self.sigma = sigma
        self.fit_after = fit_after
        self.feature_prefix = feature_prefix
        self.cell_features = tuple(cell_features)
        self.cell_feature_weight = cell_feature_weight
        self._scale: np.ndarray | None = None  # per dim: 1 (embedding) or cell_feature_weight
        self._np_rng = np.random.default_rng(seed)
        self._arms: dict[ArmID, int] = {}
        self._gn = np.zeros(0)  # per arm: count, sum of targets
        self._gs = np.zeros(0)
        self._pool = [0.0, 0.0]  # every target ever learnt: count, sum (never discounted)
        self._n = np.zeros((n_clusters, 0))  # per (cell, arm)
        self._s = np.zeros((n_clusters, 0))
        self._q = np.zeros((n_clusters, 0))  # per (cell, arm): sum of squared targets
        self._m_cache: tuple[int, float] = (-1, 3.0)  # (n_updates when computed, weight)
        self._centroids: np.ndarray | None = None
        self._half_c_sq = np.zeros(0)  # per cell: half its centroid's squared norm
        self._dims: tuple[str, ...] = ()  # embedding feature names, in order
        self._seen: list[list[float]] = []  # distinct prompts before the fit
        self._pending: list[tuple[list[float], ArmID, float]] = []  # observations before the fit
        self._getter: Any = None  # itemgetter of the embedding's features, in order
        self._last_cell: tuple[tuple[float, ...], int] | None = None  # (feature values, cell)
        self._reset_caches()

    # -- helpers ------------------------------------------------------------------------------
    @property
    def n_cells_fitted(self) -> int:
        """Number of cells once fitted (0 before)."""
        return 0 if self._centroids is None else len(self._centroids)

    def __getstate__(self) -> dict[str, Any]:
        """What pickle and deepcopy keep: the caches are derived, rebuilt on first use."""
        return {k: v for k, v in self.__dict__.items() if k not in _CACHES}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for stale in ("_layout", "_c_sq"):  # a pickle from before these caches
            self.__dict__.pop(stale, None)
        self._getter = None
        self._set_centroids(self._centroids)
        self._reset_caches()

    def _reset_caches(self) -> None:
        """Forget what is derived from the statistics (after they change other than by an update).

        A pull's posterior reads the denominators ``gn + m0`` and ``n + m`` and the standard
        deviations ``sigma / sqrt(.)`` from these arrays, kept exact by each update (the same
        IEEE operations as computing them whole, so the same numbers) and rebuilt whole here.
        """
        self._gden = np.zeros(0)  # per arm: gn + global_prior_weight
        self._gsd = np.zeros(0)  # per arm: sigma / sqrt(gden)
        self._gden_ok = False
        self._cden = np.zeros((self.n_clusters, 0))  # per (cell, arm): n + m
        self._csd = np.zeros((self.n_clusters, 0))  # per (cell, arm): sigma / sqrt(cden)
        self._den_m: float | None = None  # the m of cden (None: not computed)
        self._rows_key: list[ArmID] = []  # the last offer, its rows in the arrays
        self._rows: np.ndarray | slice = slice(None)
        self._tile = np.zeros(0, dtype=np.intp)  # n_propensity_draws x arange(arms), flat
        self._tile_of = (0, 0)
        self._cap_tile = np.zeros(0)  # as many max_reward
        self._cap_of: float | None = None
        self._x = np.zeros(0)  # scratch: the last request's point in the cells' space

    def _values(self, context: dict[str, float]) -> tuple[float, ...] | None:
        """The embedding's (and cell features') values in order; None when one is missing."""
        getter = self._getter
        if getter is None:
            if not self._dims:
                dims = [k for k in context if k.startswith(self.feature_prefix)]
                if not dims:
                    return None
                extra = tuple(k for k in self.cell_features if k not in dims)
                self._dims = tuple(sorted(dims, key=lambda k: (len(k), k))) + extra
            if len(self._dims) < 2:  # one feature alone is no embedding
                return None
            self._getter = getter = operator.itemgetter(*self._dims)
        try:
            values: tuple[float, ...] = getter(context)
        except KeyError:
            return None
        return values

    def _vector(self, values: tuple[float, ...], out: np.ndarray | None = None) -> np.ndarray:
        """The point of the cells' space: the values, cell features scaled (into ``out``)."""
        if out is None:
            out = np.empty(len(values))
        out[:] = values
        if self.cell_features:
            scale = self._scale
            if scale is None or len(scale) != len(out):
                n_extra = sum(1 for k in self._dims if k in self.cell_features)
                scale = self._scale = np.ones(len(out))
                scale[len(out) - n_extra :] = self.cell_feature_weight
            out *= scale
        return out

    def _embedding(self, context: dict[str, float]) -> np.ndarray | None:
        values = self._values(context)
        return None if values is None else self._vector(values)

    def _nearest(self, x: np.ndarray) -> int:
        assert self._centroids is not None
        # argmin |c|^2 / 2 - c.x: the nearest centroid (halving |c|^2 - 2 c.x is exact; the
        # method ``dot`` is the same BLAS product as ``@``, at a third of the call's overhead).
        return int((self._half_c_sq - self._centroids.dot(x)).argmin())

    def _cell(self, x: np.ndarray | None) -> int:
        if x is None or self._centroids is None:
            return -1
        return self._nearest(x)

    def _cell_of(self, values: tuple[float, ...] | None) -> int:
        """The cell of a request's feature values (-1: none); pull then update: one lookup."""
        if values is None or self._centroids is None:
            return -1
        last = self._last_cell
        if last is not None and last[0] == values:
            return last[1]
        x = self._x = self._vector(values, self._x if len(self._x) == len(values) else None)
        cell = self._nearest(x)
        self._last_cell = (values, cell)
        return cell

    def _set_centroids(self, centroids: np.ndarray | None) -> None:
        self._centroids = centroids
        if centroids is not None:
            self._half_c_sq = 0.5 * (centroids * centroids).sum(axis=1)
        self._last_cell = None

    def _grow(self, arm_ids: list[ArmID]) -> None:
        new = [a for a in arm_ids if a not in self._arms]
        if not new:
            return
        for a in new:
            self._arms[a] = len(self._arms)
        extra = len(new)
        self._gn = np.concatenate([self._gn, np.zeros(extra)])
        self._gs = np.concatenate([self._gs, np.zeros(extra)])
        pad = np.zeros((self.n_clusters, extra))
        self._n = np.hstack([self._n, pad])
        self._s = np.hstack([self._s, pad])
        self._q = np.hstack([self._q, pad])
        self._reset_caches()

    def _row_index(self, rows: list[int]) -> np.ndarray | slice:
        """``rows`` as a slice when they are every arm in order (the common case), else an array."""
        if len(rows) == len(self._arms) and rows == list(range(len(rows))):
            return _EVERY
        return np.asarray(rows, dtype=np.intp)

    def _posterior(self, rows: np.ndarray | slice, cell: int) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the arms at ``rows`` in ``cell`` (-1: none)."""
        if not self._gden_ok:
            self._gden = self._gn + self.global_prior_weight
            self._gsd = self.sigma / np.sqrt(self._gden)
            self._gden_ok = True
        pool = (self._pool[1] + 0.5) / (self._pool[0] + 1.0)
        every = isinstance(rows, slice)  # every arm in order (the usual offer): no indexing
        gs, gden = (self._gs, self._gden) if every else (self._gs[rows], self._gden[rows])
        gmu = (gs + self.global_prior_weight * pool) / gden
        if cell < 0:
            return gmu, self._gsd if every else self._gsd[rows]
        m = self.shrinkage_weight()
        if m != self._den_m:
            self._cden = self._n + m
            self._csd = self.sigma / np.sqrt(self._cden)
            self._den_m = m
        if every:
            return (self._s[cell] + m * gmu) / self._cden[cell], self._csd[cell]
        mu = (self._s[cell, rows] + m * gmu) / self._cden[cell, rows]
        return mu, self._csd[cell, rows]

    def _add(self, cell: int, i: int, target: float) -> None:
        self._n[cell, i] += 1.0
        self._s[cell, i] += target
        self._q[cell, i] += target * target
        if self._den_m is not None:
            den = self._cden[cell, i] = self._n[cell, i] + self._den_m
            self._csd[cell, i] = self.sigma / math.sqrt(den)

    def shrinkage_weight(self) -> float:
        """Weight, in observations, of a model's global mean in a cell's estimate (``m``).

        ``prior_weight`` when set; else estimated from the data (empirical Bayes, the one-way
        ANOVA method of moments pooled over models): ``m = sigma_within^2 / tau_between^2``,
        large when cells differ little (a structure-free workload: back to per-model means),
        small when they differ a lot. Recomputed every ``EB_EVERY`` updates, within
        ``EB_BOUNDS``.
        """
        if self.prior_weight is not None:
            return self.prior_weight
        at, cached = self._m_cache
        if at >= 0 and self._n_updates - at < EB_EVERY:
            return cached
        n, s, q = self._n, self._s, self._q
        has = n > 0
        n_arm = n.sum(axis=0)
        cells = has.sum(axis=0)
        counts: list[int] = cells.tolist()
        use = cells >= 2  # noqa: PLR2004 - a between-cell variance needs two cells
        n_pairs = sum(c - 1 for c in counts if c >= 2)  # noqa: PLR2004 - sum of cells - 1 in use
        m = EB_BOUNDS[1]
        if n_pairs:
            every = min(counts) >= 2  # noqa: PLR2004

            def cols(x: np.ndarray) -> np.ndarray:
                """``x[:, use]``: a column-major copy, whose sums round as they always did (a
                row-major array's would not); of every column, copied without indexing."""
                return np.asfortranarray(x) if every else x[:, use]

            n_use, cells_use = (n_arm, cells) if every else (n_arm[use], cells[use])
            safe_n = np.where(has, n, 1.0)
            within_ss = cols(q - s * s / safe_n).sum()
            within_df = float((n_use - cells_use).sum())
            sigma2 = max(within_ss / within_df, 1e-6) if within_df > 0 else 0.25
            s_use = cols(s)
            mean = s_use.sum(axis=0) / n_use
            ssb = float((cols(n) * (s_use / cols(safe_n) - mean) ** 2 * cols(has)).sum())
            denom = float((n_use - (cols(n) ** 2).sum(axis=0) / n_use).sum())
            tau2 = (ssb - float(n_pairs) * sigma2) / denom if denom > 0 else 0.0
            if tau2 > 0:
                m = min(max(float(sigma2 / tau2), EB_BOUNDS[0]), EB_BOUNDS[1])
        self._m_cache = (self._n_updates, m)
        return m

    def _fit_cells(self) -> None:
        x = np.array(self._seen)
        self._set_centroids(kmeans(x, self.n_clusters, self._np_rng))
        self._assign(self._pending)
        self._seen, self._pending = [], []

    def _assign(self, observations: list[tuple[list[float], ArmID, float]]) -> None:
        """Add observations made before the cells existed to their cells."""
        for vec, arm, target in observations:
            self._add(self._cell(np.asarray(vec)), self._arms[arm], target)

    # -- policy hooks -------------------------------------------------------------------------
    def _offer(self, arm_ids: list[ArmID]) -> None:
        """Make ``arm_ids`` the offer the posterior's rows are read for (kept between pulls)."""
        if arm_ids != self._rows_key:
            self._grow(arm_ids)
            self._rows = self._row_index([self._arms[a] for a in arm_ids])
            self._rows_key = list(arm_ids)

    def _pull(
        self, arm_ids: list[ArmID], context: dict[str, float], penalties: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._offer(arm_ids)
        mu, sd = self._posterior(self._rows, self._cell_of(self._values(context)))
        k, n = len(arm_ids), self.n_propensity_draws
        tile = self._tile
        if self._tile_of != (n, k):
            tile = self._tile = np.tile(np.arange(k), n)
            self._tile_of = (n, k)
        # The n x k draws mu + sd * z, capped, minus the penalties, computed flat on tiled
        # copies of the per-arm vectors: the same numbers, without numpy's per-row broadcast.
        values = self._np_rng.standard_normal(n * k)  # the draws of standard_normal((n, k))
        values *= sd[tile]
        values += mu[tile]
        top = self.max_reward
        if top is not None:
            cap = self._cap_tile
            if len(cap) != n * k or self._cap_of != top:
                cap = self._cap_tile = np.full(n * k, top)
                self._cap_of = top
            np.minimum(values, cap, out=values)
        if penalties is not _no_penalties(k):
            values -= penalties[tile]
        draws = values.reshape(n, k)
        return self._win_shares(draws), draws[0], mu

    def _pull_many(
        self, arm_ids: list[ArmID], contexts: list[dict[str, float]], penalties: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_pull` of every context at once: each context's posterior (one per cell), then
        all the draws in one call of the generator (the same numbers as one call per context,
        in turn), the same IEEE operations on (contexts x draws x arms) arrays."""
        self._offer(arm_ids)
        b, k, n = len(contexts), len(arm_ids), self.n_propensity_draws
        mu, sd = np.empty((b, k)), np.empty((b, k))
        by_cell: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for j, context in enumerate(contexts):
            cell = self._cell_of(self._values(context))
            post = by_cell.get(cell)
            if post is None:
                post = by_cell[cell] = self._posterior(self._rows, cell)
            mu[j], sd[j] = post
        values = self._np_rng.standard_normal(b * n * k).reshape(b, n, k)
        values *= sd[:, None, :]
        values += mu[:, None, :]
        if self.max_reward is not None:
            np.minimum(values, self.max_reward, out=values)
        values -= np.stack(penalties)[:, None, :]  # x - 0.0 is x: no penalties change nothing
        winners = values.argmax(axis=2)  # (contexts, draws)
        flat = (winners + k * np.arange(b)[:, None]).ravel()
        shares = np.bincount(flat, minlength=b * k).reshape(b, k) / n  # _win_shares, exactly
        return shares, values[:, 0, :], mu

    def _update(self, arm_id: ArmID, context: dict[str, float], reward: float) -> None:
        i = self._arms.get(arm_id)
        if i is None:
            self._grow([arm_id])
            i = self._arms[arm_id]
        self._gn[i] += 1.0
        self._gs[i] += reward
        if self._gden_ok:
            den = self._gden[i] = self._gn[i] + self.global_prior_weight
            self._gsd[i] = self.sigma / math.sqrt(den)
        self._pool = [self._pool[0] + 1.0, self._pool[1] + reward]
        values = self._values(context)
        if values is None:
            return
        if self._centroids is None:
            vec = self._vector(values).tolist()
            if not self._seen or self._seen[-1] != vec:  # a warm start repeats each prompt
                self._seen.append(vec)
            self._pending.append((vec, arm_id, reward))
            # Fit once enough distinct prompts came, or, for traffic that repeats a few prompts,
            # once PENDING_LIMIT x fit_after observations wait (state must not grow with it).
            if (
                len(self._seen) >= self.fit_after
                or len(self._pending) >= PENDING_LIMIT * self.fit_after
            ):
                self._fit_cells()
            return
        self._add(self._cell_of(values), i, reward)

    def set_prior(self, arm_id: ArmID, mean: float, weight: float = 1.0) -> Self:
        """Start ``arm_id`` at ``mean`` as if observed ``weight`` times (its global statistics).

        Every cell then shrinks towards it until the arm's own observations outweigh it; the
        pooled mean of all arms is not moved (it stays what was actually observed).
        """
        if not (math.isfinite(mean) and math.isfinite(weight)) or weight < 0:
            raise ValueError("prior mean must be finite and weight a finite number >= 0")
        self._grow([arm_id])
        i = self._arms[arm_id]
        self._gn[i] += weight
        self._gs[i] += weight * mean
        self._gden_ok = False
        return self

    def arm_mean(self, arm_id: ArmID) -> float | None:
        i = self._arms.get(arm_id)
        if i is None or self._gn[i] <= 0:
            return None
        return float(self._gs[i] / self._gn[i])

    def predict_one(self, arm_id: ArmID, context: dict[str, float] | None = None) -> float:
        """Posterior mean of ``arm_id``'s target in the context's cell (pooled mean if unseen)."""
        self._grow([arm_id])
        cell = self._cell_of(self._values(self._check_context(context)))
        mu, _ = self._posterior(np.array([self._arms[arm_id]], dtype=np.intp), cell)
        return float(mu[0])

    def _discount_arm(self, arm_id: ArmID, factor: float) -> None:
        i = self._arms.get(arm_id)
        if i is None:
            return
        for arr in (self._gn, self._gs):
            arr[i] *= factor
        self._n[:, i] *= factor
        self._s[:, i] *= factor
        self._q[:, i] *= factor
        self._reset_caches()

    def _arm_weight(self, arm_id: ArmID) -> float:
        i = self._arms.get(arm_id)
        return float(self._gn[i]) if i is not None else 0.0

    # -- merging and state --------------------------------------------------------------------
    def _merge_stats(self, a: Self, b: Self, base: Self) -> None:
        fitted = [p._centroids for p in (a, b) if p._centroids is not None]
        if len(fitted) == 2 and not np.array_equal(fitted[0], fitted[1]):
            raise ValueError(
                "the replicas fitted different cells: merge replicas that started from one "
                "snapshot taken after the cells were fitted"
            )
        arms = list(a._arms) + [x for x in b._arms if x not in a._arms]
        arms += [x for x in base._arms if x not in arms]
        self._arms = {}
        self._gn, self._gs = np.zeros(0), np.zeros(0)
        self._n = self._s = self._q = np.zeros((self.n_clusters, 0))
        self._grow(arms)
        for src, sign in ((a, 1.0), (b, 1.0), (base, -1.0)):
            for arm, j in src._arms.items():
                i = self._arms[arm]
                self._gn[i] += sign * src._gn[j]
                self._gs[i] += sign * src._gs[j]
                self._n[:, i] += sign * src._n[:, j]
                self._s[:, i] += sign * src._s[:, j]
                self._q[:, i] += sign * src._q[:, j]
        self._pool = [a._pool[k] + b._pool[k] - base._pool[k] for k in range(2)]
        self._dims = a._dims or b._dims
        self._getter = None
        self._reset_caches()
        self._last_cell = None
        if fitted:
            self._set_centroids(fitted[0].copy())
            # What a replica learned before its cells existed goes to the cells now.
            late = [p._pending[len(base._pending) :] for p in (a, b) if p._centroids is None]
            self._seen, self._pending = [], []
            self._assign([obs for chunk in late for obs in chunk])
        else:
            self._set_centroids(None)
            self._seen = a._seen + b._seen[len(base._seen) :]
            self._pending = a._pending + b._pending[len(base._pending) :]

    def _get_state(self) -> dict[str, Any]:
        return {
            **super()._get_state(),
            "np_rng": np_rng_state(self._np_rng),
            "arms": list(self._arms),
            "gn": self._gn,
            "gs": self._gs,
            "pool": list(self._pool),
            "n": self._n,
            "s": self._s,
            "q": self._q,
            "dims": list(self._dims),
            "centroids": self._centroids,
            "seen": self._seen,
            "pending": [[v, a, r] for v, a, r in self._pending],
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        super()._set_state(state)
        set_np_rng_state(self._np_rng, state["np_rng"])
        self._arms = {str(a): i for i, a in enumerate(state["arms"])}
        k = len(self._arms)
        self._gn = np.asarray(state["gn"], dtype=float).reshape(k)
        self._gs = np.asarray(state["gs"], dtype=float).reshape(k)
        self._pool = [float(v) for v in state["pool"]]
        self._n = np.asarray(state["n"], dtype=float).reshape(self.n_clusters, k)
        self._s = np.asarray(state["s"], dtype=float).reshape(self.n_clusters, k)
        self._q = np.asarray(state["q"], dtype=float).reshape(self.n_clusters, k)
        self._m_cache = (-1, 3.0)
        self._dims = tuple(str(d) for d in state["dims"])
        cents = state["centroids"]
        self._set_centroids(
            None if cents is None else np.asarray(cents, dtype=float).reshape(-1, len(self._dims))
        )
        self._seen = [[float(v) for v in vec] for vec in state["seen"]]
        self._pending = [
            ([float(v) for v in vec], str(a), float(r)) for vec, a, r in state["pending"]
        ]
        self._getter = None
        self._reset_caches()
