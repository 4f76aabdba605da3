"""Parameter tuning against grid search and random search, on a simulated response surface.

Without live LLMs the only honest test of a parameter tuner is a surface whose optimum is known.
Each seed draws one (task type x model) surface over serving's own search space
(:data:`serving.parameters.SERVING_SPACE`: ``temperature``, ``top_p``, ``max_tokens`` on a log
scale, ``prompt_template``), and every trial is one request whose reward is what serving feeds
the tuner, quality minus cost (:mod:`llmopt.reward`), plus Gaussian noise:

- ``quality = P(answer fits in max_tokens) x (BASE + effect[template] + AMPLITUDE x bump)``:
  ``bump`` is a Gaussian bump in (temperature, top_p), in their unit-scaled ranges, around a centre
  and with widths drawn per seed, the centre shifted a little per template; an answer's length is
  log-normal around a median drawn per seed (step-by-step answers longer, concise ones shorter),
  and a cut-off answer is worth nothing; a few answers (1-5%, per seed) never stop (a repetition
  loop) and are cut off at ``max_tokens``;
- ``cost = token_cost x E[tokens generated]`` (``min(length, max_tokens)``, ``max_tokens`` for a
  runaway answer), in quality units (a price per token over the willingness to pay, per seed).
  Runaway answers give ``max_tokens`` an interior optimum: a larger cap stops paying once nearly
  every answer fits.

The noise-free optimum is exact: the bump peaks at its centre whatever ``max_tokens`` is, and
``max_tokens`` is an integer (all 3,969 values are tried per template). Regret is that optimum's
true reward minus the true reward of a method's recommended configuration (*simple* regret), and
the mean over the trials of the true regret of each configuration served (*cumulative* regret:
online tuning pays for every trial).

Methods, at the same number of trials (one trial = one request = one noisy reward):

- ``served``: :class:`serving.parameters.ServedTuning` exactly as serving builds it (same class,
  TPE sampler, defaults: the safe default for the first 20 requests, then a TPE trial with
  probability 0.5, otherwise the best so far); it recommends its smoothed best (the default
  before 20 rewards);
- ``tpe``: the same ``ServedTuning`` with ``min_feedback=0, explore=1.0``: every request after the
  first (the safe default) is a TPE trial; the tuner as an optimiser, comparable with the grid;
- ``grid``: a full factorial grid of exactly the budget's size (3 templates x levels of the
  numbers at cell centres in their search scale), visited in a random order; recommends the
  highest observed reward (``grid_smoothed``: the tuner's smoothed best over the same rewards);
- ``random``: uniform in the search space (log-uniform ``max_tokens``); same two recommendations.

Target (issue 16): regret below grid search at the same number of trials. Several seeds (one
surface each) at two noise levels; mean and spread.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np

from models.tuning import Choice, FloatRange, IntRange, ParamValue
from serving.parameters import SERVING_SPACE, ServedTuning, tuning_key

NAME = "tuning"
TASK, MODEL = "code", "sim-model"
KEY = tuning_key(TASK, MODEL)
CATALOG: dict[str, ParamValue] = {"temperature": 0.7, "max_tokens": 1024}
"""The catalog's parameters serving passes with each decision (the safe default's source)."""
BUDGETS = (12, 24, 54, 81, 192)
"""Trial budgets; each is the size of a full factorial grid (see :func:`grid_levels`)."""
FULL: tuple[tuple[int, ...], tuple[float, ...], tuple[int, ...]] = (
    tuple(range(20)),
    (0.05, 0.2),
    BUDGETS,
)
QUICK: tuple[tuple[int, ...], tuple[float, ...], tuple[int, ...]] = ((0, 1), (0.2,), (12, 24))
"""(seeds, noise standard deviations of one reward, budgets)."""
BASE = 0.45
AMPLITUDE = 0.35
LENGTH_SPREAD = 0.5
"""Standard deviation of the log of an answer's length across requests."""
TEMPLATES: tuple[str, ...] = ("plain", "step_by_step", "concise")


