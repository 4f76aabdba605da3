"""The served generation-parameter tuning as data: fitted from the event log, versioned in JSON.

Serving tunes temperature, ``top_p``, ``max_tokens`` and the prompt template per (task type x
model) pair with Optuna's TPE (:mod:`serving.parameters` over :mod:`models.tuning`). In memory
alone, that tuning would restart from the safe default on every restart and every worker would
learn it apart. A :class:`TuningSnapshot` is what a policy version carries instead: per pair the
number of rewards learned, the best configuration so far and the most recent trials (parameters,
reward), at most ``max_trials`` of them (the search stops there anyway, and the smoothed best is
O(n^2) in the trials kept). :func:`fit_snapshot` rebuilds it from the rewards the log stored for
decisions that carried a tuning record (``context.tuning``), exactly as serving would have learned
them online (failures that say nothing about the parameters are not learned, parameters outside
the space are not either). Nightly training fits one and registers it with the policy version;
incremental training continues the snapshot of the version it continues from with the feedback
logged after it (:func:`continue_snapshot`: the same snapshot as a refit, read from the new rows
only) and registers that with its version. Serving replays its trials into fresh studies
(``add_trial``, no pickled Optuna objects) and keeps learning from there.

The JSON form (:meth:`TuningSnapshot.to_dict`) is plain data with a ``format`` field,
:data:`FORMAT`; a reader refuses any other format rather than guess.

Examples
--------
>>> from llmopt.event_log import ParameterFeedback
>>> served = {"temperature": 0.2, "top_p": 1.0, "max_tokens": 512, "prompt_template": "concise"}
>>> rows = [ParameterFeedback(i, {"key": "code/m", "trial": None}, served, 0.8, None)
...         for i in range(3)]
>>> snap = fit_snapshot(rows, min_feedback=2)
>>> snap.pairs["code/m"].n_feedback, snap.pairs["code/m"].best["prompt_template"]
(3, 'concise')
>>> TuningSnapshot.from_json(snap.to_json()) == snap
True
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from models.tuning import (
    Choice,
    FloatRange,
    IntRange,
    ParameterTuner,
    ParamSpec,
    ParamValue,
    parse_space,
)

if TYPE_CHECKING:
    from llmopt.event_log import ParameterFeedback

FORMAT = "llmopt.served-tuning/1"
"""The snapshot's JSON format; bump on any change a reader of the previous one would misread."""

SERVING_SPACE: dict[str, ParamSpec] = {
    "temperature": FloatRange(0.0, 1.2, default=0.7),
    "top_p": FloatRange(0.5, 1.0, default=1.0),
    "max_tokens": IntRange(128, 4096, log=True, default=1024),
    "prompt_template": Choice(("plain", "step_by_step", "concise"), default="plain"),
}
"""What serving tunes, and the safe default of each parameter."""

UNINFORMATIVE_ERRORS = frozenset({"timeout", "rate_limit", "server_error"})
"""Failures not caused by the parameters: not learned."""

DEFAULT_SETTINGS: dict[str, Any] = {
    "min_feedback": 20,
    "explore": 0.5,
    "max_trials": 300,
    "max_pending": 32,
}
"""The served tuning's hyperparameters (:class:`serving.parameters.ServedTuning`)."""


def tuning_key(task_type: str, model: str) -> str:
    """The study of a (task type, model) pair.

    >>> tuning_key("code", "gpt-4o")
    'code/gpt-4o'
    """
    return f"{task_type}/{model}"


