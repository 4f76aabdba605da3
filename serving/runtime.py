"""Everything a serving worker runs besides HTTP: build the router, load, poll, follow the log.

:class:`ServingRuntime` is what the BentoML service holds (one per worker process). At
start-up it loads the champion (``prod``) and challenger (``staging``) from the model source
(:mod:`serving.model_source`); with no champion anywhere it starts the recommended policy and
warms it on the feedback already in the event log (the embedded profile's "train a starting
policy"); if even that fails, the static default policy answers. A poller thread checks the
aliases every ``serving_poll_s`` seconds and swaps changed versions in; if the source is
unreachable the current models stay. ``/admin/reload`` runs the same check at once.

Generation-parameter tuning (:mod:`serving.parameters`) is **per slot**: a version registered
with a tuning snapshot (nightly training fits one from the event log,
:mod:`models.tuning_snapshot`) serves with its own :class:`~serving.parameters.ServedTuning`
restored from it, so the champion and the challenger each tune as their version learned, and a
swap (poll or reload) replaces the tuning with the version. Online feedback to a slot's
decisions keeps teaching that slot's tuning (until the next swap: the next nightly version
learns it from the log). A version without a snapshot uses the router's shared tuning, which
starts from scratch in each process, as before.

Autopilot (``settings.autopilot``, :mod:`serving.autopilot`): a challenger loaded from the
``staging`` alias gets canary traffic at once, with no operator; when the router rolls a canary
or a fresh champion back, the runtime counts it (``llmopt_autopilot_rollbacks_total``), raises
an alert, and makes it durable in the model source on a background thread: the ``staging``
alias is removed from the bad version, or ``prod`` moves back to the previous version, and the
version is tagged ``rolled_back`` with the reason.

Several workers: see ``serving/README.md``. With ``serving_sync_log_s > 0`` a thread learns,
every that many seconds, the feedback the *other* workers stored in the shared event log. With
``serving_shared_state=redis`` the budget ledger, the circuit breaker and the gateway's
conversation affinity are shared through Redis
(:mod:`serving.shared_state`; Redis down: this worker's own, with a warning and a note), and so
are keys' own daily budgets (``LLMOPT_CLIENT_KEY_LIMITS``, :mod:`serving.key_limits`).

Online features (``serving_features``, :mod:`serving.live_features`): the Feast store is opened
on a background thread at start-up; once open, the router reads it on every decision (cached,
within a budget) and a thread pushes the event log's new feedback to it every
``serving_features_push_s`` seconds.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmopt.catalog import ModelCatalog, load_catalog
from llmopt.event_log import EventLog, LogCursor
from llmopt.priors import apply_catalog_priors
from llmopt.reward import TradeOff
from llmopt.settings import Settings
from llmopt.spool import SpooledEventLog
from serving.affinity import conversation_affinity
from serving.autopilot import Rollback
from serving.drift import DriftWatch
from serving.feature_push import PushProcess
from serving.gateway import Gateway
from serving.guards import BudgetLedger, CircuitBreaker
from serving.http_guard import key_limits
from serving.key_limits import KeyBudgets
from serving.live_features import LiveFeatures, open_in_background
from serving.metrics import get_metrics
from serving.model_source import (
    LoadedPolicy,
    LocalFileSource,
    ModelSource,
    SourceError,
    source_from_settings,
)
from serving.pacing import BudgetPacing
from serving.parameters import ServedTuning
from serving.response_cache import ResponseCache
from serving.router import STATIC_LABEL, Router
from serving.shared_state import SharedState
from serving.tuning_process import TuningProcess
from serving.upstreams import load_upstreams

log = logging.getLogger("llmopt.serving")

WARM_START_EVENTS = 50_000
"""Most logged feedback a fresh starting policy learns from at start-up."""
SPOOL_REPLAY_S = 1.0
"""Seconds between attempts to replay the spool into the event log's database."""
TUNING_IDLE_S = 0.05
"""How often the tuning refresher looks for stale pairs when there were none."""
TUNING_MIN_PAUSE_S = 0.005
"""Shortest wait between two refreshes (a cheap refresh still yields)."""
FEATURE_BACKFILL_EVENTS = 50_000
"""Most logged feedback pushed to a just-opened online store (the newest)."""


