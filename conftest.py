"""Root pytest configuration: what doctest collection must skip."""

collect_ignore_glob = ["llmopt/migrations/*", "bench/*", ".venv/*", ".tools/*"]
