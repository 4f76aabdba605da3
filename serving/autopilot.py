"""The serving side of the autopilot: live statistics per version and the SLO guards on them.

The loop closes without an operator (issue 15):

- a version aliased ``staging`` gets canary traffic as soon as the service loads it
  (:meth:`serving.router.Router.start_canary`), at ``start_percent`` of the decisions, drawn per
  decision with the share in the logged propensity, and stepped up every ``step_s`` while its
  guards stay green;
- :func:`guard_verdict` checks a version's live feedback against the SLOs of
  :class:`llmopt.settings.AutopilotRules` (error rate, p95 latency, cost per request, quality)
  and, for a canary, against the champion serving at the same time beyond the reward and error
  margins (a freshly promoted prod is held to the SLOs only: its predecessor's record is from
  another period);
- a breach rolls the version back at once in this process (the canary stops, or the router
  goes back to the previous champion's policy), and the runtime makes it durable in the
  registry (:mod:`serving.runtime`): the staging alias is removed, or prod moves back;
- promotion to prod is the mSPRT of the promotion flow on the event log
  (:mod:`pipelines.promotion`), which sees every replica's decisions.

Examples
--------
>>> from llmopt.settings import AutopilotRules
>>> rules = AutopilotRules(min_feedback=3, max_error_rate=0.5)
>>> good, bad = VersionStats(), VersionStats()
>>> for _ in range(4):
...     good.add(reward=0.6, error=False, quality=0.7, cost_usd=0.001, latency_ms=300)
...     bad.add(reward=0.1, error=True, quality=0.0, cost_usd=0.001, latency_ms=300)
>>> guard_verdict(good, None, rules) is None
True
>>> guard_verdict(bad, good, rules).kind
'error_rate'
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from llmopt.settings import AutopilotRules

LATENCY_SAMPLES = 2000
"""Latest latencies kept per version for its p95."""
Z_WORSE = 2.58
"""A margin verdict also needs the gap to be significant: z above this (one-sided 0.5%), so that
checking after every feedback does not roll back a version that is merely unlucky."""


@dataclass
class VersionStats:
    """Live feedback of one version since it started serving (or since the traffic changed)."""

    n: int = 0
    reward: float = 0.0
    reward_sq: float = 0.0
    errors: int = 0
    quality_sum: float = 0.0
    quality_n: int = 0
    cost_sum: float = 0.0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def add(
        self,
        reward: float,
        error: bool,
        *,
        quality: float | None = None,
        cost_usd: float | None = None,
        latency_ms: float | None = None,
    ) -> None:
        """One feedback of a decision this version made."""
        self.n += 1
        self.reward += reward
        self.reward_sq += reward * reward
        self.errors += int(error)
        if quality is not None:
            self.quality_sum += quality
            self.quality_n += 1
        self.cost_sum += float(cost_usd or 0.0)
        if latency_ms is not None:
            self.latencies.append(float(latency_ms))

    @property
    def mean(self) -> float:
        """Mean reward per feedback."""
        return self.reward / self.n if self.n else 0.0

    @property
    def reward_var(self) -> float:
        """Sample variance of the reward (0 below two feedback)."""
        if self.n < 2:
            return 0.0
        return max(self.reward_sq - self.n * self.mean**2, 0.0) / (self.n - 1)

    @property
    def error_rate(self) -> float:
        """Share of feedback that reported an error or timeout."""
        return self.errors / self.n if self.n else 0.0

    @property
    def quality(self) -> float | None:
        """Mean quality of the feedback that carried one."""
        return self.quality_sum / self.quality_n if self.quality_n else None

    @property
    def cost_per_request(self) -> float:
        """Mean realised cost per feedback (USD)."""
        return self.cost_sum / self.n if self.n else 0.0

    @property
    def p95_latency_ms(self) -> float | None:
        """95th percentile of the latest latencies."""
        return (
            float(np.percentile(np.fromiter(self.latencies, float), 95)) if self.latencies else None
        )

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-friendly view (``/admin/status``, the scenario's report)."""
        return {
            "n": self.n,
            "mean_reward": self.mean,
            "error_rate": self.error_rate,
            "quality": self.quality,
            "cost_per_request_usd": self.cost_per_request,
            "p95_latency_ms": self.p95_latency_ms,
        }