@dataclass
class ReloadResult:
    """What a reload did."""

    changed: bool
    elapsed_ms: float
    notes: list[str] = field(default_factory=list)


GC_THRESHOLDS = (50_000, 50, 1000)
"""The collector's thresholds while serving (Python's default: 700, 10, 10)."""


def settle_for_serving(settings: Settings) -> None:
    """Tune this process for serving once it has started (imports, catalog, policies loaded).

    The start-up heap is frozen out of the cyclic collector and the young generations are
    collected less often: BentoML's p99 drops from >100 ms to ~1 ms, and a decision's CPU is
    no longer doubled every few thousand decisions by a full collection of a heap of millions of
    imported objects. Threads hand the GIL over every ``serving_switch_interval_ms`` (the event
    loop and the group-commit writer share it). The service calls this; so does every benchmark
    that runs the serving runtime in-process, or it measures another process than the one served.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(settings.serving_switch_interval_ms / 1000)


def served_tuning(loaded: LoadedPolicy, *, deferred: bool = False) -> ServedTuning | None:
    """The tuning a loaded version serves with: restored from its snapshot, or None (the
    router's shared tuning) when it has none or the snapshot cannot be restored (logged: the
    version still serves, with parameters tuned from scratch). ``deferred``: its TPE work is
    left to the runtime's ``tuning-refresh`` thread (:attr:`ServedTuning.deferred`)."""
    if loaded.tuning is None:
        return None
    try:
        tuning = ServedTuning.from_snapshot(loaded.tuning)
        tuning.deferred = deferred
        return tuning
    except Exception:
        log.exception(
            "%s: its tuning snapshot cannot be restored; tuning from scratch", loaded.label
        )
        return None


def fresh_policy(
    event_log: EventLog | None,
    *,
    seed: int = 0,
    catalog: ModelCatalog | None = None,
    arms: Sequence[str] = (),
) -> tuple[Any, str]:
    """The recommended policy, started at the catalog's quality tiers (if given) and warmed on
    the event log's feedback; ``(policy, label)``."""
    from models.kinds import RECOMMENDED, make_policy  # noqa: PLC0415

    policy = make_policy(RECOMMENDED, seed=seed)
    if catalog is not None:
        apply_catalog_priors(policy, catalog, arms or catalog.ids)
    n = 0
    if event_log is not None:
        cost_aware = getattr(policy, "cost_aware", False)
        for ev in event_log.iter_events(0, limit=WARM_START_EVENTS):
            target = ev.quality if cost_aware else ev.reward
            if target is not None:
                policy.update(ev.model, ev.features, float(target))
                n += 1
    return policy, f"fresh/{RECOMMENDED}+{n}"


