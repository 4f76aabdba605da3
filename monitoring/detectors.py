"""Streaming change detectors on each model's reward, quality, latency and cost, and their monitor.

Five detectors share one small shape (River's drift-detector API, docs/style.md #7): ``update(x)``
returns the detector, ``drift_detected`` is True right after the value that revealed a change,
``reset()`` returns to the freshly built state. After a detection every detector *restarts*: the
values that follow are the new normal it learns (River's ADWIN and Page-Hinkley do the same).

Every detector first learns what normal looks like from ``warmup`` values (mean and standard
deviation, or a reference window), so all thresholds are in units of the stream's own spread
and one setting serves a quality in [0, 1], a latency in milliseconds and a cost in USD alike.

- :class:`ADWIN` and :class:`PageHinkley` wrap River's ``river.drift.ADWIN`` and
  ``river.drift.PageHinkley`` and feed them standardised values.
- :class:`CUSUM`, :class:`ZScore` and :class:`IQR` are written here: River 0.26 has no CUSUM
  detector (its Page-Hinkley is a CUSUM on the running mean, not on a fixed target), and
  ``river.anomaly`` has only anomaly *scorers* with a ``score_one`` API (``GaussianScorer``,
  ``StandardAbsoluteDeviation``, ``QuantileFilter``/``ThresholdFilter`` over a score, and
  multivariate ones such as ``HalfSpaceTrees``, ``LODA``, ``OneClassSVM``, ``LocalOutlierFactor``):
  none turns outliers into a drift signal, none uses interquartile fences. We reuse River's
  ``stats.Var``, ``utils.Rolling`` and ``stats.RollingQuantile`` for the bookkeeping.

The anomaly detectors (:class:`ZScore`, :class:`IQR`) flag single outliers
(``anomaly_detected``) but report *drift* only when ``min_anomalies`` of the last ``patience``
values are outliers: one bad answer is not a changed model. Outliers are kept out of their
reference window, so a burst of them cannot make itself look normal.

:class:`StreamMonitor` keeps one set of detectors per (model, stream) and turns each feedback
into :class:`DriftEvent` records.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> stream = np.r_[rng.normal(0.7, 0.1, 1000), rng.normal(0.4, 0.1, 500)]
>>> cusum = CUSUM()
>>> [i for i, x in enumerate(stream) if cusum.update(x).drift_detected]
[1005]
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, Self

from river import drift, stats, utils

from llmopt.types import ArmID

STREAMS: tuple[str, ...] = ("reward", "quality", "latency_ms", "cost_usd")
"""Streams a feedback can carry, per model."""


class Detector(Protocol):
    """What :class:`StreamMonitor` needs of a detector."""

    @property
    def drift_detected(self) -> bool:
        """True right after the value that revealed a change."""
        ...

    def update(self, x: float) -> Any:
        """Learn one value (returns the detector)."""
        ...

    def reset(self) -> None:
        """Forget everything: back to the freshly built state."""
        ...


class BaseDetector(ABC):
    """Validation, the value count and the restart after a detection; subclasses test.

    Parameters
    ----------
    warmup
        Values learned as "normal" before any test, after construction and after each
        detection.
    """

    def __init__(self, *, warmup: int) -> None:
        if warmup < 2:
            raise ValueError(f"warmup must be >= 2, got {warmup}")
        self.warmup = warmup
        self._n_seen = 0
        self._drift = False
        self._restart()

    @property
    def drift_detected(self) -> bool:
        """True right after the value that revealed a change."""
        return self._drift

    @property
    def n_seen(self) -> int:
        """Values seen since construction or :meth:`reset`."""
        return self._n_seen

    def update(self, x: float) -> Self:
        """Learn one value; a detection restarts the detector on the values that follow."""
        x = float(x)
        if not math.isfinite(x):
            raise ValueError(f"detector input must be a finite number, got {x!r}")
        self._n_seen += 1
        self._drift = self._update(x)
        if self._drift:
            self._restart()
        return self

    def reset(self) -> None:
        """Forget everything: back to the freshly built state."""
        self._n_seen = 0
        self._drift = False
        self._restart()

    @abstractmethod
    def _update(self, x: float) -> bool:
        """Learn ``x``; True if it reveals a change."""

    @abstractmethod
    def _restart(self) -> None:
        """Drop what was learned about the stream (a new warm-up follows)."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def _std(variance: float, mean: float) -> float:
    """Standard deviation, floored so that a constant stream still standardises (any change
    of a constant price or latency is then a change by a very large number of deviations)."""
    return max(math.sqrt(max(variance, 0.0)), 1e-9 * max(1.0, abs(mean)))


