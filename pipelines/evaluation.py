"""Off-policy evaluation of a policy on logged decisions, and the promotion tests (pure).

:func:`ope_report` asks a frozen copy of the policy what it would have chosen for every logged
decision (same offered models, same predicted cost penalties as the learning loop computes) and
estimates its value with SNIPS and IPS (:mod:`models.ope`) on the logged rewards ("higher is
better", cost and latency already priced in). The policy does not learn during evaluation.

Promotion gates:

- :func:`ope_gate`: a challenger reaches ``staging`` only if its estimate is not worse than the
  champion's by more than ``margin`` (reward units).
- :func:`ab_gate`: ``prod`` only if the per-decision rewards the challenger earned online are
  higher than the champion's with statistical significance (:func:`welch_test`, one-sided).

Examples
--------
>>> r = welch_test([0.0, 1.0] * 200, [0.2, 1.0] * 200)
>>> round(r.diff, 2), r.p_value < 0.05
(0.1, True)
>>> ab_gate([0.5] * 10, [0.9] * 10, min_samples=100).reason
'not enough online decisions: champion 10, challenger 10 (need 100 each)'
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from llmopt.catalog import ModelCatalog
from llmopt.loop import LearningLoop
from llmopt.reward import TradeOff
from models.base import Policy
from models.ope import Estimate, LoggedBandit, ips, snips
from pipelines.events import TrainingEvent


def _penalty_loop(
    policy: Policy, events: Sequence[TrainingEvent], catalog: ModelCatalog | None
) -> LearningLoop:
    """A loop used only for its penalties, its cost model taught the logged costs."""
    arms = sorted({a for e in events for a in e.arms})
    loop = LearningLoop(policy, arms, catalog=catalog)
    for e in events:
        if e.cost_usd is not None:
            loop.cost_model.learn(e.model, int(e.context.get("input_tokens") or 0), e.cost_usd)
    return loop


def target_choices(
    policy: Policy, events: Sequence[TrainingEvent], catalog: ModelCatalog | None = None
) -> list[str]:
    """The model a frozen copy of ``policy`` would choose for each logged decision."""
    frozen = copy.deepcopy(policy)
    loop = _penalty_loop(frozen, events, catalog) if frozen.cost_aware else None
    out = []
    for e in events:
        arms = list(e.arms)
        if loop is not None:
            tradeoff = TradeOff(
                willingness_to_pay=float(e.context.get("willingness_to_pay") or 0.05),
                latency_weight=float(e.context.get("latency_weight") or 0.0),
            )
            pen = loop.penalties(arms, int(e.context.get("input_tokens") or 0), tradeoff)
            out.append(frozen.pull(arms, e.features, penalties=pen).model)
        else:
            out.append(frozen.pull(arms, e.features).model)
    return out


def ope_report(
    policy: Policy,
    events: Sequence[TrainingEvent],
    *,
    catalog: ModelCatalog | None = None,
    n_bootstrap: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """SNIPS and IPS estimates of ``policy``'s value on ``events``, with the logged average."""
    if not events:
        raise ValueError("no logged decisions to evaluate on")
    arms = sorted({a for e in events for a in e.arms} | {e.model for e in events})
    index = {a: i for i, a in enumerate(arms)}
    chosen = target_choices(policy, events, catalog)
    probs = np.zeros((len(events), len(arms)))
    probs[np.arange(len(events)), [index[c] for c in chosen]] = 1.0
    data = LoggedBandit(
        actions=np.array([index[e.model] for e in events]),
        rewards=np.array([e.reward if e.reward is not None else e.quality for e in events]),
        propensities=np.array([e.propensity for e in events]),
    )
    est_snips = snips(data, probs, n_bootstrap=n_bootstrap, seed=seed)
    est_ips = ips(data, probs, n_bootstrap=n_bootstrap, seed=seed)
    return {
        "n": data.n,
        "logged_value": float(data.rewards.mean()),
        "snips": asdict(est_snips),
        "ips": asdict(est_ips),
        "match_rate": float(np.mean([c == e.model for c, e in zip(chosen, events, strict=True)])),
    }


def estimate_of(report: dict[str, Any], method: str = "snips") -> Estimate:
    """The :class:`Estimate` stored under ``method`` in an :func:`ope_report`."""
    return Estimate(**report[method])


@dataclass(frozen=True)
class GateResult:
    """Whether a gate lets a version through, why, and the numbers it decided on."""

    passed: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


def ope_gate(
    challenger: Estimate, champion: Estimate | None, *, margin: float = 0.01
) -> GateResult:
    """Pass unless the challenger's estimate is below the champion's by more than ``margin``.

    Examples
    --------
    >>> e = lambda v: Estimate(v, v - 0.1, v + 0.1, 100, "snips")
    >>> ope_gate(e(0.50), e(0.505), margin=0.01).passed
    True
    >>> ope_gate(e(0.40), e(0.50), margin=0.01).passed
    False
    >>> ope_gate(e(0.40), None).reason
    'no champion: nothing to compare with'
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if champion is None:
        return GateResult(
            True, "no champion: nothing to compare with", {"challenger": challenger.value}
        )
    diff = challenger.value - champion.value
    details = {
        "challenger": challenger.value,
        "champion": champion.value,
        "diff": diff,
        "margin": margin,
    }
    if diff < -margin:
        return GateResult(
            False,
            f"off-policy estimate {challenger.value:.4f} is worse than the champion's "
            f"{champion.value:.4f} by {-diff:.4f} > margin {margin:g}",
            details,
        )
    return GateResult(
        True,
        f"off-policy estimate {challenger.value:.4f} vs champion {champion.value:.4f} "
        f"(margin {margin:g})",
        details,
    )


@dataclass(frozen=True)
class WelchResult:
    """Welch's t-test of ``mean(b) - mean(a)``; ``p_value`` is one-sided (``b`` better)."""

    diff: float
    t: float
    df: float
    p_value: float
    n_a: int
    n_b: int


def welch_test(a: Sequence[float], b: Sequence[float]) -> WelchResult:
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


def ab_gate(
    champion_rewards: Sequence[float],
    challenger_rewards: Sequence[float],
    *,
    alpha: float = 0.05,
    min_samples: int = 100,
) -> GateResult:
    """Pass if the challenger's online rewards beat the champion's at level ``alpha``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> champ, chall = rng.normal(0.5, 0.2, 500), rng.normal(0.56, 0.2, 500)
    >>> ab_gate(champ, chall).passed, ab_gate(chall, champ).passed
    (True, False)
    """
    n_a, n_b = len(champion_rewards), len(challenger_rewards)
    if n_a < min_samples or n_b < min_samples:
        return GateResult(
            False,
            f"not enough online decisions: champion {n_a}, challenger {n_b} "
            f"(need {min_samples} each)",
            {"n_champion": n_a, "n_challenger": n_b},
        )
    r = welch_test(champion_rewards, challenger_rewards)
    details = {**asdict(r), "alpha": alpha}
    if r.diff > 0 and r.p_value < alpha:
        return GateResult(
            True, f"challenger better by {r.diff:.4f} reward/decision (p={r.p_value:.3g})", details
        )
    return GateResult(
        False,
        f"no significant gain: diff {r.diff:+.4f} reward/decision, p={r.p_value:.3g} >= {alpha:g}"
        if r.diff > 0
        else f"challenger not better: diff {r.diff:+.4f} reward/decision (p={r.p_value:.3g})",
        details,
    )


# -- Student's t distribution without scipy (its import alone takes over a second) --------------
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
