"""Process environment for Prefect and MLflow, set by the CLI before either is imported.

Prefect reads ``PREFECT_HOME`` (its ephemeral API database lives there) and a few switches from
the environment when it is imported; set them here, explicitly, never at import time. Values
already in the environment win.
"""

from __future__ import annotations

import os

from llmopt.settings import Settings


def configure_environment(settings: Settings) -> dict[str, str]:
    """Set Prefect/MLflow defaults for this process (existing variables win); return them."""
    home = settings.prefect_home_path.resolve()
    defaults = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    home.mkdir(parents=True, exist_ok=True)
    return {k: os.environ[k] for k in defaults}
