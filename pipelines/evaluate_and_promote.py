"""Flow ``evaluate-and-promote`` (hourly): move versions through ``dev -> staging -> prod``.

The ``dev`` version becomes ``staging`` if its off-policy estimate on the recent logs is not
worse than the champion's beyond ``margin``; the ``staging`` version becomes ``prod`` if the
online A/B comparison (rewards of decisions stamped with each version) favours it at level
``alpha`` (:mod:`pipelines.promotion`). Every verdict is tagged on the version.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from llmopt.settings import get_settings
from pipelines.promotion import PromotionPolicy
from pipelines.tasks import promote_version
from registry import mlflow_registry as registry

NAME = "evaluate-and-promote"


@task(name="current-aliases", cache_policy=NO_CACHE, retries=2)
def current_aliases() -> dict[str, str | None]:
    """The version each alias points at."""
    client = registry.configure(get_settings())
    return {alias: registry.version_for_alias(client, alias) for alias in registry.ALIASES}


@flow(name=NAME, description=__doc__)
def evaluate_and_promote(
    eval_window: int = 2000, margin: float = 0.01, alpha: float = 0.05, min_samples: int = 100
) -> dict[str, Any]:
    """Gate ``dev`` into ``staging`` and ``staging`` into ``prod``."""
    rules = PromotionPolicy(
        eval_window=eval_window, margin=margin, alpha=alpha, min_samples=min_samples
    )
    aliases = current_aliases()
    outcomes: list[dict[str, Any]] = []
    dev, staging = aliases["dev"], aliases["staging"]
    if dev is not None and dev != staging:
        outcomes.append(promote_version(dev, "staging", rules).as_dict())
        staging = current_aliases()["staging"]
    if staging is not None and staging != aliases["prod"]:
        outcomes.append(promote_version(staging, "prod", rules).as_dict())
    for o in outcomes:
        o["details"] = {k: v for k, v in o["details"].items() if not k.endswith("_report")}
    return {"before": aliases, "after": current_aliases(), "outcomes": outcomes}
