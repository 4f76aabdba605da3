"""An unreachable registry is an error, never "no such alias" (which would reset serving)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from llmopt.settings import Settings
from models.kinds import make_policy
from registry import mlflow_registry as registry
from serving.model_source import RegistrySource, SourceError

pytestmark = pytest.mark.integration


def test_missing_alias_is_none_but_a_dead_server_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(home=tmp_path / "h")
    settings.ensure_home()
    registry.register_policy(make_policy("ucb1"), settings=settings, aliases=("dev",))
    client = registry.configure(settings)
    assert registry.version_for_alias(client, "dev") == "1"
    assert registry.version_for_alias(client, "prod") is None  # exists nowhere: None
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    dead = MlflowClient(tracking_uri="http://127.0.0.1:9", registry_uri="http://127.0.0.1:9")
    with pytest.raises(Exception) as info:
        registry.version_for_alias(dead, "prod")
    assert "127.0.0.1" in str(info.value) or "Connection" in type(info.value).__name__
    # serving's source turns it into a SourceError: current models kept, nothing retired
    down = RegistrySource(Settings(home=tmp_path / "h2", mlflow_tracking_uri="http://127.0.0.1:9"))
    with pytest.raises(SourceError):
        down.version("prod")
