"""Profile detection and the profiles' variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from feature_store.profile import building_for, offline_store_type, yaml_offline_store_type
from feature_store.store import ENV_DEFAULTS, REPO_PATH, expand, yaml_path


def test_profiles_declare_their_offline_store() -> None:
    assert yaml_offline_store_type(yaml_path("embedded")) == "file"
    assert yaml_offline_store_type(yaml_path("production")) == "postgres"
    with building_for("postgres"):
        assert offline_store_type() == "postgres"
    assert offline_store_type() == "file"


def test_production_variables_have_defaults() -> None:
    text = (REPO_PATH / "production" / "feature_store.yaml").read_text()
    filled = expand(text, {})
    assert "${" not in filled
    assert "127.0.0.1:6379" in filled and "sslmode: disable" in filled
    assert expand("${LLMOPT_FEAST_PG_DATABASE}", {"LLMOPT_FEAST_PG_DATABASE": "x"}) == "x"
    assert set(ENV_DEFAULTS) <= set(text.replace("}", " ").replace("{", " ").split(" ")) | set(
        ENV_DEFAULTS
    )
    with pytest.raises(KeyError, match="NOT_A_VAR"):
        expand("${NOT_A_VAR}", {})


def test_feature_repo_has_no_scripts() -> None:
    names = sorted(p.name for p in Path(REPO_PATH).glob("*.py"))
    assert names == ["entities.py", "services.py", "sources.py", "views.py"]
