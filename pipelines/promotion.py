"""Gated promotion of registry versions: ``dev`` -> ``staging`` (OPE gate) -> ``prod`` (A/B gate).

- ``staging``: the challenger's off-policy estimate on the most recent logged decisions must not
  be worse than the champion's (the ``prod`` version, else the current ``staging`` one) by more
  than ``margin`` (:func:`pipelines.evaluation.ope_gate`).
- ``prod``: the online A/B comparison must favour the challenger with significance (or, with a
  non-inferiority margin, show it worse by at most the margin): rewards of decisions stamped
  ``llm-router/<challenger>`` vs ``llm-router/<champion>``
  (:func:`registry.mlflow_registry.version_label`), by the mSPRT
  (:func:`pipelines.evaluation.ab_gate`). With no prod version yet, a version that passed the
  staging gate goes to prod.
- ``force`` skips the gates (the version is tagged ``validation_status=forced``).

Each decision is written on the version: ``validation_status`` (``passed_ope``, ``failed_ope``,
``passed_ab``, ``failed_ab``, ``forced``) and ``gate_<alias>`` (the reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient

from llmopt.catalog import ModelCatalog
from llmopt.event_log import EventLog, TrainingEvent
from pipelines.evaluation import GateResult, ab_gate, estimate_of, ope_gate, ope_report
from registry.mlflow_registry import (
    MODEL_NAME,
    RegistryError,
    client_model_version,
    load_policy,
    set_alias,
    set_tags,
    version_for_alias,
    version_label,
)


@dataclass(frozen=True)
class PromotionPolicy:
    """Gate settings: OPE window and margin, A/B significance level and sample size."""

    eval_window: int = 2000
    margin: float = 0.01
    alpha: float = 0.05
    min_samples: int = 100
    min_effect: float = 0.0
    """Futility: stop once the challenger cannot be better by this much (0: never)."""
    max_samples: int | None = None
    """Stop an undecided test once both versions have this many decisions (None: never)."""
    non_inferiority_margin: float | None = None
    """Also promote a challenger shown to be worse by at most this much (None: only a better
    one; :class:`llmopt.settings.AutopilotRules` says why the autopilot sets it)."""


@dataclass(frozen=True)
class PromotionOutcome:
    """What :func:`promote` did: the gate's verdict and whether the alias moved."""

    version: str
    alias: str
    champion: str | None
    gate: GateResult
    moved: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (CLI output, flow results)."""
        return {
            "version": self.version,
            "alias": self.alias,
            "champion": self.champion,
            "passed": self.gate.passed,
            "reason": self.gate.reason,
            "moved": self.moved,
            "details": self.gate.details,
        }


def staging_gate(
    client: MlflowClient,
    version: str,
    events: list[TrainingEvent],
    *,
    catalog: ModelCatalog | None,
    margin: float,
    name: str = MODEL_NAME,
) -> tuple[str | None, GateResult]:
    """OPE of the challenger and the champion on ``events``; the gate's verdict."""
    champion = version_for_alias(client, "prod", name) or version_for_alias(client, "staging", name)
    if champion == version:
        champion = None
    if not events:
        return champion, GateResult(False, "no logged decisions to evaluate on")
    _, challenger_policy = load_policy(client, version, name)
    report = ope_report(challenger_policy, events, catalog=catalog)
    champion_est = None
    champion_report = None
    if champion is not None:
        _, champion_policy = load_policy(client, champion, name)
        champion_report = ope_report(champion_policy, events, catalog=catalog)
        champion_est = estimate_of(champion_report)
    gate = ope_gate(estimate_of(report), champion_est, margin=margin)
    details = {**gate.details, "challenger_report": report, "champion_report": champion_report}
    return champion, GateResult(gate.passed, gate.reason, details)


def prod_gate(
    client: MlflowClient,
    log: EventLog,
    version: str,
    *,
    alpha: float,
    min_samples: int,
    min_effect: float = 0.0,
    max_samples: int | None = None,
    non_inferiority_margin: float | None = None,
    name: str = MODEL_NAME,
) -> tuple[str | None, GateResult]:
    """Online A/B comparison of ``version`` against the prod version, from the event log."""
    champion = version_for_alias(client, "prod", name)
    if champion is None or champion == version:
        status = client.get_model_version(name, version).tags.get("validation_status", "")
        if status in ("passed_ope", "passed_ab", "forced"):
            return champion, GateResult(True, "no prod version yet: the staging gate suffices")
        return champion, GateResult(
            False, f"no prod version yet and version {version} has not passed the staging gate"
        )
    labels = [version_label(champion, name), version_label(version, name)]
    rewards = log.rewards_by_policy_version(labels, concurrent=True)
    gate = ab_gate(
        rewards[labels[0]],
        rewards[labels[1]],
        alpha=alpha,
        min_samples=min_samples,
        min_effect=min_effect,
        max_samples=max_samples,
        non_inferiority_margin=non_inferiority_margin,
    )
    return champion, gate


def promote(
    client: MlflowClient,
    version: str,
    alias: str,
    *,
    log: EventLog | None = None,
    catalog: ModelCatalog | None = None,
    rules: PromotionPolicy | None = None,
    force: bool = False,
    name: str = MODEL_NAME,
) -> PromotionOutcome:
    """Move ``alias`` to ``version`` if its gate passes (or ``force``); tag the verdict."""
    rules = rules or PromotionPolicy()
    version = str(version)
    client_model_version(client, version, name)  # a clear error for an unknown version
    client_version = (
        version_for_alias(client, alias, name) if alias in ("staging", "prod") else None
    )
    if force or alias == "dev":
        gate = GateResult(True, "forced" if force else "dev needs no gate")
        champion = client_version
    elif alias == "staging":
        if log is None:
            raise RegistryError("the staging gate needs the event log")
        events = log.latest_training_events(rules.eval_window)
        champion, gate = staging_gate(
            client, version, events, catalog=catalog, margin=rules.margin, name=name
        )
    elif alias == "prod":
        if log is None:
            raise RegistryError("the prod gate needs the event log")
        champion, gate = prod_gate(
            client,
            log,
            version,
            alpha=rules.alpha,
            min_samples=rules.min_samples,
            min_effect=rules.min_effect,
            max_samples=rules.max_samples,
            non_inferiority_margin=rules.non_inferiority_margin,
            name=name,
        )
    else:
        raise RegistryError(f"unknown alias {alias!r}; choose one of: dev, staging, prod")
    if alias != "dev":
        status = (
            "forced"
            if force
            else f"{'passed' if gate.passed else 'failed'}_"
            + ("ope" if alias == "staging" else "ab")
        )
        set_tags(
            client,
            version,
            {"validation_status": status, f"gate_{alias}": gate.reason[:500]},
            name=name,
        )
    if gate.passed:
        set_alias(client, version, alias, name=name)
    return PromotionOutcome(version, alias, champion, gate, gate.passed)
