"""Per-prompt outcomes of several LLMs (the shared routing format), loaded and validated.

One row per (prompt, model) with the columns ``dataset, split, sample_id, prompt, model, quality,
cost_usd, input_chars, output_chars``. Prompts that lack some model's outcome are dropped (a replay
needs every model's outcome to score any choice) and the count is reported.

Examples
--------
>>> import pandas as pd
>>> rows = [
...     dict(dataset="d", split="s", sample_id=f"p{i}", prompt=f"q{i}", model=m,
...          quality=q, cost_usd=c, input_chars=10, output_chars=20)
...     for i in range(3) for m, q, c in (("big", 0.9, 0.01), ("small", 0.5, 0.001))
... ]
>>> data = routing_data_from_frame(pd.DataFrame(rows[:-1]))
>>> data.models, data.n_prompts, data.dropped_prompts
(['big', 'small'], 2, 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DEMO_DATA = Path(__file__).resolve().parent / "data" / "alpaca_eval.parquet"
"""The routing file the demo replays (AlpacaEval, Apache-2.0; ``llmopt/data/README.md``)."""

REQUIRED_COLUMNS = {
    "dataset": "string",
    "split": "string",
    "sample_id": "string",
    "prompt": "string",
    "model": "string",
    "quality": "number",
    "cost_usd": "number",
    "input_chars": "number",
    "output_chars": "number",
}


class RoutingDataError(ValueError):
    """The file is not valid routing data; the message names what is wrong."""


@dataclass(frozen=True)
class RoutingData:
    """Outcomes as dense arrays: ``quality[i, j]`` of model ``j`` on prompt ``i``."""

    source: str
    sample_ids: list[str]
    prompts: list[str]
    models: list[str]
    quality: np.ndarray
    cost_usd: np.ndarray
    output_chars: np.ndarray
    dropped_prompts: int

    @property
    def n_prompts(self) -> int:
        """Number of prompts with every model's outcome."""
        return len(self.prompts)


def load_routing_data(path: Path | str) -> RoutingData:
    """Read and validate a routing parquet (or CSV) file."""
    path = Path(path)
    if not path.exists():
        raise RoutingDataError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path)
        else:
            frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types; all mean "not a readable table"
        raise RoutingDataError(f"{path}: not a readable parquet/CSV file ({exc})") from None
    return routing_data_from_frame(frame, source=str(path))


def routing_data_from_frame(frame: pd.DataFrame, *, source: str = "<frame>") -> RoutingData:
    """Validate a frame in the routing format and pivot it into dense arrays."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise RoutingDataError(f"{source}: missing column(s): {', '.join(missing)}")
    if frame.empty:
        raise RoutingDataError(f"{source}: no rows")
    frame, problems = _check_values(frame)
    if problems:
        raise RoutingDataError(f"{source}: bad values: " + "; ".join(problems))
    return _pivot(frame, source)


def _check_values(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Coerce numeric columns; list every problem (types, ranges, duplicates) by column."""
    problems: list[str] = []
    for col, kind in REQUIRED_COLUMNS.items():
        if kind == "number":
            values = pd.to_numeric(frame[col], errors="coerce")
            bad = values.isna() | ~np.isfinite(values.astype(float))
            if bad.any():
                problems.append(f"{col}: {int(bad.sum())} non-numeric or missing value(s)")
                continue
            frame = frame.assign(**{col: values.astype(float)})
        elif frame[col].isna().any():
            problems.append(f"{col}: {int(frame[col].isna().sum())} missing value(s)")
    if not problems:
        q = frame["quality"]
        if ((q < 0) | (q > 1)).any():
            problems.append(f"quality: {int(((q < 0) | (q > 1)).sum())} value(s) outside [0, 1]")
        for col in ("cost_usd", "input_chars", "output_chars"):
            if (frame[col] < 0).any():
                problems.append(f"{col}: {int((frame[col] < 0).sum())} negative value(s)")
        dupes = frame.duplicated(["sample_id", "model"])
        if dupes.any():
            problems.append(f"sample_id+model: {int(dupes.sum())} duplicated row(s)")
    return frame, problems


def _pivot(frame: pd.DataFrame, source: str) -> RoutingData:
    frame = frame.assign(sample_id=frame["sample_id"].astype(str), model=frame["model"].astype(str))
    models = sorted(frame["model"].unique())
    if len(models) < 2:
        raise RoutingDataError(f"{source}: routing needs at least 2 models, found {len(models)}")
    counts = frame.groupby("sample_id")["model"].nunique()
    complete = counts[counts == len(models)].index
    dropped = len(counts) - len(complete)
    frame = frame[frame["sample_id"].isin(complete)]
    if frame.empty:
        raise RoutingDataError(f"{source}: no prompt has an outcome for every model")
    quality = frame.pivot(index="sample_id", columns="model", values="quality")[models]
    cost = frame.pivot(index="sample_id", columns="model", values="cost_usd")[models]
    out_chars = frame.pivot(index="sample_id", columns="model", values="output_chars")[models]
    prompts = frame.drop_duplicates("sample_id").set_index("sample_id")["prompt"]
    order = list(quality.index)
    return RoutingData(
        source=source,
        sample_ids=order,
        prompts=[str(p) for p in prompts.loc[order]],
        models=models,
        quality=quality.to_numpy(dtype=float),
        cost_usd=cost.to_numpy(dtype=float),
        output_chars=out_chars.to_numpy(dtype=float),
        dropped_prompts=int(dropped),
    )
