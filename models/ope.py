"""Off-policy evaluation: the value of a target policy, estimated from another policy's logs.

Logged bandit feedback is one row per decision: the action taken, its reward, and the
probability (propensity) with which the logging policy took it (docs/style.md #10). A target policy
is given by the probability it would give every action in every logged context, an
``(n, n_actions)`` matrix. Estimators, each with a percentile bootstrap confidence interval:

- :func:`ips`, inverse propensity scoring: unbiased when the logging policy gives every action
  the target may take a positive probability; high variance when the weights are large.
- :func:`snips`, self-normalised IPS (Swaminathan & Joachims, 2015): divides by the sum of the
  weights instead of ``n``; slightly biased, much less variance, and invariant to a constant
  added to the reward.
- :func:`direct_method`: the average over rows of the reward model's estimate under the target
  policy; low variance, biased as much as the reward model is wrong.
- :func:`doubly_robust` (Dudík, Langford & Li, 2011): the direct method plus an IPS correction of
  its residuals; unbiased if either the propensities or the reward model are right, and of lower
  variance than IPS when the reward model is good.
- :func:`replay` (Li, Chu, Langford & Wang, 2011): streams uniformly random logs through a
  *learning* policy and keeps the events where it agrees with the log.

The bootstrap resamples rows with replacement (the reward model is held fixed, as in the Open
Bandit Pipeline); the interval is the ``alpha/2, 1 - alpha/2`` percentiles of the replicates.
It is vectorised: indices are drawn as a ``(replicates, n)`` matrix, in chunks that bound memory.

References
----------
Dudík, Langford, Li (2011). Doubly robust policy evaluation and learning. ICML.
Swaminathan, Joachims (2015). The self-normalized estimator for counterfactual learning. NeurIPS.
Li, Chu, Langford, Wang (2011). Unbiased offline evaluation of contextual-bandit-based news
article recommendation algorithms. WSDM.
Saito, Aihara, Matsutani, Narita (2021). Open Bandit Dataset and Pipeline. NeurIPS Datasets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from llmopt.policy import Policy
from llmopt.types import ArmID

_CHUNK_CELLS = 2_000_000
"""Most resampled indices held in memory at once by the bootstrap (16 MB of int64)."""


class RewardModel(Protocol):
    """What :func:`reward_matrix` fits: River's shape with the arm as a keyword (QualityModel)."""

    def learn_one(self, x: dict[str, float], y: float, *, arm: ArmID) -> object: ...

    def predict_one(self, x: dict[str, float], *, arm: ArmID) -> float: ...


@dataclass(frozen=True)
class LoggedBandit:
    """Logged bandit feedback: one row per decision.

    Parameters
    ----------
    actions
        Index of the action taken, ``(n,)`` integers in ``[0, n_actions)``.
    rewards
        Observed reward of that action, ``(n,)`` finite floats.
    propensities
        Probability with which the logging policy took that action, ``(n,)`` in (0, 1].
    contexts
        Optional ``(n, d)`` features of each decision (for reward models and replay).

    Examples
    --------
    >>> logs = LoggedBandit(actions=[0, 1], rewards=[1.0, 0.0], propensities=[0.5, 0.5])
    >>> logs.n, logs.actions.dtype.kind
    (2, 'i')
    >>> LoggedBandit(actions=[0], rewards=[1.0], propensities=[0.0])
    Traceback (most recent call last):
    ...
    ValueError: propensities must be in (0, 1]; got min 0.0, max 0.0
    """

    actions: np.ndarray
    rewards: np.ndarray
    propensities: np.ndarray
    contexts: np.ndarray | None = None

    def __post_init__(self) -> None:
        actions = np.asarray(self.actions)
        if actions.ndim != 1 or actions.size == 0:
            raise ValueError(f"actions must be a non-empty 1-d array, got shape {actions.shape}")
        if actions.dtype.kind == "f" and np.all(np.isfinite(actions)):
            if not np.all(actions == np.round(actions)):
                raise ValueError("actions must be integer indices")
            actions = actions.astype(np.int64)
        if actions.dtype.kind not in "iu":
            raise ValueError(f"actions must be integer indices, got dtype {actions.dtype}")
        if actions.min() < 0:
            raise ValueError(f"actions must be >= 0, got {actions.min()}")
        n = actions.size
        rewards = _float_vector(self.rewards, "rewards", n)
        props = _float_vector(self.propensities, "propensities", n)
        if not np.all((props > 0) & (props <= 1)):
            raise ValueError(
                f"propensities must be in (0, 1]; got min {props.min()}, max {props.max()}"
            )
        contexts = None
        if self.contexts is not None:
            contexts = np.asarray(self.contexts, dtype=np.float64)
            if contexts.ndim == 1:
                contexts = contexts[:, None]
            if contexts.ndim != 2 or contexts.shape[0] != n:
                raise ValueError(f"contexts must have shape (n={n}, d), got {contexts.shape}")
            if not np.all(np.isfinite(contexts)):
                raise ValueError("contexts contain NaN or infinite values")
        object.__setattr__(self, "actions", actions.astype(np.int64))
        object.__setattr__(self, "rewards", rewards)
        object.__setattr__(self, "propensities", props)
        object.__setattr__(self, "contexts", contexts)

    @property
    def n(self) -> int:
        """Number of logged decisions."""
        return int(self.actions.size)