def _number(name: str) -> FloatRange | IntRange:
    spec = SERVING_SPACE[name]
    assert isinstance(spec, FloatRange | IntRange)
    return spec


_T, _P, _M = _number("temperature"), _number("top_p"), _number("max_tokens")
_TPL = SERVING_SPACE["prompt_template"]
assert isinstance(_TPL, Choice) and tuple(_TPL.choices) == TEMPLATES
_M_LOW, _M_HIGH = int(_M.low), int(_M.high)


def _phi(z: float) -> float:
    """Standard normal distribution function."""
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


@dataclass(frozen=True)
class Surface:
    """A (task type x model) response surface: true reward of a configuration, and noisy draws."""

    centre: Mapping[str, tuple[float, float]]
    """Template -> (temperature, top_p) of the quality bump's peak, unit-scaled to [0, 1]."""
    width: tuple[float, float]
    """The bump's widths along unit-scaled temperature and top_p."""
    length: Mapping[str, float]
    """Template -> median answer length in tokens."""
    effect: Mapping[str, float]
    """Template -> quality added (or taken) by the template."""
    token_cost: float
    """Quality units one generated token costs (price per token / willingness to pay)."""
    runaway: float
    """Share of answers that never stop (a repetition loop) and run to ``max_tokens``."""

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Surface:
        """A random surface: the optimum lies anywhere in the space (off any grid)."""
        base = rng.uniform(0.05, 0.95, size=2)
        centre = {
            t: (
                float(np.clip(base[0] + rng.normal(0, 0.08), 0, 1)),
                float(np.clip(base[1] + rng.normal(0, 0.08), 0, 1)),
            )
            for t in TEMPLATES
        }
        plain = float(np.exp(rng.uniform(np.log(150), np.log(1500))))
        length = {
            "plain": plain,
            "step_by_step": plain * float(rng.uniform(1.5, 2.5)),
            "concise": plain * float(rng.uniform(0.3, 0.6)),
        }
        effect = {
            "plain": 0.0,
            "step_by_step": float(rng.uniform(-0.1, 0.15)),
            "concise": float(rng.uniform(-0.15, 0.05)),
        }
        width = (float(rng.uniform(0.15, 0.4)), float(rng.uniform(0.15, 0.4)))
        token_cost = float(np.exp(rng.uniform(np.log(3e-5), np.log(2e-4))))
        runaway = float(rng.uniform(0.01, 0.05))
        return cls(centre, width, length, effect, token_cost, runaway)

    def bump(self, template: str, temperature: float, top_p: float) -> float:
        """The quality bump in (temperature, top_p), 1 at the template's centre."""
        ct, cp = self.centre[template]
        dt = (_T.unit(temperature) - ct) / self.width[0]
        dp = (_P.unit(top_p) - cp) / self.width[1]
        return math.exp(-0.5 * (dt * dt + dp * dp))

    def length_terms(self, template: str, max_tokens: float) -> tuple[float, float]:
        """(P(the answer fits in ``max_tokens``), expected tokens generated)."""
        s, med, loop = LENGTH_SPREAD, self.length[template], self.runaway
        z = (math.log(max_tokens) - math.log(med)) / s
        fits = _phi(z)
        tokens = med * math.exp(s * s / 2) * _phi(z - s) + max_tokens * (1.0 - fits)
        return (1.0 - loop) * fits, (1.0 - loop) * tokens + loop * max_tokens

    def _reward(self, template: str, bump: float, max_tokens: float) -> float:
        fits, tokens = self.length_terms(template, max_tokens)
        quality = fits * (BASE + self.effect[template] + AMPLITUDE * bump)
        return quality - self.token_cost * tokens

    def value(self, params: Mapping[str, ParamValue]) -> float:
        """True (noise-free) reward of ``params``."""
        template = str(params["prompt_template"])
        bump = self.bump(template, float(params["temperature"]), float(params["top_p"]))
        return self._reward(template, bump, float(params["max_tokens"]))

    def observe(
        self, params: Mapping[str, ParamValue], rng: np.random.Generator, noise: float
    ) -> float:
        """One request's reward: the true reward plus Gaussian noise of sd ``noise``."""
        return self.value(params) + float(rng.normal(0.0, noise))

    def optimum(self) -> tuple[dict[str, ParamValue], float]:
        """The best configuration and its true reward (exact: every integer ``max_tokens``)."""
        best: tuple[dict[str, ParamValue], float] | None = None
        for template in TEMPLATES:
            values = [self._reward(template, 1.0, m) for m in range(_M_LOW, _M_HIGH + 1)]
            k = int(np.argmax(values))
            if best is None or values[k] > best[1]:
                ct, cp = self.centre[template]
                params: dict[str, ParamValue] = {
                    "temperature": _T.low + ct * (_T.high - _T.low),
                    "top_p": _P.low + cp * (_P.high - _P.low),
                    "max_tokens": _M_LOW + k,
                    "prompt_template": template,
                }
                best = (params, values[k])
        assert best is not None
        return best


