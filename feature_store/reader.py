"""The serving-side reader: the router's features for every candidate model, within a budget.

One ``get_online_features`` call per decision reads the router's feature service for all
candidate models at once: one entity row per model, holding only the join keys of the service's
views (``model`` and ``task_type`` for ``router_v2``; ``tenant`` and ``deployment`` only for a
service that reads the tenant or system view). The call runs on a worker thread and the caller
waits at most ``budget_ms``: if the online store is slow, down or broken, the caller gets the last
values read for each model (``stale``) or, failing those, the defaults (``defaulted``), with
``degraded`` set and the reason, never an exception. While a timed-out call is still running no
new one is started, so a hung store costs the decision path nothing beyond the first budget.
Unknown entity keys (a new model, a task type new to a model) get defaults for the missing
features: the model is listed in ``defaulted`` and those features in ``defaulted_features``, so a
consumer distrusts only the values that are defaults (:meth:`RouterFeatures.known`).

Feature names are Feast's full names, ``<view>__<feature>`` (the two performance views share
feature names).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from feature_store import names

if TYPE_CHECKING:
    from feast import FeatureStore

DEFAULT_BUDGET_MS = 3.0
HANDOFF_MS = 0.3
"""Waking the caller after a timed-out wait takes ~0.2-0.4 ms on a busy machine: the wait stops
this much before the budget so that the whole read stays within it."""
ALL_KEYS = (names.MODEL_KEY, names.TASK_TYPE_KEY, names.TENANT_KEY, names.DEPLOYMENT_KEY)
"""Join keys an entity row can carry; a view the catalogue does not know gets all of them."""


def default_values(service_features: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Default of every feature: 0, meaning "nothing known" (counts say how much is known)."""
    return {
        names.feature_ref(view, field): 0.0
        for view, fields in service_features.items()
        for field in fields
    }


