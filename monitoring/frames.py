"""The logged events as pandas frames: one flat row per event, the columns the reports compare.

Request features are the ones the policy sees (``REQUEST_NUMERIC``: lengths, code/math/choice
markers, script shares, willingness to pay; ``REQUEST_CATEGORICAL``: question type, task hint,
prompt template, tenant, one column each instead of a block of one-hot features), next to the
outcomes (``OUTCOME_COLUMNS``: quality, reward, cost, latency, error kind) and the decision (model,
propensity). :func:`per_model_frame` splits the outcomes by chosen model; :func:`usable_columns`
says which columns are worth a drift test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llmopt.event_log import LoggedEvent
from llmopt.tasks import clean_hints

if TYPE_CHECKING:
    import pandas as pd


REQUEST_NUMERIC: tuple[str, ...] = (
    "input_tokens",
    "len_chars",
    "len_words",
    "n_lines",
    "digits",
    "code",
    "math",
    "choices",
    "lang_en",
    "script_latin",
    "script_cyrillic",
    "script_cjk",
    "script_arabic",
    "script_other",
    "q_mark",
    "willingness_to_pay",
)
"""Numerical request features compared by the ``features`` report (see ``llmopt.features``)."""
REQUEST_CATEGORICAL: tuple[str, ...] = ("question_type", "task_hint", "prompt_template", "tenant")
"""Categorical request features: one column each instead of a block of one-hot features."""
OUTCOME_NUMERIC: tuple[str, ...] = ("quality", "reward", "cost_usd", "latency_ms")
OUTCOME_COLUMNS: tuple[str, ...] = (*OUTCOME_NUMERIC, "error_kind")
PER_MODEL_OUTCOMES: tuple[str, ...] = ("quality", "reward")
"""Outcomes the ``per_model`` drift report compares per model."""
OUTCOMES_BY_MODEL: tuple[str, ...] = ("reward", "quality", "cost_usd")
"""Outcomes the workspace's dashboard follows per model (their means per window)."""

_FROM_CONTEXT = frozenset({"input_tokens", "willingness_to_pay"})
"""Request columns read from the logged context, not from the policy's features."""


def _question_type(f: Mapping[str, float]) -> str:
    for key, name in (("q_wh", "wh"), ("q_yesno", "yes/no"), ("q_imperative", "imperative")):
        if f.get(key, 0.0) > 0:
            return name
    return "other"


def _template(f: Mapping[str, float]) -> str:
    hits = [k for k, v in f.items() if k.startswith("pfx_") and v > 0]
    return hits[0] if hits else "none"


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else math.nan


def event_row(e: LoggedEvent) -> dict[str, Any]:
    """One event as a flat row: ids, decision, request features and outcomes (NaN: absent).

    >>> from datetime import datetime, UTC
    >>> e = LoggedEvent(7, "d7", datetime.now(UTC), datetime.now(UTC), "acme", "m1", 0.9, "p", "1",
    ...     {"task_hints": ["Code"], "input_tokens": 12, "willingness_to_pay": 0.05},
    ...     {"len_chars": 0.3, "q_wh": 1.0, "pfx_2": 1.0}, 0.8, 0.7, 0.001, None, None)
    >>> row = event_row(e)
    >>> row["question_type"], row["task_hint"], row["prompt_template"], row["input_tokens"]
    ('wh', 'code', 'pfx_2', 12.0)
    >>> math.isnan(row["latency_ms"]), row["error_kind"], math.isnan(row["code"])
    (True, 'none', True)
    """
    f = e.features
    ctx = e.context
    hints = sorted(clean_hints(ctx.get("task_hints")))
    row: dict[str, Any] = {
        "feedback_id": e.feedback_id,
        "received_at": e.received_at,
        "model": e.model,
        "propensity": e.propensity,
        "policy_version": e.policy_version,
    }
    for name in REQUEST_NUMERIC:
        row[name] = _number(ctx.get(name) if name in _FROM_CONTEXT else f.get(name))
    row["question_type"] = _question_type(f)
    row["task_hint"] = "+".join(hints) if hints else "none"
    row["prompt_template"] = _template(f)
    row["tenant"] = e.tenant
    for name in OUTCOME_NUMERIC:
        row[name] = _number(getattr(e, name))
    row["error_kind"] = e.error_kind or "none"
    return row


def events_frame(events: Sequence[LoggedEvent]) -> pd.DataFrame:
    """The events as a frame, one row each (see :func:`event_row`)."""
    import pandas as pd  # noqa: PLC0415

    columns = list(event_row_columns())
    return pd.DataFrame([event_row(e) for e in events], columns=columns)