class _Standardized(BaseDetector):
    """Learns mean and deviation over the warm-up, then tests standardised values."""

    def _restart(self) -> None:
        self._var = stats.Var(ddof=1)
        self._mu = 0.0
        self._sd = 1.0
        self._start()

    def _update(self, x: float) -> bool:
        if self._var.n < self.warmup:
            self._var.update(x)
            if self._var.n == self.warmup:
                self._mu = self._var.mean.get()
                self._sd = _std(self._var.get(), self._mu)
            return False
        return self._test((x - self._mu) / self._sd)

    @abstractmethod
    def _start(self) -> None:
        """Fresh test state."""

    @abstractmethod
    def _test(self, z: float) -> bool:
        """Learn the standardised value ``z``; True on a change."""


class ADWIN(_Standardized):
    """ADWIN (adaptive windowing) on standardised values: River's ``drift.ADWIN``.

    ADWIN's cut bound assumes values in [0, 1]; after the warm-up each value is fed as
    ``0.5 + z / 6`` (``z`` in standard deviations of the warm-up), so plus or minus three
    deviations span that interval whatever the stream's unit.

    Parameters
    ----------
    delta
        Confidence of each cut (smaller: fewer false alarms, later detections).
    clock
        ADWIN checks for a cut every ``clock`` values.
    warmup
        See :class:`BaseDetector`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> stream = np.r_[rng.normal(0.7, 0.1, 1000), rng.normal(0.4, 0.1, 500)]
    >>> adwin = ADWIN()
    >>> [i for i, x in enumerate(stream) if adwin.update(x).drift_detected]
    [1027]

    References
    ----------
    Bifet & Gavaldà (2007). Learning from time-changing data with adaptive windowing. SDM.
    """

    def __init__(self, delta: float = 0.002, *, clock: int = 32, warmup: int = 100) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if clock < 1:
            raise ValueError(f"clock must be >= 1, got {clock}")
        self.delta = delta
        self.clock = clock
        super().__init__(warmup=warmup)

    def _start(self) -> None:
        self._adwin: Any = drift.ADWIN(  # type: ignore[no-untyped-call]  # River: no hints
            delta=self.delta, clock=self.clock
        )

    def _test(self, z: float) -> bool:
        self._adwin.update(0.5 + z / 6.0)
        return bool(self._adwin.drift_detected)


class PageHinkley(_Standardized):
    """Page-Hinkley test on standardised values: River's ``drift.PageHinkley``, two-sided.

    Parameters
    ----------
    delta
        Change tolerated per value, in standard deviations of the warm-up.
    threshold
        Detection threshold (lambda), in standard deviations.
    warmup
        See :class:`BaseDetector`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> stream = np.r_[rng.normal(0.7, 0.1, 1000), rng.normal(0.4, 0.1, 500)]
    >>> ph = PageHinkley()
    >>> [i for i, x in enumerate(stream) if ph.update(x).drift_detected]
    [1005]

    References
    ----------
    Page (1954). Continuous inspection schemes. Biometrika 41.
    """

    def __init__(self, delta: float = 0.2, *, threshold: float = 25.0, warmup: int = 100) -> None:
        if delta < 0 or threshold <= 0:
            raise ValueError("delta must be >= 0 and threshold > 0")
        self.delta = delta
        self.threshold = threshold
        super().__init__(warmup=warmup)

    def _start(self) -> None:
        self._ph: Any = drift.PageHinkley(
            min_instances=1, delta=self.delta, threshold=self.threshold, alpha=1.0, mode="both"
        )

    def _test(self, z: float) -> bool:
        self._ph.update(z)
        return bool(self._ph.drift_detected)


