"""Workload forecasting: request volume per (model, task type) for the next hours.

Serving's budget pacing (:mod:`serving.pacing`) counts each tenant's decisions per hour into one
and uses its next-24-hours forecast as the pacer's traffic curve.

Each key (a ``(model, task_type)`` pair or a plain string) gets its own River forecaster, fed one
count per time bucket (e.g. per hour). Forecasts feed capacity planning and the budget pacer's
expected traffic profile (:mod:`models.pacer`).

**State.** River forecasters are not JSON-friendly, so the learner's state is the observed history
itself, bounded to the last ``max_history`` buckets per key, and the forecaster *is defined* as the
one obtained by replaying that window. While the window is still filling, the live forecaster
learns incrementally (the same computation as a replay); once it slides, the forecaster is rebuilt
from the window at the next forecast. A dict or pickle round trip therefore continues exactly
where it was, and two replicas merge by adding their histories bucket-wise (each replica counts its
own traffic) and rebuilding. Rebuilding costs ``max_history`` updates per key (~0.5 ms for 336
hourly buckets with Holt-Winters).

**Holt-Winters initialisation.** River 0.26's ``HoltWinters`` initialises an *additive* season with
ratios ``y / level`` (the multiplicative formula) and the trend with the mean first difference
inside the first season, which for seasonal data is mostly the seasonal slope. Both biases decay
only as fast as ``gamma`` and ``beta`` allow (weeks for hourly data), so right after River's
initialisation this module resets the season to deviations ``y - level`` and the trend to 0, through
the forecaster's public ``season`` and ``trend`` attributes. On a noisy daily sine this cuts the
24-hour MAE by about a third. Multiplicative seasons are not offered: counts are often 0 at night.

Examples
--------
>>> import math, random
>>> rng = random.Random(0)
>>> f = WorkloadForecaster(seasonality=24)
>>> for h in range(24 * 7):
...     level = 100 + 50 * math.sin(2 * math.pi * h / 24)
...     _ = f.learn_one({("gpt-4o-mini", "chat"): level + rng.gauss(0, 5)})
>>> nxt = f.forecast(6)[("gpt-4o-mini", "chat")]
>>> truth = [100 + 50 * math.sin(2 * math.pi * h / 24) for h in range(24 * 7, 24 * 7 + 6)]
>>> [round(v) for v in truth]
[100, 113, 125, 135, 143, 148]
>>> max(abs(a - b) for a, b in zip(nxt, truth)) < 10
True
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Self, TypeAlias

from river import linear_model, optim, preprocessing, time_series

from models.state import Stateful

WorkloadKey: TypeAlias = tuple[str, str] | str
"""What is counted: a ``(model, task_type)`` pair, or any single name."""

Method = Literal["holt_winters", "snarimax"]
METHODS: tuple[str, ...] = ("holt_winters", "snarimax")


def _check_key(key: object) -> WorkloadKey:
    if isinstance(key, str) and key:
        return key
    if (
        isinstance(key, tuple | list)
        and len(key) == 2  # noqa: PLR2004
        and all(isinstance(k, str) and k for k in key)
    ):
        return (key[0], key[1])
    raise ValueError(
        f"a workload key must be a non-empty string or a (model, task_type) pair, got {key!r}"
    )


def _check_count(key: WorkloadKey, value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"count of {key!r} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"count of {key!r} must be a finite number >= 0, got {value!r}")
    return v


class WorkloadForecaster(Stateful):
    """Per-key request-volume forecaster over fixed time buckets (River Holt-Winters or SNARIMAX).

    Call :meth:`learn_one` once per bucket with that bucket's counts; a known key missing from a
    bucket counted 0 requests in it (so call it with ``{}`` for an empty bucket). A key seen for
    the first time starts its series there. Until a key has ``2 * seasonality`` buckets (at least
    2), its forecast is the mean of what it has.

    Parameters
    ----------
    method
        ``"holt_winters"`` (additive level, trend and season; the default) or ``"snarimax"``
        (seasonal ARIMA learned online by SGD on standardised lags).
    seasonality
        Buckets per season, e.g. 24 for hourly buckets and a daily cycle; 0 for none.
    alpha
        Holt-Winters level smoothing, in (0, 1].
    beta
        Holt-Winters trend smoothing, in (0, 1].
    gamma
        Holt-Winters season smoothing, in (0, 1].
    order
        SNARIMAX ``(p, d, q)``.
    seasonal_order
        SNARIMAX ``(sp, sd, sq)`` over ``seasonality``.
    learning_rate
        SNARIMAX SGD step size.
    max_history
        Buckets kept per key (the replay window), at least ``2 * seasonality``.

    Examples
    --------
    >>> f = WorkloadForecaster(seasonality=0, max_history=10)
    >>> for n in [3, 5, 4]:
    ...     _ = f.learn_one({"chat": n})
    >>> f.forecast(2)
    {'chat': [4.0, 4.0]}
    >>> f.learn_one({"chat": -1})
    Traceback (most recent call last):
    ...
    ValueError: count of 'chat' must be a finite number >= 0, got -1

    References
    ----------
    Hyndman, Athanasopoulos (2021). Forecasting: Principles and Practice, 3rd ed., ch. 8
    (exponential smoothing) and ch. 9 (ARIMA). https://otexts.com/fpp3/

    Winters (1960). Forecasting sales by exponentially weighted moving averages. Management
    Science 6(3).
    """

    kind = "workload_forecaster"

    def __init__(
        self,
        method: Method = "holt_winters",
        *,
        seasonality: int = 24,
        alpha: float = 0.2,
        beta: float = 0.01,
        gamma: float = 0.2,
        order: Sequence[int] = (2, 0, 0),
        seasonal_order: Sequence[int] = (1, 1, 0),
        learning_rate: float = 0.01,
        max_history: int = 24 * 14,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if isinstance(seasonality, bool) or not isinstance(seasonality, int) or seasonality < 0:
            raise ValueError(f"seasonality must be an integer >= 0, got {seasonality!r}")
        for name, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            if not 0 < v <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {v}")
        orders = (tuple(order), tuple(seasonal_order))
        if any(len(o) != 3 or not all(isinstance(i, int) and i >= 0 for i in o) for o in orders):  # noqa: PLR2004
            raise ValueError(
                f"order and seasonal_order must be 3 integers >= 0, got {order!r}, "
                f"{seasonal_order!r}"
            )
        if not (math.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate}")
        if isinstance(max_history, bool) or not isinstance(max_history, int):
            raise ValueError(f"max_history must be an integer, got {max_history!r}")
        if max_history < self._warm_up_for(seasonality):
            raise ValueError(
                f"max_history must be >= {self._warm_up_for(seasonality)} "
                f"(2 seasons), got {max_history}"
            )
        self.method: Method = method
        self.seasonality = seasonality
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.order = orders[0]
        self.seasonal_order = orders[1]
        self.learning_rate = learning_rate
        self.max_history = max_history
        self._history: dict[WorkloadKey, deque[float]] = {}
        self._models: dict[WorkloadKey, time_series.base.Forecaster] = {}
        self._n_buckets = 0

    # -- learning ---------------------------------------------------------------------------------
    def learn_one(self, counts: Mapping[WorkloadKey, float]) -> Self:
        """Record the counts of one time bucket (all keys at once; nothing changes on error)."""
        if not isinstance(counts, Mapping):
            raise ValueError(f"counts must be a mapping of key -> count, got {type(counts)}")
        bucket = {}
        for key, value in counts.items():
            k = _check_key(key)
            bucket[k] = _check_count(k, value)
        for k in bucket.keys() - self._history.keys():
            self._history[k] = deque(maxlen=self.max_history)
        for k, hist in self._history.items():
            y = bucket.get(k, 0.0)
            if len(hist) == self.max_history:  # the window slides: rebuild lazily
                self._models.pop(k, None)
            elif k in self._models:
                self._models[k].learn_one(y)
            hist.append(y)
        self._n_buckets += 1
        return self

    def merge(self, other: WorkloadForecaster) -> Self:
        """Add another replica's counts bucket-wise, in place.

        Both replicas must be at the same current bucket: their histories are aligned on their
        latest bucket, and a shorter history (a key or replica that started later) counts 0
        before it started. Merging the same replica twice counts its traffic twice.
        """
        if not isinstance(other, WorkloadForecaster):
            raise ValueError(f"can only merge a WorkloadForecaster, got {type(other).__name__}")
        for k, theirs in other._history.items():
            mine = list(self._history.get(k, ()))
            size = min(max(len(mine), len(theirs)), self.max_history)
            a = [0.0] * (size - len(mine)) + mine[-size:]
            b = [0.0] * (size - len(theirs)) + list(theirs)[-size:]
            self._history[k] = deque((x + y for x, y in zip(a, b, strict=True)), self.max_history)
            self._models.pop(k, None)
        self._n_buckets = max(self._n_buckets, other._n_buckets)
        return self

    # -- forecasting ------------------------------------------------------------------------------
    def forecast(
        self, horizon: int, keys: Iterable[WorkloadKey] | None = None
    ) -> dict[WorkloadKey, list[float]]:
        """Expected counts of the next ``horizon`` buckets per key (all known keys by default).

        Forecasts are clipped at 0.
        """
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
        wanted = list(self._history) if keys is None else [_check_key(k) for k in keys]
        unknown = [k for k in wanted if k not in self._history]
        if unknown:
            raise ValueError(f"unknown workload keys: {', '.join(map(repr, unknown))}")
        out: dict[WorkloadKey, list[float]] = {}
        for k in wanted:
            hist = self._history[k]
            if len(hist) < self._warm_up_for(self.seasonality):
                raw = [sum(hist) / len(hist)] * horizon
            else:
                raw = [float(v) for v in self._model(k).forecast(horizon)]
            out[k] = [max(0.0, v) for v in raw]
        return out

    @property
    def keys(self) -> list[WorkloadKey]:
        """Keys seen so far."""
        return list(self._history)

    @property
    def n_buckets(self) -> int:
        """Time buckets learned from."""
        return self._n_buckets

    def history(self, key: WorkloadKey) -> list[float]:
        """The kept window of counts of ``key``, oldest first."""
        k = _check_key(key)
        if k not in self._history:
            raise ValueError(f"unknown workload key: {k!r}")
        return list(self._history[k])

    # -- the River forecaster ---------------------------------------------------------------------
    @staticmethod
    def _warm_up_for(seasonality: int) -> int:
        return max(2, 2 * seasonality)

    def _model(self, key: WorkloadKey) -> time_series.base.Forecaster:
        model = self._models.get(key)
        if model is None:
            model = self._new_model()
            values = list(self._history[key])
            if self.method == "holt_winters":
                k = max(2, self.seasonality)  # River initialises on the first k values
                for y in values[:k]:
                    model.learn_one(y)
                self._fix_holt_winters_init(model, values[:k])
                values = values[k:]
            for y in values:
                model.learn_one(y)
            self._models[key] = model
        return model

    def _fix_holt_winters_init(self, model: Any, first: list[float]) -> None:
        """Season as deviations from the level, flat trend (see the module docstring)."""
        model.trend.clear()
        model.trend.append(0.0)
        if model.season is not None:
            level = model.level[-1]
            model.season.clear()
            model.season.extend(y - level for y in first)

    def _new_model(self) -> time_series.base.Forecaster:
        if self.method == "holt_winters":
            return time_series.HoltWinters(  # type: ignore[no-untyped-call]  # River: no hints
                alpha=self.alpha,
                beta=self.beta,
                gamma=self.gamma if self.seasonality else None,
                seasonality=self.seasonality,
            )
        p, d, q = self.order
        sp, sd, sq = self.seasonal_order
        regressor = preprocessing.StandardScaler() | linear_model.LinearRegression(
            optimizer=optim.SGD(self.learning_rate),
            intercept_init=0.0,
            intercept_lr=self.learning_rate,
        )
        return time_series.SNARIMAX(
            p=p, d=d, q=q, m=max(1, self.seasonality), sp=sp, sd=sd, sq=sq, regressor=regressor
        )

    # -- state ------------------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {
            "n_buckets": self._n_buckets,
            # JSON objects need string keys and ours may be pairs: a list of entries instead.
            "series": [{"key": k, "history": list(h)} for k, h in self._history.items()],
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        history: dict[WorkloadKey, deque[float]] = {}
        for entry in state["series"]:
            k = _check_key(entry["key"])
            values = [_check_count(k, v) for v in entry["history"]]
            history[k] = deque(values[-self.max_history :], maxlen=self.max_history)
        n = int(state["n_buckets"])
        if n < 0:
            raise ValueError(f"n_buckets must be >= 0, got {n}")
        self._history = history
        self._models = {}
        self._n_buckets = n
