"""The ``models`` package imports its policies on first use: one learner module loads alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_one_learner_module_does_not_load_every_policy() -> None:
    loaded = _run(
        "import sys, models.tuning; "
        "print(sorted(m for m in ('river', 'models.kinds', 'models.linucb') if m in sys.modules))"
    )
    assert loaded == "[]"


def test_the_package_names_still_resolve_and_unknown_ones_fail() -> None:
    out = _run(
        "import models\n"
        "from models import UCB1, make_policy\n"
        "print(make_policy('ucb1').__class__ is UCB1, models.RECOMMENDED in models.POLICIES)\n"
        "try:\n    models.nope\nexcept AttributeError as e:\n    print(e)"
    )
    assert out.splitlines() == ["True True", "module 'models' has no attribute 'nope'"]


def test_a_policy_state_loads_where_only_the_state_module_was_imported() -> None:
    state = _run(
        "import json; from models import make_policy; "
        "print(json.dumps(make_policy('linucb').to_dict()))"
    )
    out = _run(
        "import json, sys; from models.state import Stateful; "
        f"p = Stateful.from_dict(json.loads({state!r})); print(type(p).__name__)"
    )
    assert out == "LinUCB"