@dataclass(frozen=True)
class Estimate:
    """A policy value estimate with its bootstrap confidence interval ``[lower, upper]``."""

    value: float
    lower: float
    upper: float
    n: int
    method: str

    def covers(self, value: float) -> bool:
        """Whether ``value`` lies in the confidence interval."""
        return self.lower <= value <= self.upper


# -- estimators -------------------------------------------------------------------------------
def ips(
    data: LoggedBandit,
    target_probs: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int | np.random.Generator | None = None,
) -> Estimate:
    """Inverse propensity scoring: ``mean(pi(a_i | x_i) / p_i * r_i)``.

    Parameters
    ----------
    data
        The logs.
    target_probs
        ``(n, n_actions)`` probability of every action under the target policy, per row.
    n_bootstrap
        Bootstrap replicates of the confidence interval.
    alpha
        One minus the confidence level of the interval.
    seed
        Seed (or generator) of the bootstrap.

    Examples
    --------
    Uniform logs of two actions, rewards 1 for action 1 and 0 for action 0; the policy that
    always takes action 1 has value 1:

    >>> rng = np.random.default_rng(0)
    >>> actions = rng.integers(0, 2, size=10_000)
    >>> logs = LoggedBandit(actions, actions.astype(float), propensities=np.full(10_000, 0.5))
    >>> always_1 = np.tile([0.0, 1.0], (10_000, 1))
    >>> est = ips(logs, always_1, seed=0)
    >>> round(est.value, 2), est.covers(1.0), est.method
    (1.01, True, 'ips')
    """
    _check_ci(n_bootstrap, alpha)
    w = _weights(data, target_probs)
    value, lo, hi = _bootstrap(w * data.rewards, None, n_bootstrap, alpha, seed)
    return Estimate(value, lo, hi, data.n, "ips")


def snips(
    data: LoggedBandit,
    target_probs: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int | np.random.Generator | None = None,
) -> Estimate:
    """Self-normalised IPS: ``sum(w_i r_i) / sum(w_i)`` with ``w_i = pi(a_i | x_i) / p_i``.

    Parameters are those of :func:`ips`. The replicates resample rows, numerator and denominator
    together.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> actions = rng.integers(0, 2, size=2000)
    >>> logs = LoggedBandit(actions, rewards=actions + 5.0, propensities=np.full(2000, 0.5))
    >>> est = snips(logs, np.tile([0.0, 1.0], (2000, 1)), seed=0)
    >>> est.value, est.lower, est.upper  # no variance left: every weighted reward is 6
    (6.0, 6.0, 6.0)
    """
    _check_ci(n_bootstrap, alpha)
    w = _weights(data, target_probs)
    if not np.any(w > 0):
        raise ValueError("the target policy gives probability 0 to every logged action")
    value, lo, hi = _bootstrap(w * data.rewards, w, n_bootstrap, alpha, seed)
    return Estimate(value, lo, hi, data.n, "snips")


