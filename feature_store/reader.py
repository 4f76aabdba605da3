"""The serving-side reader: the router's features for every candidate model, within a budget.

One ``get_online_features`` call per decision reads the router's feature service for all
candidate models at once (one entity row per model; Feast de-duplicates the tenant and system
keys). The call runs on a worker thread and the caller waits at most ``budget_ms``: if the online
store is slow, down or broken, the caller gets the last values read for each model (``stale``) or,
failing those, the defaults (``defaulted``), with ``degraded`` set and the reason, never an
exception. While a timed-out call is still running no new one is started, so a hung store costs
the decision path nothing beyond the first budget. Unknown entity keys (a new model, a new tenant)
get defaults for the missing features and are listed in ``defaulted``.

Feature names are Feast's full names, ``<view>__<feature>`` (the two performance views share
feature names).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
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


class OnlineFeatureReader:
    """Read a feature service for all candidate models in one call, within a latency budget.

    Parameters
    ----------
    store
        The Feast store (any profile).
    service
        Feature service name; ``router_v1`` by default.
    budget_ms
        The longest the caller waits for the online store.
    defaults
        Value per full feature name when nothing better is known (0 by default).
    deployment
        Deployment key of the system features.
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
            self._features = fs
        return self._features

    def _call(self, rows: list[dict[str, str]]) -> dict[str, list[Any]]:
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
        afford to wait longer than a decision).
        """
        budget = self.budget_ms if budget_ms is None else budget_ms
        started = time.perf_counter()
        rows = [
            {
                names.MODEL_KEY: m,
                names.TASK_TYPE_KEY: task_type,
                names.TENANT_KEY: tenant,
                names.DEPLOYMENT_KEY: self.deployment,
            }
            for m in models
        ]
        with self._lock:
            busy = self._inflight is not None and not self._inflight.done()
            if busy:
                return self._fallback(
                    models, "an earlier read is still waiting on the store", started
                )
            try:
                future = self._inflight = self._pool.submit(self._call, rows)
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
        defaulted: set[str] = set()
        names = self._names or [n for n in data if "__" in n]
        for i, model in enumerate(models):
            row: dict[str, float] = {}
            for name in names:
                v = data[name][i] if name in data else None
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    row[name] = self.defaults.get(name, 0.0)
                    defaulted.add(model)
                else:
                    row[name] = float(v)
            values[model] = row
            if model not in defaulted:
                self._last[model] = row
        return RouterFeatures(
            values=values,
            defaulted=frozenset(defaulted),
            reason="unknown keys got defaults" if defaulted else "",
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )

    def _fallback(self, models: Sequence[str], reason: str, started: float) -> RouterFeatures:
        values: dict[str, dict[str, float]] = {}
        stale: set[str] = set()
        defaulted: set[str] = set()
        for model in models:
            last = self._last.get(model)
            if last is not None:
                values[model] = dict(last)
                stale.add(model)
            else:
                values[model] = {n: self.defaults.get(n, 0.0) for n in self._names or self.defaults}
                defaulted.add(model)
        return RouterFeatures(
            values=values,
            degraded=True,
            reason=reason,
            stale=frozenset(stale),
            defaulted=frozenset(defaulted),
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )
