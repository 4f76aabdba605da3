"""Prefect flows: training, HPO, promotion, drift, feature materialisation.

Flows, one per module: :mod:`~pipelines.incremental_training`, :mod:`~pipelines.nightly_training`,
:mod:`~pipelines.hpo`, :mod:`~pipelines.materialize_features`,
:mod:`~pipelines.evaluate_and_promote`, :mod:`~pipelines.drift_report`; their schedules in
:mod:`~pipelines.deployments`. Tasks (:mod:`~pipelines.tasks`) wrap plain Python:
:mod:`~pipelines.checkpoint`,
:mod:`~pipelines.training`, :mod:`~pipelines.evaluation` (OPE, Welch's test, gates),
:mod:`~pipelines.promotion` and :mod:`~pipelines.search_spaces` (Optuna); the MLflow registry is
the :mod:`registry` package and every read of the event log a method of
:class:`llmopt.event_log.EventLog`. Importing this package imports neither Prefect nor MLflow.
"""
