"""Root pytest configuration: what doctest collection must skip, and where libraries may write."""

import os
import tempfile

collect_ignore_glob = ["llmopt/migrations/*", "bench/*", ".venv/*", ".tools/*"]

# Prefect and MLflow read these when first imported (test modules and doctest collection of
# pipelines/ import them): never write under ~/ during the tests.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="llmopt-test-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="llmopt-test-bentoml-"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
# Serving opens a Feast store on a background thread by default (seconds of imports and
# ``feast apply``): tests that exercise online features turn it on themselves.
os.environ.setdefault("LLMOPT_SERVING_FEATURES", "off")
