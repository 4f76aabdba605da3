"""Learning algorithms: bandit policies and estimators (pure Python + numpy/River, no services)."""

from __future__ import annotations

from models.base import Policy
from models.epsilon_greedy import EpsilonGreedy
from models.linucb import LinUCB
from models.random_policy import UniformRandom
from models.registry import RECOMMENDED, make_policy

__all__ = ["RECOMMENDED", "EpsilonGreedy", "LinUCB", "Policy", "UniformRandom", "make_policy"]
