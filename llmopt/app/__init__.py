"""The composition root: the one place that wires the project's packages together.

- :mod:`llmopt.app.cli`: the ``llmopt`` command (Typer), every sub-command;
- :mod:`llmopt.app.monitor_cli`: ``llmopt monitor ...``;
- :mod:`llmopt.app.demo`: ``llmopt demo`` as a function returning a typed result;
- :mod:`llmopt.app.processes`: starting, driving and stopping the decision service.

Everything else in ``llmopt`` is the core and imports no other project package; nothing imports
from this package (``make lint`` checks both with import-linter).
"""