def grid_levels(budget: int) -> tuple[int, int, int]:
    """Levels of (temperature, max_tokens, top_p) of the largest full factorial <= ``budget``.

    Every grid has all 3 templates; levels grow one at a time, temperature first, then
    ``max_tokens``, then ``top_p``, keeping them balanced.

    >>> [grid_levels(n) for n in (12, 24, 54, 81, 192)]
    [(2, 2, 1), (2, 2, 2), (3, 3, 2), (3, 3, 3), (4, 4, 4)]
    """
    levels = [1, 1, 1]
    if 3 > budget:
        raise ValueError(f"a grid needs at least 3 trials (one per template), got {budget}")
    while True:
        k = levels.index(min(levels))
        grown = [*levels]
        grown[k] += 1
        if 3 * math.prod(grown) > budget:
            return levels[0], levels[1], levels[2]
        levels = grown


def _cell_centres(spec: FloatRange | IntRange, k: int) -> list[float]:
    """``k`` values at the centres of ``k`` equal cells of the range, on its search scale."""
    units = [(i + 0.5) / k for i in range(k)]
    if spec.log:
        return [spec.low * (spec.high / spec.low) ** u for u in units]
    return [spec.low + u * (spec.high - spec.low) for u in units]


def grid(budget: int) -> list[dict[str, ParamValue]]:
    """The full factorial grid of :func:`grid_levels` (``max_tokens`` rounded)."""
    kt, km, kp = grid_levels(budget)
    return [
        {"temperature": t, "top_p": p, "max_tokens": round(m), "prompt_template": tpl}
        for tpl, t, p, m in product(
            TEMPLATES, _cell_centres(_T, kt), _cell_centres(_P, kp), _cell_centres(_M, km)
        )
    ]


def random_params(rng: np.random.Generator) -> dict[str, ParamValue]:
    """A uniform draw from the search space (``max_tokens`` log-uniform, rounded)."""
    log_m = rng.uniform(math.log(_M.low), math.log(_M.high))
    return {
        "temperature": float(rng.uniform(_T.low, _T.high)),
        "top_p": float(rng.uniform(_P.low, _P.high)),
        "max_tokens": int(np.clip(round(math.exp(log_m)), _M_LOW, _M_HIGH)),
        "prompt_template": TEMPLATES[int(rng.integers(len(TEMPLATES)))],
    }


def argmax_observed(
    trials: Sequence[tuple[dict[str, ParamValue], float]],
) -> dict[str, ParamValue]:
    """The configuration with the highest observed reward (the classic grid-search pick)."""
    return max(trials, key=lambda t: t[1])[0]


