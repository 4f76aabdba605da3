"""Pareto fronts of configurations over (quality up, cost down, latency down), offline and online.

Serving's ``GET /pareto`` and ``llmopt pareto`` (:mod:`serving.pareto`) show the live front of
each task from the event log's latest feedback.

A *configuration* is a model plus its call parameters (temperature, max_tokens, prompt template):
the unit a router actually chooses. A configuration is *dominated* when another is at least as
good on all three objectives and strictly better on one; no tenant, whatever its willingness to
pay or latency weight, should ever prefer a dominated configuration, so the front is the menu a
router needs to consider.

:func:`pareto_front` is written by hand with numpy. Optuna has the same computation
(``optuna.study._multi_objective._is_pareto_front``) but it is private, works on trials and loss
arrays, and may change in any release; its public surface (``Study.best_trials``) needs a study
full of trials. Thirty lines of numpy are cheaper than that coupling.

Examples
--------
>>> cands = [
...     Candidate("small", quality=0.60, cost_usd=0.0005, latency_ms=400.0),
...     Candidate("large", quality=0.90, cost_usd=0.0150, latency_ms=1500.0),
...     Candidate("large-t0", quality=0.90, cost_usd=0.0150, latency_ms=1600.0),
...     Candidate("medium", quality=0.80, cost_usd=0.0030, latency_ms=900.0),
... ]
>>> [c.name for c in pareto_front(cands)]
['small', 'medium', 'large']
>>> best_for(cands, willingness_to_pay=0.05).name
'medium'
>>> best_for(cands, willingness_to_pay=1.0).name
'large'
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

from llmopt.reward import reward
from models.state import Stateful

ParamValue = float | int | str | bool
"""A configuration parameter (temperature, max_tokens, template name...)."""


def _check_number(name: str, value: float, *, lo: float = 0.0, hi: float = math.inf) -> float:
    v = float(value)
    if not (math.isfinite(v) and lo <= v <= hi):
        bound = f"in [{lo}, {hi}]" if math.isfinite(hi) else f">= {lo}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    return v


@dataclass(frozen=True)
class Candidate:
    """One configuration and its (expected) quality, cost and latency.

    Parameters
    ----------
    name
        Unique name of the configuration, e.g. ``"gpt-4o-mini@t0.2"``.
    quality
        Expected quality in [0, 1] (the reward's scale).
    cost_usd
        Expected cost of one request, USD, >= 0.
    latency_ms
        Expected latency of one request, milliseconds, >= 0.
    params
        The configuration's parameters (model, temperature, ...). Compared by ``==`` but not
        hashed, so a candidate stays hashable.

    Examples
    --------
    >>> Candidate("m", quality=0.8, cost_usd=0.002, latency_ms=700.0, params={"temperature": 0.2})
    Candidate(name='m', quality=0.8, cost_usd=0.002, latency_ms=700.0, params={'temperature': 0.2})
    >>> Candidate("m", quality=1.5, cost_usd=0.0)
    Traceback (most recent call last):
    ...
    ValueError: quality must be a finite number in [0.0, 1.0], got 1.5

    References
    ----------
    Hu et al. (2024). RouterBench: A benchmark for multi-LLM routing system. arXiv:2403.12031.
    """

    name: str
    quality: float
    cost_usd: float
    latency_ms: float = 0.0
    params: Mapping[str, ParamValue] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        _check_number("quality", self.quality, hi=1.0)
        _check_number("cost_usd", self.cost_usd)
        _check_number("latency_ms", self.latency_ms)

    def reward(self, willingness_to_pay: float, latency_weight: float = 0.0) -> float:
        """The reward (:func:`llmopt.reward.reward`) of this configuration's expectations."""
        return reward(
            self.quality,
            self.cost_usd,
            self.latency_ms,
            willingness_to_pay=willingness_to_pay,
            latency_weight=latency_weight,
        )


def dominates(a: Candidate, b: Candidate) -> bool:
    """Whether ``a`` Pareto-dominates ``b``: no worse on every objective, better on one.

    Examples
    --------
    >>> a = Candidate("a", quality=0.9, cost_usd=0.001, latency_ms=500.0)
    >>> b = Candidate("b", quality=0.9, cost_usd=0.002, latency_ms=500.0)
    >>> dominates(a, b), dominates(b, a), dominates(a, a)
    (True, False, False)
    """
    no_worse = a.quality >= b.quality and a.cost_usd <= b.cost_usd and a.latency_ms <= b.latency_ms
    better = a.quality > b.quality or a.cost_usd < b.cost_usd or a.latency_ms < b.latency_ms
    return no_worse and better


def _unique(candidates: Iterable[Candidate]) -> list[Candidate]:
    cands = list(candidates)
    names = [c.name for c in cands]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"candidate names must be unique; repeated: {', '.join(dup)}")
    return cands


