"""Push the demo's feedback through the feature store and read it back.

``demo_roundtrip(events)`` applies the embedded profile in a working copy of ``feature_repo/``
under the state directory (``$LLMOPT_HOME/feature_repo``: the demo's rows never land in the
checkout), pushes every event through the aggregation and the push sources (online) and the
offline store, reads the router's features of every model back in one call, and builds a
point-in-time training set of the same decisions.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from feature_store import names, training
from feature_store import store as fs_store
from feature_store.reader import OnlineFeatureReader
from feature_store.writer import FeatureWriter
from llmopt.event_log import LoggedEvent
from llmopt.settings import Settings, get_settings
from llmopt.tasks import task_type


def demo_roundtrip(
    events: Iterable[LoggedEvent],
    *,
    settings: Settings | None = None,
    models: Sequence[str] | None = None,
    training_rows: int = 200,
) -> dict[str, Any]:
    """Push ``events`` (e.g. ``EventLog.feedback_since(0)``) and read them back; a summary."""
    settings = settings or get_settings()
    events = sorted(events, key=lambda e: e.received_at)
    repo = fs_store.copy_repo(settings.ensure_home() / "feature_repo")
    started = time.perf_counter()
    store = fs_store.apply_repo("embedded", repo)
    apply_s = time.perf_counter() - started
    writer = FeatureWriter(store, max_batch=5000)
    started = time.perf_counter()
    added = writer.add(events)
    writer.flush()
    push_s = time.perf_counter() - started
    models = list(models or sorted({e.model for e in events}))
    reader = OnlineFeatureReader(store, budget_ms=1000.0)  # not the decision path: show values
    task = task_type((events[-1].context.get("task_hints") or []) if events else [])
    tenant = events[-1].tenant if events else "demo"
    read = reader.read(models, tenant=tenant, task_type=task)
    reader.close()
    sample = events[-training_rows:]
    frame = training.training_set(store, training.decisions_frame(sample)) if sample else None
    return {
        "repo": str(Path(repo)),
        "apply_s": round(apply_s, 2),
        "events": len(events),
        "accepted": added.accepted,
        "rejected": len(added.rejected),
        "rows_pushed": writer.pushed_rows,
        "push_events_per_s": round(added.accepted / push_s, 1) if push_s > 0 else None,
        "read_ms": round(read.elapsed_ms, 3),
        "read_degraded": read.degraded,
        "online": {
            m: {
                field: read.values[m][names.feature_ref(names.MODEL_PERF_VIEW, field)]
                for field in ("error_rate_5m", "latency_p95_ms_5m", "request_count_1h")
            }
            for m in models
        },
        "training_set": None if frame is None else {"rows": len(frame), "columns": frame.shape[1]},
    }
