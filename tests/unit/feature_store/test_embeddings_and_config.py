"""Prompt embeddings (optional extra), profile detection and the profiles' variables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from feature_store import embeddings
from feature_store.profile import building_for, offline_store_type, yaml_offline_store_type
from feature_store.store import ENV_DEFAULTS, REPO_PATH, expand, yaml_path


class FakeEncoder:
    calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        FakeEncoder.calls += 1
        return np.stack([np.full(embeddings.EMBEDDING_DIM, len(t), dtype=float) for t in texts])


def test_projection_is_seeded_and_cached() -> None:
    a = embeddings.PromptEmbedder(6, seed=3, encoder=FakeEncoder())
    b = embeddings.PromptEmbedder(6, seed=3, encoder=FakeEncoder())
    before = FakeEncoder.calls
    assert a("same prompt") == b("same prompt")
    a("same prompt")
    assert FakeEncoder.calls == before + 2  # the second call on `a` hit its cache
    assert len(a("x")) == 6


@pytest.mark.skipif(
    not embeddings.available(),
    reason="embeddings extra not installed (pip install '.[embeddings]'; it needs torch)",
)
def test_real_minilm_embeddings() -> None:
    out = embeddings.PromptEmbedder(8)("How do I reverse a list in Python?")
    assert len(out) == 8 and all(np.isfinite(v) for v in out.values())


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