class CUSUM(_Standardized):
    """Two-sided tabular CUSUM against the mean and deviation learned during the warm-up.

    ``S+ = max(0, S+ + z - k)`` and ``S- = max(0, S- - z - k)`` with ``z`` the value in warm-up
    standard deviations; a change is declared when either exceeds ``h``.

    Parameters
    ----------
    k
        Allowance: half the shift (in standard deviations) the chart is tuned to detect.
    h
        Decision interval, in standard deviations. The warm-up's estimates of the mean and
        deviation are what false alarms come from: with ``h=10`` a Gaussian stream raised
        0.08 false alarms per 1000 values, with ``h=15`` 0.004 (0.05 on 0/1 values with 90%
        successes; tests/unit/monitoring/test_detectors.py), for a delay of 5 values on a
        3-deviation shift and 28 on a 1-deviation one. On RouterBench replays ``h=10`` also
        raised three times as many alarms on the models' correctness (16 against 5 in 8 runs).
    warmup
        See :class:`BaseDetector`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> stream = np.r_[rng.normal(0.7, 0.1, 1000), rng.normal(0.9, 0.1, 500)]
    >>> cusum = CUSUM()
    >>> [i for i, x in enumerate(stream) if cusum.update(x).drift_detected]
    [1010]

    References
    ----------
    Page (1954); Montgomery, Introduction to Statistical Quality Control, ch. 9 (tabular CUSUM).
    """

    def __init__(self, k: float = 0.5, *, h: float = 15.0, warmup: int = 100) -> None:
        if k < 0 or h <= 0:
            raise ValueError("k must be >= 0 and h > 0")
        self.k = k
        self.h = h
        super().__init__(warmup=warmup)

    def _start(self) -> None:
        self._up = 0.0
        self._down = 0.0

    def _test(self, z: float) -> bool:
        self._up = max(0.0, self._up + z - self.k)
        self._down = max(0.0, self._down - z - self.k)
        return self._up > self.h or self._down > self.h


class _WindowAnomaly(BaseDetector):
    """Outliers against a reference window; drift when enough recent values are outliers."""

    def __init__(self, *, window: int, warmup: int, min_anomalies: int, patience: int) -> None:
        if window < warmup:
            raise ValueError(f"window ({window}) must be >= warmup ({warmup})")
        if not 1 <= min_anomalies <= patience:
            raise ValueError("need 1 <= min_anomalies <= patience")
        self.window = window
        self.min_anomalies = min_anomalies
        self.patience = patience
        self._anomaly = False
        super().__init__(warmup=warmup)

    @property
    def anomaly_detected(self) -> bool:
        """True if the last value was an outlier."""
        return self._anomaly

    def _restart(self) -> None:
        self._n_ref = 0
        self._recent: deque[bool] = deque(maxlen=self.patience)
        self._start()

    def _update(self, x: float) -> bool:
        self._anomaly = self._n_ref >= self.warmup and self._outlier(x)
        self._recent.append(self._anomaly)
        if not self._anomaly:  # outliers stay out of the reference
            self._learn(x)
            self._n_ref = min(self._n_ref + 1, self.window)
        return sum(self._recent) >= self.min_anomalies

    @abstractmethod
    def _start(self) -> None:
        """Fresh reference statistics."""

    @abstractmethod
    def _learn(self, x: float) -> None:
        """Add ``x`` to the reference window."""

    @abstractmethod
    def _outlier(self, x: float) -> bool:
        """Is ``x`` an outlier against the reference?"""