def direct_method(
    data: LoggedBandit,
    target_probs: np.ndarray,
    q_hat: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int | np.random.Generator | None = None,
) -> Estimate:
    """Direct method: ``mean_i sum_a pi(a | x_i) q_hat(x_i, a)``; rewards and propensities unused.

    Parameters
    ----------
    data, target_probs, n_bootstrap, alpha, seed
        As in :func:`ips`.
    q_hat
        ``(n, n_actions)`` estimated expected reward of every action, per row
        (see :func:`reward_matrix`).

    The interval resamples rows with ``q_hat`` held fixed: it shows the spread over contexts,
    not the reward model's own error, and is far too narrow when that error dominates (on the
    Open Bandit sample it misses the truth that IPS, SNIPS and DR intervals cover).

    Examples
    --------
    >>> logs = LoggedBandit([0, 1, 0, 1], rewards=[0.0, 1.0, 0.0, 1.0], propensities=[0.5] * 4)
    >>> q_hat = np.tile([0.2, 0.8], (4, 1))
    >>> direct_method(logs, np.tile([0.5, 0.5], (4, 1)), q_hat, seed=0).value
    0.5
    """
    _check_ci(n_bootstrap, alpha)
    pi = _check_probs(target_probs, data)
    q = _check_q(q_hat, pi.shape)
    terms = np.einsum("ij,ij->i", pi, q)
    value, lo, hi = _bootstrap(terms, None, n_bootstrap, alpha, seed)
    return Estimate(value, lo, hi, data.n, "direct_method")


def doubly_robust(
    data: LoggedBandit,
    target_probs: np.ndarray,
    q_hat: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int | np.random.Generator | None = None,
) -> Estimate:
    """Doubly robust: the direct method plus the IPS-weighted residuals of its reward model.

    ``mean_i [ sum_a pi(a | x_i) q_hat(x_i, a) + w_i (r_i - q_hat(x_i, a_i)) ]``. Unbiased when
    the propensities are right whatever ``q_hat`` is; the better ``q_hat``, the smaller the
    residuals and the variance. Parameters are those of :func:`direct_method`.

    Examples
    --------
    A reward model that is wrong by a constant is corrected by the residuals:

    >>> rng = np.random.default_rng(0)
    >>> actions = rng.integers(0, 2, size=10_000)
    >>> logs = LoggedBandit(actions, actions.astype(float), propensities=np.full(10_000, 0.5))
    >>> always_1 = np.tile([0.0, 1.0], (10_000, 1))
    >>> q_wrong = np.tile([0.3, 0.7], (10_000, 1))
    >>> round(direct_method(logs, always_1, q_wrong, seed=0).value, 2)
    0.7
    >>> dr = doubly_robust(logs, always_1, q_wrong, seed=0)
    >>> round(dr.value, 2), dr.covers(1.0)
    (1.0, True)
    >>> dr.upper - dr.lower < ips(logs, always_1, seed=0).upper - ips(logs, always_1, seed=0).lower
    True
    """
    _check_ci(n_bootstrap, alpha)
    pi = _check_probs(target_probs, data)
    q = _check_q(q_hat, pi.shape)
    rows = np.arange(data.n)
    w = pi[rows, data.actions] / data.propensities
    terms = np.einsum("ij,ij->i", pi, q) + w * (data.rewards - q[rows, data.actions])
    value, lo, hi = _bootstrap(terms, None, n_bootstrap, alpha, seed)
    return Estimate(value, lo, hi, data.n, "doubly_robust")


