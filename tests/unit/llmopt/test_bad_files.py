"""Malformed catalogs, routing data and ``LLMOPT_*`` values: one clear line, never a traceback.

Each case runs a real command through typer's runner and checks the exit code (2), that the
message names the file or the setting, and that no traceback reaches the user.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner, Result

from llmopt.app.cli import app
from llmopt.catalog import CatalogError, load_catalog
from llmopt.routing_data import RoutingDataError, load_routing_data
from llmopt.settings import get_settings

Invoke = Callable[..., Result]
"""``invoke(args, **env)``: run ``llmopt args`` with ``env``."""

GOOD_ROW = {
    "dataset": "d",
    "split": "test",
    "sample_id": "s1",
    "prompt": "hi",
    "model": "a",
    "quality": 0.5,
    "cost_usd": 0.001,
    "input_chars": 2,
    "output_chars": 10,
}


@pytest.fixture
def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Invoke]:
    """Run ``llmopt ARGS`` with ``env`` on top of an isolated home; settings re-read each time."""
    monkeypatch.setenv("LLMOPT_HOME", str(tmp_path / "home"))
    for key in ("LLMOPT_DATABASE_URL", "LLMOPT_CATALOG_PATH"):
        monkeypatch.delenv(key, raising=False)
    runner = CliRunner()

    def run(args: list[str], **env: str) -> Result:
        get_settings.cache_clear()
        try:
            return runner.invoke(app, args, env=env)
        finally:
            get_settings.cache_clear()

    yield run


def clear_error(res: Result, *expected: str) -> None:
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output, res.output
    assert res.output.startswith("error: "), res.output
    for text in expected:
        assert text in res.output, res.output


CATALOGS = {
    "not_yaml.yaml": ("models: [\n  - id: x\n", "not valid YAML"),
    "wrong_types.yaml": ("models:\n  - id: 3\n    provider: [1]\n", "models.0.provider"),
    "empty.yaml": ("", "invalid model catalog"),
    "a_list.yaml": ("- a\n- b\n", "invalid model catalog"),
    "no_models.yaml": ("defaults: {ttft_ms: 600}\n", "models"),
    "negative.yaml": (
        "models:\n  - {id: m, provider: p, ttft_ms: -5,"
        " price: {input_per_mtok: 1, output_per_mtok: 2}}\n",
        "ttft_ms",
    ),
    "unpriced.yaml": (
        "models:\n  - {id: no-such-model-anywhere, provider: nobody}\n",
        "no-such-model-anywhere",
    ),
    "duplicates.yaml": (
        "models:\n"
        "  - {id: m, provider: p, price: {input_per_mtok: 1, output_per_mtok: 2}}\n"
        "  - {id: m, provider: p, price: {input_per_mtok: 1, output_per_mtok: 2}}\n",
        "duplicate model ids",
    ),
}


@pytest.mark.parametrize("name", sorted(CATALOGS))
def test_a_malformed_catalog_names_the_file_and_the_problem(
    invoke: Invoke, tmp_path: Path, name: str
) -> None:
    text, problem = CATALOGS[name]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(CatalogError, match=problem):
        load_catalog(path)
    # ModelCatalog finds duplicates after parsing, without the file name (llmopt/catalog.py)
    named = () if name == "duplicates.yaml" else (str(path),)
    clear_error(invoke(["catalog", "--path", str(path)]), *named, problem)


def test_the_settings_catalog_path_is_checked_by_every_command_that_reads_it(
    invoke: Invoke, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CATALOGS["not_yaml.yaml"][0])
    for args in (["catalog"], ["decide", '{"tenant": "acme"}']):
        res = invoke(args, LLMOPT_CATALOG_PATH=str(bad))
        clear_error(res, str(bad), "not valid YAML")


def test_a_catalog_that_is_missing_or_a_directory(invoke: Invoke, tmp_path: Path) -> None:
    clear_error(
        invoke(["catalog", "--path", str(tmp_path / "nope.yaml")]), "nope.yaml", "not found"
    )
    clear_error(invoke(["catalog", "--path", str(tmp_path)]), str(tmp_path), "Is a directory")


def _frame(*changes: dict[str, object]) -> pd.DataFrame:
    rows = []
    for i, change in enumerate(changes):
        rows.append({**GOOD_ROW, "model": "ab"[i % 2], "sample_id": f"s{i // 2}", **change})
    return pd.DataFrame(rows)


ROUTING = {
    "columns.csv": (pd.DataFrame({"a": [1], "b": [2]}), "missing column(s): dataset"),
    "quality.csv": (_frame({}, {"quality": 2.0}), "quality: 1 value(s) outside [0, 1]"),
    "cost.csv": (_frame({}, {"cost_usd": -1}), "cost_usd: 1 negative value(s)"),
    "text.csv": (_frame({}, {"quality": "good"}), "quality: 1 non-numeric or missing value(s)"),
    "dupes.csv": (_frame({}, {}, {"sample_id": "s0", "model": "a"}), "duplicated row(s)"),
    "one_model.csv": (_frame({}, {"model": "a", "sample_id": "s9"}), "at least 2 models"),
    "no_rows.csv": (_frame({}).iloc[:0], "no rows"),
}


@pytest.mark.parametrize("name", sorted(ROUTING))
def test_malformed_routing_data_names_the_file_and_the_column(
    invoke: Invoke, tmp_path: Path, name: str
) -> None:
    frame, problem = ROUTING[name]
    path = tmp_path / name
    frame.to_csv(path, index=False)
    with pytest.raises(RoutingDataError, match=re.escape(problem)):
        load_routing_data(path)
    res = invoke(["bench", "replay", "--data", str(path), "--out", str(tmp_path / "o.json")])
    clear_error(res, str(path), problem)


def test_routing_data_that_is_not_a_table_or_missing(invoke: Invoke, tmp_path: Path) -> None:
    fake = tmp_path / "fake.parquet"
    fake.write_bytes(b"PAR1 but not really")
    out = str(tmp_path / "o.json")
    res = invoke(["bench", "replay", "--data", str(fake), "--out", out])
    clear_error(res, str(fake), "not a readable parquet/CSV file")
    res = invoke(["bench", "replay", "--data", str(tmp_path / "none.csv"), "--out", out])
    clear_error(res, "none.csv", "no such file")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LLMOPT_SERVING_TENANT_BUDGETS": "not json"}, "serving_tenant_budgets"),
        (
            {"LLMOPT_SERVING_TENANT_BUDGETS": '{"acme": "lots"}'},
            "LLMOPT_SERVING_TENANT_BUDGETS.acme: Input should be a valid number",
        ),
        ({"LLMOPT_SERVING_FEATURES": "bogus"}, "LLMOPT_SERVING_FEATURES: Input should be 'off'"),
        ({"LLMOPT_SERVING_RATE_LIMIT_PER_S": "fast"}, "LLMOPT_SERVING_RATE_LIMIT_PER_S"),
        ({"LLMOPT_SERVING_MAX_BODY_BYTES": "-1"}, "LLMOPT_SERVING_MAX_BODY_BYTES"),
    ],
)
@pytest.mark.parametrize("args", [["db", "stats"], ["catalog"], ["decide", '{"tenant": "a"}']])
def test_a_bad_setting_is_named_by_every_command(
    invoke: Invoke, env: dict[str, str], expected: str, args: list[str]
) -> None:
    clear_error(invoke(args, **env), expected)


@pytest.mark.parametrize("url", ["nonsense://", "not a url at all"])
def test_a_bad_database_url_is_a_clear_error(invoke: Invoke, url: str) -> None:
    clear_error(invoke(["db", "stats"], LLMOPT_DATABASE_URL=url), "cannot open the event log", url)
