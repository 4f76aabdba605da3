"""Generation parameters tuned by Bayesian optimisation (TPE) from live rewards, per task type.

Which temperature, token budget and prompt template work best differs by task: code and maths want
a low temperature and a step-by-step template, chat a warmer one. :class:`ParameterTuner` keeps one
Optuna study per task type and drives it through the ask/tell interface: each live request asks for
a configuration (a trial), its reward is told back when the feedback arrives, and the
Tree-structured Parzen Estimator proposes the next configurations from the good and bad ones seen
so far.

**One trial is one request.** Live rewards are noisy, and the alternative, serving each trial to k
requests and telling the mean, divides the number of trials by k and needs every worker to route
requests to shared pending trials. TPE copes with noise by design: it does not interpolate single
values but compares the densities of the better and the worse fraction of all trials, so one lucky
or unlucky reward only shifts a density a little. What noise does break is "the best trial": the
single highest reward is mostly the luckiest one. :meth:`ParameterTuner.best` therefore returns
the trial whose *smoothed* reward is highest, a kernel-weighted mean of the rewards of the trials
near it (same categorical values, nearby numbers), shrunk towards the overall mean by one
pseudo-observation.

Several suggestions may be pending at once (TPE's constant liar, on by default in Optuna 5, keeps
them apart). With ``storage`` (an SQLAlchemy URL, e.g. PostgreSQL in the production profile) the
studies live in the database, so every serving worker shares one set of trials (docs/style.md #12).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self, TypeAlias

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)
from optuna.samplers import TPESampler
from optuna.trial import FrozenTrial, TrialState, create_trial

from models.state import Stateful

ParamValue: TypeAlias = float | int | str
"""A generation parameter's value: a number or a categorical choice (a template name)."""


@dataclass(frozen=True)
class FloatRange:
    """A real parameter in ``[low, high]``, optionally searched on a log scale."""

    low: float
    high: float
    log: bool = False
    default: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"need finite low < high, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.default is not None and not self.low <= self.default <= self.high:
            raise ValueError(f"default {self.default} outside [{self.low}, {self.high}]")

    def distribution(self) -> BaseDistribution:
        return FloatDistribution(self.low, self.high, log=self.log)

    def default_value(self) -> float:
        """``default``, else the middle of the range (geometric middle on a log scale)."""
        if self.default is not None:
            return float(self.default)
        if self.log:
            return math.sqrt(self.low * self.high)
        return (self.low + self.high) / 2

    def unit(self, value: float) -> float:
        """``value`` mapped to [0, 1] on the search scale."""
        if self.log:
            return math.log(value / self.low) / math.log(self.high / self.low)
        return (value - self.low) / (self.high - self.low)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "float",
            "low": self.low,
            "high": self.high,
            "log": self.log,
            "default": self.default,
        }


@dataclass(frozen=True)
class IntRange:
    """An integer parameter in ``[low, high]`` (e.g. ``max_tokens``), optionally on a log scale."""

    low: int
    high: int
    log: bool = False
    default: int | None = None

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"need low < high, got [{self.low}, {self.high}]")
        if self.log and self.low < 1:
            raise ValueError(f"a log range needs low >= 1, got {self.low}")
        if self.default is not None and not self.low <= self.default <= self.high:
            raise ValueError(f"default {self.default} outside [{self.low}, {self.high}]")

    def distribution(self) -> BaseDistribution:
        return IntDistribution(self.low, self.high, log=self.log)

    def default_value(self) -> int:
        """``default``, else the middle of the range (geometric middle on a log scale)."""
        if self.default is not None:
            return int(self.default)
        if self.log:
            return round(math.sqrt(self.low * self.high))
        return (self.low + self.high) // 2

    def unit(self, value: float) -> float:
        """``value`` mapped to [0, 1] on the search scale."""
        if self.log:
            return math.log(value / self.low) / math.log(self.high / self.low)
        return (value - self.low) / (self.high - self.low)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "int",
            "low": self.low,
            "high": self.high,
            "log": self.log,
            "default": self.default,
        }


@dataclass(frozen=True)
class Choice:
    """A categorical parameter (e.g. the prompt template's name)."""

    choices: tuple[ParamValue, ...]
    default: ParamValue | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(self.choices))
        if not self.choices or len(set(self.choices)) != len(self.choices):
            raise ValueError(f"choices must be non-empty and unique, got {self.choices!r}")
        if self.default is not None and self.default not in self.choices:
            raise ValueError(f"default {self.default!r} is not one of {self.choices!r}")

    def distribution(self) -> BaseDistribution:
        return CategoricalDistribution(self.choices)

    def default_value(self) -> ParamValue:
        """``default``, else the first choice."""
        return self.choices[0] if self.default is None else self.default

    def to_dict(self) -> dict[str, Any]:
        return {"type": "categorical", "choices": list(self.choices), "default": self.default}