class ZScore(_WindowAnomaly):
    """Outliers beyond ``threshold`` standard deviations of a rolling reference window.

    Parameters
    ----------
    threshold
        ``|x - mean| / std`` above which a value is an outlier.
    window
        Size of the rolling reference window (outliers excluded).
    warmup
        Reference values needed before testing.
    min_anomalies, patience
        Drift when at least ``min_anomalies`` of the last ``patience`` values are outliers.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> stream = np.r_[rng.normal(0.7, 0.1, 1000), rng.normal(0.4, 0.1, 500)]
    >>> z = ZScore()
    >>> [i for i, x in enumerate(stream) if z.update(x).drift_detected]
    [1003]
    >>> z.update(9.0).anomaly_detected, z.drift_detected  # one outlier is not a drift
    (True, False)
    """

    def __init__(
        self,
        threshold: float = 3.0,
        *,
        window: int = 200,
        warmup: int = 100,
        min_anomalies: int = 3,
        patience: int = 10,
    ) -> None:
        if threshold <= 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        self.threshold = threshold
        super().__init__(
            window=window, warmup=warmup, min_anomalies=min_anomalies, patience=patience
        )

    def _start(self) -> None:
        self._var: Any = utils.Rolling(stats.Var, window_size=self.window, ddof=1)

    def _learn(self, x: float) -> None:
        self._var.update(x)

    def _outlier(self, x: float) -> bool:
        mean = float(self._var.obj.mean.get())
        return abs(x - mean) > self.threshold * _std(float(self._var.get()), mean)


class IQR(_WindowAnomaly):
    """Outliers outside Tukey's fences ``[Q1 - k IQR, Q3 + k IQR]`` of a rolling window.

    Quartiles are robust to the outliers themselves and to skewed streams (latencies, costs),
    where a z-score over-reacts to the long tail.

    Parameters
    ----------
    k
        Fence distance in interquartile ranges (Tukey's 1.5; 3 for "far out").
    window, warmup, min_anomalies, patience
        See :class:`ZScore`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> stream = np.r_[rng.normal(0.7, 0.1, 1000), rng.normal(0.4, 0.1, 500)]
    >>> iqr = IQR()
    >>> [i for i, x in enumerate(stream) if iqr.update(x).drift_detected]
    [1003]

    References
    ----------
    Tukey (1977). Exploratory Data Analysis.
    """

    def __init__(
        self,
        k: float = 1.5,
        *,
        window: int = 200,
        warmup: int = 100,
        min_anomalies: int = 3,
        patience: int = 10,
    ) -> None:
        if k <= 0:
            raise ValueError(f"k must be > 0, got {k}")
        self.k = k
        super().__init__(
            window=window, warmup=warmup, min_anomalies=min_anomalies, patience=patience
        )

    def _start(self) -> None:
        self._q1 = stats.RollingQuantile(0.25, window_size=self.window)
        self._q3 = stats.RollingQuantile(0.75, window_size=self.window)

    def _learn(self, x: float) -> None:
        self._q1.update(x)
        self._q3.update(x)

    def _outlier(self, x: float) -> bool:
        q1, q3 = self._q1.get(), self._q3.get()
        if q1 is None or q3 is None:
            return False
        spread = max(q3 - q1, 1e-9 * max(1.0, abs(q3)))
        return x < q1 - self.k * spread or x > q3 + self.k * spread


DetectorFactory = Callable[[], Detector]
"""Builds a fresh detector (a class with its defaults, or a ``functools.partial``)."""

ALL_DETECTORS: Mapping[str, DetectorFactory] = {
    "adwin": ADWIN,
    "page_hinkley": PageHinkley,
    "cusum": CUSUM,
    "zscore": ZScore,
    "iqr": IQR,
}
"""Every detector of this module, with its defaults, by the name drift events carry."""

MEAN_DETECTORS: Mapping[str, DetectorFactory] = {
    "adwin": ADWIN,
    "page_hinkley": PageHinkley,
    "cusum": CUSUM,
}
"""Detectors of a change in the mean: the ones that suit a 0/1 quality. On a binary stream a
single value is never an outlier in a meaningful sense (with 90% successes every failure sits
three deviations out and a quartile range is zero), so the anomaly detectors are left out."""

