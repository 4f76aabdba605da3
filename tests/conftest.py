"""Shared fixtures: isolated settings, shared routing data, PostgreSQL and Redis when present."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmopt.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ROUTING = SHARED_DATA / "routing"
DEMO_DATA = REPO / "llmopt" / "data" / "alpaca_eval.parquet"
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _services_required() -> bool:
    return os.environ.get("LLMOPT_REQUIRE_SERVICES", "") in ("1", "true", "yes")


def _unavailable(what: str, why: str) -> None:
    message = f"{what} does not answer ({why}); set LLMOPT_REQUIRE_SERVICES=1 to fail instead"
    if _services_required():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose state lives in a temporary folder."""
    return Settings(home=tmp_path / ".llmopt")


@pytest.fixture(scope="session")
def routing_dir() -> Path:
    """../shared/data/routing (tests and benchmarks may read it directly)."""
    if not ROUTING.is_dir():
        pytest.skip(f"shared routing data not found at {ROUTING}")
    return ROUTING


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on 127.0.0.1:5432, dropped afterwards."""
    import sqlalchemy as sa  # noqa: PLC0415

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"llmopt_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # any driver error means: no usable server
        admin.dispose()
        _unavailable("PostgreSQL at 127.0.0.1:5432", str(exc).splitlines()[0])
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared Redis at 127.0.0.1:6379 (tests use their own key prefixes)."""
    import redis  # noqa: PLC0415

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2).ping()
    except Exception as exc:
        _unavailable("Redis at 127.0.0.1:6379", str(exc))
    return "redis://127.0.0.1:6379/0"
