"""Prefect flows: incremental and nightly training, HPO, promotion, drift (issue #5)."""
