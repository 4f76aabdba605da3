"""Read-only, batch-oriented queries over the event log for training and evaluation.

:meth:`llmopt.event_log.EventLog.iter_events` builds a full :class:`~llmopt.event_log.LoggedEvent`
per row (context JSON, timestamps...). Training needs five columns, so this module reads just
those, by keyset pagination on ``feedback_id`` (the cursor incremental training resumes from),
up to a high-water mark fixed when a run starts: every run has an exact data window
``(after_id, until_id]``.

Examples
--------
>>> from llmopt.event_log import EventLog
>>> from llmopt.schemas import Decision, Feedback, RequestContext
>>> log = EventLog("sqlite://")
>>> d = Decision(model="a", propensity=0.5, policy_name="doc", scores={"a": 0.1, "b": 0.0})
>>> log.record_decision(d, RequestContext(tenant="t"), features={"bias": 1.0})
>>> _ = log.record_feedback(Feedback(decision_id=d.decision_id, quality=0.8), reward=0.7)
>>> high_water_mark(log.engine)
1
>>> [(e.model, e.quality, e.arms) for b in batches(log.engine, 0, 1, with_context=True) for e in b]
[('a', 0.8, ('a', 'b'))]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from llmopt import fast_json
from llmopt.event_log import decisions, feedback


def _decode(value: Any) -> Any:
    return fast_json.loads(value) if isinstance(value, str | bytes) else value


@dataclass(frozen=True, slots=True)
class TrainingEvent:
    """One feedback joined with its decision: what training and off-policy evaluation read."""

    feedback_id: int
    model: str
    features: dict[str, float]
    quality: float
    reward: float | None
    cost_usd: float | None
    propensity: float
    policy_version: str
    arms: tuple[str, ...]
    """Models the decision chose among (the keys of its logged scores; read ``with_context``)."""
    context: dict[str, Any]


def high_water_mark(engine: Engine) -> int:
    """The largest feedback id in the log (0 when there is none)."""
    with engine.connect() as conn:
        top = conn.execute(sa.select(sa.func.max(feedback.c.feedback_id))).scalar_one()
    return int(top or 0)


def count_between(engine: Engine, after_id: int, until_id: int) -> int:
    """Number of feedback rows with ``after_id < feedback_id <= until_id``."""
    with engine.connect() as conn:
        n = conn.execute(
            sa.select(sa.func.count())
            .select_from(feedback)
            .where(feedback.c.feedback_id > after_id, feedback.c.feedback_id <= until_id)
        ).scalar_one()
    return int(n)


def batches(
    engine: Engine,
    after_id: int,
    batch_size: int,
    *,
    until_id: int | None = None,
    with_context: bool = False,
) -> Iterator[list[TrainingEvent]]:
    """Events with ``after_id < feedback_id <= until_id``, oldest first, ``batch_size`` at a time.

    Each batch is one short query (keyset pagination), so a long backlog never holds a
    transaction or a cursor open while the policy learns.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cols = [
        feedback.c.feedback_id,
        decisions.c.model,
        # Raw JSON text, decoded below with the fastest decoder available (most of a read's
        # cost); PostgreSQL's driver may already return a dict.
        sa.type_coerce(decisions.c.features, sa.Text).label("features"),
        feedback.c.quality,
        feedback.c.reward,
        feedback.c.cost_usd,
        decisions.c.propensity,
        decisions.c.policy_version,
    ]
    if with_context:  # evaluation needs the offered models and the request's trade-off
        cols += [decisions.c.scores, decisions.c.context]
    cursor = after_id
    while True:
        query = (
            sa.select(*cols)
            .join(decisions, decisions.c.decision_id == feedback.c.decision_id)
            .where(feedback.c.feedback_id > cursor)
            .order_by(feedback.c.feedback_id)
            .limit(batch_size)
        )
        if until_id is not None:
            query = query.where(feedback.c.feedback_id <= until_id)
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return
        yield [
            TrainingEvent(
                feedback_id=r.feedback_id,
                model=r.model,
                features=_decode(r.features),
                quality=r.quality,
                reward=r.reward,
                cost_usd=r.cost_usd,
                propensity=r.propensity,
                policy_version=r.policy_version,
                arms=(tuple(r.scores) or (r.model,)) if with_context else (r.model,),
                context=r.context if with_context else {},
            )
            for r in rows
        ]
        cursor = rows[-1].feedback_id
        if len(rows) < batch_size:
            return


def recent(engine: Engine, n: int, *, with_context: bool = True) -> list[TrainingEvent]:
    """The last ``n`` events of the log, oldest first (the evaluation window of promotion)."""
    top = high_water_mark(engine)
    with engine.connect() as conn:
        start = conn.execute(
            sa.select(feedback.c.feedback_id)
            .order_by(feedback.c.feedback_id.desc())
            .offset(max(n - 1, 0))
            .limit(1)
        ).scalar_one_or_none()
    after = int(start) - 1 if start is not None else 0
    return [
        e for b in batches(engine, after, 5000, until_id=top, with_context=with_context) for e in b
    ]


def rewards_by_policy_version(engine: Engine, versions: list[str]) -> dict[str, list[float]]:
    """Per-decision rewards of the decisions stamped with each ``policy_version`` (A/B test)."""
    out: dict[str, list[float]] = {v: [] for v in versions}
    query = (
        sa.select(decisions.c.policy_version, feedback.c.reward)
        .join(feedback, decisions.c.decision_id == feedback.c.decision_id)
        .where(decisions.c.policy_version.in_(versions), feedback.c.reward.is_not(None))
    )
    with engine.connect() as conn:
        for version, reward in conn.execute(query):
            out[version].append(float(reward))
    return out
