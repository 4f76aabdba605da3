"""One typed settings object for the whole system.

Every value has an embedded-profile default and can be overridden by an ``LLMOPT_*`` environment
variable (``LLMOPT_HOME``, ``LLMOPT_DATABASE_URL``, ...). Nothing happens at import time:
folders are created only by :meth:`Settings.ensure_home`, called by the commands that write state.

Examples
--------
>>> s = Settings(home="/tmp/llmopt-doc")
>>> s.event_log_url
'sqlite:////tmp/llmopt-doc/events.db'
>>> Settings(home="/tmp/x", database_url="postgresql+psycopg://u@h/db").event_log_url
'postgresql+psycopg://u@h/db'
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_PACKAGE_DATA = Path(__file__).resolve().parent / "data"


class Settings(BaseSettings):
    """Settings of llm-auto-optimizer; environment variables are ``LLMOPT_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="LLMOPT_", extra="ignore")

    home: Path = Field(
        default=Path(".llmopt"),
        description="State directory of the embedded profile (event log, artifacts, policy state).",
    )
    database_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the event log. Unset: SQLite at <home>/events.db. "
            "Production: postgresql+psycopg://user@host:5432/db."
        ),
    )
    catalog_path: Path = Field(
        default=_PACKAGE_DATA / "model_catalog.yaml",
        description="Model catalog YAML (providers, context windows, latency, price overrides).",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis of the production profile (Feast online store, shared serving state).",
    )
    require_services: bool = Field(
        default=False,
        description="Tests needing PostgreSQL/Redis fail, not skip, when those do not answer.",
    )
    default_willingness_to_pay: float = Field(
        default=0.05,
        gt=0,
        description="USD a tenant pays for one unit of quality (0..1) unless it says otherwise.",
    )
    default_latency_weight: float = Field(
        default=0.0,
        ge=0,
        description="Quality units lost per second of latency unless the tenant says otherwise.",
    )

    @property
    def event_log_url(self) -> str:
        """The event log's SQLAlchemy URL (SQLite under ``home`` unless ``database_url`` is set)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'events.db').resolve()}"

    @property
    def policy_state_path(self) -> Path:
        """Where the CLI keeps the embedded profile's live policy between commands."""
        return self.home / "policy.pkl"

    def ensure_home(self) -> Path:
        """Create the state directory if needed and return it."""
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once from the environment (tests build their own ``Settings`` instead)."""
    return Settings()