ParamSpec: TypeAlias = FloatRange | IntRange | Choice
"""How one parameter is searched."""

DEFAULT_SPACE: dict[str, ParamSpec] = {
    "temperature": FloatRange(0.0, 1.5, default=0.7),
    "max_tokens": IntRange(64, 4096, log=True, default=1024),
    "prompt_template": Choice(("plain", "step_by_step", "concise"), default="plain"),
}
"""The search space used when none is given."""


def parse_space(space: Mapping[str, ParamSpec | Mapping[str, Any]]) -> dict[str, ParamSpec]:
    """Typed specs from specs or their plain ``to_dict`` form (``{"type": "float", ...}``)."""
    if not space:
        raise ValueError("the search space needs at least one parameter")
    out: dict[str, ParamSpec] = {}
    for name, spec in space.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"parameter names must be non-empty strings, got {name!r}")
        if isinstance(spec, FloatRange | IntRange | Choice):
            out[name] = spec
            continue
        fields = {k: v for k, v in spec.items() if k != "type"}
        kind = spec.get("type")
        if kind == "float":
            out[name] = FloatRange(**fields)
        elif kind == "int":
            out[name] = IntRange(**fields)
        elif kind == "categorical":
            out[name] = Choice(tuple(fields.pop("choices")), **fields)
        else:
            raise ValueError(f"parameter {name!r}: unknown type {kind!r} (float, int, categorical)")
    return out


@dataclass(frozen=True)
class Suggestion:
    """Parameters to use for one request; report its reward under ``trial_number``."""

    task_type: str
    trial_number: int
    params: dict[str, ParamValue]


