"""Production profile: the MLflow backend store on PostgreSQL (a database of its own)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from llmopt.settings import Settings
from models.kinds import RECOMMENDED, make_policy
from registry import mlflow_registry as registry

pytestmark = [pytest.mark.integration, pytest.mark.services]


@pytest.fixture
def mlflow_pg_url(postgres_url: str) -> Iterator[str]:
    """A fresh database next to the test database (MLflow and the event log both use Alembic)."""
    server, _, _ = postgres_url.rpartition("/")
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    name = f"llmopt_mlflow_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield f"{server}/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_registry_on_postgresql(mlflow_pg_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", mlflow_tracking_uri=mlflow_pg_url)
    policy = make_policy(RECOMMENDED, seed=0)
    policy.update("gpt-4.1-mini", {"bias": 1.0, "code": 1.0}, 0.8)
    v1 = registry.register_policy(policy, settings=settings)
    v2 = registry.register_policy(policy, settings=settings, aliases=("dev", "prod"))
    client = registry.configure(settings)
    listed = {v.version: v.aliases for v in registry.list_versions(client)}
    assert listed == {v1: ("staging",), v2: ("dev", "prod")}
    version, loaded = registry.load_policy(client, "prod")
    assert version == v2 and loaded.to_dict() == policy.to_dict()
    assert registry.rollback(client) == (v2, v1)
    assert not (tmp_path / "home" / "mlflow.db").exists()  # nothing fell back to SQLite