@dataclass(frozen=True)
class RouterFeatures:
    """What the router gets: values per model, and how trustworthy they are."""

    values: dict[str, dict[str, float]]
    """model -> full feature name -> value."""
    degraded: bool = False
    """True when the online store did not answer in time or failed: values are stale/defaults."""
    reason: str = ""
    stale: frozenset[str] = frozenset()
    """Models served from their last successful read."""
    defaulted: frozenset[str] = frozenset()
    """Models with at least one default value (unknown key, or no earlier read to fall back on)."""
    elapsed_ms: float = 0.0
    notes: list[str] = field(default_factory=list)
    defaulted_features: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Model of ``defaulted`` -> the full names of its features that are defaults (a model
    missing here while in ``defaulted``: all of them may be)."""
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    """What consumers derived from these (unchanging) values, kept with them: a served
    :class:`RouterFeatures` is cached and read by many decisions (:mod:`serving.live_features`)."""

    def known(self, model: str, features: Iterable[str]) -> bool:
        """True when none of ``model``'s values of ``features`` is a default: each was read from
        the store, now or (``stale``) in the last successful read.

        >>> f = RouterFeatures(values={}, defaulted=frozenset({"new", "b"}),
        ...                    defaulted_features={"b": frozenset({"v__q"})})
        >>> f.known("a", ["v__q"]), f.known("b", ["v__err"]), f.known("b", ["v__q"])
        (True, True, False)
        >>> f.known("new", ["v__err"])
        False
        """
        if model not in self.defaulted:
            return True
        missing = self.defaulted_features.get(model)
        return missing is not None and missing.isdisjoint(features)


class OnlineFeatureReader:
    """Read a feature service for all candidate models in one call, within a latency budget.

    Parameters
    ----------
    store
        The Feast store (any profile).
    service
        Feature service name; ``router_v2`` (:data:`feature_store.names.ROUTER_SERVICE`) by
        default.
    budget_ms
        The longest the caller waits for the online store.
    defaults
        Value per full feature name when nothing better is known (0 by default).
    deployment
        Deployment key of the system features (used only by a service that reads them).
    """

    def __init__(
        self,
        store: FeatureStore,
        *,
        service: str = names.ROUTER_SERVICE,
        budget_ms: float = DEFAULT_BUDGET_MS,
        defaults: Mapping[str, float] | None = None,
        deployment: str = names.DEFAULT_DEPLOYMENT,
    ) -> None:
        self.store = store
        self.service = service
        self.budget_ms = budget_ms
        self.deployment = deployment
        self._features: Any = None
        self._names: list[str] = []
        self._keys: tuple[str, ...] = ALL_KEYS
        self.defaults = dict(defaults or default_values(names.ROUTER_FEATURES))
        self._last: dict[str, dict[str, float]] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feature-reader")
        self._inflight: Future[dict[str, list[Any]]] | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop the worker thread (a hung call is abandoned, not waited for)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _resolve(self) -> Any:
        if self._features is None:
            fs = self.store.get_feature_service(self.service)
            self._names = [
                f"{p.name_to_use()}__{f.name}"  # type: ignore[no-untyped-call]
                for p in fs.feature_view_projections
                for f in p.features
            ]
            for name in self._names:
                self.defaults.setdefault(name, 0.0)
            keys = [
                key
                for p in fs.feature_view_projections
                for key in names.VIEW_KEYS.get(p.name, ALL_KEYS)
            ]
            self._keys = tuple(k for k in ALL_KEYS if k in keys)
            self._features = fs
        return self._features

    @property
    def tenant_keyed(self) -> bool:
        """Whether a read depends on the tenant: a view of the service is keyed by it. True
        until the service has been resolved (by the first read): never a store call here."""
        return self._features is None or names.TENANT_KEY in self._keys

    def entity_rows(
        self, models: Sequence[str], *, tenant: str, task_type: str
    ) -> list[dict[str, str]]:
        """The entity rows a read sends: one per model, with the join keys of the service's views
        only (``model`` and ``task_type`` for ``router_v2``). Resolves the service on first use
        (a registry read)."""
        self._resolve()
        shared = {
            names.TASK_TYPE_KEY: task_type,
            names.TENANT_KEY: tenant,
            names.DEPLOYMENT_KEY: self.deployment,
        }
        return [{k: m if k == names.MODEL_KEY else shared[k] for k in self._keys} for m in models]

    def _call(self, models: Sequence[str], tenant: str, task_type: str) -> dict[str, list[Any]]:
        rows = self.entity_rows(models, tenant=tenant, task_type=task_type)
        resp = self.store.get_online_features(
            features=self._resolve(), entity_rows=rows, full_feature_names=True
        )
        result: dict[str, list[Any]] = resp.to_dict()
        return result

    def read(
        self,
        models: Sequence[str],
        *,
        tenant: str,
        task_type: str,
        budget_ms: float | None = None,
    ) -> RouterFeatures:
        """Features of every model in ``models`` for one request; never raises.

        ``budget_ms`` overrides the reader's budget for this call (a background refresh can
        afford to wait longer than a decision). ``tenant`` is sent only if the service reads a
        tenant-keyed view (``router_v2`` does not; the argument stays for the callers).
        """
        budget = self.budget_ms if budget_ms is None else budget_ms
        started = time.perf_counter()
        with self._lock:
            busy = self._inflight is not None and not self._inflight.done()
            if busy:
                return self._fallback(
                    models, "an earlier read is still waiting on the store", started
                )
            try:
                future = self._inflight = self._pool.submit(self._call, models, tenant, task_type)
            except RuntimeError as exc:  # pool shut down
                return self._fallback(models, f"reader closed: {exc}", started)
        remaining = (budget - HANDOFF_MS) / 1000 - (time.perf_counter() - started)
        try:
            data = future.result(timeout=max(remaining, 0.0))
        except TimeoutError:
            return self._fallback(models, f"online store slower than {budget} ms", started)
        except Exception as exc:  # noqa: BLE001 - any store failure becomes a flagged fallback
            first = str(exc).splitlines()[0] if str(exc) else ""
            return self._fallback(
                models, f"online store failed: {type(exc).__name__}: {first}"[:300], started
            )
        return self._parse(models, data, started)

    def _parse(
        self, models: Sequence[str], data: dict[str, list[Any]], started: float
    ) -> RouterFeatures:
        values: dict[str, dict[str, float]] = {}
        defaulted: dict[str, frozenset[str]] = {}
        names = self._names or [n for n in data if "__" in n]
        for i, model in enumerate(models):
            row: dict[str, float] = {}
            missing: list[str] = []
            for name in names:
                v = data[name][i] if name in data else None
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    row[name] = self.defaults.get(name, 0.0)
                    missing.append(name)
                else:
                    row[name] = float(v)
            values[model] = row
            if missing:
                defaulted[model] = frozenset(missing)
            else:
                self._last[model] = row
        return RouterFeatures(
            values=values,
            defaulted=frozenset(defaulted),
            reason="unknown keys got defaults" if defaulted else "",
            elapsed_ms=(time.perf_counter() - started) * 1000,
            defaulted_features=defaulted,
        )

    def _fallback(self, models: Sequence[str], reason: str, started: float) -> RouterFeatures:
        values: dict[str, dict[str, float]] = {}
        stale: set[str] = set()
        defaulted: set[str] = set()
        all_names = list(self._names or self.defaults)
        every = frozenset(all_names)
        for model in models:
            last = self._last.get(model)
            if last is not None:
                values[model] = dict(last)
                stale.add(model)
            else:
                values[model] = {n: self.defaults.get(n, 0.0) for n in all_names}
                defaulted.add(model)
        return RouterFeatures(
            values=values,
            degraded=True,
            reason=reason,
            stale=frozenset(stale),
            defaulted=frozenset(defaulted),
            elapsed_ms=(time.perf_counter() - started) * 1000,
            defaulted_features=dict.fromkeys(defaulted, every),
        )
