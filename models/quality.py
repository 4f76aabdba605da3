"""Quality of each model (arm) as a function of request features, by online gradient descent.

One River linear model per arm on online-standardised features: ``LinearRegression`` (squared
loss) by default, ``LogisticRegression`` with ``binary=True``. It is the reward model of the
direct method and of doubly robust off-policy evaluation (:mod:`models.ope`) and can serve as a
policy's reward model. River models are not JSON, so the state dict holds the numbers that define
them (weights, intercept, scaler statistics) and rebuilds the River objects from them; a round
trip predicts exactly as before.

River's ``optim.losses.Log`` reads a label as 0 or "not 0" (``int(0.7) == 0``), so soft labels
in [0, 1] would be learned as garbage. ``binary=True`` uses :class:`_SoftLog`, the cross-entropy
whose gradient with respect to the logit is ``sigmoid(z) - y`` for any ``y`` in [0, 1] (equal to
River's for hard labels).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from river import linear_model, optim, preprocessing, utils

from llmopt.types import ArmID
from models.state import Stateful

_EPS = 1e-12


class _SoftLog(optim.losses.Log):
    """Binary cross-entropy on a logit for soft labels ``y`` in [0, 1]."""

    def __call__(self, y_true: Any, y_pred: Any) -> Any:
        y, z = float(y_true), float(y_pred)
        # log(1 + e^z) - y z, computed without overflow
        return max(z, 0.0) + math.log1p(math.exp(-abs(z))) - y * z

    def gradient(self, y_true: Any, y_pred: Any) -> Any:
        return _sigmoid(float(y_pred)) - float(y_true)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1.0 - 1e-6)
    return math.log(p / (1.0 - p))


@dataclass
class _Arm:
    """One arm's learner: Welford statistics of its features, a GLM on the standardised ones."""

    scaler: Any  # river.preprocessing.StandardScaler
    glm: Any  # river.linear_model.LinearRegression | LogisticRegression
    n: int = 0


# Scaler statistics of one feature: (count, mean, population variance).
_Stats = tuple[float, float, float]


def _combine(a: _Stats, b: _Stats) -> _Stats:
    """Chan et al.'s parallel update: statistics of the union of two samples."""
    na, ma, va = a
    nb, mb, vb = b
    n = na + nb
    if n <= 0:
        return (0.0, 0.0, 0.0)
    delta = mb - ma
    mean = ma + delta * nb / n
    m2 = va * na + vb * nb + delta * delta * na * nb / n
    return (n, mean, max(m2 / n, 0.0))


def _subtract(total: _Stats, part: _Stats) -> _Stats:
    """Inverse of :func:`_combine`: statistics of ``total`` without the sample ``part``."""
    nt, mt, vt = total
    np_, mp, vp = part
    n = nt - np_
    if n <= 0:
        return (0.0, 0.0, 0.0)
    mean = (nt * mt - np_ * mp) / n
    delta = mean - mp
    m2 = vt * nt - vp * np_ - delta * delta * np_ * n / nt
    return (n, mean, max(m2 / n, 0.0))


