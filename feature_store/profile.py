"""Which offline store the Feast definitions are being built for: ``file`` or ``postgres``.

``feature_repo/sources.py`` builds file sources or PostgreSQL sources; the choice must follow the
``feature_store.yaml`` being applied, whoever applies it:

1. this package (``apply_repo``) sets it explicitly for the duration of the apply;
2. the ``feast`` CLI: the yaml given with ``-f`` (read from the CLI's own context);
3. otherwise ``LLMOPT_FEATURE_PROFILE`` (``embedded`` or ``production``), default embedded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml

_FORCED: ContextVar[str | None] = ContextVar("llmopt_offline_store_type", default=None)


@contextmanager
def building_for(offline_type: str) -> Iterator[None]:
    """Build the definitions for ``offline_type`` (``file`` or ``postgres``) inside the block."""
    token = _FORCED.set(offline_type)
    try:
        yield
    finally:
        _FORCED.reset(token)


def yaml_offline_store_type(path: Path) -> str:
    """The offline store type a ``feature_store.yaml`` declares (``file`` when it says none)."""
    raw: Any = yaml.safe_load(path.read_text())
    store = raw.get("offline_store") if isinstance(raw, dict) else None
    kind = store.get("type") if isinstance(store, dict) else store
    return "postgres" if kind == "postgres" else "file"


def _feast_cli_yaml() -> Path | None:
    try:
        import click  # noqa: PLC0415 - the feast CLI's own dependency
    except ImportError:  # pragma: no cover
        return None
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    path = obj.get("FS_YAML_FILE") if isinstance(obj, dict) else None
    return Path(path) if path else None


def offline_store_type() -> str:
    """``file`` or ``postgres``: what the definitions being imported should be built for."""
    forced = _FORCED.get()
    if forced is not None:
        return forced
    cli_yaml = _feast_cli_yaml()
    if cli_yaml is not None and cli_yaml.exists():
        return yaml_offline_store_type(cli_yaml)
    profile = os.environ.get("LLMOPT_FEATURE_PROFILE", "embedded")
    return "postgres" if profile == "production" else "file"
