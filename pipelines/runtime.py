"""Process environment for Prefect and MLflow, set by the CLI before either is imported.

Prefect reads ``PREFECT_HOME`` (its ephemeral API database lives there) and a few switches from
the environment when it is imported; set them here, explicitly, never at import time. Values
already in the environment win.

Logging: Prefect's run loggers (``get_run_logger()`` in flows and tasks, and the engine's own
"Finished in state ..." lines) log at INFO, which is what the Prefect UI shows for each run;
``PREFECT_LOGGING_LEVEL=WARNING`` would leave every run at "Waiting for logs...". The libraries
the flows call are quieted at WARNING instead (:data:`QUIET_LOGGERS`): MLflow's "Creating initial
MLflow database tables...", "Successfully registered model ...", Alembic's migration notes,
HTTP clients' request lines. Their warnings and errors still show.
"""

from __future__ import annotations

import logging
import os

from llmopt.settings import Settings

QUIET_LOGGERS = (
    "mlflow",
    "alembic",
    "feast",
    "evidently",
    "optuna",
    "sqlalchemy",
    "urllib3",
    "httpx",
    "httpcore",
    "git",
    "filelock",
    "numexpr",
)
"""Libraries whose INFO lines are noise in a flow's log: kept at WARNING."""


def configure_environment(settings: Settings) -> dict[str, str]:
    """Set Prefect/MLflow defaults for this process (existing variables win); return them.

    Also quiets :data:`QUIET_LOGGERS` at WARNING (a process-wide setting: commands call this
    when they run, never at import).
    """
    home = settings.prefect_home_path.resolve()
    defaults = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",  # flow and task progress, shown in the UI
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # MLflow sets its own loggers' level from this when it is imported (INFO otherwise).
        "MLFLOW_LOGGING_LEVEL": "WARNING",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    quiet_libraries()
    home.mkdir(parents=True, exist_ok=True)
    return {k: os.environ[k] for k in defaults}


def quiet_libraries(level: int = logging.WARNING) -> None:
    """Raise each of :data:`QUIET_LOGGERS` to ``level`` (a logger set higher stays higher)."""
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < level:  # NOTSET (0) included
            logger.setLevel(level)