class QualityModel(Stateful):
    """Per-arm online linear model of quality in [0, 1] on standardised request features.

    Each arm learns its own ``StandardScaler`` statistics and linear model by SGD (River); its
    intercept starts at the arm's prior, so an arm with few observations predicts close to the
    prior. Each step is normalised by ``1 + |z|^2`` (``z`` the standardised features, passed to
    River as the sample weight): normalised least mean squares, stable for ``lr`` below 1 whatever
    the number of features, where plain SGD diverges once ``|z|^2`` exceeds about ``1 / lr``.
    An arm never seen predicts ``prior_by_arm.get(arm, prior)``. Predictions are clipped to
    [0, 1]; missing features count as their running mean (standardised value 0).

    :meth:`merge` combines models learned on different shards of a stream (replicas, workers) by
    averaging each arm's linear function, weighted by the number of samples each side learned for
    that arm: federated averaging (McMahan et al., 2017). SGD has no additive sufficient statistic,
    so this is an approximation of learning on the whole stream, not an identity; the scaler
    statistics, on the other hand, merge exactly.

    Parameters
    ----------
    lr
        SGD learning rate (weights and intercept).
    l2
        L2 penalty on the weights.
    binary
        Logistic regression (cross-entropy on soft labels in [0, 1]) instead of least squares.
    prior
        Prediction for an arm never seen, and the starting intercept of a new arm.
    prior_by_arm
        Per-arm priors overriding ``prior`` (e.g. a published benchmark score per model).

    Examples
    --------
    >>> import random
    >>> rng = random.Random(0)
    >>> qm = QualityModel(lr=0.05)
    >>> for _ in range(2000):
    ...     x = {"code": float(rng.random() < 0.5)}
    ...     _ = qm.learn_one(x, 0.9 if x["code"] else 0.3, arm="coder")
    >>> round(qm.predict_one({"code": 1.0}, arm="coder"), 2)
    0.9
    >>> round(qm.predict_one({"code": 0.0}, arm="coder"), 2)
    0.3
    >>> qm.predict_one({"code": 1.0}, arm="never-seen")
    0.5
    >>> restored = QualityModel.from_dict(qm.to_dict())
    >>> x = {"code": 1.0}
    >>> restored.predict_one(x, arm="coder") == qm.predict_one(x, arm="coder")
    True

    References
    ----------
    McMahan, Moore, Ramage, Hampson, Agüera y Arcas (2017). Communication-efficient learning of
    deep networks from decentralized data. AISTATS.
    """

    kind = "quality_model"

    def __init__(
        self,
        lr: float = 0.05,
        *,
        l2: float = 0.0,
        binary: bool = False,
        prior: float = 0.5,
        prior_by_arm: dict[ArmID, float] | None = None,
    ) -> None:
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr}")
        if not (math.isfinite(l2) and l2 >= 0):
            raise ValueError(f"l2 must be >= 0, got {l2}")
        for name, p in [
            ("prior", prior),
            *((f"prior_by_arm[{a!r}]", v) for a, v in (prior_by_arm or {}).items()),
        ]:
            if not (math.isfinite(p) and 0.0 <= p <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.lr = lr
        self.l2 = l2
        self.binary = binary
        self.prior = prior
        self.prior_by_arm = dict(prior_by_arm) if prior_by_arm else None
        self._arms: dict[ArmID, _Arm] = {}

    # -- public API ---------------------------------------------------------------------------
    def learn_one(self, x: Mapping[str, float], y: float, *, arm: ArmID) -> Self:
        """Learn that ``arm`` reached quality ``y`` on a request with features ``x``."""
        _check_arm(arm)
        xs = _check_features(x)
        yf = float(y)
        if not math.isfinite(yf):
            raise ValueError(f"y must be a finite number, got {y}")
        if self.binary and not 0.0 <= yf <= 1.0:
            raise ValueError(f"y must be in [0, 1] when binary=True, got {y}")
        state = self._arms.get(arm)
        if state is None:
            state = self._arms[arm] = self._new_arm(arm)
        state.scaler.learn_one(xs)
        z = _standardise(state.scaler, xs)
        # normalised step (NLMS): plain SGD diverges once |z|^2 exceeds ~1/lr, which a handful
        # of standardised one-hot features of rare categories already do
        state.glm.learn_one(z, yf, w=1.0 / (1.0 + sum(v * v for v in z.values())))
        state.n += 1
        return self

    def predict_one(self, x: Mapping[str, float], *, arm: ArmID) -> float:
        """Predicted quality of ``arm`` for features ``x``, in [0, 1]."""
        _check_arm(arm)
        xs = _check_features(x)
        state = self._arms.get(arm)
        if state is None:
            return self._prior(arm)
        z = _standardise(state.scaler, xs)
        if self.binary:
            return float(state.glm.predict_proba_one(z)[True])
        return min(max(float(state.glm.predict_one(z)), 0.0), 1.0)

    @property
    def counts(self) -> dict[ArmID, int]:
        """Number of samples learned, per arm."""
        return {a: s.n for a, s in self._arms.items()}

    def merge(self, other: QualityModel, base: QualityModel | None = None) -> QualityModel:
        """Combine two models learned on different parts of a stream (federated averaging).

        Per arm, the linear functions (in raw feature space, so that the two scalers need not
        agree) are averaged with weights the number of samples each side learned; the scaler
        statistics are combined exactly. With ``base``, the common ancestor both sides were
        copied from, only what each learned since counts (``self + other - base`` for the
        statistics, weights ``n - n_base``). An approximation: see the class docstring.
        Neither input is modified.
        """
        for name, m in (("other", other), ("base", base)):
            if m is None:
                continue
            if not isinstance(m, QualityModel):
                raise TypeError(f"{name} must be a QualityModel, got {type(m).__name__}")
            if m.binary != self.binary:
                raise ValueError(f"cannot merge binary={self.binary} with binary={m.binary}")
        out = QualityModel(**self._params())
        base_arms = base._arms if base is not None else {}
        for arm in {**self._arms, **other._arms}:
            out._arms[arm] = self._merge_arm(
                arm, self._arms.get(arm), other._arms.get(arm), base_arms.get(arm)
            )
        return out

    # -- Stateful hooks -------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        arms = {}
        for arm, s in self._arms.items():
            arms[arm] = {
                "n": s.n,
                "intercept": float(s.glm.intercept),
                "weights": {k: float(v) for k, v in s.glm._weights.to_dict().items()},
                "n_iterations": int(s.glm.optimizer.n_iterations),
                "counts": {k: int(v) for k, v in s.scaler.counts.items()},
                "means": {k: float(v) for k, v in s.scaler.means.items()},
                "vars": {k: float(v) for k, v in s.scaler.vars.items()},
            }
        return {"arms": arms}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._arms = {}
        for arm, s in state["arms"].items():
            new = self._new_arm(arm)
            new.n = int(s["n"])
            new.glm.intercept = float(s["intercept"])
            new.glm._weights = utils.VectorDict({k: float(v) for k, v in s["weights"].items()})
            new.glm.optimizer.n_iterations = int(s["n_iterations"])
            new.scaler.counts.update({k: int(v) for k, v in s["counts"].items()})
            new.scaler.means.update({k: float(v) for k, v in s["means"].items()})
            new.scaler.vars.update({k: float(v) for k, v in s["vars"].items()})
            self._arms[arm] = new

    # -- helpers ----------------------------------------------------------------------------------
    def _prior(self, arm: ArmID) -> float:
        return (self.prior_by_arm or {}).get(arm, self.prior)

    def _new_arm(self, arm: ArmID) -> _Arm:
        prior = self._prior(arm)
        glm: Any
        if self.binary:
            glm = linear_model.LogisticRegression(
                optimizer=optim.SGD(self.lr),
                loss=_SoftLog(),
                l2=self.l2,
                intercept_init=_logit(prior),
                intercept_lr=self.lr,
            )
        else:
            glm = linear_model.LinearRegression(
                optimizer=optim.SGD(self.lr),
                l2=self.l2,
                intercept_init=prior,
                intercept_lr=self.lr,
            )
        return _Arm(scaler=preprocessing.StandardScaler(), glm=glm)

    def _merge_arm(self, arm: ArmID, a: _Arm | None, b: _Arm | None, base: _Arm | None) -> _Arm:
        n_base = base.n if base is not None else 0
        da = a.n - n_base if a is not None else 0
        db = b.n - n_base if b is not None else 0
        if da < 0 or db < 0:
            raise ValueError(f"base has learned more of arm {arm!r} than the models merged")
        if db == 0 and a is not None:  # nothing new on the other side: exactly this side
            return copy.deepcopy(a)
        if da == 0 and b is not None:
            return copy.deepcopy(b)
        assert a is not None and b is not None  # both learned something new
        # statistics: a + b - base, exactly
        feats = dict.fromkeys([*a.scaler.counts, *b.scaler.counts])
        stats = {}
        for f in feats:
            s = _combine(_stats(a, f), _stats(b, f))
            stats[f] = _subtract(s, _stats(base, f)) if base is not None else s
        # linear functions in raw space, averaged with weights da, db
        coef_a, icpt_a = _raw_function(a)
        coef_b, icpt_b = _raw_function(b)
        total = da + db
        coef = {f: (da * coef_a.get(f, 0.0) + db * coef_b.get(f, 0.0)) / total for f in feats}
        intercept = (da * icpt_a + db * icpt_b) / total
        # back into the merged scaler's standardised space
        out = self._new_arm(arm)
        out.n = n_base + total
        weights = {}
        for f, (count, mean, var) in stats.items():
            if count <= 0:
                continue
            out.scaler.counts[f] = round(count)
            out.scaler.means[f] = mean
            out.scaler.vars[f] = var
            if var > _EPS:
                weights[f] = coef[f] * math.sqrt(var)
                intercept += coef[f] * mean
        out.glm.intercept = intercept
        out.glm._weights = utils.VectorDict(weights)
        out.glm.optimizer.n_iterations = out.n
        return out


def _stats(arm: _Arm | None, feature: str) -> _Stats:
    if arm is None or arm.scaler.counts.get(feature, 0) == 0:
        return (0.0, 0.0, 0.0)
    sc = arm.scaler
    return (float(sc.counts[feature]), float(sc.means[feature]), float(sc.vars[feature]))


def _raw_function(arm: _Arm) -> tuple[dict[str, float], float]:
    """The arm's linear predictor as ``coef . x + intercept`` on raw (unscaled) features."""
    weights = arm.glm._weights.to_dict()
    coef: dict[str, float] = {}
    intercept = float(arm.glm.intercept)
    for f, w in weights.items():
        _, mean, var = _stats(arm, f)
        if var > _EPS:  # as in _standardise: a constant feature contributes nothing
            coef[f] = float(w) / math.sqrt(var)
            intercept -= coef[f] * mean
    return coef, intercept


def _standardise(scaler: Any, x: dict[str, float]) -> dict[str, float]:
    """``(x - mean) / sd`` with the scaler's statistics; 0 for constant or unseen features.

    Read-only, unlike River's ``transform_one``, which inserts unseen keys into its defaultdicts.
    """
    means, vars_ = scaler.means, scaler.vars
    out = {}
    for k, v in x.items():
        var = vars_.get(k, 0.0)
        out[k] = (v - means.get(k, 0.0)) / math.sqrt(var) if var > _EPS else 0.0
    return out


def _check_arm(arm: object) -> None:
    if not isinstance(arm, str) or not arm:
        raise ValueError(f"arm must be a non-empty string, got {arm!r}")


def _check_features(x: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(x, Mapping):
        raise ValueError(f"features must be a mapping of name to number, got {type(x).__name__}")
    out: dict[str, float] = {}
    for k, v in x.items():
        try:
            fv = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"feature {k!r} is not a number: {v!r}") from None
        if not math.isfinite(fv):
            raise ValueError(f"feature {k!r} is not finite: {v}")
        out[str(k)] = fv
    return out
