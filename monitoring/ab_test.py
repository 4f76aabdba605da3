"""A/B statistics for champion vs challenger: Welch's t-test, an always-valid sequential test and
sample sizes.

- :func:`welch_test`: the fixed-horizon test. Valid when the sample size is fixed in advance
  and the data are looked at once. Looking after every batch and stopping at the first
  ``p < 0.05`` is not: the false-positive rate of that "repeated t-test" climbs far above
  ``alpha`` (measured in tests/unit/monitoring/test_ab_test.py: 0.28 with 40 looks, 0.018
  for the mixture SPRT below).
- :class:`MixtureSPRT`: the mixture sequential probability ratio test (Johari, Pekelis, Walsh
  2017). Its p-value is *always valid*: it may be looked at after every decision and the test
  stopped at the first ``p < alpha`` with the false-positive rate still at most ``alpha``. It
  also stops for futility, when its confidence sequence rules out a gain of ``min_effect``.
- :func:`sample_size`: decisions per arm a fixed-horizon test needs (normal approximation).

Normal quantiles come from ``statistics.NormalDist`` (Wichura's AS241, full double precision)
and Student's t tail from a continued fraction: importing scipy alone takes over a second, and
this module is imported by the pipelines and the service.

Examples
--------
>>> sample_size(std=1.0, min_effect=0.1)  # 0.1 standard deviation, alpha 0.05, power 0.8
1570
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> test = MixtureSPRT(tau=0.05, min_samples=100)
>>> for _ in range(40):  # look after every batch of 50 decisions per arm
...     _ = test.update_many("champion", rng.normal(0.50, 0.2, 50))
...     _ = test.update_many("challenger", rng.normal(0.56, 0.2, 50))
...     if test.decision != "continue":
...         break
>>> test.decision, test.n_challenger, test.p_value < 0.05
('challenger', 400, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal, Self

import numpy as np

Group = Literal["champion", "challenger"]
Decision = Literal["continue", "challenger", "champion", "non_inferior", "futility", "max_samples"]


# -- fixed horizon: Welch's t-test --------------------------------------------------------------
@dataclass(frozen=True)
class WelchResult:
    """Welch's t-test of ``mean(b) - mean(a)``; ``p_value`` is one-sided (``b`` better)."""

    diff: float
    t: float
    df: float
    p_value: float
    n_a: int
    n_b: int


def welch_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> WelchResult:
    """Welch's unequal-variance t-test that ``b`` has the higher mean (one-sided).

    Examples
    --------
    >>> r = welch_test([1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0])
    >>> round(r.t, 4), round(r.df, 2), round(r.p_value, 4)
    (2.1909, 6.0, 0.0355)
    """
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.size < 2 or xb.size < 2:
        raise ValueError("each sample needs at least 2 values")
    va, vb = xa.var(ddof=1) / xa.size, xb.var(ddof=1) / xb.size
    diff = float(xb.mean() - xa.mean())
    se2 = float(va + vb)
    if se2 == 0.0:
        p = 0.0 if diff > 0 else (1.0 if diff < 0 else 0.5)
        return WelchResult(
            diff, math.copysign(math.inf, diff) if diff else 0.0, math.inf, p, xa.size, xb.size
        )
    t = diff / math.sqrt(se2)
    df = se2**2 / (va**2 / (xa.size - 1) + vb**2 / (xb.size - 1))
    return WelchResult(diff, t, float(df), student_t_sf(t, float(df)), int(xa.size), int(xb.size))


def student_t_sf(t: float, df: float) -> float:
    """``P(T > t)`` for Student's t with ``df`` degrees of freedom.

    Examples
    --------
    >>> round(student_t_sf(2.0, 10), 5), round(student_t_sf(0.0, 3), 5)
    (0.03669, 0.5)
    >>> round(student_t_sf(-1.5, 1e9), 4)  # a normal's tail for large df
    0.9332
    """
    if math.isinf(df):
        return 0.5 * math.erfc(t / math.sqrt(2.0))
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)  # P(|T| > |t|) / 2
    return tail if t >= 0 else 1.0 - tail


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)`` (continued fraction, Numerical Recipes 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln_front) * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float, *, iters: int = 300, eps: float = 1e-14) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, iters + 1):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


# -- sample size ----------------------------------------------------------------------------------
def sample_size(
    std: float,
    min_effect: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    two_sided: bool = True,
) -> int:
    """Decisions per arm for a fixed-horizon two-sample test to detect ``min_effect``.

    ``n = 2 (z_{1-alpha/2} + z_{power})^2 std^2 / min_effect^2`` (normal approximation, equal
    arms, common standard deviation ``std`` of a decision's reward).

    Examples
    --------
    >>> sample_size(0.3, 0.03), sample_size(0.3, 0.03, two_sided=False)
    (1570, 1237)
    """
    if not (std > 0 and min_effect > 0):
        raise ValueError("std and min_effect must be > 0")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError("alpha and power must be in (0, 1)")
    z = NormalDist()
    z_alpha = z.inv_cdf(1.0 - (alpha / 2.0 if two_sided else alpha))
    return math.ceil(2.0 * ((z_alpha + z.inv_cdf(power)) * std / min_effect) ** 2)