def pareto_front(candidates: Iterable[Candidate]) -> list[Candidate]:
    """The non-dominated candidates, cheapest first.

    Candidates with identical objectives do not dominate each other, so ties are all kept (two
    names for the same trade-off are both legitimate choices). Output order: cost ascending,
    then quality descending, latency ascending, name. O(n^2) vectorised: fine for hundreds or a
    few thousands of configurations.

    Parameters
    ----------
    candidates
        Configurations with unique names; may be empty (the front is then empty).

    Examples
    --------
    >>> cs = [Candidate("a", 0.5, 1.0), Candidate("b", 0.5, 1.0), Candidate("c", 0.4, 2.0)]
    >>> [c.name for c in pareto_front(cs)]
    ['a', 'b']

    References
    ----------
    Deb et al. (2002). A fast and elitist multiobjective genetic algorithm: NSGA-II. IEEE TEC.
    """
    cands = _unique(candidates)
    if not cands:
        return []
    # Every objective as a loss: -quality, cost, latency.
    loss = np.array([(-c.quality, c.cost_usd, c.latency_ms) for c in cands])
    no_worse = np.all(loss[:, None, :] <= loss[None, :, :], axis=2)  # [i, j]: i no worse than j
    better = np.any(loss[:, None, :] < loss[None, :, :], axis=2)
    dominated = np.any(no_worse & better, axis=0)
    front = [c for c, d in zip(cands, dominated, strict=True) if not d]
    return sorted(front, key=lambda c: (c.cost_usd, -c.quality, c.latency_ms, c.name))


def best_for(
    candidates: Iterable[Candidate], willingness_to_pay: float, latency_weight: float = 0.0
) -> Candidate:
    """The candidate with the highest reward for a tenant's trade-off (always on the front).

    Ties go to the cheaper, then faster, then alphabetically first candidate.

    Parameters
    ----------
    candidates
        At least one configuration.
    willingness_to_pay
        USD per unit of quality (> 0, may be ``inf``); see :mod:`llmopt.reward`.
    latency_weight
        Quality lost per second of latency (>= 0).

    Examples
    --------
    >>> cs = [Candidate("fast", 0.7, 0.001, 300.0), Candidate("slow", 0.8, 0.001, 3000.0)]
    >>> best_for(cs, willingness_to_pay=1.0).name
    'slow'
    >>> best_for(cs, willingness_to_pay=1.0, latency_weight=0.1).name
    'fast'
    """
    front = pareto_front(candidates)
    if not front:
        raise ValueError("best_for needs at least one candidate")
    scored = [(c.reward(willingness_to_pay, latency_weight), c) for c in front]
    top = max(r for r, _ in scored)
    ties = [c for r, c in scored if r >= top - 1e-12]
    return min(ties, key=lambda c: (c.cost_usd, c.latency_ms, c.name))


def knee_point(candidates: Iterable[Candidate]) -> Candidate:
    """The front's compromise point: closest to the ideal point after min-max normalisation.

    Each objective is rescaled to [0, 1] over the front (a constant objective is ignored), and the
    member with the smallest Euclidean distance to the (best quality, lowest cost, lowest latency)
    corner is returned. A tenant-free default when no willingness to pay is known.

    Parameters
    ----------
    candidates
        At least one configuration.

    Examples
    --------
    >>> cs = [Candidate("a", 0.5, 0.0), Candidate("b", 0.85, 0.002), Candidate("c", 0.9, 0.02)]
    >>> knee_point(cs).name
    'b'

    References
    ----------
    Zeleny (1973). Compromise programming. In Multiple Criteria Decision Making.
    """
    front = pareto_front(candidates)
    if not front:
        raise ValueError("knee_point needs at least one candidate")
    loss = np.array([(-c.quality, c.cost_usd, c.latency_ms) for c in front])
    span = loss.max(axis=0) - loss.min(axis=0)
    scaled = np.divide(loss - loss.min(axis=0), span, out=np.zeros_like(loss), where=span > 0)
    return front[int(np.argmin(np.linalg.norm(scaled, axis=1)))]


