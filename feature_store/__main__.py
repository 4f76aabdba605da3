"""``python -m feature_store``: the Feast CLI with the profiles' variables defaulted, and apply.

- ``python -m feature_store feast [FEAST ARGS]``: Feast's own CLI, run from ``feature_repo/``,
  with every ``LLMOPT_FEAST_*`` variable that is unset given its default
  (``feature_store.store.ENV_DEFAULTS``), e.g. ``feast -f production/feature_store.yaml apply``;
- ``python -m feature_store apply [embedded|production]``: apply in-process, creating the offline
  seeds or tables first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("feast", "apply"):
        sys.stderr.write(f"{__doc__}\n")
        return 2
    from feature_store.store import ENV_DEFAULTS, apply_repo  # noqa: PLC0415
    from feature_store.unchecked import feast_without_typechecks  # noqa: PLC0415

    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if args[0] == "apply":
        profile = args[1] if len(args) > 1 else "embedded"
        if profile not in ("embedded", "production"):
            sys.stderr.write(f"unknown profile {profile!r}: embedded or production\n")
            return 2
        apply_repo("production" if profile == "production" else "embedded")
        return 0
    feast_without_typechecks()
    from feast.cli.cli import cli  # noqa: PLC0415

    cli.main(args=args[1:], prog_name="feast", standalone_mode=True)
    return 0  # pragma: no cover - click exits


if __name__ == "__main__":
    raise SystemExit(main())
