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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from llmopt.catalog import ModelCatalog
from llmopt.event_log import TrainingEvent
from llmopt.loop import LearningLoop
from llmopt.reward import TradeOff
from models.base import BasePolicy
from models.ope import Estimate, LoggedBandit, ips, snips
from monitoring.ab_test import MixtureSPRT, WelchResult, student_t_sf, welch_test

__all__ = [  # Welch's test lives in monitoring.ab_test now; still importable from here
    "GateResult",
    "WelchResult",
    "ab_gate",
    "estimate_of",
    "ope_gate",
    "ope_report",
    "student_t_sf",
    "target_choices",
    "welch_test",
]


def _penalty_loop(
    policy: BasePolicy, events: Sequence[TrainingEvent], catalog: ModelCatalog | None
) -> LearningLoop:
    """A loop used only for its penalties, its cost model taught the logged costs."""
    arms = sorted({a for e in events for a in e.arms})
    loop = LearningLoop(policy, arms, catalog=catalog)
    for e in events:
        if e.cost_usd is not None:
            loop.cost_model.learn(e.model, int(e.context.get("input_tokens") or 0), e.cost_usd)
    return loop


def target_choices(
    policy: BasePolicy, events: Sequence[TrainingEvent], catalog: ModelCatalog | None = None
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
    policy: BasePolicy,
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


def ab_gate(
    champion_rewards: Sequence[float],
    challenger_rewards: Sequence[float],
    *,
    alpha: float = 0.05,
    min_samples: int = 100,
    sequential: bool = True,
    look_every: int = 50,
    min_effect: float = 0.0,
    max_samples: int | None = None,
    non_inferiority_margin: float | None = None,
) -> GateResult:
    """Pass if the challenger's online rewards beat the champion's at level ``alpha`` (or, with
    ``non_inferiority_margin``, if they are shown to be worse by at most that margin).

    The promotion flow runs on a schedule and looks at the same growing A/B sample again and
    again, so by default the gate is the mixture SPRT (:class:`monitoring.ab_test.MixtureSPRT`),
    whose false-positive rate stays below ``alpha`` however often it is looked at; the rewards
    are fed in arrival order, one look per ``look_every`` decisions of each arm. With
    ``sequential=False`` it is one Welch t-test (valid for a single, pre-planned look).

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
    if sequential:
        return _sequential_gate(
            champion_rewards,
            challenger_rewards,
            alpha,
            min_samples,
            look_every,
            min_effect=min_effect,
            max_samples=max_samples,
            non_inferiority_margin=non_inferiority_margin,
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


def _sequential_gate(
    champion: Sequence[float],
    challenger: Sequence[float],
    alpha: float,
    min_samples: int,
    look_every: int,
    *,
    min_effect: float = 0.0,
    max_samples: int | None = None,
    non_inferiority_margin: float | None = None,
) -> GateResult:
    test = MixtureSPRT(
        alpha,
        tau=0.05,
        min_samples=min_samples,
        min_effect=min_effect,
        max_samples=max_samples,
        non_inferiority_margin=non_inferiority_margin,
    )
    a, b = np.asarray(champion, dtype=float), np.asarray(challenger, dtype=float)
    for start in range(0, max(len(a), len(b)), look_every):
        test.update_many("champion", a[start : start + look_every])
        test.update_many("challenger", b[start : start + look_every])
        if test.decision != "continue":
            break
    r = test.result()
    details = {**asdict(r), "alpha": alpha, "test": "mSPRT"}
    if r.decision == "challenger":
        return GateResult(
            True,
            f"challenger better by {r.diff:.4f} reward/decision (mSPRT always-valid "
            f"p={r.p_value:.3g}, CI [{r.ci_low:+.4f}, {r.ci_high:+.4f}])",
            details,
        )
    if r.decision == "non_inferior":
        return GateResult(
            True,
            f"challenger not worse by more than {non_inferiority_margin:g}: diff {r.diff:+.4f} "
            f"reward/decision, mSPRT CI [{r.ci_low:+.4f}, {r.ci_high:+.4f}]",
            details,
        )
    return GateResult(
        False,
        f"challenger not better (mSPRT: {r.decision}): diff {r.diff:+.4f} reward/decision "
        f"(mSPRT always-valid p={r.p_value:.3g})",
        details,
    )
