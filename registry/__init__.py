"""The model registry: the ``llm-router`` registered model in MLflow, its versions and aliases.

This package is the one owner of the registry's names (:data:`MODEL_NAME`, :data:`ALIASES`,
:data:`CHAMPION_ALIAS`) and of the "is there a registry at all" check. The MLflow adapter itself
(logging versions, moving aliases, loading a version's policy with its integrity check) is
:mod:`registry.mlflow_registry`; it imports MLflow, which costs seconds, so import it only when
a registry is needed. Importing this package imports nothing heavy.

It sits below the pipelines, serving and monitoring, which all use it, and above the learners
(``models/``), whose state it stores.

Examples
--------
>>> MODEL_NAME, CHAMPION_ALIAS, ALIASES
('llm-router', 'prod', ('dev', 'staging', 'prod'))
>>> from pathlib import Path
>>> from llmopt.settings import Settings
>>> registry_exists(Settings(home=Path("/nonexistent")))
False
"""

from __future__ import annotations

from llmopt.settings import Settings

MODEL_NAME = "llm-router"
"""The one registered model that holds every policy version."""
ALIASES = ("dev", "staging", "prod")
"""Promotion order of the aliases: a version moves ``dev`` -> ``staging`` -> ``prod``."""
CHAMPION_ALIAS = "prod"
"""The alias of the version that serves (the champion)."""
CHALLENGER_ALIAS = "staging"
"""The alias of the version under test (the challenger)."""


def registry_exists(settings: Settings) -> bool:
    """False when the embedded registry was never created (nothing to load, nothing to create).

    A configured tracking server (``LLMOPT_MLFLOW_TRACKING_URI``) always counts as existing: only
    asking it tells whether it holds a version.
    """
    return bool(settings.mlflow_tracking_uri) or (settings.home / "mlflow.db").exists()


__all__ = ["ALIASES", "CHALLENGER_ALIAS", "CHAMPION_ALIAS", "MODEL_NAME", "registry_exists"]
