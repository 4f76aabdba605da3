"""When a training run registers a new version, and why (pure).

A training run that learned a handful of events would otherwise publish a new ``dev`` version
every five minutes, each one hardly different from the last, and each one a candidate that
restarts whatever comparison the promotion flow is running. A run registers only when it has
something to show:

- ``min_events``: the policy learned at least ``min_events`` events since the version it would
  replace (``LLMOPT_REGISTER_MIN_EVENTS``); or
- ``ope_moved``: its off-policy estimate on the recent logs lies outside the confidence interval
  of that version's estimate on the same logs (it learned little, but it changed).

Otherwise it does not register (``too_few_events``, or ``nothing_new`` when it learned nothing
since that version). Every run still logs its metrics; the decision's ``reason`` (a code) and
``detail`` (a sentence) say which rule applied.

Examples
--------
>>> from models.ope import Estimate
>>> prev = Estimate(0.60, 0.58, 0.62, 500, "snips")
>>> decide_registration(3, min_events=200, estimate=Estimate(0.61, 0.59, 0.63, 500, "snips"),
...                     previous=prev, previous_version="4").reason
'too_few_events'
>>> d = decide_registration(3, min_events=200, estimate=Estimate(0.66, 0.64, 0.68, 500, "snips"),
...                         previous=prev, previous_version="4")
>>> d.register, d.reason, round(d.lift, 2)
(True, 'ope_moved', 0.06)
>>> decide_registration(250, min_events=200, estimate=None, previous=None,
...                     previous_version=None).detail
'learned 250 new events (at least 200, LLMOPT_REGISTER_MIN_EVENTS)'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from models.ope import Estimate

Reason = Literal["min_events", "ope_moved", "too_few_events", "nothing_new"]


@dataclass(frozen=True)
class RegistrationDecision:
    """Whether a run registers a version, which rule decided (``reason``) and the numbers."""

    register: bool
    reason: Reason
    detail: str
    """The reason as a sentence (MLflow tag ``registration_detail``, version description)."""
    n_new: int
    """Events learned since ``previous_version`` (since the start when there is none)."""
    min_events: int
    estimate: Estimate | None
    """The run's off-policy estimate (None: not evaluated)."""
    previous: Estimate | None
    """The previous version's estimate on the same logged decisions (None: no such version)."""
    previous_version: str | None

    @property
    def lift(self) -> float | None:
        """Off-policy estimate of the run minus the previous version's (None if either lacks)."""
        if self.estimate is None or self.previous is None:
            return None
        return self.estimate.value - self.previous.value


def _ci(e: Estimate) -> str:
    return f"{e.value:.4f} [{e.lower:.4f}, {e.upper:.4f}]"


def decide_registration(
    n_new: int,
    *,
    min_events: int,
    estimate: Estimate | None,
    previous: Estimate | None,
    previous_version: str | None,
) -> RegistrationDecision:
    """The registration rule (module docstring) applied to one run."""
    if min_events < 1:
        raise ValueError(f"min_events must be >= 1, got {min_events}")
    since = f"version {previous_version}" if previous_version else "the start"

    def decided(register: bool, reason: Reason, detail: str) -> RegistrationDecision:
        return RegistrationDecision(
            register, reason, detail, n_new, min_events, estimate, previous, previous_version
        )

    if n_new <= 0:
        return decided(False, "nothing_new", f"no new events since {since}")
    if n_new >= min_events:
        return decided(
            True,
            "min_events",
            f"learned {n_new} new events (at least {min_events}, LLMOPT_REGISTER_MIN_EVENTS)",
        )
    if estimate is not None and previous is not None and not previous.covers(estimate.value):
        direction = "above" if estimate.value > previous.upper else "below"
        return decided(
            True,
            "ope_moved",
            f"off-policy estimate {_ci(estimate)} moved {direction} version "
            f"{previous_version}'s confidence interval ({_ci(previous)}) after {n_new} new events",
        )
    if previous is None or estimate is None:
        why = "no previous version to compare its off-policy estimate with"
    else:
        why = (
            f"off-policy estimate {_ci(estimate)} within version {previous_version}'s "
            f"interval ({_ci(previous)})"
        )
    return decided(
        False,
        "too_few_events",
        f"only {n_new} new events since {since} (fewer than {min_events}) and {why}",
    )
