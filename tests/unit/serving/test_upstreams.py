"""Upstream configuration: one URL for every model, or a file, never silently ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmopt.catalog import load_catalog
from llmopt.settings import Settings
from serving.upstreams import UpstreamConfigError, from_file, from_url, load_upstreams

CATALOG = load_catalog()
SERVED = [m for m in CATALOG.ids if not CATALOG[m].legacy]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "upstreams.yaml"
    path.write_text(text)
    return path


def test_one_url_serves_every_catalog_model() -> None:
    ups = from_url("http://127.0.0.1:8001/v1/", CATALOG)
    assert set(ups) == set(CATALOG.ids)
    assert ups[SERVED[0]].base_url == "http://127.0.0.1:8001/v1"  # trailing slash dropped
    with pytest.raises(UpstreamConfigError, match="http"):
        from_url("ftp://nowhere", CATALOG)


def test_a_file_with_a_default_and_one_override(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"default: {{base_url: 'http://local:1/v1'}}\n"
        f"models:\n  {SERVED[0]}: {{base_url: 'https://api.example/v1', model: 'their-name'}}\n",
    )
    ups = from_file(path, CATALOG)
    assert ups[SERVED[0]].upstream_model(SERVED[0]) == "their-name"
    assert ups[SERVED[1]].base_url == "http://local:1/v1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("default: {base_url: 'http://x/v1', colour: red}\n", "colour"),
        ("defaults: {base_url: 'http://x/v1'}\n", "defaults"),
        (
            "default: {base_url: 'http://x/v1'}\nmodels:\n  gpt-9: {base_url: 'http://x/v1'}\n",
            "gpt-9",
        ),
        (f"models:\n  {SERVED[0]}: {{base_url: 'http://x/v1'}}\n", "without an upstream"),
        ("default: [\n", "not YAML"),
    ],
)
def test_wrong_files_stop_the_start_with_a_message(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UpstreamConfigError, match=message):
        from_file(write(tmp_path, text), CATALOG)


def test_a_key_variable_must_be_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    settings = Settings(
        home=tmp_path, upstream_url="http://x/v1", upstream_api_key_env="NO_SUCH_KEY_VAR"
    )
    with pytest.raises(UpstreamConfigError, match="NO_SUCH_KEY_VAR"):
        load_upstreams(settings, CATALOG)
    monkeypatch.setenv("NO_SUCH_KEY_VAR", "sk-test")
    ups = load_upstreams(settings, CATALOG)
    assert ups is not None and ups[SERVED[0]].api_key() == "sk-test"
    assert load_upstreams(Settings(home=tmp_path), CATALOG) is None  # no gateway
