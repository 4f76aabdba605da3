"""Policies by name, for the CLI, the replay and (later) the pipelines.

Examples
--------
>>> make_policy("cost_aware_linucb", seed=0).name  # the algorithm's name
'linucb'
>>> make_policy("nope")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: unknown policy 'nope'; choose one of: cost_aware_cluster_thompson, ...
"""

from __future__ import annotations

from typing import Any

from llmopt.features import STRUCTURE_FEATURES
from models.base import BasePolicy
from models.cluster_thompson import ClusterThompson
from models.epsilon_greedy import EpsilonGreedy
from models.lin_thompson import LinThompson
from models.linucb import LinUCB
from models.ogd_greedy import OGDGreedy
from models.random_policy import UniformRandom
from models.thompson import BetaThompson, GaussianThompson
from models.ucb import UCB1

RECOMMENDED = "cost_aware_cluster_thompson"
"""The policy the product uses when none is named."""

_COST_AWARE = {"cost_aware": True, "max_reward": 1.0}
"""Learn quality, rank by quality minus predicted cost (and latency) in reward units."""

POLICIES: dict[str, tuple[type[BasePolicy], dict[str, Any]]] = {
    # The previous recommendation (until issue 13). Cost-aware (cost is known before a call,
    # quality is not, so the optimism goes on quality alone and is capped at 1), each arm's
    # prior centred on the mean quality of all arms, and the request features used only while
    # they predict better than per-arm means (progressive validation).
    "cost_aware_linucb": (
        LinUCB,
        {
            "alpha": 0.1,
            "ridge": 3.0,
            "bias_ridge": 1.0,
            "pooled_prior": True,
            "context_gate": True,
            "burn_in": 2,
            **_COST_AWARE,
        },
    ),
    # The recommended router: structure from the prompt's embedding, Thompson sampling per
    # (embedding cluster, model) shrunk towards each model's global mean by a weight estimated
    # from the data (empirical Bayes), cost-aware like the
    # rest (models/cluster_thompson.py). Chosen on 5-seed replays of every routing file
    # (bench/results/protocol.json): it finds the mixed workload's task structure that the
    # linear policies miss.
    "cost_aware_cluster_thompson": (
        ClusterThompson,
        {
            "n_clusters": 8,
            "prior_weight": None,  # empirical Bayes: estimated from the data
            "cell_features": STRUCTURE_FEATURES,  # cells on the embedding + structural markers
            "cell_feature_weight": 0.7,
            "sigma": 0.15,
            "explore_decay": 10.0,
            "fit_after": 300,
            **_COST_AWARE,
        },
    ),
    "cost_aware_lin_thompson": (
        LinThompson,
        {
            "v": 0.2,
            "ridge": 3.0,
            "bias_ridge": 1.0,
            "pooled_prior": True,
            "context_gate": True,
            **_COST_AWARE,
        },
    ),
    "cost_aware_thompson": (BetaThompson, {"pooled_prior": 2.0, **_COST_AWARE}),
    # Textbook policies that learn the reward itself (quality - cost / willingness to pay).
    "epsilon_greedy": (EpsilonGreedy, {"epsilon": 0.2, "decay": 200.0}),
    "lin_thompson": (LinThompson, {"v": 0.1}),
    "linucb": (LinUCB, {"alpha": 0.1}),
    "ogd_greedy": (OGDGreedy, {"lr": 0.05, "epsilon": 0.1}),
    "random": (UniformRandom, {}),
    "thompson_gaussian": (GaussianThompson, {}),
    "ucb1": (UCB1, {"c": 0.5}),
}
"""The policy kinds: each policy class and the project's default hyperparameters, by name."""


def make_policy(name: str, *, seed: int | None = None, **params: Any) -> BasePolicy:
    """A fresh policy by name, with the project's default hyperparameters unless overridden."""
    try:
        cls, defaults = POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown policy {name!r}; choose one of: {', '.join(sorted(POLICIES))}"
        ) from None
    return cls(**{**defaults, **params, "seed": seed})


def kind_of(policy: BasePolicy) -> str:
    """The name users know ``policy`` by: its kind in :data:`POLICIES`, everywhere.

    The kind (``cost_aware_cluster_thompson``) is the name the README, the CLI, the flows, MLflow,
    ``/decide`` and Prometheus use; the class's short name (``policy.name``,
    ``cluster_thompson``) names the algorithm, which several kinds share (``linucb`` and
    ``cost_aware_linucb``). A kind is matched by class and cost-awareness; a policy no kind
    describes keeps its short name.

    >>> policy = make_policy(RECOMMENDED, seed=0)
    >>> policy.name, kind_of(policy)
    ('cluster_thompson', 'cost_aware_cluster_thompson')
    >>> kind_of(make_policy("linucb")), kind_of(make_policy("cost_aware_linucb"))
    ('linucb', 'cost_aware_linucb')
    """
    kinds = [
        kind
        for kind, (cls, defaults) in POLICIES.items()
        if type(policy) is cls
        and bool(defaults.get("cost_aware")) == bool(getattr(policy, "cost_aware", False))
    ]
    return kinds[0] if len(kinds) == 1 else str(policy.name)
