"""Flow ``evaluate-and-promote``: move versions through ``dev -> staging -> prod`` by rule.

One A/B test at a time, and nothing resets it:

- while a ``staging`` version is under test (it differs from ``prod`` and no verdict has retired
  it), newer ``dev`` versions queue; the test's sample is never restarted by a new version;
- the test is the mixture SPRT on the live rewards of decisions stamped with each version
  (:func:`pipelines.promotion.prod_gate`, always valid however often this flow looks): a
  significant gain moves ``prod`` to the challenger; a verdict for the champion (significantly
  worse, futile, or out of samples) withdraws the challenger (its ``staging`` alias removed,
  tagged ``rejected_ab`` with the reason), and the next ``dev`` version may enter;
- with no test running, the ``dev`` version becomes ``staging`` if its off-policy estimate on
  the recent logs is not worse than the champion's beyond ``margin``; serving then gives it
  canary traffic by itself (:mod:`serving.autopilot`). With no ``prod`` version yet, it becomes
  ``prod`` at once.

The A/B level and sample size default to the settings' autopilot rules
(``LLMOPT_AUTOPILOT__ALPHA``, ``LLMOPT_AUTOPILOT__MIN_SAMPLES``). Every verdict is tagged on the
version.
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
RETIRED = frozenset({"rolled_back", "rejected_ab"})
"""Validation statuses of versions that may not be (re)tested."""
AGAINST_CHALLENGER = frozenset({"champion", "futility", "max_samples"})
"""mSPRT decisions that end a test without promotion."""


@task(name="current-aliases", cache_policy=NO_CACHE, retries=2)
def current_aliases() -> dict[str, str | None]:
    """The version each alias points at."""
    client = registry.configure(get_settings())
    return {alias: registry.version_for_alias(client, alias) for alias in registry.ALIASES}


@task(name="validation-status", cache_policy=NO_CACHE, retries=2)
def validation_status(version: str) -> str:
    """The ``validation_status`` tag of ``version`` ('' when untagged)."""
    client = registry.configure(get_settings())
    mv = registry.client_model_version(client, version, registry.MODEL_NAME)
    return str((mv.tags or {}).get("validation_status", ""))


@task(name="withdraw-challenger", cache_policy=NO_CACHE, retries=2)
def withdraw_challenger(version: str, reason: str) -> str:
    """Remove ``staging`` from a version the A/B test decided against."""
    client = registry.configure(get_settings())
    return registry.withdraw(client, version, reason, role="challenger", status="rejected_ab")


@flow(name=NAME, description=__doc__)
def evaluate_and_promote(
    eval_window: int = 2000,
    margin: float = 0.01,
    alpha: float | None = None,
    min_samples: int | None = None,
) -> dict[str, Any]:
    """Decide the running A/B test, or gate the next ``dev`` version into ``staging``."""
    rules_ = get_settings().autopilot
    rules = PromotionPolicy(
        eval_window=eval_window,
        margin=margin,
        alpha=rules_.alpha if alpha is None else alpha,
        min_samples=rules_.min_samples if min_samples is None else min_samples,
        min_effect=rules_.min_effect,
        max_samples=rules_.max_samples,
        non_inferiority_margin=rules_.non_inferiority_margin,
    )
    aliases = current_aliases()
    outcomes: list[dict[str, Any]] = []
    notes: list[str] = []
    dev, staging, prod = aliases["dev"], aliases["staging"], aliases["prod"]
    under_test = (  # an A/B test needs a champion to compare with
        prod is not None
        and staging is not None
        and staging != prod
        and validation_status(staging) not in RETIRED
    )
    if under_test and staging is not None:
        outcome = promote_version(staging, "prod", rules).as_dict()
        decision = outcome["details"].get("decision")
        if not outcome["moved"] and decision in AGAINST_CHALLENGER:
            notes.append(withdraw_challenger(staging, outcome["reason"]))
        elif not outcome["moved"] and dev not in (None, staging, prod):
            notes.append(f"dev version {dev} queued: staging version {staging} is under test")
        outcomes.append(outcome)
    elif dev is not None and dev not in (staging, prod) and validation_status(dev) not in RETIRED:
        entered = promote_version(dev, "staging", rules).as_dict()
        outcomes.append(entered)
        if entered["moved"] and prod is None:  # no champion yet: the staging gate suffices
            outcomes.append(promote_version(dev, "prod", rules).as_dict())
    for o in outcomes:
        o["details"] = {k: v for k, v in o["details"].items() if not k.endswith("_report")}
    return {"before": aliases, "after": current_aliases(), "outcomes": outcomes, "notes": notes}
