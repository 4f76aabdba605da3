from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from llmopt.routing_data import RoutingDataError, load_routing_data, routing_data_from_frame


def rows(n_prompts: int = 4, models: tuple[str, ...] = ("m1", "m2")) -> list[dict[str, Any]]:
    return [
        {
            "dataset": "d",
            "split": "s",
            "sample_id": f"p{i}",
            "prompt": f"prompt {i}",
            "model": m,
            "quality": (i + j) % 2 * 1.0,
            "cost_usd": 0.001 * (j + 1),
            "input_chars": 10,
            "output_chars": 20,
        }
        for i in range(n_prompts)
        for j, m in enumerate(models)
    ]


def test_pivot_is_dense_and_aligned() -> None:
    data = routing_data_from_frame(pd.DataFrame(rows()))
    assert data.models == ["m1", "m2"] and data.n_prompts == 4
    assert data.quality.shape == (4, 2) and data.cost_usd[0].tolist() == [0.001, 0.002]
    i = data.sample_ids.index("p1")
    assert data.prompts[i] == "prompt 1" and data.quality[i].tolist() == [1.0, 0.0]


def test_prompts_missing_a_model_are_dropped_and_counted() -> None:
    data = routing_data_from_frame(pd.DataFrame(rows()[:-1]))
    assert (data.n_prompts, data.dropped_prompts) == (3, 1)


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    pd.DataFrame(rows()).drop(columns=["quality", "cost_usd"]).to_parquet(path)
    with pytest.raises(RoutingDataError, match="missing column\\(s\\): quality, cost_usd"):
        load_routing_data(path)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("quality", 1.5, "quality: 1 value\\(s\\) outside \\[0, 1\\]"),
        ("quality", None, "quality: 1 non-numeric or missing"),
        ("cost_usd", "cheap", "cost_usd: 1 non-numeric"),
        ("cost_usd", -1.0, "cost_usd: 1 negative"),
        ("prompt", None, "prompt: 1 missing"),
        ("output_chars", float("inf"), "output_chars: 1 non-numeric"),
    ],
)
def test_bad_values_are_named(column: str, value: Any, message: str) -> None:
    frame = pd.DataFrame(rows())
    frame[column] = frame[column].astype(object)
    frame.loc[0, column] = value
    with pytest.raises(RoutingDataError, match=message):
        routing_data_from_frame(frame)


def test_structural_problems() -> None:
    with pytest.raises(RoutingDataError, match="duplicated"):
        routing_data_from_frame(pd.DataFrame(rows() + rows()[:1]))
    with pytest.raises(RoutingDataError, match="at least 2 models"):
        routing_data_from_frame(pd.DataFrame(rows(models=("solo",))))
    with pytest.raises(RoutingDataError, match="no rows"):
        routing_data_from_frame(pd.DataFrame(rows()).iloc[:0])


def test_file_problems(tmp_path: Path) -> None:
    with pytest.raises(RoutingDataError, match="no such file"):
        load_routing_data(tmp_path / "nope.parquet")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"this is not parquet")
    with pytest.raises(RoutingDataError, match="not a readable"):
        load_routing_data(junk)
    csv = tmp_path / "ok.csv"
    pd.DataFrame(rows()).to_csv(csv, index=False)
    assert load_routing_data(csv).n_prompts == 4