@dataclass(frozen=True)
class Verdict:
    """Why a version must be rolled back: ``kind`` names the guard, ``reason`` says it all."""

    kind: str
    reason: str


def guard_verdict(
    stats: VersionStats, reference: VersionStats | None, rules: AutopilotRules
) -> Verdict | None:
    """The first guard ``stats`` breaks (None: healthy, or too little feedback to tell).

    The SLOs are absolute; the margins compare with ``reference`` once it too has
    ``rules.min_feedback`` feedback.
    """
    if stats.n < rules.min_feedback:
        return None
    found = slo_breaches(stats, rules)
    if reference is not None and reference.n >= rules.min_feedback:
        found += margin_breaches(stats, reference, rules)
    return found[0] if found else None


def slo_breaches(stats: VersionStats, rules: AutopilotRules) -> list[Verdict]:
    """The absolute SLOs ``stats`` breaks: error rate, p95 latency, cost, quality."""
    found = []
    if stats.error_rate > rules.max_error_rate:
        found.append(
            Verdict(
                "error_rate",
                f"error rate {stats.error_rate:.3f} above the SLO {rules.max_error_rate:g} "
                f"({stats.n} feedback)",
            )
        )
    # The p95 sorts up to LATENCY_SAMPLES values: only when that SLO is set (every feedback).
    p95 = stats.p95_latency_ms if rules.max_p95_latency_ms is not None else None
    cost, quality = stats.cost_per_request, stats.quality
    if rules.max_p95_latency_ms is not None and p95 is not None and p95 > rules.max_p95_latency_ms:
        found.append(
            Verdict(
                "latency",
                f"p95 latency {p95:.0f} ms above the SLO {rules.max_p95_latency_ms:g} ms",
            )
        )
    if rules.max_cost_per_request_usd is not None and cost > rules.max_cost_per_request_usd:
        found.append(
            Verdict(
                "cost",
                f"cost {cost:.6f} USD/request above the SLO {rules.max_cost_per_request_usd:g}",
            )
        )
    if rules.min_quality is not None and quality is not None and quality < rules.min_quality:
        found.append(
            Verdict("quality", f"quality {quality:.4f} below the SLO {rules.min_quality:g}")
        )
    return found


def margin_breaches(
    stats: VersionStats, reference: VersionStats, rules: AutopilotRules
) -> list[Verdict]:
    """Where ``stats`` trails ``reference`` beyond the reward or error margin, significantly."""
    found = []
    gap = reference.mean - stats.mean
    se = math.sqrt(stats.reward_var / stats.n + reference.reward_var / reference.n)
    if gap > rules.reward_margin and gap > Z_WORSE * se:
        found.append(
            Verdict(
                "reward",
                f"reward {stats.mean:.4f} vs {reference.mean:.4f} (margin "
                f"{rules.reward_margin:g}; {stats.n} vs {reference.n} feedback)",
            )
        )
    p, q = stats.error_rate, reference.error_rate
    se_err = math.sqrt(p * (1 - p) / stats.n + q * (1 - q) / reference.n)
    if p - q > rules.error_margin and p - q > Z_WORSE * se_err:
        found.append(
            Verdict(
                "error_rate",
                f"error rate {stats.error_rate:.3f} vs {reference.error_rate:.3f} "
                f"(margin {rules.error_margin:g})",
            )
        )
    return found


@dataclass(frozen=True)
class Rollback:
    """A rollback the router made: which role and version, and the guard's verdict."""

    role: str
    """``challenger`` (the canary stopped) or ``champion`` (a fresh prod replaced)."""
    label: str
    restored: str | None
    """The label now serving in its place (the champion, or the previous prod)."""
    verdict: Verdict
