"""Policies by name, for the CLI, the replay and (later) the pipelines.

Examples
--------
>>> make_policy("linucb", seed=0).name
'linucb'
>>> make_policy("nope")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: unknown policy 'nope'; choose one of: epsilon_greedy, ...
"""

from __future__ import annotations

from typing import Any

from models.base import Policy
from models.epsilon_greedy import EpsilonGreedy
from models.lin_thompson import LinThompson
from models.linucb import LinUCB
from models.random_policy import UniformRandom
from models.thompson import BetaThompson, GaussianThompson
from models.ucb import UCB1

RECOMMENDED = "linucb"
"""The policy the product uses when none is named."""

POLICIES: dict[str, tuple[type[Policy], dict[str, Any]]] = {
    "epsilon_greedy": (EpsilonGreedy, {"epsilon": 0.2, "decay": 200.0}),
    "lin_thompson": (LinThompson, {"v": 0.1}),
    "linucb": (LinUCB, {"alpha": 0.1}),  # tuned on AlpacaEval + RouterBench replays
    "random": (UniformRandom, {}),
    "thompson_beta": (BetaThompson, {}),
    "thompson_gaussian": (GaussianThompson, {}),
    "ucb1": (UCB1, {"c": 0.5}),
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
