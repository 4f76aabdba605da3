"""Feast without typeguard's run-time instrumentation: seconds off every process that opens it.

Feast decorates its definition classes (``FeatureView``, ``Field``, ``Entity``,
``FeatureService``, ``DataSource`` and its subclasses, ...) with typeguard's ``@typechecked``.
Typeguard 4 instruments each method of such a class by reading, parsing and compiling the
*whole* source of its module again, so importing Feast took ~6.5 s of CPU here instead of
~3.7 s (``python -c "import feast.feature_store"``, typeguard 4.6), in every process that opens
the store: each service worker and its online-feature push child, the CLI, the flows. Every
call of an instrumented method then also checks its arguments' types.

Under ``python -O`` typeguard leaves the functions as they are; :func:`feast_without_typechecks`
does the same for this process, before Feast's first import (afterwards it changes nothing).
What is lost: a wrong argument type given to one of those classes raises later, in Feast's
code, instead of at once as a ``TypeCheckError``. Only Feast uses typeguard in this
environment.
"""

from __future__ import annotations

import sys
from typing import Any


def _unchecked(target: Any = None, **_options: Any) -> Any:
    """``typeguard.typechecked`` as under ``python -O``: the target unchanged."""
    if target is None:  # used as ``@typechecked(...)``
        return _unchecked
    return target


def feast_without_typechecks() -> bool:
    """Make typeguard's ``@typechecked`` a no-op in this process, if Feast is not imported yet.

    Returns whether Feast's classes will be left unchecked (False: Feast was already imported,
    with its checks).

    >>> _unchecked(len) is len and _unchecked(collection_check_strategy=None)(len) is len
    True
    """
    if "feast" in sys.modules:
        return _is_off()
    import typeguard  # noqa: PLC0415 - only when Feast is about to be imported

    typeguard.typechecked = _unchecked
    return True


def _is_off() -> bool:
    typeguard = sys.modules.get("typeguard")
    return typeguard is not None and typeguard.typechecked is _unchecked