class ParameterTuner(Stateful):
    """Per-task-type tuning of generation parameters with Optuna's TPE, from live rewards.

    ``suggest(task_type)`` asks the task's study for a trial (the study is created on first use);
    ``observe(task_type, trial_number, reward)`` tells its reward. Any number of suggestions may
    be pending; feedback for a trial that does not exist or already has its reward is refused.
    ``best(task_type)`` is the configuration with the highest smoothed reward so far (see the
    module docstring), or the defaults of the search space before any feedback.

    ``to_dict`` stores every trial of every study (parameters, distributions, value, state, times)
    in trial-number order; ``from_dict`` rebuilds the studies with ``study.add_trial``, so trial
    numbers, and with them pending suggestions, survive a round trip into empty studies. Into a
    storage that already holds trials only the missing completed trials are added. :meth:`merge`
    combines the completed trials of two tuners. The samplers' random state is not saved: a
    restored tuner reseeds each sampler from ``seed``, the task type and its number of trials, so
    it is deterministic but does not continue the original's exact sequence.

    Parameters
    ----------
    space
        Parameter name to :class:`FloatRange`, :class:`IntRange` or :class:`Choice` (or their
        ``to_dict`` form); stored in the plain form. Default: :data:`DEFAULT_SPACE`.
    storage
        SQLAlchemy URL of an Optuna RDB storage (``sqlite:///...``, ``postgresql+psycopg://...``),
        or ``None`` for in-memory studies. It is saved in ``to_dict`` like every hyperparameter:
        keep passwords out of it (``PGPASSWORD`` / ``.pgpass``).
    study_prefix
        Study names are ``study_prefix + task_type``.
    n_startup_trials
        Random trials per task type before TPE takes over.
    smoothing
        Kernel width, in units of the scaled search space, of the smoothed reward behind
        ``best``; 0 returns the single best trial.
    seed
        Seed of the samplers (each task type's sampler gets its own seed derived from it).

    Examples
    --------
    >>> import random
    >>> rng = random.Random(0)
    >>> space = {"temperature": FloatRange(0.0, 1.0), "template": Choice(("plain", "steps"))}
    >>> tuner = ParameterTuner(space, n_startup_trials=5, seed=0)
    >>> for _ in range(25):
    ...     s = tuner.suggest("code")
    ...     good = 1.0 - s.params["temperature"] + (0.5 if s.params["template"] == "steps" else 0)
    ...     _ = tuner.observe("code", s.trial_number, good + rng.gauss(0, 0.1))
    >>> best = tuner.best("code")
    >>> best["template"], best["temperature"] < 0.2
    ('steps', True)
    >>> tuner.best("chat")  # no feedback yet: the defaults
    {'temperature': 0.5, 'template': 'plain'}

    References
    ----------
    Bergstra, Bardenet, Bengio, Kegl (2011). Algorithms for hyper-parameter optimization. NeurIPS.

    Akiba, Sano, Yanase, Ohta, Koyama (2019). Optuna: a next-generation hyperparameter
    optimization framework. KDD.
    """

    kind = "param_tuner"

    def __init__(
        self,
        space: Mapping[str, ParamSpec | Mapping[str, Any]] | None = None,
        *,
        storage: str | None = None,
        study_prefix: str = "llmopt-params/",
        n_startup_trials: int = 10,
        smoothing: float = 0.15,
        seed: int | None = None,
    ) -> None:
        specs = parse_space(DEFAULT_SPACE if space is None else space)
        if storage is not None and (not isinstance(storage, str) or "://" not in storage):
            raise ValueError(f"storage must be an SQLAlchemy URL or None, got {storage!r}")
        if n_startup_trials < 0:
            raise ValueError(f"n_startup_trials must be >= 0, got {n_startup_trials}")
        if not (smoothing >= 0 and math.isfinite(smoothing)):
            raise ValueError(f"smoothing must be a finite number >= 0, got {smoothing}")
        self.space = {name: spec.to_dict() for name, spec in specs.items()}
        self.storage = storage
        self.study_prefix = study_prefix
        self.n_startup_trials = n_startup_trials
        self.smoothing = smoothing
        self.seed = seed
        self._specs = specs
        self._distributions = {name: spec.distribution() for name, spec in specs.items()}
        self._studies: dict[str, optuna.Study] = {}
        self._rdb: optuna.storages.BaseStorage | None = None
        # Optuna logs every finished trial at INFO: one line per request is noise here. Set when
        # a tuner is made, not on import (docs/style.md #16); it is Optuna's process-wide setting.
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    # -- public API -------------------------------------------------------------------------------
    def suggest(self, task_type: str) -> Suggestion:
        """Parameters to try on the next request of ``task_type``."""
        trial = self._study(task_type).ask(dict(self._distributions))
        return Suggestion(task_type, trial.number, dict(trial.params))

    def observe(self, task_type: str, trial_number: int, reward: float) -> Self:
        """Record the reward of the request served with suggestion ``trial_number``."""
        if isinstance(trial_number, bool) or not isinstance(trial_number, int | np.integer):
            raise ValueError(f"trial_number must be an int, got {trial_number!r}")
        if isinstance(reward, bool) or not isinstance(reward, int | float | np.number):
            raise ValueError(f"reward must be a number, got {reward!r}")
        if not math.isfinite(reward):
            raise ValueError(f"reward must be a finite number, got {reward}")
        study = self._find_study(task_type)
        if study is None:
            raise ValueError(f"unknown task type {task_type!r}: no suggestion was made for it")
        try:
            study.tell(int(trial_number), float(reward))
        except optuna.exceptions.UpdateFinishedTrialError as exc:  # expired by another thread
            raise ValueError(
                f"finished trial {trial_number} of task type {task_type!r}: feedback refused"
            ) from exc
        except ValueError as exc:
            what = "unknown trial" if "not been created" in str(exc) else "finished trial"
            raise ValueError(
                f"{what} {trial_number} of task type {task_type!r}: feedback refused ({exc})"
            ) from exc
        return self

    def best(self, task_type: str) -> dict[str, ParamValue]:
        """The best parameters of ``task_type`` so far (the defaults before any feedback)."""
        trials = self._completed(task_type)
        if not trials:
            return self.defaults()
        values = np.array([t.value for t in trials], dtype=float)
        if self.smoothing == 0 or len(trials) == 1:
            return dict(trials[int(np.argmax(values))].params)
        return dict(trials[int(np.argmax(self._smoothed(trials, values)))].params)

    def defaults(self) -> dict[str, ParamValue]:
        """The search space's default parameters."""
        return {name: spec.default_value() for name, spec in self._specs.items()}

    def record(self, task_type: str, params: Mapping[str, ParamValue], reward: float) -> Self:
        """Add a completed trial: ``params`` (not asked for) served one request, earning ``reward``.

        For configurations served without a pending suggestion: the safe default before
        tuning starts, a suggestion whose trial expired, or one served by another worker.
        ``params`` must name every parameter of the space, each within its range.
        """
        if isinstance(reward, bool) or not isinstance(reward, int | float | np.number):
            raise ValueError(f"reward must be a number, got {reward!r}")
        if not math.isfinite(reward):
            raise ValueError(f"reward must be a finite number, got {reward}")
        values = self.validate(params)
        trial = create_trial(
            state=TrialState.COMPLETE,
            value=float(reward),
            params=values,
            distributions=dict(self._distributions),
        )
        self._study(task_type).add_trial(trial)
        return self

    def validate(self, params: Mapping[str, Any]) -> dict[str, ParamValue]:
        """``params`` as the space's values (a whole float for an integer parameter becomes an
        int), or a ValueError when they do not name exactly the space's parameters, each within
        its range."""
        if set(params) != set(self._specs):
            raise ValueError(
                f"params must name exactly {sorted(self._specs)}, got {sorted(params)}"
            )
        values: dict[str, ParamValue] = {}
        for name, dist in self._distributions.items():
            value = params[name]
            if isinstance(dist, IntDistribution) and isinstance(value, float):
                value = int(value) if value.is_integer() else value
            try:
                inside = dist._contains(dist.to_internal_repr(value))
            except (ValueError, TypeError):
                inside = False
            if not inside:
                raise ValueError(f"parameter {name}={value!r} is outside its range {dist}")
            values[name] = value
        return values

    def expire(self, task_type: str, keep: int) -> int:
        """Fail all but the newest ``keep`` pending suggestions of ``task_type``; returns how many.

        A suggestion whose feedback never comes stays pending forever, and every pending trial
        weighs on TPE (the constant liar) and on memory: a server expires the oldest ones.
        Their late feedback is then refused by :meth:`observe` (use :meth:`record`).
        """
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        study = self._find_study(task_type)
        if study is None:
            return 0
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        stale = running[: max(len(running) - keep, 0)]
        expired = 0
        for trial in stale:
            try:
                study.tell(trial.number, state=TrialState.FAIL)
            except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
                continue  # its reward arrived meanwhile (another thread told it)
            expired += 1
        return expired

    def results(self, task_type: str) -> list[tuple[dict[str, ParamValue], float]]:
        """The completed trials of ``task_type``, oldest first: ``(parameters, reward)``."""
        return [(dict(t.params), float(t.value)) for t in self._completed(task_type)]  # type: ignore[arg-type]

    def n_trials(self, task_type: str) -> int:
        """Number of completed trials (rewards received) of ``task_type``."""
        return len(self._completed(task_type))

    @property
    def task_types(self) -> list[str]:
        """Task types with a study (in this process, or in the storage)."""
        names = set(self._studies)
        storage = self._storage()
        if storage is not None:
            names |= {
                n[len(self.study_prefix) :]
                for n in optuna.study.get_all_study_names(storage)
                if n.startswith(self.study_prefix)
            }
        return sorted(names)

    def merge(self, other: ParameterTuner) -> ParameterTuner:
        """A new in-memory tuner with this tuner's trials plus the completed trials of ``other``.

        Trials both already hold (same parameters, value and times: replicas restored from one
        snapshot) are counted once. The result has ``storage=None``: replicas sharing one storage
        URL share their trials already and need no merge.
        """
        if not isinstance(other, ParameterTuner) or other.space != self.space:
            raise ValueError("can only merge tuners with the same search space")
        merged = ParameterTuner(**{**self._params(), "storage": None})
        merged._set_state(self._get_state())
        merged._set_state(other._get_state())
        return merged

    # -- state ------------------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        studies = {}
        for task in self.task_types:
            study = self._study(task)
            studies[task] = [_trial_record(t) for t in study.get_trials(deepcopy=False)]
        return {"studies": studies}

    def _set_state(self, state: dict[str, Any]) -> None:
        for task, records in state["studies"].items():
            study = self._study(str(task))
            existing = study.get_trials(deepcopy=False)
            if not existing:
                trials = [_trial_from_record(r) for r in records]
            else:
                have = {_trial_key(t) for t in existing if t.state == TrialState.COMPLETE}
                trials = [
                    t
                    for t in (_trial_from_record(r) for r in records)
                    if t.state == TrialState.COMPLETE and _trial_key(t) not in have
                ]
            for trial in trials:
                study.add_trial(trial)
            study.sampler = self._sampler(str(task), len(study.get_trials(deepcopy=False)))

    def __reduce__(self) -> tuple[Any, ...]:
        # Studies hold locks and database engines: pickle through the stable dict form.
        return (Stateful.from_dict, (self.to_dict(),))

    # -- helpers ----------------------------------------------------------------------------------
    def _storage(self) -> optuna.storages.BaseStorage | None:
        if self.storage is None:
            return None
        if self._rdb is None:
            self._rdb = optuna.storages.RDBStorage(self.storage)
        return self._rdb

    def _sampler(self, task_type: str, n_trials: int) -> TPESampler:
        seed = None
        if self.seed is not None:
            seed = zlib.crc32(f"{self.seed}:{task_type}:{n_trials}".encode())
        return TPESampler(seed=seed, n_startup_trials=self.n_startup_trials)

    def _find_study(self, task_type: str) -> optuna.Study | None:
        """The study of ``task_type`` if it exists here or in the storage; never creates one."""
        _check_task_type(task_type)
        if task_type in self._studies:
            return self._studies[task_type]
        storage = self._storage()
        if storage is None:
            return None
        if self.study_prefix + task_type not in optuna.study.get_all_study_names(storage):
            return None
        return self._study(task_type)

    def _study(self, task_type: str) -> optuna.Study:
        """The study of ``task_type``, created (or loaded from the storage) on first use."""
        _check_task_type(task_type)
        study = self._studies.get(task_type)
        if study is not None:
            return study
        name = self.study_prefix + task_type
        storage = self._storage()
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=self._sampler(task_type, 0),
            direction="maximize",
            load_if_exists=True,
        )
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise ValueError(f"study {name!r} in {self.storage} does not maximise")
        n = len(study.get_trials(deepcopy=False))
        if n:
            study.sampler = self._sampler(task_type, n)
        self._studies[task_type] = study
        return study

    def _completed(self, task_type: str) -> list[FrozenTrial]:
        study = self._find_study(task_type)
        if study is None:
            return []
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        # Trials from an older search space (a parameter since added or removed) are skipped.
        return [t for t in trials if set(t.params) == set(self._specs)]

    def _smoothed(self, trials: list[FrozenTrial], values: np.ndarray) -> np.ndarray:
        """Kernel-weighted mean reward around each trial, shrunk to the mean by one pseudo-count."""
        numeric = [n for n, s in self._specs.items() if not isinstance(s, Choice)]
        categorical = [n for n, s in self._specs.items() if isinstance(s, Choice)]
        weights = np.ones((len(trials), len(trials)))
        if numeric:
            u = np.array(
                [
                    [self._unit(n, t.params[n]) for n in numeric]  # scaled to [0, 1]
                    for t in trials
                ]
            )
            d2 = ((u[:, None, :] - u[None, :, :]) ** 2).sum(axis=2)
            weights *= np.exp(-d2 / (2 * self.smoothing**2))
        for n in categorical:
            c = np.array([json.dumps(t.params[n]) for t in trials])
            weights *= c[:, None] == c[None, :]
        prior = 1.0
        smoothed: np.ndarray = (weights @ values + prior * values.mean()) / (
            weights.sum(axis=1) + prior
        )
        return smoothed

    def _unit(self, name: str, value: ParamValue) -> float:
        spec = self._specs[name]
        assert isinstance(spec, FloatRange | IntRange)
        return spec.unit(float(value))


