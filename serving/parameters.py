"""Generation parameters for every served decision, tuned per (task type x model) from feedback.

:class:`ServedTuning` puts :class:`models.tuning.ParameterTuner` (Optuna's TPE, ask/tell) behind
the decision path. Each (task type, model) pair, e.g. ``code/gpt-4o-mini``, is one study. Why
TPE and not a Gaussian process: Optuna's ``GPSampler`` needs PyTorch, which the service does not
install (a ~700 MB dependency for one sampler); TPE handles the categorical template and the
integer, log-scaled ``max_tokens`` natively and tolerates single noisy rewards (see
:mod:`models.tuning`), where a scikit-learn ``GaussianProcessRegressor`` would need a hand-made
encoding of the template and a noise kernel.

What a decision gets, and its ``reason``:

- **default** while the pair has fewer than ``min_feedback`` rewards: the catalog's parameters
  (``temperature`` 0.7, ``max_tokens`` 1024) plus ``top_p`` 1.0 and the ``plain`` template, the
  safe default ("default: 3 of 20 feedback needed"). Its rewards are recorded as trials of that
  configuration, so the search starts from the default's measured reward;
- **tuning**: afterwards, with probability ``explore``, a TPE suggestion (a trial);
- **tuned**: otherwise the best configuration so far (smoothed reward, :meth:`ParameterTuner.best`).

Cost on the decision path is a dictionary lookup: TPE's ``ask`` (5 ms at 100 trials, 22 ms at
300, CPU time that holds the GIL) and the smoothed best (O(n^2)) keep one suggestion ready per
pair and the best cached. They run on the feedback path, or with :attr:`ServedTuning.deferred`
(what the service does) on a background thread that calls :meth:`ServedTuning.refresh` within a
CPU share (``LLMOPT_SERVING_TUNING_CPU_SHARE``): on the feedback path, under the router's lock,
they made every decision wait behind them (the soak's p99 tail). Given a
:class:`serving.tuning_process.TuningProcess`, the refresh computes them in a child process
instead (``LLMOPT_SERVING_TUNING_PROCESS``): on a thread they still held the interpreter lock
that every decision needs. After ``max_trials`` rewards a
pair stops exploring, keeps its best and records no more trials (memory stays bounded: a trial
is ~2 KB in Optuna's storage); its rewards are still counted. Pending suggestions beyond
``max_pending`` per pair are expired (their late feedback is recorded as a plain trial of the
parameters served).

``max_tokens`` is capped at what the model's context window leaves after the prompt; the cap is
said in the reason. ``prompt_template`` names how to wrap the prompt (``plain``: as is,
``step_by_step``: ask for step-by-step reasoning, ``concise``: ask for a short answer); it is not
an API parameter of the LLM.

Feedback teaches the pair the decision was made for with its reward (quality minus cost): the
parameters served and the trial number are stored with the decision in the event log
(``parameters`` and ``context.tuning``). Failures that say nothing about the parameters
(timeout, rate limit, server error) are not learned.

Versioned with the policy: nightly training fits a :class:`models.tuning_snapshot.TuningSnapshot`
from those rewards in the event log and registers it with the policy version;
:meth:`ServedTuning.from_snapshot` restores one (trials replayed into fresh studies, the best
and one suggestion per pair made ready at load, so a decision stays a lookup) and
:meth:`ServedTuning.snapshot` gives one back. The runtime restores it per slot: champion and
challenger each serve their version's tuning, a version without one the router's shared tuning,
learned from scratch (:mod:`serving.runtime`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from models.tuning import ParameterTuner, ParamValue
from models.tuning_snapshot import (
    DEFAULT_SETTINGS,
    PairSnapshot,
    TuningSnapshot,
)

# Re-exported (``X as X``): the snapshot's module owns them (pipelines fit it without serving).
from models.tuning_snapshot import SERVING_SPACE as SERVING_SPACE  # noqa: PLC0414
from models.tuning_snapshot import UNINFORMATIVE_ERRORS as UNINFORMATIVE_ERRORS  # noqa: PLC0414
from models.tuning_snapshot import tuning_key as tuning_key  # noqa: PLC0414
from serving.tuning_process import TuningProcess, TuningProcessError

log = logging.getLogger("llmopt.serving")


@dataclass(frozen=True)
class Suggested:
    """Parameters for one decision, why, and what the event log keeps to learn from feedback."""

    params: dict[str, ParamValue]
    reason: str
    record: dict[str, Any] = field(default_factory=dict)
    """``{"key": "code/gpt-4o", "trial": 12 | None}``: stored as ``context.tuning``."""


class ServedTuning:
    """Per (task type x model) parameters for serving: safe default, then TPE (module docstring).

    The router calls :meth:`suggest` and :meth:`observe` under its lock. With ``deferred``
    True, :meth:`observe` only records the reward and marks the pair stale; one other thread
    calls :meth:`refresh` (Optuna's in-memory storage is thread-safe; the ready suggestion and
    the best are replaced whole, each a single dictionary store).

    Examples
    --------
    >>> t = ServedTuning(min_feedback=2, seed=0)
    >>> s = t.suggest("chat", "gpt-4o", {"temperature": 0.7, "max_tokens": 1024})
    >>> s.params["temperature"], s.params["max_tokens"], s.reason
    (0.7, 1024, 'default: 0 of 2 feedback needed before tuning chat/gpt-4o')
    >>> t.observe(s.record, s.params, 0.8)
    True
    """

    def __init__(
        self,
        *,
        min_feedback: int = 20,
        explore: float = 0.5,
        max_trials: int = 300,
        max_pending: int = 32,
        seed: int | None = None,
        tuner: ParameterTuner | None = None,
    ) -> None:
        if min_feedback < 0 or max_trials < min_feedback or max_pending < 1:
            raise ValueError("need 0 <= min_feedback <= max_trials and max_pending >= 1")
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"explore must be in [0, 1], got {explore}")
        self.min_feedback = min_feedback
        self.explore = explore
        self.max_trials = max_trials
        self.max_pending = max_pending
        self.tuner = tuner or ParameterTuner(SERVING_SPACE, n_startup_trials=5, seed=seed)
        self.space = dict(SERVING_SPACE)
        self._rng = random.Random(seed)
        self._n: dict[str, int] = {}
        self._best: dict[str, dict[str, ParamValue]] = {}
        self._ready: dict[str, tuple[int | None, dict[str, ParamValue]]] = {}
        """Per pair, the next suggestion: its trial number (None: the tuning child's, no
        trial of this process's studies) and its parameters."""
        self._owner = f"{id(self):x}-{random.getrandbits(32):08x}"
        """This tuning's name in the tuning child (its studies are kept per owner)."""
        self._stale: set[str] = set()
        self.deferred = False
        """True: :meth:`observe` leaves the TPE work to :meth:`refresh` (a background thread)."""

    @classmethod
    def from_snapshot(cls, snapshot: TuningSnapshot, *, seed: int | None = None) -> ServedTuning:
        """A tuning that goes on from ``snapshot`` (a policy version's, fitted from the log).

        The snapshot's hyperparameters (``min_feedback``, ...) apply; its trials are replayed
        into fresh studies (trials outside today's :data:`SERVING_SPACE` are skipped), its best
        is served as it is (recomputed from the trials if it no longer fits the space), and one
        TPE suggestion per pair is made ready: afterwards a decision is a dictionary lookup, as
        ever. Feedback then keeps teaching it online. Measured on 2 cores: 66 pairs of 300
        trials (2.9 MB of JSON) restore in ~2.4 s, most of it Optuna's ``add_trial`` copies;
        the runtime does it before the swap, off the request path.
        """
        settings = {**DEFAULT_SETTINGS, **snapshot.settings}
        tuning = cls(
            min_feedback=int(settings["min_feedback"]),
            explore=float(settings["explore"]),
            max_trials=int(settings["max_trials"]),
            max_pending=int(settings["max_pending"]),
            seed=seed,
        )
        for key, pair in snapshot.pairs.items():
            tuning._restore(key, pair)
        return tuning

    def snapshot(self, *, until_feedback_id: int | None = None) -> TuningSnapshot:
        """What this tuning learned, as data: per pair its rewards, best and most recent
        ``max_trials`` trials (:class:`models.tuning_snapshot.TuningSnapshot`)."""
        pairs = {}
        for key in self.tuner.task_types:
            n = self.n_feedback(key)
            if n == 0:
                continue
            trials = self.tuner.results(key)[-self.max_trials :]
            best = self._best.get(key) or self.tuner.best(key)
            pairs[key] = PairSnapshot(n, dict(best), tuple(trials))
        return TuningSnapshot(
            pairs,
            space={name: spec.to_dict() for name, spec in self.space.items()},
            settings={
                "min_feedback": self.min_feedback,
                "explore": self.explore,
                "max_trials": self.max_trials,
                "max_pending": self.max_pending,
            },
            until_feedback_id=until_feedback_id,
        )

    def _restore(self, key: str, pair: PairSnapshot) -> None:
        for params, reward in pair.trials:
            try:
                self.tuner.record(key, params, reward)
            except ValueError:  # a parameter since added, removed or narrowed
                continue
        n = max(pair.n_feedback, self.tuner.n_trials(key))
        if n == 0:
            return
        self._n[key] = n
        try:
            self._best[key] = self.tuner.validate(pair.best)
        except ValueError:
            if self.tuner.n_trials(key):
                self._best[key] = self.tuner.best(key)
        if self.min_feedback <= n < self.max_trials and key in self._best:
            s = self.tuner.suggest(key)
            self._ready[key] = (s.trial_number, s.params)

    def defaults(self, catalog_params: Mapping[str, ParamValue]) -> dict[str, ParamValue]:
        """The safe default: the catalog's parameters over the space's defaults."""
        base = {name: spec.default_value() for name, spec in self.space.items()}
        return {**base, **catalog_params}

    def n_feedback(self, key: str) -> int:
        """Rewards learned for ``key`` (a :func:`tuning_key`)."""
        if key not in self._n:
            self._n[key] = self.tuner.n_trials(key)
        return self._n[key]

    def suggest(
        self,
        task_type: str,
        model: str,
        catalog_params: Mapping[str, ParamValue],
        *,
        max_tokens_cap: int | None = None,
    ) -> Suggested:
        """Parameters for one decision of ``task_type`` served by ``model``.

        ``max_tokens_cap``: what the model's context window leaves after the prompt.
        """
        key = tuning_key(task_type, model)
        n = self.n_feedback(key)
        trial: int | None = None
        if n < self.min_feedback or key not in self._best:
            params = self.defaults(catalog_params)
            reason = f"default: {n} of {self.min_feedback} feedback needed before tuning {key}"
        elif key in self._ready and self._rng.random() < self.explore:
            trial, asked = self._ready.pop(key)
            params = {**self.defaults(catalog_params), **asked}
            which = f"trial {trial} of" if trial is not None else "suggestion for"
            reason = f"tuning: TPE {which} {key} ({n} feedback so far)"
        else:
            params = {**self.defaults(catalog_params), **self._best[key]}
            done = "; search finished" if n >= self.max_trials else ""
            reason = f"tuned: best of {n} feedback for {key} (TPE{done})"
        if max_tokens_cap is not None and "max_tokens" in params:
            cap = max(int(max_tokens_cap), 1)
            if int(params["max_tokens"]) > cap:
                params["max_tokens"] = cap
                reason += f"; max_tokens capped at {cap} by the context window"
                trial = None  # served parameters differ from the trial's: recorded as served
        return Suggested(params, reason, {"key": key, "trial": trial})

    def observe(
        self,
        record: Mapping[str, Any] | None,
        params: Mapping[str, Any],
        reward: float,
        *,
        error_kind: str | None = None,
    ) -> bool:
        """Learn the ``reward`` of a decision served with ``params``; True if learned.

        ``record`` is the decision's :attr:`Suggested.record` (from the event log).
        """
        if (
            not record
            or not isinstance(record.get("key"), str)
            or error_kind in UNINFORMATIVE_ERRORS
        ):
            return False
        key: str = record["key"]
        n = self.n_feedback(key)
        if n >= self.max_trials:  # the search is over: counted, not kept (bounded memory)
            self._n[key] = n + 1
            return False
        trial = record.get("trial")
        learned = False
        if isinstance(trial, int):
            try:
                self.tuner.observe(key, trial, reward)
                learned = True
            except ValueError:  # expired, or another worker's trial: record what was served
                pass
        if not learned:
            served = {name: params.get(name) for name in self.space}
            try:
                self.tuner.record(key, served, reward)  # type: ignore[arg-type]
            except ValueError:  # e.g. max_tokens capped below the space: nothing to learn
                return False
        self._n[key] = n + 1
        if n + 1 >= self.min_feedback:
            if self.deferred:
                self._stale.add(key)
            else:
                self._refresh(key, n + 1)
        return True

    @property
    def stale(self) -> int:
        """Pairs whose best and ready suggestion wait for :meth:`refresh` (deferred mode)."""
        return len(self._stale)

    def refresh(self, limit: int | None = None, *, child: TuningProcess | None = None) -> int:
        """Recompute the best and the ready suggestion of up to ``limit`` stale pairs (all: None);
        how many. Deferred mode's background work; the feedback path's otherwise.

        ``child``: computed there (the TPE work off this process's interpreter lock). While it
        cannot answer, the pairs stay stale (their best and suggestion as they were) and are
        refreshed once it can: computed here instead, the work would hold the lock again just
        when the machine is too busy for the child.
        """
        done = 0
        while self._stale and (limit is None or done < limit):
            try:
                key = self._stale.pop()
            except KeyError:  # emptied meanwhile
                break
            if not self._refresh(key, self.n_feedback(key), child):
                break  # the child cannot answer: the rest waits too
            done += 1
        return done

    def _refresh(self, key: str, n: int, child: TuningProcess | None = None) -> bool:
        """Recompute the best, keep one suggestion ready, expire stale ones; False if the
        child could not answer (``key`` is stale again)."""
        best = n <= self.max_trials or key not in self._best
        ready = n < self.max_trials and key not in self._ready
        if child is not None and (best or ready):
            try:
                found, suggested = child.refresh(self._owner, self.tuner, key, suggest=ready)
            except TuningProcessError:  # logged by the child's side
                self._stale.add(key)  # refreshed once the child answers again
                return False
            if best:
                self._best[key] = found
            if suggested is not None:
                # no trial here: its feedback is recorded as the parameters served
                self._ready[key] = (None, suggested)
            return True
        if best:
            self._best[key] = self.tuner.best(key)
        if ready:
            s = self.tuner.suggest(key)
            self._ready[key] = (s.trial_number, s.params)
            self.tuner.expire(key, keep=self.max_pending)
        return True
