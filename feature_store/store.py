"""Open, apply and write to the feature store of a profile (embedded or production).

Profiles are the two ``feature_store.yaml`` files of ``feature_repo/``; ``${VAR}`` placeholders in
them are filled from the environment, with the defaults of ``ENV_DEFAULTS`` for unset variables
(Feast's own loader only expands set variables). Offline rows are appended by this module (one
parquet part per write in the embedded profile, an ``INSERT`` in production) rather than through
``push(to=ONLINE_AND_OFFLINE)``: Feast's file store rewrites the whole parquet file on every push
(quadratic in the history) and its PostgreSQL store does not implement offline pushes.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from feature_store import names
from feature_store.profile import building_for
from feature_store.unchecked import feast_without_typechecks

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore, RepoConfig

Profile = Literal["embedded", "production"]

REPO_PATH = Path(__file__).resolve().parents[1] / "feature_repo"
"""The Feast repository of this checkout."""

ENV_DEFAULTS: dict[str, str] = {
    "LLMOPT_FEAST_PG_HOST": "127.0.0.1",
    "LLMOPT_FEAST_PG_PORT": "5432",
    "LLMOPT_FEAST_PG_DATABASE": "test",
    "LLMOPT_FEAST_PG_USER": "postgres",
    "LLMOPT_FEAST_PG_PASSWORD": "",
    "LLMOPT_FEAST_REDIS": "127.0.0.1:6379",
}
"""Defaults of the production profile's variables (PostgreSQL and Redis at 127.0.0.1)."""

SEED_FILE = "seed.parquet"
"""Empty, schema-only part every offline folder starts with (committed: ``feast apply`` and
point-in-time joins need the folder to exist and to declare its columns)."""

_VAR = re.compile(r"\$\{(\w+)\}")


def yaml_path(profile: Profile = "embedded", repo_path: Path = REPO_PATH) -> Path:
    """The ``feature_store.yaml`` of a profile."""
    if profile == "production":
        return repo_path / "production" / "feature_store.yaml"
    return repo_path / "feature_store.yaml"