def reward_matrix(
    data: LoggedBandit,
    model: RewardModel | Callable[[dict[str, float], ArmID], float],
    *,
    arm_ids: Sequence[ArmID],
    feature_names: Sequence[str] | None = None,
) -> np.ndarray:
    """``q_hat``: the estimated reward of every arm in every logged context, ``(n, n_actions)``.

    A model with ``learn_one(x, y, *, arm)`` and ``predict_one(x, *, arm)`` (such as
    :class:`models.quality.QualityModel`) first learns the logged rewards, in order, in place;
    any other callable ``f(x, arm) -> float`` is only evaluated. Predictions are made once per
    distinct context. Fitting and evaluating on the same rows is the usual practice (the Open
    Bandit Pipeline does it); fit on other logs when their number allows.

    Parameters
    ----------
    data
        The logs; rows without contexts get empty feature dicts.
    model
        A reward model to fit on ``data``, or a fitted predictor ``f(x, arm)``.
    arm_ids
        Name of each action index, as the model knows the arms.
    feature_names
        Names of the context columns (default ``x0, x1, ...``).

    Examples
    --------
    >>> from models.quality import QualityModel
    >>> rng = np.random.default_rng(0)
    >>> actions = rng.integers(0, 2, size=3000)
    >>> logs = LoggedBandit(actions, rewards=0.2 + 0.6 * actions, propensities=np.full(3000, 0.5))
    >>> q = reward_matrix(logs, QualityModel(), arm_ids=["small", "large"])
    >>> q.shape, np.round(q[0], 2).tolist()
    ((3000, 2), [0.2, 0.8])
    >>> reward_matrix(logs, lambda x, arm: 0.5, arm_ids=["small", "large"])[0].tolist()
    [0.5, 0.5]
    """
    arms = list(arm_ids)
    if len(set(arms)) != len(arms) or not arms:
        raise ValueError("arm_ids must be non-empty and unique")
    if int(data.actions.max()) >= len(arms):
        raise ValueError(f"an action index is {data.actions.max()} but only {len(arms)} arm_ids")
    ctx = data.contexts if data.contexts is not None else np.zeros((data.n, 0))
    names = _feature_names(ctx, feature_names)

    def features(row: np.ndarray) -> dict[str, float]:
        return dict(zip(names, row.tolist(), strict=True))

    learn = getattr(model, "learn_one", None)
    predict: Callable[[dict[str, float], ArmID], float]
    if callable(learn) and hasattr(model, "predict_one"):
        for row, a, r in zip(ctx, data.actions.tolist(), data.rewards.tolist(), strict=True):
            learn(features(row), r, arm=arms[a])
        fitted = model

        def predict(x: dict[str, float], arm: ArmID) -> float:
            return float(fitted.predict_one(x, arm=arm))

    elif callable(model):
        predict = model
    else:
        raise TypeError("model must have learn_one/predict_one or be a callable f(x, arm)")
    unique, inverse = np.unique(ctx, axis=0, return_inverse=True)
    table = np.array([[predict(features(row), arm) for arm in arms] for row in unique])
    q: np.ndarray = table[inverse.reshape(-1)]
    if not np.all(np.isfinite(q)):
        raise ValueError("the reward model predicted NaN or infinite values")
    return q


def replay(
    data: LoggedBandit,
    policy: Policy,
    *,
    arm_ids: Sequence[ArmID],
    feature_names: Sequence[str] | None = None,
    force: bool = False,
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int | np.random.Generator | None = None,
) -> Estimate:
    """Replay (Li et al., 2011): the average reward of a learning policy, from uniform logs.

    Events stream in log order; the policy pulls one of ``arm_ids`` for each context, and when its
    choice is the logged action the event is kept: the policy learns its reward and the reward
    counts. Because a uniformly random logger makes the kept events distributed as if the policy
    had played them itself, the mean kept reward is an unbiased estimate of its online average
    reward over ``n_kept`` steps (about ``n / n_actions``). Logs from any other policy bias it,
    so non-uniform propensities are refused unless ``force=True``. The interval bootstraps the
    kept rewards as if independent: it ignores the dependence that learning creates.

    Parameters
    ----------
    data
        Logs of a uniformly random policy over ``arm_ids``.
    policy
        A policy with ``pull(arm_ids, context) -> Decision`` and ``update(arm, context, reward)``;
        it is updated in place.
    arm_ids
        Name of each action index.
    feature_names
        Names of the context columns (default ``x0, x1, ...``).
    force
        Replay non-uniform logs anyway.
    n_bootstrap, alpha, seed
        As in :func:`ips`.

    Examples
    --------
    >>> from models.epsilon_greedy import EpsilonGreedy
    >>> rng = np.random.default_rng(0)
    >>> actions = rng.integers(0, 2, size=4000)
    >>> rewards = (rng.random(4000) < np.where(actions == 1, 0.8, 0.2)).astype(float)
    >>> logs = LoggedBandit(actions, rewards, propensities=np.full(4000, 0.5))
    >>> est = replay(logs, EpsilonGreedy(epsilon=0.1, seed=0), arm_ids=["a", "b"], seed=0)
    >>> est.n > 1500, 0.7 < est.value < 0.8
    (True, True)
    """
    _check_ci(n_bootstrap, alpha)
    arms = list(arm_ids)
    index = {a: i for i, a in enumerate(arms)}
    if len(index) != len(arms) or not arms:
        raise ValueError("arm_ids must be non-empty and unique")
    if int(data.actions.max()) >= len(arms):
        raise ValueError(f"an action index is {data.actions.max()} but only {len(arms)} arm_ids")
    uniform = 1.0 / len(arms)
    if not force and not np.allclose(data.propensities, uniform, rtol=1e-6, atol=0.0):
        raise ValueError(
            f"replay is unbiased only for logs of a uniformly random policy (every propensity "
            f"1/{len(arms)} = {uniform:.6g}); these range over [{data.propensities.min():.6g}, "
            f"{data.propensities.max():.6g}]. Use ips/snips/doubly_robust, or force=True."
        )
    ctx = data.contexts
    names = _feature_names(ctx, feature_names) if ctx is not None else []
    kept: list[float] = []
    for i, (a, r) in enumerate(zip(data.actions.tolist(), data.rewards.tolist(), strict=True)):
        x: Mapping[str, float] | None = (
            dict(zip(names, ctx[i].tolist(), strict=True)) if ctx is not None else None
        )
        chosen = policy.pull(arms, x).model
        if chosen not in index:
            raise ValueError(f"the policy chose {chosen!r}, which is not one of arm_ids")
        if index[chosen] == a:
            policy.update(chosen, x, r)
            kept.append(r)
    if not kept:
        raise ValueError("the policy never chose a logged action: nothing to average")
    value, lo, hi = _bootstrap(np.asarray(kept), None, n_bootstrap, alpha, seed)
    return Estimate(value, lo, hi, len(kept), "replay")


