"""Shared fixtures: isolated settings, PostgreSQL and Redis when present.

Every test reads its data from inside the repo (``llmopt/data``, ``tests/data``, ``bench/data``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmopt.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "llmopt" / "data" / "alpaca_eval.parquet"
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _services_required() -> bool:
    return os.environ.get("LLMOPT_REQUIRE_SERVICES", "") in ("1", "true", "yes")


def _unavailable(what: str, why: str) -> None:
    message = f"{what} does not answer ({why}); set LLMOPT_REQUIRE_SERVICES=1 to fail instead"
    if _services_required():
        pytest.fail(message)
    pytest.skip(message)


class SqliteOutage:
    """Takes a SQLite event log's database away (its folder renamed) and back: a real outage."""

    def __init__(self, folder: Path, log: Any) -> None:
        self.folder, self.away, self.log = folder, folder.with_name("away"), log

    def start(self) -> None:
        self.log.engine.dispose()
        self.folder.rename(self.away)

    def end(self) -> None:
        self.away.rename(self.folder)


@pytest.fixture
def sqlite_outage() -> type[SqliteOutage]:
    """The :class:`SqliteOutage` class (``sqlite_outage(folder, log).start()``)."""
    return SqliteOutage


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose state lives in a temporary folder."""
    return Settings(home=tmp_path / ".llmopt")


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


class PrivatePostgres:
    """A PostgreSQL server of the test's own (Debian's ``initdb``/``pg_ctl``, a free port).

    Fault tests kill and restart it; the shared server at 5432 is never touched.
    """

    def __init__(self, root: Path) -> None:
        import glob  # noqa: PLC0415
        import shutil  # noqa: PLC0415
        import socket  # noqa: PLC0415
        import subprocess  # noqa: PLC0415

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins:
            _unavailable("Debian's PostgreSQL binaries (initdb, pg_ctl)", "not installed")
        self.bin = Path(bins[-1]).parent
        self.root = root
        self.data = root / "pgdata"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._as_postgres = os.geteuid() == 0  # initdb refuses to run as root
        if self._as_postgres:
            shutil.chown(root, "postgres", "postgres")
        self._run = subprocess.run
        self._sh(["initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"])

    def _sh(self, cmd: list[str]) -> None:
        full = [str(self.bin / cmd[0]), *cmd[1:]]
        if self._as_postgres:
            full = ["runuser", "-u", "postgres", "--", *full]
        self._run(full, check=True, capture_output=True, cwd=self.root)

    @property
    def url(self) -> str:
        """SQLAlchemy URL of its ``postgres`` database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "server.log")
        self._sh(["pg_ctl", "-D", str(self.data), "-o", opts, "-l", log, "-w", "start"])

    def kill(self) -> None:
        """Stop at once, as a crash does (``-m immediate``: no checkpoint, clients cut off)."""
        self._sh(["pg_ctl", "-D", str(self.data), "-m", "immediate", "stop"])

    def stop(self) -> None:
        """Stop if running (cleanup)."""
        try:
            self._sh(["pg_ctl", "-D", str(self.data), "-m", "fast", "stop"])
        except Exception:  # noqa: BLE001 - already stopped
            pass


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started :class:`PrivatePostgres`, removed afterwards."""
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix="llmopt-pg-"))
    root.chmod(0o755)
    server = PrivatePostgres(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
