"""Streaming estimators of the served traffic: exploration rate, regret, recovery after drift.

Each is a small, thread-safe, bounded-memory summary updated one decision or one reward at a
time, for a long-running worker (the service reports them as Prometheus metrics,
:mod:`serving.metrics`):

- :class:`ExplorationWindow`: the share of the last decisions that explored;
- :class:`RegretEstimator`: the estimated regret of each rewarded decision against the
  best-known model;
- :class:`RecoveryTracker`: whether the reward recovered after each drift detection.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque


class ExplorationWindow:
    """Share of the last ``size`` decisions that explored (did not take the greedy model).

    A decision explored when its explanation says so (``Explanation.explored``: the chosen
    model's expected reward is below the best one's, by the policy's own estimates at decision
    time); decisions without an explanation (the static default) count as greedy. With no
    decision yet the rate is 0.

    Parameters
    ----------
    size
        Decisions remembered.

    Examples
    --------
    >>> w = ExplorationWindow(size=4)
    >>> for explored in (True, False, False, False, True):
    ...     w.add(explored)
    >>> w.rate
    0.25
    """

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self._flags: deque[int] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, explored: bool) -> None:
        """Remember one decision."""
        with self._lock:
            self._flags.append(int(explored))

    @property
    def rate(self) -> float:
        """Explored share of the remembered decisions (0 with none)."""
        with self._lock:
            n = len(self._flags)
            return sum(self._flags) / n if n else 0.0


class RegretEstimator:
    """Estimated regret of each rewarded decision against the best-known model.

    Per model it keeps a running mean of the realised rewards (plain mean over the first
    ``horizon`` rewards, then an exponential moving average with weight ``1 / horizon``, so a
    drifting world is followed). When a decision of model ``a`` is rewarded, ``a``'s mean is
    updated and the regret of that decision is ``max_b mean_b - mean_a`` over the models with at
    least ``min_count`` rewards (0 while ``a`` has fewer): the plug-in estimate of the pseudo-regret
    against the best single model. It is never negative, so it accumulates in a counter.

    It is context-free (a router that rightly sends easy prompts to a cheap model pays
    "regret" here when the cheap model's pooled mean is lower), per worker, and pools tenants
    with different trade-offs; read it as a trend, not as the true regret. The model of a
    decision is remembered from :meth:`decided` for the last ``window`` decisions; feedback on an
    older decision (or one decided by another worker) gets ``None``.

    Parameters
    ----------
    horizon
        Rewards after which a model's mean becomes an exponential moving average.
    min_count
        Rewards a model needs before it counts.
    window
        Decisions whose model is remembered.

    Examples
    --------
    >>> est = RegretEstimator(min_count=1)
    >>> est.decided("d1", "good", "ucb"); est.decided("d2", "bad", "ucb")
    >>> est.rewarded("d1", 0.9)
    ('ucb', 0.0)
    >>> algorithm, regret = est.rewarded("d2", 0.3)
    >>> algorithm, round(regret, 6)
    ('ucb', 0.6)
    >>> est.rewarded("never-decided", 1.0) is None
    True
    """

    def __init__(self, *, horizon: int = 1000, min_count: int = 10, window: int = 50_000) -> None:
        self.horizon = horizon
        self.min_count = min_count
        self.window = window
        self._decisions: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._means: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def decided(self, decision_id: str, model: str, algorithm: str) -> None:
        """Remember which model (and algorithm) made ``decision_id``."""
        with self._lock:
            self._decisions[decision_id] = (model, algorithm)
            if len(self._decisions) > self.window:
                self._decisions.popitem(last=False)

    def rewarded(self, decision_id: str, reward: float) -> tuple[str, float] | None:
        """``(algorithm, regret)`` of a rewarded decision; None if it is not remembered."""
        with self._lock:
            made = self._decisions.pop(decision_id, None)
            if made is None:
                return None
            model, algorithm = made
            n = self._counts[model] = self._counts.get(model, 0) + 1
            mean = self._means.get(model, 0.0)
            mean = self._means[model] = mean + (reward - mean) / min(n, self.horizon)
            if n < self.min_count:
                return algorithm, 0.0
            best = max(m for k, m in self._means.items() if self._counts[k] >= self.min_count)
            return algorithm, max(best - mean, 0.0)


class RecoveryTracker:
    """Whether the service's reward recovered after each drift detection.

    At a detection the mean of the last ``window`` rewards is the baseline (none yet: no
    baseline). The drift counts as recovered once ``window`` rewards have come after it and their
    mean is back to at least the baseline minus ``tolerance`` (with no baseline: once they have
    come). Rewards are all the stored feedback this worker saw, every model pooled: what the
    router achieves, which is what has to recover (the drifted model may never be good again).

    Parameters
    ----------
    window
        Rewards averaged before and after a detection.
    tolerance
        How far below the baseline a recovered mean may be, in reward units.

    Examples
    --------
    >>> t = RecoveryTracker(window=3, tolerance=0.05)
    >>> for r in (0.8, 0.8, 0.8):
    ...     t.add(r)
    []
    []
    []
    >>> t.drift(("gpt-4o", "quality"))
    >>> [t.add(r) for r in (0.2, 0.3, 0.6, 0.8, 0.8, 0.8)]
    [[], [], [], [], [], [('gpt-4o', 'quality')]]
    """

    def __init__(self, *, window: int = 200, tolerance: float = 0.05) -> None:
        self.window = window
        self.tolerance = tolerance
        self._recent: deque[float] = deque(maxlen=window)
        self._sum = 0.0
        self._pending: dict[tuple[str, str], tuple[float | None, int]] = {}
        self._lock = threading.Lock()

    def drift(self, key: tuple[str, str]) -> None:
        """A drift of ``key`` (model, stream) was detected now."""
        with self._lock:
            n = len(self._recent)
            self._pending[key] = (self._sum / n if n == self.window else None, 0)

    def forget(self, key: tuple[str, str]) -> None:
        """Stop tracking ``key`` (recovered by other means)."""
        with self._lock:
            self._pending.pop(key, None)

    def add(self, reward: float) -> list[tuple[str, str]]:
        """One more reward; returns the drifts it completes the recovery of."""
        with self._lock:
            if len(self._recent) == self.window:
                self._sum -= self._recent[0]
            self._recent.append(reward)
            self._sum += reward
            if not self._pending:
                return []
            mean = self._sum / len(self._recent)
            done = []
            for key, (baseline, before) in list(self._pending.items()):
                seen = before + 1
                self._pending[key] = (baseline, seen)
                if seen >= self.window and (baseline is None or mean >= baseline - self.tolerance):
                    done.append(key)
                    del self._pending[key]
            return done
