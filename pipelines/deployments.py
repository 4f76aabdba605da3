"""Every flow with its schedule: run one by name, or serve them all (``llmopt flows serve``).

``serve()`` registers one deployment per flow with its schedule on the Prefect API and runs
their scheduled runs in this process. For the schedules to show in a UI, start a Prefect
server first and point at it::

    prefect server start --host 127.0.0.1          # UI at http://127.0.0.1:4200
    PREFECT_API_URL=http://127.0.0.1:4200/api llmopt flows serve

Without ``PREFECT_API_URL`` Prefect starts a temporary local API for the process (the
embedded profile): schedules then run but no UI outlives the process.

``nightly-training`` is also the retraining deployment that drift runs (``LLMOPT_RETRAIN_
DEPLOYMENT`` = ``nightly-training/nightly-training``: flow name / deployment name, both the
spec's name; :mod:`monitoring.retraining`): a drift alarm in a service that has the same
``PREFECT_API_URL``, or a drifted ``drift-report`` run, creates a run of it, which this
process then runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

SCHEDULES_TZ = "UTC"


@dataclass(frozen=True)
class FlowSpec:
    """A flow by its name, the module holding it and its schedule."""

    name: str
    module: str
    attribute: str
    interval_seconds: int | None = None
    cron: str | None = None
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        """The Prefect flow object (imports its module)."""
        return getattr(importlib.import_module(self.module), self.attribute)

    @property
    def schedule(self) -> str:
        """Human-readable schedule."""
        if self.interval_seconds is not None:
            return f"every {self.interval_seconds // 60} min"
        return f"cron {self.cron} ({SCHEDULES_TZ})"


FLOWS: dict[str, FlowSpec] = {
    spec.name: spec
    for spec in (
        FlowSpec(
            "incremental-training",
            "pipelines.incremental_training",
            "incremental_training",
            interval_seconds=300,
            description="new feedback -> policy update -> version aliased dev",
        ),
        FlowSpec(
            "nightly-training",
            "pipelines.nightly_training",
            "nightly_training",
            cron="0 2 * * *",
            description="rebuild from the full history, refit the quality model; also run on drift",
        ),
        FlowSpec(
            "hpo",
            "pipelines.hpo",
            "hpo",
            cron="0 3 * * 0",
            description="Optuna study over the policy's hyperparameters, scored by OPE",
        ),
        FlowSpec(
            "materialize-features",
            "pipelines.materialize_features",
            "materialize_features",
            interval_seconds=600,
            description="feature store materialization (when the feature store is installed)",
        ),
        FlowSpec(
            "evaluate-and-promote",
            "pipelines.evaluate_and_promote",
            "evaluate_and_promote",
            cron="30 * * * *",
            description="dev -> staging (OPE gate) -> prod (A/B gate)",
        ),
        FlowSpec(
            "drift-report",
            "pipelines.drift_report",
            "drift_report",
            cron="0 6 * * *",
            description=(
                "Evidently drift reports: request features, per-model outcomes, decisions; "
                "drift -> retraining"
            ),
        ),
    )
}
"""Every flow by its Prefect name."""


def get_spec(name: str) -> FlowSpec:
    """A flow by its name (``incremental-training`` or ``incremental_training``)."""
    spec = FLOWS.get(name.replace("_", "-"))
    if spec is None:
        raise ValueError(f"unknown flow {name!r}; choose one of: {', '.join(FLOWS)}")
    return spec


def deployments() -> list[Any]:
    """One ``RunnerDeployment`` per flow, with its schedule."""
    out = []
    for spec in FLOWS.values():
        schedule: dict[str, Any] = (
            {"interval": spec.interval_seconds}
            if spec.interval_seconds is not None
            else {"cron": spec.cron}
        )
        out.append(
            spec.load().to_deployment(
                name=spec.name,
                description=spec.description,
                tags=["llmopt"],
                parameters=spec.parameters or None,
                concurrency_limit=1,  # a run never overlaps the previous one of its flow
                **schedule,
            )
        )
    return out


def serve_all(*, limit: int | None = None) -> None:
    """Serve every deployment with its schedule until interrupted."""
    from prefect import serve  # noqa: PLC0415

    serve(*deployments(), limit=limit)
