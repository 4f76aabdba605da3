from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmopt.catalog import CatalogError, genai_price, load_catalog, parse_catalog


def test_shipped_catalog_loads_with_prices_from_genai_prices_and_overrides() -> None:
    cat = load_catalog()
    assert len(cat) >= 20
    sources = {s.price_source for s in cat}
    assert sources == {"genai-prices", "override"}
    # A model genai-prices knows gets its price from there, not from hand-written numbers.
    assert cat["gpt-4o"].price_source == "genai-prices"
    assert (cat["gpt-4o"].input_per_mtok, cat["gpt-4o"].output_per_mtok) == genai_price("gpt-4o")
    assert cat["claude-instant-1.2"].price_source == "override"


def test_expected_cost_and_latency() -> None:
    spec = load_catalog()["gpt-4o"]
    cost = spec.expected_cost_usd(1_000_000, 1_000_000)
    assert cost == pytest.approx(spec.input_per_mtok + spec.output_per_mtok)
    assert spec.expected_latency_ms(0) == spec.ttft_ms
    assert spec.expected_latency_ms(spec.tokens_per_second) == pytest.approx(spec.ttft_ms + 1000)


def _doc(**entry: Any) -> dict[str, Any]:
    return {"models": [{"id": "m", "provider": "p", **entry}]}


def test_unknown_model_without_override_is_named() -> None:
    with pytest.raises(CatalogError, match="my-private-llm"):
        parse_catalog({"models": [{"id": "my-private-llm", "provider": "acme"}]})


def test_override_wins_and_defaults_apply() -> None:
    cat = parse_catalog(
        {
            "defaults": {"ttft_ms": 111, "parameters": {"temperature": 0.2}},
            "models": [
                {
                    "id": "gpt-4o",
                    "provider": "openai",
                    "price": {"input_per_mtok": 1, "output_per_mtok": 2},
                },
            ],
        }
    )
    spec = cat["gpt-4o"]
    assert (spec.price_source, spec.input_per_mtok, spec.output_per_mtok) == ("override", 1, 2)
    assert spec.ttft_ms == 111 and spec.parameters == {"temperature": 0.2}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"models": []}, "models"),
        ({}, "models"),
        (_doc(price={"input_per_mtok": -1, "output_per_mtok": 1}), "input_per_mtok"),
        (
            _doc(tokens_per_second=0, price={"input_per_mtok": 1, "output_per_mtok": 1}),
            "tokens_per_second",
        ),
        (_doc(colour="red", price={"input_per_mtok": 1, "output_per_mtok": 1}), "colour"),
        ("just a string", "invalid model catalog"),
    ],
)
def test_malformed_catalogs_give_clear_errors(raw: Any, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        parse_catalog(raw)


def test_duplicate_ids_refused() -> None:
    price = {"input_per_mtok": 1, "output_per_mtok": 1}
    raw = {"models": [{"id": "a", "provider": "p", "price": price}] * 2}
    with pytest.raises(CatalogError, match="duplicate model ids in catalog: a"):
        parse_catalog(raw)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(bad)


def test_unknown_model_lookup_is_a_clear_key_error() -> None:
    cat = load_catalog()
    with pytest.raises(KeyError, match="not in the catalog"):
        cat["nope"]
    assert cat.get("nope") is None and "nope" not in cat
