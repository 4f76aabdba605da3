"""Fixtures of pipeline and registry tests: isolated home, MLflow and Prefect; a synthetic log."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from llmopt.settings import Settings, get_settings

ARMS = ["gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o-mini"]
QUALITY = {  # (code, chat) mean quality of each arm in the synthetic world
    "gpt-4.1": (0.9, 0.9),
    "gpt-4.1-mini": (0.85, 0.45),
    "gpt-4.1-nano": (0.2, 0.75),
    "gpt-4o-mini": (0.3, 0.3),
}


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API for the whole session (~11 s once)."""
    from prefect.testing.utilities import prefect_test_harness  # noqa: PLC0415

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow SQLite database, copied by each test (migrations take ~5 s)."""
    from mlflow import MlflowClient  # noqa: PLC0415

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    uri = f"sqlite:///{path}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments()
    return path


@pytest.fixture
def env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_template: Path
) -> Iterator[Settings]:
    """Settings (and the process environment) with every store under ``tmp_path``."""
    monkeypatch.setenv("LLMOPT_HOME", str(tmp_path / "home"))
    for var in (
        "LLMOPT_DATABASE_URL",
        "LLMOPT_MLFLOW_TRACKING_URI",
        "LLMOPT_MLFLOW_ARTIFACTS_URI",
        "LLMOPT_OPTUNA_STORAGE_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    settings.ensure_home()
    shutil.copyfile(mlflow_template, settings.home / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_uri)
    yield settings
    get_settings.cache_clear()


def fill_log(settings: Settings, n: int, *, seed: int = 0, floor: float = 0.6) -> int:
    """``n`` decisions + feedback of an exploring router in the synthetic world; feedback count."""
    from llmopt.catalog import load_catalog  # noqa: PLC0415
    from llmopt.event_log import EventLog  # noqa: PLC0415
    from llmopt.loop import LearningLoop  # noqa: PLC0415
    from llmopt.schemas import Feedback, RequestContext  # noqa: PLC0415
    from models.kinds import RECOMMENDED, make_policy  # noqa: PLC0415

    catalog = load_catalog(settings.catalog_path)
    log = EventLog(settings.event_log_url)
    loop = LearningLoop(
        make_policy(RECOMMENDED, seed=seed, exploration_floor=floor),
        ARMS,
        catalog=catalog,
        event_log=log,
    )
    rng = np.random.default_rng(seed)
    for _ in range(n):
        code = float(rng.random() < 0.5)
        feats = {"bias": 1.0, "code": code}
        d = loop.decide(RequestContext(tenant="t", prompt="p" * 400), features=feats)
        mean = QUALITY[d.model][0 if code else 1]
        spec = catalog.get(d.model)
        assert spec is not None
        loop.feedback(
            Feedback(
                decision_id=d.decision_id,
                quality=float(np.clip(mean + rng.normal(0, 0.1), 0, 1)),
                cost_usd=spec.expected_cost_usd(100, 256),
            )
        )
    count = log.counts()["feedback"]
    log.close()
    return count


@pytest.fixture
def filled(env: Settings) -> Callable[..., int]:
    """``fill(n, seed=...)`` appends synthetic events to the env's event log."""

    def fill(n: int, *, seed: int = 0, floor: float = 0.6) -> int:
        return fill_log(env, n, seed=seed, floor=floor)

    return fill


def log_rewards(settings: Settings, means: dict[str, float], n: int, *, seed: int = 0) -> None:
    """``n`` logged decisions per policy version label, interleaved as live traffic split
    between versions is, each rewarded around ``means[label]`` (an online A/B sample)."""
    from llmopt.event_log import EventLog  # noqa: PLC0415
    from llmopt.schemas import Decision, Feedback  # noqa: PLC0415
    from llmopt.schemas import RequestContext as Ctx  # noqa: PLC0415

    log = EventLog(settings.event_log_url)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        for label, mean in means.items():
            d = Decision(
                model="gpt-4.1-mini", propensity=1.0, policy_name="x", policy_version=label
            )
            log.record_decision(d, Ctx(tenant="t"), features={"bias": 1.0})
            q = float(np.clip(mean + rng.normal(0, 0.2), 0, 1))
            log.record_feedback(Feedback(decision_id=d.decision_id, quality=q), reward=q)
    log.close()