def smoothed_best(
    trials: Sequence[tuple[dict[str, ParamValue], float]], seed: int
) -> dict[str, ParamValue]:
    """The tuner's smoothed best over the same rewards (what serving recommends from them)."""
    tuner = ServedTuning(seed=seed).tuner
    for params, reward in trials:
        tuner.record(KEY, params, reward)
    return tuner.best(KEY)


@dataclass
class Trace:
    """What a method served (true values) and recommended at each checkpoint (true values)."""

    served: list[float]
    recommended: dict[int, float]


def run_served(
    surface: Surface,
    budgets: Sequence[int],
    *,
    noise: float,
    seed: int,
    min_feedback: int | None = None,
    explore: float | None = None,
) -> Trace:
    """Serve ``max(budgets)`` requests through :class:`ServedTuning` (its defaults unless given)."""
    knobs: dict[str, Any] = {}
    if min_feedback is not None:
        knobs["min_feedback"] = min_feedback
    if explore is not None:
        knobs["explore"] = explore
    served = ServedTuning(seed=seed, **knobs)
    rng = np.random.default_rng([seed, 1])
    trace = Trace([], {})
    for n in range(1, max(budgets) + 1):
        s = served.suggest(TASK, MODEL, CATALOG)
        trace.served.append(surface.value(s.params))
        served.observe(s.record, s.params, surface.observe(s.params, rng, noise))
        if n in budgets:
            rec = served.defaults(CATALOG)
            if served.n_feedback(KEY) >= served.min_feedback:
                rec.update(served.tuner.best(KEY))
            trace.recommended[n] = surface.value(rec)
    return trace


def run_random(
    surface: Surface, budgets: Sequence[int], *, noise: float, seed: int
) -> dict[str, Trace]:
    """Random search; recommendations by highest observed reward and by the smoothed best."""
    rng = np.random.default_rng([seed, 2])
    trials: list[tuple[dict[str, ParamValue], float]] = []
    plain, smooth = Trace([], {}), Trace([], {})
    for n in range(1, max(budgets) + 1):
        params = random_params(rng)
        plain.served.append(surface.value(params))
        trials.append((params, surface.observe(params, rng, noise)))
        if n in budgets:
            plain.recommended[n] = surface.value(argmax_observed(trials))
            smooth.recommended[n] = surface.value(smoothed_best(trials, seed))
    smooth.served = plain.served
    return {"random": plain, "random_smoothed": smooth}


def run_grid(
    surface: Surface, budget: int, *, noise: float, seed: int
) -> tuple[float, float, float]:
    """Grid search of ``budget`` trials in a random order: (mean regret-free value served,
    true value of the highest observed, true value of the smoothed best)."""
    rng = np.random.default_rng([seed, 3, budget])
    points = grid(budget)
    order = rng.permutation(len(points))
    trials = [(points[i], surface.observe(points[i], rng, noise)) for i in order]
    served = statistics.fmean(surface.value(p) for p, _ in trials)
    return (
        served,
        surface.value(argmax_observed(trials)),
        surface.value(smoothed_best(trials, seed)),
    )


METHODS = ("served", "tpe", "grid", "grid_smoothed", "random", "random_smoothed")


