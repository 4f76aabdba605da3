"""Training sets by point-in-time joins, backfills, and materialisation.

``training_set`` joins each decision, at its own timestamp, with the newest feature rows at or
before it (``get_historical_features``): the features the router could have read then, never
later ones. ``backfill`` writes the rows of a stream of past events to the offline store (the
aggregation's rows carry the time of their newest feedback). ``materialize`` is the plain
function the pipelines schedule: it copies what the offline store gained since the last run into
the online store (it also rebuilds an online store that was lost).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from feature_store import names
from feature_store import store as fs_store
from feature_store.aggregation import Observation, aggregate_rows
from llmopt.event_log import LoggedEvent
from llmopt.settings import Settings

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore

LABELS = ("decision_id", "quality", "reward", "propensity", "cost_usd", "latency_ms")
"""Columns of the event log carried into a training set next to the features."""


def decisions_frame(events: Iterable[LoggedEvent]) -> pd.DataFrame:
    """The entity frame of a training set: one row per decision, at the decision's time."""
    import pandas as pd  # noqa: PLC0415

    rows: list[dict[str, Any]] = []
    for e in events:
        obs = Observation.from_logged(e)
        rows.append(
            {
                names.MODEL_KEY: e.model,
                names.TASK_TYPE_KEY: obs.task_type,
                names.TENANT_KEY: e.tenant,
                names.DEPLOYMENT_KEY: names.DEFAULT_DEPLOYMENT,
                names.TIMESTAMP: e.decided_at,
                **{k: getattr(e, k) for k in LABELS},
            }
        )
    return pd.DataFrame(rows)


def training_set(
    store: FeatureStore,
    entity_df: pd.DataFrame,
    *,
    service: str = names.TRAINING_SERVICE,
) -> pd.DataFrame:
    """Point-in-time join of ``entity_df`` (keys + ``event_timestamp``) with a feature service.

    Features are named ``<view>__<feature>``; a decision with no row at or before its time gets
    nulls. (Feast's file offline store drops such entity rows; when ``entity_df`` has a
    ``decision_id`` column they are put back, so a training set has one row per decision.)
    """
    import pandas as pd  # noqa: PLC0415

    job = store.get_historical_features(
        entity_df=entity_df,
        features=store.get_feature_service(service),
        full_feature_names=True,
    )
    frame: pd.DataFrame = job.to_df()
    if "decision_id" in entity_df.columns and len(frame) < len(entity_df):
        lost = entity_df[~entity_df["decision_id"].isin(frame["decision_id"])]
        frame = pd.concat([frame, lost], ignore_index=True)
    return frame.sort_values(names.TIMESTAMP, kind="stable").reset_index(drop=True)


def backfill(
    store: FeatureStore,
    events: Iterable[Observation | LoggedEvent],
    *,
    emit_every: timedelta = timedelta(seconds=10),
    online: bool = False,
) -> dict[str, int]:
    """Aggregate past events (in feedback-time order) and append the rows offline."""
    rows = aggregate_rows(events, emit_every=emit_every)
    out: dict[str, int] = {}
    for view, view_rows in rows.items():
        out[view] = fs_store.write_offline(store, view, view_rows)
        if online:
            fs_store.push_online(store, view, view_rows)
    return out


def materialize(store: FeatureStore, end: datetime | None = None) -> datetime:
    """``materialize_incremental`` up to ``end`` (now by default); return ``end``."""
    end = end or datetime.now(UTC)
    store.materialize_incremental(end_date=end)
    return end


def materialize_incremental(
    *,
    end_date: datetime | None = None,
    settings: Settings | None = None,
    store: FeatureStore | None = None,
) -> dict[str, Any]:
    """The scheduled job (``pipelines/materialize_features.py``): materialize the configured store.

    Without ``store`` it opens this checkout's ``feature_repo/`` in the profile named by
    ``LLMOPT_FEATURE_PROFILE`` (``embedded`` by default; the repo must have been applied).
    ``settings`` is accepted for the scheduler's uniform call and not otherwise needed.
    """
    del settings
    if store is None:
        profile = os.environ.get("LLMOPT_FEATURE_PROFILE", "embedded")
        store = fs_store.open_store("production" if profile == "production" else "embedded")
    fs_store.ensure_offline(store)
    end = materialize(store, end_date)
    return {"project": store.project, "end_date": end.isoformat()}
