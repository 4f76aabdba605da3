"""Feast imported after ``feast_without_typechecks()`` has no typeguard instrumentation."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
{call}
from feast import Field
names = Field.__init__.__code__.co_names
print("instrumented" if "check_argument_types_internal" in names else "plain")
"""
CALL = (
    "from feature_store.unchecked import feast_without_typechecks; "
    "print(feast_without_typechecks())"
)


def _probe(call: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(call=call)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout.split()


@pytest.mark.slow
def test_feast_is_left_unchecked_when_switched_off_before_its_import() -> None:
    assert _probe("") == ["instrumented"]  # Feast as it comes: the probe can tell
    assert _probe(CALL) == ["True", "plain"]


@pytest.mark.slow
def test_too_late_changes_nothing_and_says_so() -> None:
    late = "import feast; " + CALL
    assert _probe(late) == ["False", "instrumented"]
