from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmopt.settings import Settings


def test_embedded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LLMOPT_HOME", "LLMOPT_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.home == Path(".llmopt")
    assert s.event_log_url.startswith("sqlite:///") and s.event_log_url.endswith("events.db")
    assert s.catalog_path.name == "model_catalog.yaml" and s.catalog_path.exists()


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMOPT_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("LLMOPT_DATABASE_URL", "postgresql+psycopg://u@127.0.0.1:5432/db")
    monkeypatch.setenv("LLMOPT_DEFAULT_WILLINGNESS_TO_PAY", "0.2")
    s = Settings()
    assert s.home == tmp_path / "state"
    assert s.event_log_url == "postgresql+psycopg://u@127.0.0.1:5432/db"
    assert s.default_willingness_to_pay == 0.2


def test_bad_environment_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPT_DEFAULT_WILLINGNESS_TO_PAY", "-1")
    with pytest.raises(ValueError, match="default_willingness_to_pay"):
        Settings()


def test_importing_creates_nothing(tmp_path: Path) -> None:
    code = (
        "import llmopt.settings, llmopt.event_log, llmopt.app.cli; llmopt.settings.get_settings()"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    assert list(tmp_path.iterdir()) == []


def test_ensure_home_creates_the_folder(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "a" / "b")
    assert s.ensure_home().is_dir()