def _trial_record(trial: FrozenTrial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "state": trial.state.name,
        "params": dict(trial.params),
        "distributions": {
            n: json.loads(distribution_to_json(d)) for n, d in trial.distributions.items()
        },
        "value": trial.value if trial.state == TrialState.COMPLETE else None,
        "datetime_start": _iso(trial.datetime_start),
        "datetime_complete": _iso(trial.datetime_complete),
    }


def _trial_from_record(record: Mapping[str, Any]) -> FrozenTrial:
    state = TrialState[str(record["state"])]
    value = record.get("value")
    if state == TrialState.COMPLETE:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"completed trial {record.get('number')} has no value: {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"completed trial {record.get('number')} has value {value}")
    trial = create_trial(
        state=state,
        value=float(value) if isinstance(value, int | float) else None,
        params=dict(record["params"]),
        distributions={
            n: json_to_distribution(json.dumps(d)) for n, d in record["distributions"].items()
        },
    )
    trial.datetime_start = _from_iso(record.get("datetime_start"))
    trial.datetime_complete = _from_iso(record.get("datetime_complete"))
    return trial


def _check_task_type(task_type: str) -> None:
    if not isinstance(task_type, str) or not task_type:
        raise ValueError(f"task_type must be a non-empty string, got {task_type!r}")


def _trial_key(trial: FrozenTrial) -> str:
    """Identity of a completed trial across copies (numbers differ between merged studies)."""
    return json.dumps(
        [
            sorted(trial.params.items()),
            trial.value,
            _iso(trial.datetime_start),
            _iso(trial.datetime_complete),
        ]
    )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _from_iso(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)
