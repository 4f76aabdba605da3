"""The model catalog: which LLMs can be chosen, what they cost and how fast they answer.

Prices come from the ``genai-prices`` offline table wherever it knows the model; the YAML must give
an explicit ``price:`` override otherwise (and an override always wins). Latency is *modelled*:
``ttft_ms + output_tokens / tokens_per_second * 1000``.

Examples
--------
>>> cat = load_catalog()
>>> spec = cat["gpt-4o-mini"]
>>> spec.price_source, spec.input_per_mtok, spec.output_per_mtok
('genai-prices', 0.15, 0.6)
>>> round(spec.expected_cost_usd(1000, 500), 6)
0.00045
>>> spec.expected_latency_ms(120)
1350.0
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmopt.types import ArmID

Capability = Literal["tools", "vision", "json_mode"]
CAPABILITIES: tuple[str, ...] = ("tools", "vision", "json_mode")
"""Request features a model must declare to be offered: tool or function calls, image inputs,
``response_format`` JSON."""


class CatalogError(ValueError):
    """The catalog file is missing, malformed, or names a model without a price."""


class PriceOverride(BaseModel):
    """An explicit price in USD per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class _ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: ArmID = Field(min_length=1)
    provider: str = Field(min_length=1)
    price_ref: str | None = None
    context_window: int | None = Field(default=None, gt=0)
    ttft_ms: float | None = Field(default=None, ge=0)
    tokens_per_second: float | None = Field(default=None, gt=0)
    price: PriceOverride | None = None
    parameters: dict[str, float | int | str] | None = None
    legacy: bool = False
    quality_tier: float | None = Field(default=None, ge=0, le=1)
    capabilities: list[Capability] = Field(default_factory=list)


class _Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    context_window: int = Field(default=8192, gt=0)
    ttft_ms: float = Field(default=600.0, ge=0)
    tokens_per_second: float = Field(default=60.0, gt=0)
    parameters: dict[str, float | int | str] = Field(default_factory=dict)


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: _Defaults = Field(default_factory=_Defaults)
    models: list[_ModelEntry] = Field(min_length=1)


class ModelSpec(BaseModel):
    """One model of the catalog, with resolved prices and latency figures."""

    model_config = ConfigDict(frozen=True)

    id: ArmID
    provider: str
    context_window: int
    ttft_ms: float
    tokens_per_second: float
    input_per_mtok: float
    output_per_mtok: float
    price_source: Literal["genai-prices", "override"]
    parameters: dict[str, float | int | str]
    legacy: bool = False
    """Kept for replays of historical data: offered only to a request that names it."""
    quality_tier: float | None = None
    """Prior quality in [0, 1] of a fresh router (a few observations' weight), if known."""
    capabilities: frozenset[str] = frozenset()
    """What the model supports beyond plain text (:data:`CAPABILITIES`): the gateway offers a
    request that uses tools, images or JSON mode only to models that declare it."""

    def expected_cost_usd(self, input_tokens: float, output_tokens: float) -> float:
        """Cost of one call with these token counts."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6

    def expected_latency_ms(self, output_tokens: float) -> float:
        """Modelled latency: time to first token plus generation time."""
        return self.ttft_ms + output_tokens / self.tokens_per_second * 1000.0


class ModelCatalog:
    """The models that can be chosen, by id (iteration keeps the file's order).

    Parameters
    ----------
    specs
        The resolved model specs.
    """

    def __init__(self, specs: list[ModelSpec]) -> None:
        self._specs = {s.id: s for s in specs}
        if len(self._specs) != len(specs):
            dupes = sorted({s.id for s in specs if sum(t.id == s.id for t in specs) > 1})
            raise CatalogError(f"duplicate model ids in catalog: {', '.join(dupes)}")

    def __getitem__(self, model_id: ArmID) -> ModelSpec:
        try:
            return self._specs[model_id]
        except KeyError:
            raise KeyError(f"model {model_id!r} is not in the catalog") from None

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._specs

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def ids(self) -> list[ArmID]:
        """Model ids in catalog order."""
        return list(self._specs)

    @property
    def current_ids(self) -> list[ArmID]:
        """Ids of the models offered by default (not ``legacy``), in catalog order."""
        return [m for m, spec in self._specs.items() if not spec.legacy]

    def get(self, model_id: ArmID) -> ModelSpec | None:
        """The spec of ``model_id``, or None when the catalog does not know it."""
        return self._specs.get(model_id)


def genai_price(price_ref: str, provider: str | None = None) -> tuple[float, float] | None:
    """USD per 1M (input, output) tokens from genai-prices' offline table; None if unknown."""
    from genai_prices import Usage, calc_price  # noqa: PLC0415 - ~0.3 s import, only when loading

    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    for provider_id in [provider, None] if provider else [None]:
        try:
            calc = calc_price(usage, model_ref=price_ref, provider_id=provider_id)
        except LookupError:
            continue
        return float(calc.input_price), float(calc.output_price)
    return None


def parse_catalog(raw: Any, *, source: str = "<catalog>") -> ModelCatalog:
    """Validate a parsed YAML document and resolve every model's prices."""
    try:
        doc = _CatalogFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise CatalogError(f"{source}: invalid model catalog: {problems}") from None
    specs: list[ModelSpec] = []
    unpriced: list[str] = []
    for entry in doc.models:
        if entry.price is not None:
            prices: tuple[float, float] | None = (
                entry.price.input_per_mtok,
                entry.price.output_per_mtok,
            )
            source_kind: Literal["genai-prices", "override"] = "override"
        else:
            prices = genai_price(entry.price_ref or entry.id, entry.provider)
            source_kind = "genai-prices"
        if prices is None:
            unpriced.append(entry.id)
            continue
        specs.append(
            ModelSpec(
                id=entry.id,
                provider=entry.provider,
                context_window=entry.context_window or doc.defaults.context_window,
                ttft_ms=entry.ttft_ms if entry.ttft_ms is not None else doc.defaults.ttft_ms,
                tokens_per_second=entry.tokens_per_second or doc.defaults.tokens_per_second,
                input_per_mtok=prices[0],
                output_per_mtok=prices[1],
                price_source=source_kind,
                parameters={**doc.defaults.parameters, **(entry.parameters or {})},
                legacy=entry.legacy,
                quality_tier=entry.quality_tier,
                capabilities=frozenset(entry.capabilities),
            )
        )
    if unpriced:
        raise CatalogError(
            f"{source}: genai-prices does not know {', '.join(unpriced)}; "
            "give each a `price: {input_per_mtok: ..., output_per_mtok: ...}` override"
        )
    return ModelCatalog(specs)


def load_catalog(path: Path | str | None = None) -> ModelCatalog:
    """Load the catalog YAML at ``path`` (default: the one in settings)."""
    if path is None:
        from llmopt.settings import get_settings  # noqa: PLC0415

        path = get_settings().catalog_path
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CatalogError(f"model catalog not found: {path}") from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from None
    return parse_catalog(raw, source=str(path))