def event_row_columns() -> tuple[str, ...]:
    """Columns of :func:`events_frame`, in order."""
    head = ("feedback_id", "received_at", "model", "propensity", "policy_version")
    return (*head, *REQUEST_NUMERIC, *REQUEST_CATEGORICAL, *OUTCOME_COLUMNS)


def per_model_frame(frame: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    """Columns ``quality[model]`` and ``reward[model]``: the outcome where ``model`` was chosen.

    Rows of other models are NaN there (Evidently drops NaN per column before testing).
    """
    import pandas as pd  # noqa: PLC0415

    out = {
        f"{outcome}[{m}]": frame[outcome].where(frame["model"] == m)
        for m in models
        for outcome in PER_MODEL_OUTCOMES
    }
    return pd.DataFrame(out, index=frame.index)


def comparable_models(ref: pd.DataFrame, cur: pd.DataFrame, min_rows: int) -> list[str]:
    """Models chosen at least ``min_rows`` times in both frames, most chosen first."""
    r, c = ref["model"].value_counts(), cur["model"].value_counts()
    both = [m for m in r.index if r[m] >= min_rows and c.get(m, 0) >= min_rows]
    return sorted(both, key=lambda m: (-int(r[m] + c[m]), str(m)))


def left_out_models(ref: pd.DataFrame, cur: pd.DataFrame, min_rows: int) -> dict[str, str]:
    """Models chosen in either frame but fewer than ``min_rows`` times in one of them, with why.

    The complement of :func:`comparable_models`, most chosen first.

    >>> import pandas as pd
    >>> ref, cur = pd.DataFrame({"model": list("aaab")}), pd.DataFrame({"model": list("aac")})
    >>> left_out_models(ref, cur, 2)
    {'b': '1 event in the reference window and 0 in the current one (fewer than 2)', \
'c': '0 events in the reference window and 1 in the current one (fewer than 2)'}
    """
    r, c = ref["model"].value_counts(), cur["model"].value_counts()
    counts = {str(m): (int(r.get(m, 0)), int(c.get(m, 0))) for m in set(r.index) | set(c.index)}
    out = {}
    for m, (n_ref, n_cur) in sorted(counts.items(), key=lambda kv: (-sum(kv[1]), kv[0])):
        if min(n_ref, n_cur) < min_rows:
            out[m] = (
                f"{n_ref} event{'s' if n_ref != 1 else ''} in the reference window and {n_cur} "
                f"in the current one (fewer than {min_rows})"
            )
    return out


def version_model(version: str, model: str) -> str:
    """The label of a (policy version, model) pair: ``v<version> <model>``."""
    return f"v{version} {model}"


def outcomes_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Per event: the chosen model, the policy version, their pair and the outcomes.

    What the workspace's outcome snapshot summarises per model and per version (see
    :mod:`monitoring.workspace`).

    >>> import pandas as pd
    >>> f = pd.DataFrame({"model": ["a"], "policy_version": ["3"], "reward": [0.5],
    ...                   "quality": [0.7], "cost_usd": [0.01]})
    >>> outcomes_frame(f).to_dict("records")
    [{'model': 'a', 'policy_version': '3', 'version_model': 'v3 a', 'reward': 0.5, \
'quality': 0.7, 'cost_usd': 0.01}]
    """
    import pandas as pd  # noqa: PLC0415

    versions = frame["policy_version"].fillna("none").astype(str)
    models = frame["model"].astype(str)
    return pd.DataFrame(
        {
            "model": models,
            "policy_version": versions,
            "version_model": [version_model(v, m) for v, m in zip(versions, models, strict=True)],
            **{name: frame[name].astype(float) for name in OUTCOMES_BY_MODEL},
        },
        index=frame.index,
    )


def usable_columns(
    ref: pd.DataFrame, cur: pd.DataFrame, columns: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """Columns worth testing, and why the others are left out (empty, or one same value)."""
    kept: list[str] = []
    skipped: dict[str, str] = {}
    for col in columns:
        r, c = ref[col].dropna(), cur[col].dropna()
        if r.empty or c.empty:
            skipped[col] = "no values in the " + ("reference" if r.empty else "current") + " window"
            continue
        values = set(r.unique()) | set(c.unique())
        if len(values) == 1:
            value = next(iter(values))
            value = value.item() if hasattr(value, "item") else value  # numpy scalar -> Python
            skipped[col] = f"constant ({value!r}) in both windows"
            continue
        kept.append(col)
    return kept, skipped