@dataclass(frozen=True)
class PairSnapshot:
    """One (task type x model) pair: rewards learned, the best configuration, the recent trials."""

    n_feedback: int
    """Rewards learned for the pair, all of them (also those beyond the trials kept)."""
    best: dict[str, ParamValue]
    """The configuration with the highest smoothed reward (:meth:`ParameterTuner.best`)."""
    trials: tuple[tuple[dict[str, ParamValue], float], ...]
    """The most recent trials, oldest first: ``(parameters, reward)``."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_feedback": self.n_feedback,
            "best": dict(self.best),
            "trials": [{"params": dict(p), "reward": r} for p, r in self.trials],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PairSnapshot:
        return cls(
            n_feedback=int(data["n_feedback"]),
            best=dict(data["best"]),
            trials=tuple((dict(t["params"]), float(t["reward"])) for t in data["trials"]),
        )


@dataclass(frozen=True)
class TuningSnapshot:
    """The served tuning of every pair, with the space and hyperparameters it was learned with.

    Parameters
    ----------
    pairs
        :func:`tuning_key` to :class:`PairSnapshot`.
    space
        The search space in its plain form (``spec.to_dict()``).
    settings
        ``min_feedback``, ``explore``, ``max_trials``, ``max_pending`` (:data:`DEFAULT_SETTINGS`).
    until_feedback_id
        The last feedback id of the log it was fitted on (None: not fitted from a log).
    """

    pairs: dict[str, PairSnapshot]
    space: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {n: s.to_dict() for n, s in SERVING_SPACE.items()}
    )
    settings: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SETTINGS))
    until_feedback_id: int | None = None

    @property
    def n_feedback(self) -> int:
        """Rewards learned over every pair."""
        return sum(p.n_feedback for p in self.pairs.values())

    @property
    def n_tuned(self) -> int:
        """Pairs with enough rewards to serve tuned parameters (``min_feedback``)."""
        return sum(p.n_feedback >= self.settings["min_feedback"] for p in self.pairs.values())

    def summary(self) -> str:
        """One sentence: how much the tuning learned (version descriptions, reload notes)."""
        return (
            f"{self.n_feedback} feedback over {len(self.pairs)} (task type x model) pairs, "
            f"{self.n_tuned} past the safe default ({self.settings['min_feedback']} feedback)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "space": self.space,
            "settings": dict(self.settings),
            "until_feedback_id": self.until_feedback_id,
            "pairs": {key: pair.to_dict() for key, pair in sorted(self.pairs.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TuningSnapshot:
        """The snapshot of a :meth:`to_dict` form; a ValueError for another ``format``."""
        if data.get("format") != FORMAT:
            raise ValueError(
                f"not a served-tuning snapshot of format {FORMAT!r}: {data.get('format')!r}"
            )
        until = data.get("until_feedback_id")
        return cls(
            pairs={str(k): PairSnapshot.from_dict(v) for k, v in data["pairs"].items()},
            space={str(k): dict(v) for k, v in data["space"].items()},
            settings={**DEFAULT_SETTINGS, **dict(data.get("settings") or {})},
            until_feedback_id=None if until is None else int(until),
        )

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): what is logged and hashed."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> TuningSnapshot:
        return cls.from_dict(json.loads(text))


def fit_snapshot(
    feedback: Iterable[ParameterFeedback],
    *,
    space: Mapping[str, ParamSpec] | None = None,
    min_feedback: int = DEFAULT_SETTINGS["min_feedback"],
    explore: float = DEFAULT_SETTINGS["explore"],
    max_trials: int = DEFAULT_SETTINGS["max_trials"],
    max_pending: int = DEFAULT_SETTINGS["max_pending"],
    until_feedback_id: int | None = None,
) -> TuningSnapshot:
    """The snapshot serving would hold after learning ``feedback`` (oldest first) online.

    Each reward counts as a trial of the parameters served (online, a trial number only saves
    re-sending them); failures in :data:`UNINFORMATIVE_ERRORS`, records without a key and
    parameters outside ``space`` (default :data:`SERVING_SPACE`) are skipped. Per pair the last
    ``max_trials`` trials are kept and the best is computed over them.
    """
    specs = dict(SERVING_SPACE if space is None else space)
    settings = {
        "min_feedback": min_feedback,
        "explore": explore,
        "max_trials": max_trials,
        "max_pending": max_pending,
    }
    pairs = _learn(specs, {}, feedback, max_trials=max_trials)
    return TuningSnapshot(
        pairs,
        space={name: spec.to_dict() for name, spec in specs.items()},
        settings=settings,
        until_feedback_id=until_feedback_id,
    )


def continue_snapshot(
    previous: TuningSnapshot,
    feedback: Iterable[ParameterFeedback],
    *,
    until_feedback_id: int | None = None,
) -> TuningSnapshot:
    """``previous`` after also learning ``feedback``: the rewards logged after it (oldest first).

    What incremental training does with the tuning of the version it continues from: it reads
    only the feedback after ``previous.until_feedback_id`` (rows at or below it are skipped, so
    handing over a few too many never counts one twice). Per pair the new trials are appended to
    the kept ones, the last ``max_trials`` of them kept, the count grows by the rewards learned
    and the best is recomputed over the kept trials (pairs without new rewards are kept as they
    are). Given the rows after the previous snapshot's last feedback id, the result **equals**
    :func:`fit_snapshot` of all the rows at once (same pairs, counts, trials and best), except:

    - the previous snapshot's ``space`` and ``settings`` apply (a refit takes the arguments it
      is given, today's :data:`SERVING_SPACE` by default), so a space changed in between only
      takes effect at the next full refit (nightly training);
    - rows are split by feedback id: on PostgreSQL, where ids commit out of order, a reward
      whose id is at or below ``previous.until_feedback_id`` but committed after the previous
      fit is never added by a continuation; the next full refit counts it.

    ``until_feedback_id``: the last feedback id the rows were read up to (rows above it are
    not learned; default: the largest of the previous one and the rows' ids); the result's is
    never below the previous one.

    >>> from llmopt.event_log import ParameterFeedback
    >>> served = {"temperature": 0.2, "top_p": 1.0, "max_tokens": 512, "prompt_template": "plain"}
    >>> rows = [ParameterFeedback(i, {"key": "code/m"}, served, 0.8, None) for i in range(1, 6)]
    >>> first = fit_snapshot(rows[:2], until_feedback_id=2)
    >>> more = continue_snapshot(first, rows, until_feedback_id=5)  # ids 1, 2 skipped
    >>> more == fit_snapshot(rows, until_feedback_id=5), more.pairs["code/m"].n_feedback
    (True, 5)
    """
    specs = parse_space(previous.space)
    settings = {**DEFAULT_SETTINGS, **previous.settings}
    rows = list(feedback)
    after = previous.until_feedback_id
    pairs = _learn(
        specs,
        previous.pairs,
        rows,
        max_trials=int(settings["max_trials"]),
        after_id=after,
        until_id=until_feedback_id,
    )
    candidates = [i for i in (after, until_feedback_id) if i is not None]
    if until_feedback_id is None:
        candidates += [fb.feedback_id for fb in rows]
    return TuningSnapshot(
        pairs,
        space=dict(previous.space),
        settings=settings,
        until_feedback_id=max(candidates) if candidates else None,
    )


def _learn(
    specs: Mapping[str, ParamSpec],
    start: Mapping[str, PairSnapshot],
    feedback: Iterable[ParameterFeedback],
    *,
    max_trials: int,
    after_id: int | None = None,
    until_id: int | None = None,
) -> dict[str, PairSnapshot]:
    """The pairs of ``start`` after learning the rows of ``feedback`` with
    ``after_id < feedback_id <= until_id`` (either bound None: none)."""
    checker = ParameterTuner(dict(specs))
    counts: dict[str, int] = {}
    recent: dict[str, deque[tuple[dict[str, ParamValue], float]]] = {}
    for fb in feedback:
        if (after_id is not None and fb.feedback_id <= after_id) or (
            until_id is not None and fb.feedback_id > until_id
        ):
            continue
        key = fb.tuning.get("key")
        if not isinstance(key, str) or not key or fb.error_kind in UNINFORMATIVE_ERRORS:
            continue
        try:
            params = checker.validate({name: fb.parameters.get(name) for name in specs})
        except ValueError:  # e.g. max_tokens capped below the space by a context window
            continue
        if key not in recent:
            before = start.get(key)
            counts[key] = before.n_feedback if before is not None else 0
            kept = before.trials if before is not None else ()
            recent[key] = deque(kept, maxlen=max(max_trials, 1))
        counts[key] += 1
        recent[key].append((params, fb.reward))
    pairs = dict(start)
    for key, trials in recent.items():
        tuner = ParameterTuner(dict(specs))
        for params, reward in trials:
            tuner.record(key, params, reward)
        pairs[key] = PairSnapshot(counts[key], tuner.best(key), tuple(trials))
    return pairs
