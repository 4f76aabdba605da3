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

from models.base import BasePolicy
from models.epsilon_greedy import EpsilonGreedy
from models.kinds import POLICIES, RECOMMENDED, make_policy
from models.lin_thompson import LinThompson
from models.linucb import LinUCB
from models.random_policy import UniformRandom
from models.state import StateError, Stateful
from models.thompson import BetaThompson, GaussianThompson
from models.ucb import UCB1

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
