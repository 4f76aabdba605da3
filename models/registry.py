"""Policies by name, for the CLI, the replay and (later) the pipelines.

Examples
--------
>>> make_policy("linucb", seed=0).name
'linucb'
>>> make_policy("nope")
Traceback (most recent call last):
...
ValueError: unknown policy 'nope'; choose one of: epsilon_greedy, linucb, random
"""

from __future__ import annotations

from typing import Any

from models.base import Policy
from models.epsilon_greedy import EpsilonGreedy
from models.linucb import LinUCB
from models.random_policy import UniformRandom

RECOMMENDED = "linucb"
"""The policy the product uses when none is named."""

POLICIES: dict[str, tuple[type[Policy], dict[str, Any]]] = {
    "epsilon_greedy": (EpsilonGreedy, {"epsilon": 0.2, "decay": 200.0}),
    "linucb": (LinUCB, {"alpha": 0.1}),  # tuned on AlpacaEval + RouterBench replays
    "random": (UniformRandom, {}),
}
"""Policy class and the project's default hyperparameters, by name."""


def make_policy(name: str, *, seed: int | None = None, **params: Any) -> Policy:
    """A fresh policy by name, with the project's default hyperparameters unless overridden."""
    try:
        cls, defaults = POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown policy {name!r}; choose one of: {', '.join(sorted(POLICIES))}"
        ) from None
    return cls(**{**defaults, **params, "seed": seed})
