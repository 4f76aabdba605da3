"""Where the gateway forwards each model: upstream configuration, validated at start-up.

Two ways to configure it, both in settings:

- ``LLMOPT_UPSTREAM_URL`` (``llmopt serve --upstream URL``): one OpenAI-compatible upstream for
  every catalog model, asked for the model by its catalog id; its key, if any, in the
  environment variable named by ``LLMOPT_UPSTREAM_API_KEY_ENV``.
- ``LLMOPT_UPSTREAMS_FILE``: a YAML file, one entry per model, and an optional default::

      default: {base_url: "http://127.0.0.1:8001/v1"}
      models:
        gpt-4o: {base_url: "https://api.openai.com/v1", api_key_env: OPENAI_API_KEY}
        claude-sonnet-4: {base_url: "http://litellm:4000/v1", model: "anthropic/claude-sonnet-4"}

Configuration is never silently ignored: an unknown key, a model the catalog does not know, a
served (non-legacy) catalog model left without an upstream, or an ``api_key_env`` naming an unset
variable is an :class:`UpstreamConfigError` when the service starts, naming what is wrong.

>>> from llmopt.catalog import load_catalog
>>> ups = from_url("http://127.0.0.1:8001/v1", load_catalog())
>>> ups["gpt-4o"].base_url, ups["gpt-4o"].upstream_model("gpt-4o")
('http://127.0.0.1:8001/v1', 'gpt-4o')
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmopt.catalog import ModelCatalog
from llmopt.settings import Settings


class UpstreamConfigError(ValueError):
    """The upstream configuration is wrong; the message says where and what."""


class Upstream(BaseModel):
    """One model's upstream: an OpenAI-compatible base URL, the model name it expects, its key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(pattern=r"^https?://", description="OpenAI-compatible base URL (…/v1).")
    model: str | None = Field(default=None, description="Upstream model name (default: the id).")
    api_key_env: str | None = Field(default=None, description="Variable holding the API key.")

    def upstream_model(self, model_id: str) -> str:
        """The model name to send upstream."""
        return self.model or model_id

    def api_key(self) -> str | None:
        """The key from the environment (None: no key)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class UpstreamsFile(BaseModel):
    """The YAML file's shape."""

    model_config = ConfigDict(extra="forbid")

    default: Upstream | None = None
    models: dict[str, Upstream] = Field(default_factory=dict)


def from_url(
    url: str, catalog: ModelCatalog, api_key_env: str | None = None
) -> dict[str, Upstream]:
    """Every catalog model forwarded to ``url``."""
    try:
        one = Upstream(base_url=url.rstrip("/"), api_key_env=api_key_env)
    except ValidationError:
        raise UpstreamConfigError(
            "LLMOPT_UPSTREAM_URL must be an http(s) URL such as http://127.0.0.1:8001/v1, "
            f"got {url!r}"
        ) from None
    return {m: one for m in catalog.ids}


def from_file(path: Path, catalog: ModelCatalog) -> dict[str, Upstream]:
    """The file's upstreams, checked against the catalog (see the module docstring)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UpstreamConfigError(f"cannot read the upstreams file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise UpstreamConfigError(f"the upstreams file {path} is not YAML: {exc}") from None
    try:
        doc = UpstreamsFile.model_validate(raw or {})
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise UpstreamConfigError(f"upstreams file {path}: {where}") from None
    unknown = sorted(set(doc.models) - set(catalog.ids))
    if unknown:
        raise UpstreamConfigError(
            f"upstreams file {path}: models not in the catalog: {', '.join(unknown)}"
        )
    out = {m: doc.models.get(m, doc.default) for m in catalog.ids}
    missing = sorted(m for m, u in out.items() if u is None and not catalog[m].legacy)
    if missing:
        raise UpstreamConfigError(
            f"upstreams file {path}: served models without an upstream (add them, or a "
            f"default): {', '.join(missing)}"
        )
    return {m: u for m, u in out.items() if u is not None}


def load_upstreams(settings: Settings, catalog: ModelCatalog) -> dict[str, Upstream] | None:
    """The gateway's upstreams from settings (None: no gateway configured)."""
    if settings.upstreams_file is not None:
        ups = from_file(settings.upstreams_file, catalog)
    elif settings.upstream_url:
        ups = from_url(settings.upstream_url, catalog, settings.upstream_api_key_env)
    else:
        return None
    unset = sorted({u.api_key_env for u in ups.values() if u.api_key_env} - set(os.environ))
    if unset:
        raise UpstreamConfigError(f"API key variables not set: {', '.join(unset)}")
    return ups