# -- always valid: mixture SPRT -------------------------------------------------------------------
@dataclass(frozen=True)
class SequentialResult:
    """State of a :class:`MixtureSPRT` at its last look."""

    decision: Decision
    p_value: float
    diff: float
    ci_low: float
    ci_high: float
    n_champion: int
    n_challenger: int


class MixtureSPRT:
    """Mixture SPRT of challenger minus champion mean reward, with always-valid p-values.

    At each look the likelihood ratio of "the difference is ``theta``, ``theta ~ N(0, tau^2)``"
    against "it is 0", for the observed difference ``d`` with variance
    ``s^2 = var_champion / n_champion + var_challenger / n_challenger``, is

    ``Lambda = sqrt(s^2 / (s^2 + tau^2)) exp(tau^2 d^2 / (2 s^2 (s^2 + tau^2)))``,

    and the always-valid p-value is the running minimum of ``1 / Lambda``. Inverting it gives
    a confidence sequence for the difference (intersected over looks). The test stops:

    - ``"challenger"`` / ``"champion"``: ``p < alpha``, for the arm with the higher mean;
    - ``"non_inferior"`` (only with ``non_inferiority_margin``): the confidence sequence's
      lower end is above ``-non_inferiority_margin`` (the challenger is not worse by more than
      the margin, at level ``alpha``: the sequential form of a non-inferiority trial); its upper
      end below ``-non_inferiority_margin`` ends the test for the champion, and there is no
      futility stop (a challenger that cannot win may still be shown not worse);
    - ``"futility"``: the confidence sequence's upper end is below ``min_effect`` (the
      challenger cannot be better by ``min_effect``);
    - ``"max_samples"``: both arms reached ``max_samples`` without a decision.

    The decision is kept once made; later updates still refine the statistics.

    Parameters
    ----------
    alpha
        Bound on the false-positive rate, however often the test is looked at.
    tau
        Standard deviation of the mixture over the difference, in reward units: set it near
        the gain you hope to detect (smaller detects small effects sooner, large ones later).
    sigma
        Known standard deviation of one decision's reward; None estimates each arm's from the
        data (the plug-in of Johari et al., sec. 4.3; hence ``min_samples``).
    min_effect
        Smallest gain worth a promotion (futility stop); 0 disables the futility stop.
    non_inferiority_margin
        Largest loss, in reward units, that still counts as "not worse" (None: the test only
        looks for a difference). When set, ``min_effect`` is not used.
    min_samples
        Decisions per arm before the first look.
    max_samples
        Cap of decisions per arm (None: no cap).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(3)
    >>> test = MixtureSPRT(tau=0.05, min_effect=0.05, min_samples=100)
    >>> while test.decision == "continue":  # an A/A test: stops for futility
    ...     _ = test.update_many("champion", rng.normal(0.5, 0.2, 50))
    ...     _ = test.update_many("challenger", rng.normal(0.5, 0.2, 50))
    >>> r = test.result()
    >>> r.decision, r.n_challenger, r.ci_high < 0.05, r.p_value > 0.05
    ('futility', 450, True, True)

    The same A/A data with a non-inferiority margin: not worse by more than 0.05.

    >>> rng = np.random.default_rng(3)
    >>> test = MixtureSPRT(tau=0.05, min_effect=0.05, non_inferiority_margin=0.05)
    >>> while test.decision == "continue":
    ...     _ = test.update_many("champion", rng.normal(0.5, 0.2, 50))
    ...     _ = test.update_many("challenger", rng.normal(0.5, 0.2, 50))
    >>> test.decision, test.confidence_interval[0] > -0.05
    ('non_inferior', True)

    References
    ----------
    Johari, Pekelis, Walsh (2017). Always valid inference: bringing sequential analysis to A/B
    testing. Operations Research 70(3), 2022; arXiv:1512.04922. Robbins (1970), statistical
    methods related to the law of the iterated logarithm.
    """

    def __init__(
        self,
        alpha: float = 0.05,
        *,
        tau: float = 0.05,
        sigma: float | None = None,
        min_effect: float = 0.0,
        min_samples: int = 100,
        max_samples: int | None = None,
        non_inferiority_margin: float | None = None,
    ) -> None:
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if sigma is not None and not sigma > 0:
            raise ValueError(f"sigma must be > 0 or None, got {sigma}")
        if min_effect < 0:
            raise ValueError(f"min_effect must be >= 0, got {min_effect}")
        if min_samples < 2:
            raise ValueError(f"min_samples must be >= 2, got {min_samples}")
        if non_inferiority_margin is not None and not non_inferiority_margin >= 0:
            raise ValueError(
                f"non_inferiority_margin must be >= 0 or None, got {non_inferiority_margin}"
            )
        if max_samples is not None and max_samples < min_samples:
            raise ValueError("max_samples must be >= min_samples")
        self.alpha = alpha
        self.tau = tau
        self.sigma = sigma
        self.min_effect = min_effect
        self.min_samples = min_samples
        self.max_samples = max_samples
        self.non_inferiority_margin = non_inferiority_margin
        # per group: [count, mean, sum of squared deviations] (Welford / Chan et al.)
        self._moments: dict[str, list[float]] = {
            "champion": [0.0, 0.0, 0.0],
            "challenger": [0.0, 0.0, 0.0],
        }
        self._p = 1.0
        self._ci = (-math.inf, math.inf)
        self._decision: Decision = "continue"

    # -- learning ------------------------------------------------------------------------------
    def update(self, group: Group, x: float) -> Self:
        """Add one decision's reward to ``group``, then look."""
        return self.update_many(group, [x])

    def update_many(self, group: Group, xs: Sequence[float] | np.ndarray) -> Self:
        """Add a batch of rewards to ``group``, then look once."""
        if group not in self._moments:
            raise ValueError(f"group must be 'champion' or 'challenger', got {group!r}")
        arr = np.asarray(xs, dtype=float).ravel()
        if arr.size == 0:
            return self
        if not np.isfinite(arr).all():
            raise ValueError("rewards must be finite numbers")
        n0, m0, ss0 = self._moments[group]
        n1, m1 = float(arr.size), float(arr.mean())
        ss1 = float(((arr - m1) ** 2).sum())
        n = n0 + n1
        delta = m1 - m0
        self._moments[group] = [n, m0 + delta * n1 / n, ss0 + ss1 + delta * delta * n0 * n1 / n]
        self._look()
        return self

    def _look(self) -> None:
        (na, ma, ssa), (nb, mb, ssb) = self._moments["champion"], self._moments["challenger"]
        if min(na, nb) < self.min_samples:
            return
        if self.sigma is not None:
            va = vb = self.sigma**2
        else:
            va, vb = ssa / (na - 1), ssb / (nb - 1)
        s2 = max(va / na + vb / nb, 1e-300)
        t2 = self.tau**2
        d = mb - ma
        log_lr = 0.5 * math.log(s2 / (s2 + t2)) + t2 * d * d / (2.0 * s2 * (s2 + t2))
        self._p = min(self._p, math.exp(-log_lr) if log_lr > 0 else 1.0)
        half = math.sqrt(
            2.0 * s2 * (s2 + t2) / t2 * (math.log(1.0 / self.alpha) + 0.5 * math.log1p(t2 / s2))
        )
        lo, hi = max(self._ci[0], d - half), min(self._ci[1], d + half)
        # An empty intersection can only come from a misspecified variance early on: keep the
        # current interval rather than none.
        self._ci = (lo, hi) if lo <= hi else (d - half, d + half)
        if self._decision != "continue":
            return
        if self._p < self.alpha:
            self._decision = "challenger" if d > 0 else "champion"
        elif self.non_inferiority_margin is not None:
            if self._ci[0] > -self.non_inferiority_margin:
                self._decision = "non_inferior"
            elif self._ci[1] < -self.non_inferiority_margin:
                self._decision = "champion"
            elif self.max_samples is not None and min(na, nb) >= self.max_samples:
                self._decision = "max_samples"
        elif self.min_effect > 0 and self._ci[1] < self.min_effect:
            self._decision = "futility"
        elif self.max_samples is not None and min(na, nb) >= self.max_samples:
            self._decision = "max_samples"

    # -- results -------------------------------------------------------------------------------
    @property
    def decision(self) -> Decision:
        """``"continue"`` until the test stops, then why it stopped."""
        return self._decision

    @property
    def p_value(self) -> float:
        """Always-valid p-value of "no difference" (running minimum of ``1 / Lambda``)."""
        return self._p

    @property
    def confidence_interval(self) -> tuple[float, float]:
        """Confidence sequence for challenger minus champion, at level ``1 - alpha``."""
        return self._ci

    @property
    def n_champion(self) -> int:
        """Rewards of the champion seen."""
        return int(self._moments["champion"][0])

    @property
    def n_challenger(self) -> int:
        """Rewards of the challenger seen."""
        return int(self._moments["challenger"][0])

    def result(self) -> SequentialResult:
        """The decision and the numbers it rests on."""
        return SequentialResult(
            decision=self._decision,
            p_value=self._p,
            diff=self._moments["challenger"][1] - self._moments["champion"][1],
            ci_low=self._ci[0],
            ci_high=self._ci[1],
            n_champion=self.n_champion,
            n_challenger=self.n_challenger,
        )

    def __repr__(self) -> str:
        return (
            f"MixtureSPRT(alpha={self.alpha!r}, tau={self.tau!r}, sigma={self.sigma!r}, "
            f"min_effect={self.min_effect!r}, min_samples={self.min_samples!r}, "
            f"max_samples={self.max_samples!r}, "
            f"non_inferiority_margin={self.non_inferiority_margin!r})"
        )