def one_surface(seed: int, noise: float, budgets: Sequence[int]) -> dict[str, Any]:
    """Every method on the surface of ``seed``: simple and mean cumulative regret per budget."""
    surface = Surface.draw(np.random.default_rng([seed, 0]))
    best_params, best = surface.optimum()
    traces: dict[str, Trace] = {
        "served": run_served(surface, budgets, noise=noise, seed=seed),
        "tpe": run_served(surface, budgets, noise=noise, seed=seed, min_feedback=0, explore=1.0),
        **run_random(surface, budgets, noise=noise, seed=seed),
    }
    regret: dict[str, dict[str, dict[str, float]]] = {m: {} for m in METHODS}
    for name, trace in traces.items():
        for n in budgets:
            regret[name][str(n)] = {
                "simple": round(best - trace.recommended[n], 5),
                "cumulative": round(best - statistics.fmean(trace.served[:n]), 5),
            }
    for n in budgets:
        served, top, smooth = run_grid(surface, n, noise=noise, seed=seed)
        regret["grid"][str(n)] = {
            "simple": round(best - top, 5),
            "cumulative": round(best - served, 5),
        }
        regret["grid_smoothed"][str(n)] = {
            "simple": round(best - smooth, 5),
            "cumulative": round(best - served, 5),
        }
    default = ServedTuning().defaults(CATALOG)
    return {
        "seed": seed,
        "noise": noise,
        "optimum": {
            "params": {
                k: round(v, 4) if isinstance(v, float) else v for k, v in best_params.items()
            },
            "reward": round(best, 5),
        },
        "default_regret": round(best - surface.value(default), 5),
        "regret": regret,
    }


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(values), 5),
        "sd": round(statistics.stdev(values), 5) if len(values) > 1 else 0.0,
        "min": round(min(values), 5),
        "max": round(max(values), 5),
    }


def _summary(
    rows: Sequence[dict[str, Any]], noise: float, budgets: Sequence[int]
) -> dict[str, Any]:
    """Means and spreads over the seeds of one noise level, and the paired comparisons."""
    rows = [r for r in rows if r["noise"] == noise]

    def pick(method: str, n: int, what: str) -> list[float]:
        return [float(r["regret"][method][str(n)][what]) for r in rows]

    out: dict[str, Any] = {
        "summary": True,
        "noise": noise,
        "seeds": [r["seed"] for r in rows],
        "default_regret": _spread([r["default_regret"] for r in rows]),
        "simple_regret": {
            m: {str(n): _spread(pick(m, n, "simple")) for n in budgets} for m in METHODS
        },
        "cumulative_regret": {
            m: {str(n): _spread(pick(m, n, "cumulative")) for n in budgets} for m in METHODS
        },
    }
    versus: dict[str, Any] = {}
    for m in ("tpe", "served"):
        versus[m] = {}
        for n in budgets:
            diff = [
                a - b for a, b in zip(pick(m, n, "simple"), pick("grid", n, "simple"), strict=True)
            ]
            versus[m][str(n)] = {
                "simple_regret_minus_grid": _spread(diff),
                "standard_error": round(statistics.stdev(diff) / math.sqrt(len(diff)), 5)
                if len(diff) > 1
                else None,
                "seeds_below_grid": sum(d < 0 for d in diff),
            }
    out["versus_grid"] = versus
    out["targets"] = {
        f"{m}_simple_regret_below_grid": {
            str(n): versus[m][str(n)]["simple_regret_minus_grid"]["mean"] < 0 for n in budgets
        }
        for m in ("tpe", "served")
    }
    return out


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """One row per (noise, seed), then a summary row per noise level."""
    seeds, noises, budgets = QUICK if quick else FULL
    rows = [one_surface(seed, noise, budgets) for noise in noises for seed in seeds]
    return [*rows, *(_summary(rows, noise, budgets) for noise in noises)]


def summary(results: list[dict[str, Any]]) -> list[str]:
    """Mean simple regret per method and budget, per noise level, and the target."""
    lines = []
    for s in (r for r in results if r.get("summary")):
        budgets = list(s["simple_regret"]["grid"])
        lines.append(
            f"noise {s['noise']}: mean simple regret at {', '.join(budgets)} trials"
            f" (default's regret {s['default_regret']['mean']:.3f})"
        )
        for m in METHODS:
            cells = "  ".join(f"{s['simple_regret'][m][n]['mean']:.3f}" for n in budgets)
            lines.append(f"  {m:<16} {cells}")
        for m, met in s["targets"].items():
            lines.append(f"  {m}: {', '.join(f'{n} {_ok(v)}' for n, v in met.items())}")
    return lines


def _ok(value: bool) -> str:
    return "yes" if value else "NO"