def expand(text: str, env: Mapping[str, str] | None = None) -> str:
    """``${VAR}`` -> ``env`` value, else the process environment, else ``ENV_DEFAULTS``."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        if env is not None and name in env:
            return env[name]
        if name in os.environ:
            return os.environ[name]
        if name in ENV_DEFAULTS:
            return ENV_DEFAULTS[name]
        raise KeyError(f"{name} is not set and has no default")

    return _VAR.sub(value, text)


def load_config(
    profile: Profile = "embedded",
    repo_path: Path = REPO_PATH,
    *,
    env: Mapping[str, str] | None = None,
    project: str | None = None,
) -> RepoConfig:
    """The Feast ``RepoConfig`` of a profile, placeholders filled in (``project`` overrides the
    yaml's, e.g. to keep tests apart in a shared Redis)."""
    feast_without_typechecks()
    from feast.repo_config import RepoConfig  # noqa: PLC0415 - feast imports take seconds

    raw = yaml.safe_load(expand(yaml_path(profile, repo_path).read_text(), env))
    if project is not None:
        raw["project"] = project
    config = RepoConfig(**raw)
    config.repo_path = repo_path
    return config


def open_store(
    profile: Profile = "embedded",
    repo_path: Path = REPO_PATH,
    *,
    env: Mapping[str, str] | None = None,
    project: str | None = None,
) -> FeatureStore:
    """A ``FeatureStore`` of a profile (nothing is created or applied)."""
    feast_without_typechecks()
    from feast import FeatureStore  # noqa: PLC0415

    repo_path = repo_path.resolve()
    config = load_config(profile, repo_path, env=env, project=project)
    return FeatureStore(repo_path=str(repo_path), config=config)


def is_postgres(store: FeatureStore) -> bool:
    """True when the store's offline store is PostgreSQL (production)."""
    return str(store.config.offline_store.type) == "postgres"


def _repo_modules(repo_path: Path) -> list[str]:
    return [p.stem for p in repo_path.glob("*.py")]


@contextmanager
def _importing_repo(repo_path: Path) -> Iterator[None]:
    """Import the repo's modules fresh (they are built per profile), from the repo folder."""
    cwd = Path.cwd()
    for name in _repo_modules(repo_path):
        sys.modules.pop(name, None)
    sys.path.insert(0, str(repo_path))
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.path.remove(str(repo_path))
        for name in _repo_modules(repo_path):
            sys.modules.pop(name, None)


def apply_repo(
    profile: Profile = "embedded",
    repo_path: Path = REPO_PATH,
    *,
    env: Mapping[str, str] | None = None,
    project: str | None = None,
) -> FeatureStore:
    """``feast apply`` of a profile, in-process (same code path as the CLI); return the store."""
    feast_without_typechecks()
    from feast.repo_operations import apply_total  # noqa: PLC0415

    repo_path = repo_path.resolve()  # apply changes directory: a relative path would move
    config = load_config(profile, repo_path, env=env, project=project)
    store = open_store(profile, repo_path, env=env, project=project)
    ensure_offline(store)
    kind = "postgres" if is_postgres(store) else "file"
    with building_for(kind), _importing_repo(repo_path):
        apply_total(config, repo_path, skip_source_validation=False)
    store.refresh_registry()  # type: ignore[no-untyped-call]
    return store


def copy_repo(dest: Path, source: Path = REPO_PATH) -> Path:
    """Copy the definitions, profiles and offline seeds of a repo to ``dest`` (no state)."""
    dest = dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    for item in [*source.glob("*.py"), *source.glob("*.yaml"), source / ".feastignore"]:
        if item.exists():
            shutil.copy2(item, dest / item.name)
    (dest / "production").mkdir(exist_ok=True)
    shutil.copy2(source / "production" / "feature_store.yaml", dest / "production")
    for view, folder in names.OFFLINE_FILES.items():
        write_seed(view, dest / folder)
    return dest


# ---------------------------------------------------------------------------- offline rows


def arrow_schema(view: str) -> pa.Schema:
    """The arrow schema of a view's offline rows (keys, fields, event and processing time)."""
    fields: list[pa.Field] = [pa.field(k, pa.string()) for k in names.VIEW_KEYS[view]]
    for name in names.view_fields(view):
        kind = pa.int64() if name.startswith("request_count") else pa.float64()
        fields.append(pa.field(name, kind))
    fields.append(pa.field(names.TIMESTAMP, pa.timestamp("us", tz="UTC")))
    fields.append(pa.field(names.CREATED, pa.timestamp("us", tz="UTC")))
    return pa.schema(fields)


def write_seed(view: str, folder: Path) -> Path:
    """Write the schema-only seed part of a view's offline folder if it is missing."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SEED_FILE
    if not path.exists():
        pq.write_table(arrow_schema(view).empty_table(), path)
    return path


def _engine_url(store: FeatureStore) -> str:
    c = store.config.offline_store
    password = f":{c.password}" if c.password else ""
    return f"postgresql+psycopg://{c.user}{password}@{c.host}:{c.port}/{c.database}"


_ENGINES: dict[str, Any] = {}


def _pg_engine(store: FeatureStore) -> Any:
    import sqlalchemy as sa  # noqa: PLC0415

    url = _engine_url(store)
    if url not in _ENGINES:
        _ENGINES[url] = sa.create_engine(url, pool_pre_ping=True)
    return _ENGINES[url]


def _pg_ddl(view: str) -> str:
    cols = [f'"{k}" TEXT NOT NULL' for k in names.VIEW_KEYS[view]]
    for name in names.view_fields(view):
        kind = "BIGINT" if name.startswith("request_count") else "DOUBLE PRECISION"
        cols.append(f'"{name}" {kind}')
    cols += [f'"{names.TIMESTAMP}" TIMESTAMPTZ NOT NULL', f'"{names.CREATED}" TIMESTAMPTZ']
    table = names.OFFLINE_TABLES[view]
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(cols)}); "
        f"CREATE INDEX IF NOT EXISTS {table}_ts ON {table} ({names.TIMESTAMP})"
    )


def ensure_offline(store: FeatureStore) -> None:
    """Create what the offline store needs: seed parts (embedded) or tables (production)."""
    if is_postgres(store):
        import sqlalchemy as sa  # noqa: PLC0415

        with _pg_engine(store).begin() as conn:
            for view in names.OFFLINE_TABLES:
                for stmt in _pg_ddl(view).split("; "):
                    conn.execute(sa.text(stmt))
        return
    repo = Path(str(store.config.repo_path))
    for view, folder in names.OFFLINE_FILES.items():
        write_seed(view, repo / folder)


def rows_table(view: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows of a view as an arrow table of its offline schema (a bad row raises here)."""
    schema = arrow_schema(view)
    return pa.Table.from_pylist(rows, schema=schema)


def write_offline(store: FeatureStore, view: str, rows: list[dict[str, Any]]) -> int:
    """Append a view's rows to the offline store; return the number written."""
    if not rows:
        return 0
    table = rows_table(view, rows)
    if is_postgres(store):
        import sqlalchemy as sa  # noqa: PLC0415

        cols = table.column_names
        columns = ", ".join(f'"{c}"' for c in cols)
        values = ", ".join(f":{c}" for c in cols)
        stmt = sa.text(f"INSERT INTO {names.OFFLINE_TABLES[view]} ({columns}) VALUES ({values})")
        with _pg_engine(store).begin() as conn:
            conn.execute(stmt, table.to_pylist())
        return int(table.num_rows)
    folder = Path(str(store.config.repo_path)) / names.OFFLINE_FILES[view]
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / f"part-{uuid.uuid4().hex}.parquet")
    return int(table.num_rows)


def push_online(
    store: FeatureStore, view: str, rows: list[dict[str, Any]], *, direct: bool = False
) -> int:
    """Push a view's rows to the online store through its push source (one ``push`` call).

    ``direct``: write them straight into the view's online table through the provider
    (``ingest_df``, what ``push`` ends with), the feature view resolved once per store and kept.
    Feast's ``push`` re-reads the registry (protobuf, type-checked field by field) on every
    call: ~25 ms per view, all of it holding the interpreter lock, which a serving process
    pushing every second pays as tail latency on its decisions (bench/soak.py: p99 90 ms with
    ``push``, 10 ms without). The rows are the same; only the registry round trip is skipped.
    """
    if not rows:
        return 0
    frame: pd.DataFrame = rows_table(view, rows).to_pandas()
    if direct:
        cache: dict[str, Any] = store.__dict__.setdefault("_llmopt_feature_views", {})
        fv = cache.get(view)
        if fv is None:
            fv = cache[view] = store.get_feature_view(view)
        store._get_provider().ingest_df(fv, frame)  # noqa: SLF001 - see the docstring
        return len(rows)
    from feast.data_source import PushMode  # noqa: PLC0415

    store.push(names.PUSH_SOURCES[view], frame, to=PushMode.ONLINE)
    return len(rows)
