"""Learning algorithms: bandit policies and estimators (pure Python + numpy/River, no services).

Policies (``pull``/``update``): :class:`EpsilonGreedy`, :class:`UCB1`, :class:`BetaThompson`,
:class:`GaussianThompson`, :class:`LinUCB`, :class:`LinThompson`, :class:`UniformRandom`, by name
through :func:`make_policy`. Estimators and helpers: :mod:`models.quality` (online quality
regression), :mod:`models.ope` (off-policy evaluation), :mod:`models.cascade` (escalation by
Q-learning), :mod:`models.tuning` (parameter tuning with Optuna), :mod:`models.pareto`,
:mod:`models.forecast` (workload), :mod:`models.pacer` (daily budget). Every learner's state
round-trips through ``to_dict`` / ``Stateful.from_dict`` (:mod:`models.state`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.base import BasePolicy
    from models.epsilon_greedy import EpsilonGreedy
    from models.kinds import POLICIES, RECOMMENDED, make_policy
    from models.lin_thompson import LinThompson
    from models.linucb import LinUCB
    from models.random_policy import UniformRandom
    from models.state import StateError, Stateful
    from models.thompson import BetaThompson, GaussianThompson
    from models.ucb import UCB1

_WHERE = {
    "BasePolicy": "models.base",
    "EpsilonGreedy": "models.epsilon_greedy",
    "POLICIES": "models.kinds",
    "RECOMMENDED": "models.kinds",
    "make_policy": "models.kinds",
    "LinThompson": "models.lin_thompson",
    "LinUCB": "models.linucb",
    "UniformRandom": "models.random_policy",
    "StateError": "models.state",
    "Stateful": "models.state",
    "BetaThompson": "models.thompson",
    "GaussianThompson": "models.thompson",
    "UCB1": "models.ucb",
}
"""Where each name below lives: imported on first use (PEP 562), so a process that needs one
learner module (the tuning child: :mod:`models.tuning`) does not load every policy and River
(236 MB of memory against Optuna's 60)."""

__all__ = [
    "POLICIES",
    "RECOMMENDED",
    "UCB1",
    "BetaThompson",
    "EpsilonGreedy",
    "GaussianThompson",
    "LinThompson",
    "LinUCB",
    "BasePolicy",
    "StateError",
    "Stateful",
    "UniformRandom",
    "make_policy",
]


def __getattr__(name: str) -> Any:
    """``models.X``: imported from its module on first use."""
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value