DEFAULT_DETECTORS: Mapping[str, Mapping[str, DetectorFactory]] = {
    "reward": MEAN_DETECTORS,
    "quality": MEAN_DETECTORS,
    "latency_ms": ALL_DETECTORS,
    "cost_usd": ALL_DETECTORS,
}
"""Detectors watched per stream by default."""


@dataclass(frozen=True)
class DriftEvent:
    """A detector found a change in one model's stream.

    ``n_seen`` counts the stream's values up to and including the one that revealed the
    change (its 0-based index is ``n_seen - 1``).
    """

    model: ArmID
    stream: str
    detector: str
    n_seen: int
    value: float
    time: datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields (time in ISO 8601)."""
        return {
            "model": self.model,
            "stream": self.stream,
            "detector": self.detector,
            "n_seen": self.n_seen,
            "value": self.value,
            "time": self.time.isoformat(),
        }


def _utc_now() -> datetime:
    return datetime.now(UTC)


class StreamMonitor:
    """Detectors per (model, stream), fed by every feedback; returns the drifts it reveals.

    Parameters
    ----------
    detectors
        Per stream (any of :data:`STREAMS`), detector factories by name; built lazily for
        every model seen. Streams not named are not watched.
    clock
        Time stamp of events (UTC now by default; tests pass a fixed clock).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(2)
    >>> monitor = StreamMonitor({"quality": {"cusum": CUSUM}, "cost_usd": {"iqr": IQR}})
    >>> events = []
    >>> for t in range(600):
    ...     q = rng.normal(0.8 if t < 400 else 0.5, 0.1)
    ...     events += monitor.observe("gpt-4o", quality=q, cost_usd=0.002, latency_ms=900.0)
    >>> [(e.model, e.stream, e.detector, e.n_seen) for e in events]
    [('gpt-4o', 'quality', 'cusum', 406)]
    >>> monitor.n_seen("gpt-4o", "quality"), monitor.n_seen("gpt-4o", "latency_ms")
    (600, 0)
    """

    def __init__(
        self,
        detectors: Mapping[str, Mapping[str, DetectorFactory]] | None = None,
        *,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        chosen = detectors if detectors is not None else DEFAULT_DETECTORS
        unknown = set(chosen) - set(STREAMS)
        if unknown:
            raise ValueError(f"unknown stream(s) {sorted(unknown)}; choose from {STREAMS}")
        if not any(chosen.values()):
            raise ValueError("the monitor needs at least one detector")
        self.detectors = {stream: dict(factories) for stream, factories in chosen.items()}
        self.clock = clock
        self._watch: dict[tuple[ArmID, str], dict[str, Detector]] = {}
        self._counts: dict[tuple[ArmID, str], int] = {}

    def observe(
        self,
        model: ArmID,
        *,
        reward: float | None = None,
        quality: float | None = None,
        latency_ms: float | None = None,
        cost_usd: float | None = None,
    ) -> list[DriftEvent]:
        """Feed one feedback's values (None: not observed) to ``model``'s detectors."""
        values = {
            "reward": reward,
            "quality": quality,
            "latency_ms": latency_ms,
            "cost_usd": cost_usd,
        }
        events: list[DriftEvent] = []
        for stream, factories in self.detectors.items():
            x = values[stream]
            if x is None or not factories:
                continue
            key = (model, stream)
            watch = self._watch.get(key)
            if watch is None:
                watch = self._watch[key] = {name: make() for name, make in factories.items()}
            n = self._counts[key] = self._counts.get(key, 0) + 1
            for name, det in watch.items():
                det.update(x)
                if det.drift_detected:
                    events.append(DriftEvent(model, stream, name, n, float(x), self.clock()))
        return events

    def n_seen(self, model: ArmID, stream: str) -> int:
        """Values of ``stream`` observed for ``model``."""
        return self._counts.get((model, stream), 0)

    def reset(self, model: ArmID | None = None) -> None:
        """Restart ``model``'s detectors (every model's if None); the counts are kept."""
        for (m, _), watch in self._watch.items():
            if model is None or m == model:
                for det in watch.values():
                    det.reset()
