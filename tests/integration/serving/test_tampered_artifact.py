"""A tampered model artifact is refused at load: the champion stays, an alert is raised."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from llmopt.settings import Settings
from models.kinds import make_policy
from registry import mlflow_registry as registry
from serving.metrics import get_metrics
from serving.runtime import ServingRuntime

pytestmark = pytest.mark.integration


def test_tampered_prod_version_is_refused_and_champion_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(home=tmp_path / "h", serving_features="off", serving_poll_s=0)
    settings.ensure_home()
    v1 = registry.register_policy(make_policy("cost_aware_linucb", seed=1), settings=settings)
    rt = ServingRuntime(settings, background=False)
    try:
        assert rt.router.lineup.champion.label.endswith(f"/{v1}")
        v2 = registry.register_policy(
            make_policy("cost_aware_linucb", seed=2), settings=settings, aliases=()
        )
        client = registry.configure(settings)
        v1_sha = registry.client_model_version(client, v1, registry.MODEL_NAME).tags[
            "artifact_sha256"
        ]
        tampered = 0
        for state in settings.home.rglob(registry.STATE_FILE):  # v2's copies: one byte added
            if hashlib.sha256(state.read_bytes()).hexdigest() != v1_sha:
                state.write_bytes(state.read_bytes() + b" ")
                tampered += 1
        assert tampered >= 1
        registry.set_alias(client, v2, "prod")
        before = get_metrics().artifact_rejections.labels("prod")._value.get()
        with caplog.at_level(logging.ERROR, logger="llmopt.monitoring"):
            result = rt.reload()
        assert not result.changed
        assert rt.router.lineup.champion.label.endswith(f"/{v1}")  # the champion stays
        assert any("does not match its artifact_sha256" in n for n in result.notes)
        alerts = [r for r in caplog.records if getattr(r, "alert", None)]
        assert alerts and alerts[0].alert["kind"] == "artifact_integrity"  # type: ignore[attr-defined]
        assert get_metrics().artifact_rejections.labels("prod")._value.get() == before + 1
        # A direct load refuses it too, before deserialising anything.
        with pytest.raises(registry.ArtifactIntegrityError):
            registry.load_policy(client, "prod")
    finally:
        rt.close()