class ParetoTracker(Stateful):
    """Running means of quality, cost and latency per configuration, and their Pareto front.

    Keeps additive sufficient statistics (count and sums) per configuration, so replicas that
    each observe their own traffic merge exactly (docs/style.md #12). A configuration joins the
    front only after ``min_samples`` observations: one lucky answer must not evict a proven model.

    Parameters
    ----------
    min_samples
        Observations a configuration needs before it is a candidate.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(0)
    >>> t = ParetoTracker(min_samples=5)
    >>> truth = {"small": (0.6, 0.0005), "medium": (0.8, 0.003), "bad": (0.55, 0.004)}
    >>> for _ in range(50):
    ...     for name, (q, c) in truth.items():
    ...         _ = t.learn_one(name, quality=min(1.0, max(0.0, q + rng.gauss(0, 0.05))),
    ...                         cost_usd=c, latency_ms=500.0)
    >>> [c.name for c in t.front()]
    ['small', 'medium']
    >>> t.best_for(willingness_to_pay=0.005).name
    'small'

    References
    ----------
    Chen, Zaharia, Zou (2023). FrugalGPT: How to use large language models while reducing cost
    and improving performance. arXiv:2305.05176.
    """

    kind = "pareto_tracker"

    def __init__(self, min_samples: int = 5) -> None:
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
            raise ValueError(f"min_samples must be an integer >= 1, got {min_samples!r}")
        self.min_samples = min_samples
        # name -> [count, sum quality, sum cost, sum latency]
        self._stats: dict[str, list[float]] = {}
        self._params_of: dict[str, dict[str, ParamValue]] = {}

    # -- learning ---------------------------------------------------------------------------------
    def learn_one(
        self,
        name: str,
        *,
        quality: float,
        cost_usd: float,
        latency_ms: float = 0.0,
        params: Mapping[str, ParamValue] | None = None,
    ) -> Self:
        """Record one observed outcome of configuration ``name``.

        ``params`` (optional) records the configuration's parameters; the latest given wins.
        Nothing is recorded if any value is invalid.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        q = _check_number("quality", quality, hi=1.0)
        c = _check_number("cost_usd", cost_usd)
        lat = _check_number("latency_ms", latency_ms)
        stats = self._stats.setdefault(name, [0.0, 0.0, 0.0, 0.0])
        stats[0] += 1
        stats[1] += q
        stats[2] += c
        stats[3] += lat
        if params is not None:
            self._params_of[name] = dict(params)
        return self

    def merge(self, other: ParetoTracker, base: ParetoTracker | None = None) -> Self:
        """Add another replica's statistics into this one, in place.

        With ``base`` (the snapshot both replicas started from), only the replicas' deltas are
        combined: the result is ``self + other - base``, so the common history is counted once.

        Parameters
        ----------
        other
            Another tracker.
        base
            Their common ancestor, or None when the replicas share no history.
        """
        if not isinstance(other, ParetoTracker):
            raise ValueError(f"can only merge a ParetoTracker, got {type(other).__name__}")
        delta = {n: list(s) for n, s in other._stats.items()}
        if base is not None:
            if not isinstance(base, ParetoTracker):
                raise ValueError(f"base must be a ParetoTracker, got {type(base).__name__}")
            for name, b in base._stats.items():
                o = delta.get(name)
                if (
                    o is None
                    or o[0] < b[0]
                    or name not in self._stats
                    or self._stats[name][0] < b[0]
                ):
                    raise ValueError(f"base is not an ancestor of both replicas (see {name!r})")
                delta[name] = [x - y for x, y in zip(o, b, strict=True)]
        for name, d in delta.items():
            stats = self._stats.setdefault(name, [0.0, 0.0, 0.0, 0.0])
            for i, v in enumerate(d):
                stats[i] += v
        for name, p in other._params_of.items():
            self._params_of.setdefault(name, dict(p))
        return self

    # -- reading ----------------------------------------------------------------------------------
    def n_samples(self, name: str) -> int:
        """Observations recorded for ``name`` (0 when unknown)."""
        stats = self._stats.get(name)
        return 0 if stats is None else round(stats[0])

    def candidates(self) -> list[Candidate]:
        """Mean outcome of each configuration with at least ``min_samples`` observations."""
        out = []
        for name, (n, sq, sc, sl) in sorted(self._stats.items()):
            if n >= self.min_samples:
                out.append(
                    Candidate(
                        name,
                        quality=min(1.0, max(0.0, sq / n)),  # clip float drift of merged sums
                        cost_usd=max(0.0, sc / n),
                        latency_ms=max(0.0, sl / n),
                        params=dict(self._params_of.get(name, {})),
                    )
                )
        return out

    def front(self) -> list[Candidate]:
        """The Pareto front of :meth:`candidates` (empty until one has enough samples)."""
        return pareto_front(self.candidates())

    def best_for(self, willingness_to_pay: float, latency_weight: float = 0.0) -> Candidate:
        """:func:`best_for` over the tracked candidates; ValueError while none has enough data."""
        cands = self.candidates()
        if not cands:
            raise ValueError(
                f"no configuration has {self.min_samples} observations yet "
                f"(seen: {', '.join(sorted(self._stats)) or 'none'})"
            )
        return best_for(cands, willingness_to_pay, latency_weight)

    # -- state ------------------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {
            "stats": {n: list(s) for n, s in self._stats.items()},
            "params": {n: dict(p) for n, p in self._params_of.items()},
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        stats: dict[str, list[float]] = {}
        for name, s in state["stats"].items():
            values = [float(v) for v in s]
            if len(values) != 4 or not all(math.isfinite(v) for v in values) or values[0] < 0:  # noqa: PLR2004
                raise ValueError(f"bad statistics for {name!r}: {s!r}")
            stats[str(name)] = values
        self._stats = stats
        self._params_of = {str(n): dict(p) for n, p in state.get("params", {}).items()}
