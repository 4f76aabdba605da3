"""Optional neighbours of the pipelines, found at run time: the feature store and monitoring.

Both packages land in their own issues; the flows call them when they are importable and say
clearly when they are not, instead of failing or importing them eagerly.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

FEATURE_STORE_MATERIALIZE = ("feature_store.training", "materialize_incremental")
FEATURE_SERVICE = ("feature_store.names", "ROUTER_SERVICE")
DRIFT_REPORT = (
    ("monitoring.reports", "drift_report"),
    ("monitoring.drift", "drift_report"),
    ("monitoring", "drift_report"),
)
IN_PROCESS_FEATURES = "in-process:llmopt.features"


def _attr(module: str, name: str) -> Any | None:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return getattr(mod, name, None)


def feature_service_version() -> str:
    """Name of the feature service the router reads (``in-process`` without a feature store)."""
    value = _attr(*FEATURE_SERVICE)
    return str(value) if value else IN_PROCESS_FEATURES


def materialize_function() -> Callable[..., Any] | None:
    """The feature store's ``materialize_incremental``, or None when it is not installed."""
    fn = _attr(*FEATURE_STORE_MATERIALIZE)
    return fn if callable(fn) else None


def drift_function() -> Callable[..., Any] | None:
    """Monitoring's drift report entry point, or None until monitoring lands."""
    for module, name in DRIFT_REPORT:
        fn = _attr(module, name)
        if callable(fn):
            found: Callable[..., Any] = fn
            return found
    return None


def call_with_known(fn: Callable[..., Any], **available: Any) -> Any:
    """Call ``fn`` with the keyword arguments it declares among ``available``."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**available)
    return fn(**{k: v for k, v in available.items() if k in params})