# -- helpers ----------------------------------------------------------------------------------
def _bootstrap(
    num: np.ndarray,
    den: np.ndarray | None,
    n_bootstrap: int,
    alpha: float,
    seed: int | np.random.Generator | None,
) -> tuple[float, float, float]:
    """Point estimate and percentile interval of ``mean(num)`` (or ``sum(num) / sum(den)``)."""
    n = num.size
    value = float(num.mean()) if den is None else float(num.sum() / den.sum())
    rng = np.random.default_rng(seed)
    reps = np.empty(n_bootstrap)
    chunk = max(1, _CHUNK_CELLS // n)
    for start in range(0, n_bootstrap, chunk):  # a loop over chunks of replicates, not rows
        size = min(chunk, n_bootstrap - start)
        idx = rng.integers(0, n, size=(size, n))
        if den is None:
            reps[start : start + size] = num[idx].mean(axis=1)
        else:
            d = den[idx].sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                reps[start : start + size] = num[idx].sum(axis=1) / d
    reps = reps[np.isfinite(reps)]  # a SNIPS replicate with no positive weight has no value
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return value, float(lo), float(hi)


def _weights(data: LoggedBandit, target_probs: np.ndarray) -> np.ndarray:
    pi = _check_probs(target_probs, data)
    w: np.ndarray = pi[np.arange(data.n), data.actions] / data.propensities
    return w


def _check_probs(target_probs: np.ndarray, data: LoggedBandit) -> np.ndarray:
    pi = np.asarray(target_probs, dtype=np.float64)
    if pi.ndim != 2 or pi.shape[0] != data.n:
        raise ValueError(f"target_probs must have shape (n={data.n}, n_actions), got {pi.shape}")
    if not np.all(np.isfinite(pi)):
        raise ValueError("target_probs contain NaN or infinite values")
    if np.any(pi < 0):
        raise ValueError("target_probs must be >= 0")
    sums = pi.sum(axis=1)
    if not np.allclose(sums, 1.0, rtol=0.0, atol=1e-6):
        bad = int(np.argmax(np.abs(sums - 1.0)))
        raise ValueError(f"each row of target_probs must sum to 1; row {bad} sums to {sums[bad]}")
    if int(data.actions.max()) >= pi.shape[1]:
        raise ValueError(
            f"an action index is {data.actions.max()} but target_probs has {pi.shape[1]} actions"
        )
    return pi


def _check_q(q_hat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    q = np.asarray(q_hat, dtype=np.float64)
    if q.shape != shape:
        raise ValueError(f"q_hat must have the shape of target_probs {shape}, got {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError("q_hat contains NaN or infinite values")
    return q


def _check_ci(n_bootstrap: int, alpha: float) -> None:
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _float_vector(values: object, name: str, n: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) like actions, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return arr


def _feature_names(ctx: np.ndarray, names: Sequence[str] | None) -> list[str]:
    d = ctx.shape[1]
    if names is None:
        return [f"x{j}" for j in range(d)]
    out = list(names)
    if len(out) != d:
        raise ValueError(f"feature_names has {len(out)} names for {d} context columns")
    return out