class ServingRuntime:
    """Router, model source, poller and log follower of one worker.

    Parameters
    ----------
    settings
        Settings (keys, budgets, source, poll interval, traffic mode).
    source
        Model source; default: the one ``settings.serving_model_source`` names.
    catalog
        Model catalog; default: ``settings.catalog_path``.
    event_log
        Event log; default: ``settings.event_log_url``.
    background
        Start the poller and log-follower threads, and open the online features
        (``settings.serving_features``) on a thread of their own.
    features
        Online features to use from the start (tests; otherwise opened in the background).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        source: ModelSource | None = None,
        catalog: ModelCatalog | None = None,
        event_log: EventLog | None = None,
        background: bool = True,
        features: LiveFeatures | None = None,
    ) -> None:
        self.settings = settings
        if event_log is None and not settings.database_url:
            settings.ensure_home()
        self.catalog = catalog or load_catalog(settings.catalog_path)
        self.event_log = event_log or self._open_log(settings)
        self.source = source if source is not None else source_from_settings(settings)
        self.shared_state = SharedState.from_settings(settings)
        """Budgets and circuit breakers in Redis (``serving_shared_state=redis``; None: local)."""
        ledger: BudgetLedger
        breaker: CircuitBreaker
        if self.shared_state is not None:
            ledger = self.shared_state.ledger(
                default_usd=settings.serving_daily_budget_usd,
                per_tenant=settings.serving_tenant_budgets,
            )
            breaker = self.shared_state.breaker()
        else:
            ledger = BudgetLedger(
                default_usd=settings.serving_daily_budget_usd,
                per_tenant=settings.serving_tenant_budgets,
            )
            breaker = CircuitBreaker()
        key_budgets = {
            d: lim.daily_budget_usd
            for d, lim in key_limits(settings).items()
            if lim.daily_budget_usd is not None
        }
        key_ledger: BudgetLedger | None = None
        if key_budgets:  # keys' own budgets: a ledger of their own (serving/key_limits.py)
            key_ledger = (
                self.shared_state.ledger(per_tenant=key_budgets, namespace="keys:")
                if self.shared_state is not None
                else BudgetLedger(per_tenant=key_budgets)
            )
        self.router = Router(
            self.catalog,
            self.event_log,
            default_tradeoff=TradeOff(
                willingness_to_pay=settings.default_willingness_to_pay,
                latency_weight=settings.default_latency_weight,
            ),
            breaker=breaker,
            ledger=ledger,
            key_budgets=KeyBudgets(key_ledger),
            pacing=(
                BudgetPacing(ledger, base_wtp=settings.default_willingness_to_pay)
                if settings.serving_budget_pacing
                else None
            ),
            rules=settings.autopilot,
            on_rollback=self._on_rollback,
            store_prompt_tenants=settings.store_prompt_tenants,
        )
        self.router.tuning.deferred = background  # TPE off the feedback path ("tuning-refresh")
        upstreams = load_upstreams(settings, self.catalog)  # a wrong config fails the start
        self.gateway: Gateway | None = (
            Gateway(
                self,
                upstreams,
                timeout_s=settings.gateway_timeout_s,
                cache=ResponseCache.from_settings(settings, self.shared_state),
                affinity=conversation_affinity(settings, self.shared_state),
            )
            if upstreams
            else None
        )
        """The OpenAI-compatible gateway (:mod:`serving.gateway`; None: no upstream configured)."""
        self.versions: dict[str, str | None] = {"prod": None, "staging": None}
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pusher: PushProcess | threading.Thread | None = None
        """What pushes feedback to the online store: a child process
        (:mod:`serving.feature_push`) or, with ``serving_push_process`` off, a thread."""
        # where the deferred TPE work runs (serving.tuning_process; None: the refresh thread)
        self.tuning_process = (
            TuningProcess() if background and settings.serving_tuning_process else None
        )
        self._own_feedback: set[int] = set()
        self._log_cursor = LogCursor()
        self.features_state = "off" if settings.serving_features == "off" else "starting"
        if settings.serving_drift_watch:
            self.router.drift = DriftWatch.from_settings(
                settings,
                on_drift=lambda e: get_metrics().observe_drift(e.model, e.stream, e.detector),
            )
        self._background = background
        self._start()
        if features is not None:
            self._features_ready(features)
        mode = settings.serving_traffic_mode
        if mode != "champion" and self.router.lineup.challenger is None:
            log.warning("traffic mode %s needs a challenger (staging): champion only", mode)
        elif mode != "champion":
            self.router.set_traffic(mode, settings.serving_canary_percent)  # type: ignore[arg-type]
        elif self.router.lineup.challenger is not None:
            self.router.start_canary()
        if background:
            self._spawn()

    @staticmethod
    def _open_log(settings: Settings) -> EventLog:
        group_commit = settings.serving_group_commit
        checkpoint_s = settings.serving_wal_checkpoint_s
        if not settings.serving_spool:
            return EventLog(
                settings.event_log_url, group_commit=group_commit, checkpoint_s=checkpoint_s
            )
        return SpooledEventLog(
            settings.event_log_url,
            spool_dir=settings.home / "spool",
            name=f"events.{os.getpid()}.spool.jsonl",
            group_commit=group_commit,
            checkpoint_s=checkpoint_s,
        )

    def replay_spool(self) -> int:
        """Store what the spool kept while the database was down; records replayed."""
        log_ = self.event_log
        if not isinstance(log_, SpooledEventLog):
            return 0
        n = log_.replay()
        for feedback_id in log_.replayed_feedback_ids:
            self.note_own_feedback(feedback_id)
        log_.replayed_feedback_ids.clear()
        return n

    def _replay_loop(self) -> None:
        while not self._stop.wait(SPOOL_REPLAY_S):
            try:
                self.replay_spool()
            except Exception:
                log.exception("spool replay failed; retrying")

    # -- loading --------------------------------------------------------------------------------
    def _start(self) -> None:
        champion = challenger = None
        try:
            if self.source is not None:
                champion = self.source.load("prod")
                challenger = self.source.load("staging")
        except SourceError as exc:
            log.warning("model source unavailable at start-up (%s); trying the local file", exc)
            try:
                champion = LocalFileSource(self.settings.policy_state_path).load("prod")
            except SourceError as exc2:
                log.warning("local policy file unusable: %s", exc2)
        if champion is not None:
            self.router.swap(
                (champion.policy, champion.label),
                champion_tuning=served_tuning(champion, deferred=self._background),
            )
            self.versions["prod"] = champion.label
            log.info("champion %s from %s", champion.label, champion.source)
        else:
            try:
                policy, label = fresh_policy(
                    self.event_log, catalog=self.router.catalog, arms=self.router.arms
                )
                self.router.swap((policy, label))
                log.info("no champion in the model source: serving %s", label)
            except Exception:  # the static default answers; the response says so
                log.exception("no starting policy; the static default answers")
        if challenger is not None:
            self.router.swap(
                challenger=(challenger.policy, challenger.label),
                challenger_tuning=served_tuning(challenger, deferred=self._background),
            )
            self.versions["staging"] = challenger.label
        counts = self.event_log.counts()
        self._log_cursor = self.event_log.stable_cursor() if counts["feedback"] else LogCursor()

    def _max_feedback_id(self) -> int:
        return self.event_log.last_feedback_id()

    def reload(self, *, force: bool = False) -> ReloadResult:
        """Swap in the versions the aliases point at now (if they changed, or ``force``)."""
        started = time.perf_counter()
        notes: list[str] = []
        changed = False
        if self.source is None:
            return ReloadResult(False, 0.0, ["no model source configured (fresh policy)"])
        with self._reload_lock:
            for alias, role in (("prod", "champion"), ("staging", "challenger")):
                try:
                    current = self.source.version(alias)
                    if current == self.versions[alias] and not force:
                        continue
                    loaded = self.source.load(alias) if current is not None else None
                except SourceError as exc:
                    notes.append(f"{alias}: source unavailable, current model kept ({exc})")
                    if "SHA-256" in str(exc) or "artifact_sha256" in str(exc):
                        # A tampered or corrupted artifact: an alert, not a hiccup.
                        logging.getLogger("llmopt.monitoring").error(
                            "artifact integrity check failed for %s: %s; current model kept",
                            alias,
                            exc,
                            extra={"alert": {"kind": "artifact_integrity", "alias": alias}},
                        )
                        get_metrics().artifact_rejections.labels(alias).inc()
                    else:
                        log.warning(notes[-1])
                    continue
                if loaded is None:
                    if role == "challenger" and self.router.lineup.challenger is not None:
                        self.router.swap(keep_challenger=False)
                        notes.append("staging alias removed: challenger retired")
                        changed = True
                    self.versions[alias] = None
                    continue
                tuning = served_tuning(loaded, deferred=self._background)
                if role == "champion":
                    self.router.swap((loaded.policy, loaded.label), champion_tuning=tuning)
                else:
                    self.router.swap(
                        challenger=(loaded.policy, loaded.label), challenger_tuning=tuning
                    )
                    if (
                        self.router.lineup.challenger is not None
                        and self.router.traffic.mode == "champion"
                        and self.router.start_canary() is not None
                    ):
                        notes.append(f"autopilot: canary of {loaded.label} started")
                self.versions[alias] = loaded.label
                snap = loaded.tuning if tuning is not None else None
                tuned = f" (tuning: {snap.summary()})" if snap is not None else ""
                notes.append(f"{role} is now {loaded.label}{tuned}")
                changed = True
        return ReloadResult(changed, (time.perf_counter() - started) * 1000, notes)

    # -- autopilot ------------------------------------------------------------------------------
    def _on_rollback(self, rollback: Rollback) -> None:
        """Count and alert at once; make the rollback durable in the source off the request."""
        get_metrics().autopilot_rollbacks.labels(rollback.role, rollback.verdict.kind).inc()
        logging.getLogger("llmopt.monitoring").error(
            "autopilot rolled back %s %s (%s): %s; %s serves",
            rollback.role,
            rollback.label,
            rollback.verdict.kind,
            rollback.verdict.reason,
            rollback.restored,
            extra={
                "alert": {
                    "kind": "autopilot_rollback",
                    "role": rollback.role,
                    "version": rollback.label,
                    "guard": rollback.verdict.kind,
                    "reason": rollback.verdict.reason,
                    "restored": rollback.restored,
                }
            },
        )
        if self._background:
            threading.Thread(
                target=self.record_rollback, args=(rollback,), name="rollback", daemon=True
            ).start()
        else:
            self.record_rollback(rollback)

    def record_rollback(self, rollback: Rollback) -> str:
        """Make ``rollback`` durable in the model source; what was done (logged)."""
        record = getattr(self.source, "record_rollback", None)
        if record is None:
            note = f"{rollback.label}: no registry to record the rollback in (this process only)"
        else:
            try:
                note = str(record(rollback))
            except Exception as exc:  # the registry may be down: the local rollback stands
                note = f"{rollback.label}: rollback not recorded in the registry ({exc})"
                log.warning(note)
                return note
        if rollback.role == "challenger":
            self.versions["staging"] = None
        log.info("autopilot: %s", note)
        return note

    # -- background -----------------------------------------------------------------------------
    def _spawn(self) -> None:
        if isinstance(self.event_log, SpooledEventLog):
            self._thread(self._replay_loop, "spool-replay")
        if self.settings.serving_poll_s > 0 and self.source is not None:
            self._thread(self._poll, "model-poller")
        if self.settings.serving_sync_log_s > 0:
            self._thread(self._follow_log, "log-follower")
        self._thread(self._refresh_tuning, "tuning-refresh")
        if self.router.features is None and self.settings.serving_features != "off":
            self._threads.append(
                open_in_background(self.settings, self.event_log, self._features_ready)
            )

    def _tunings(self) -> list[ServedTuning]:
        """The router's shared tuning and each serving slot's own (deduplicated)."""
        lineup = self.router.lineup
        found = [self.router.tuning]
        for slot in (lineup.champion, lineup.challenger):
            if slot is not None and slot.loop.tuning is not None:
                found.append(slot.loop.tuning)
        return list({id(t): t for t in found}.values())

    def refresh_tuning_once(self) -> float:
        """Refresh one stale (task type x model) pair of each tuning: its best and its next
        TPE suggestion; the CPU seconds spent on it, by this thread and the tuning child (0.0:
        nothing was stale)."""
        child = self.tuning_process
        if child is not None and child.cooling:  # it failed: the pairs wait for a new child
            return 0.0
        started, child_cpu = time.thread_time(), child.cpu_s if child is not None else 0.0
        refreshed = sum(tuning.refresh(limit=1, child=child) for tuning in self._tunings())
        if not refreshed:
            return 0.0
        spent = time.thread_time() - started
        return spent + (child.cpu_s - child_cpu if child is not None else 0.0)

    def _refresh_tuning(self) -> None:
        """The deferred TPE work, within ``serving_tuning_cpu_share`` of one core: after ``c``
        CPU seconds of work (here and in the tuning child) it waits ``c * (1 - share) / share``.
        In the child, TPE leaves this process's GIL alone; on this thread (no child) the event
        loop gets the GIL back only every switch interval."""
        share = self.settings.serving_tuning_cpu_share
        pause = TUNING_IDLE_S
        while not self._stop.wait(pause):
            try:
                spent = self.refresh_tuning_once()
            except Exception:  # the refresher must survive anything
                log.exception("parameter tuning refresh failed; retrying")
                spent = 0.0
            pause = max(spent * (1 - share) / share, TUNING_MIN_PAUSE_S) if spent else TUNING_IDLE_S

    def _features_ready(self, features: LiveFeatures | None) -> None:
        if features is None:
            self.features_state = "unavailable"
            return
        if self._stop.is_set():
            features.close()
            return
        features.start_at(max(self._max_feedback_id() - FEATURE_BACKFILL_EVENTS, 0))
        self.router.features = features
        self.features_state = "open"
        log.info("online features open (%s)", self.settings.serving_features)
        if features.writer is not None and self._background and self._pusher is None:
            if self.settings.serving_push_process:
                self._pusher = PushProcess(
                    Path(str(features.writer.store.config.repo_path)),
                    self.settings.serving_features,
                    after=features.cursor,
                    interval_s=self.settings.serving_features_push_s,
                    on_push=features.pushed_by_child,
                    event_log_url=self.event_log.url,
                )
                if self._stop.is_set():  # closed meanwhile
                    return
                self._pusher.start()
            else:
                self._pusher = self._thread(self._push_features, "feature-pusher")

    def push_features_once(self) -> int:
        """Push the event log's new feedback to the online store now; events pushed."""
        features = self.router.features
        return features.follow_log_once() if features is not None else 0

    def _push_features(self) -> None:
        while not self._stop.wait(self.settings.serving_features_push_s):
            try:
                self.push_features_once()
            except Exception:  # a store outage must not kill the pusher
                log.exception("feature push failed; retrying")

    def _thread(self, target: Any, name: str) -> threading.Thread:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)
        return t

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.serving_poll_s):
            try:
                result = self.reload()
                if result.changed:
                    get_metrics().observe_swap(result.elapsed_ms / 1000, trigger="poll")
                for note in result.notes:
                    log.info("reload: %s", note)
            except Exception:  # the poller must survive anything
                log.exception("model poll failed; current models kept")

    def note_own_feedback(self, feedback_id: int | None) -> None:
        """Remember feedback this worker learned itself (the log follower skips it)."""
        if feedback_id is not None and self.settings.serving_sync_log_s > 0:
            self._own_feedback.add(feedback_id)

    def follow_log_once(self) -> int:
        """Learn the other workers' feedback stored since the last call; the cursor's feedback
        id (the cursor itself, :class:`llmopt.event_log.LogCursor`, is commit-safe)."""
        self._log_cursor = self.router.learn_from_log(self._log_cursor, self._own_feedback)
        return self._log_cursor.feedback_id

    def _follow_log(self) -> None:
        while not self._stop.wait(self.settings.serving_sync_log_s):
            try:
                started = time.time()
                self.follow_log_once()
                get_metrics().caught_up(started)
            except Exception:
                log.exception("event log follow failed; retrying")

    def close(self) -> None:
        """Stop the background threads and release the event log."""
        self._stop.set()
        if isinstance(self._pusher, PushProcess):
            self._pusher.close()
        if self.tuning_process is not None:
            self.tuning_process.close()
        for t in self._threads:
            t.join(timeout=2)
        if self.router.features is not None:
            self.router.features.close()
        if self.shared_state is not None:
            self.shared_state.close()
        self.event_log.close()

    @property
    def shared_state_degraded(self) -> str | None:
        """Why the configured shared state (Redis) is not in use right now (None: it is, or
        the state is local by design); ``/readyz`` reports it."""
        return self.shared_state.degraded if self.shared_state is not None else None

    @property
    def fallback(self) -> bool:
        """True while the static default policy is the champion."""
        return self.router.lineup.champion.label == STATIC_LABEL
