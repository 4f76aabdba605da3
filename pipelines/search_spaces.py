"""Hyperparameter search of the router policy: an Optuna study scored by off-policy evaluation.

Each trial builds the policy with the trial's hyperparameters, warm-starts it on the older part
of the logged feedback (``learn_many``) and scores it by SNIPS on the newer part (a temporal
holdout: the policy is judged on decisions it has not learned from). The study lives in an
Optuna RDB storage (``Settings.optuna_storage``: SQLite under ``LLMOPT_HOME``, PostgreSQL in
production), so ``optuna-dashboard <url>`` shows it and reruns continue it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna

from llmopt.catalog import ModelCatalog
from llmopt.event_log import TrainingEvent
from models.base import BasePolicy
from models.kinds import POLICIES, make_policy
from pipelines.evaluation import ope_report
from pipelines.training import training_target

Space = Callable[[optuna.Trial], dict[str, Any]]

SEARCH_SPACES: dict[str, Space] = {
    "linucb": lambda t: {
        "alpha": t.suggest_float("alpha", 0.01, 1.0, log=True),
        "ridge": t.suggest_float("ridge", 0.3, 30.0, log=True),
        "discount": t.suggest_float("discount", 0.99, 1.0),
    },
    "lin_thompson": lambda t: {
        "v": t.suggest_float("v", 0.01, 1.0, log=True),
        "ridge": t.suggest_float("ridge", 0.3, 30.0, log=True),
        "discount": t.suggest_float("discount", 0.99, 1.0),
    },
    "epsilon_greedy": lambda t: {
        "epsilon": t.suggest_float("epsilon", 0.01, 0.5, log=True),
        "decay": t.suggest_float("decay", 10.0, 2000.0, log=True),
    },
    "ucb1": lambda t: {"c": t.suggest_float("c", 0.05, 2.0, log=True)},
    "cluster_thompson": lambda t: {
        "sigma": t.suggest_float("sigma", 0.05, 0.5, log=True),
        "prior_weight": t.suggest_float("prior_weight", 0.5, 20.0, log=True),
        "n_clusters": t.suggest_int("n_clusters", 2, 24),
        "explore_decay": t.suggest_float("explore_decay", 0.5, 30.0, log=True),
    },
}
"""Hyperparameters searched for each policy algorithm (``BasePolicy.name``)."""


def study_name(policy: str) -> str:
    """Name of the study of the registry policy ``policy``."""
    return f"llm-router-hpo-{policy}"


def search_space(policy: str) -> Space:
    """The search space of the registry policy ``policy`` (by its algorithm)."""
    algorithm = make_policy(policy).name
    if policy not in POLICIES or algorithm not in SEARCH_SPACES:
        raise ValueError(
            f"no search space for policy {policy!r} (algorithm {algorithm!r}); "
            f"searchable algorithms: {', '.join(sorted(SEARCH_SPACES))}"
        )
    return SEARCH_SPACES[algorithm]


def score(
    policy: BasePolicy,
    train: Sequence[TrainingEvent],
    holdout: Sequence[TrainingEvent],
    *,
    catalog: ModelCatalog | None,
) -> float:
    """SNIPS value on ``holdout`` of ``policy`` after learning ``train``."""
    policy.learn_many((e.model, e.features, training_target(policy, e)) for e in train)
    return float(ope_report(policy, holdout, catalog=catalog, n_bootstrap=10)["snips"]["value"])


def run_study(
    events: Sequence[TrainingEvent],
    *,
    policy: str,
    storage: str,
    n_trials: int,
    holdout: float = 0.3,
    seed: int = 0,
    catalog: ModelCatalog | None = None,
) -> optuna.Study:
    """Run ``n_trials`` more trials of the policy's study (created or continued in ``storage``)."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    cut = int(len(events) * (1.0 - holdout))
    train, test = list(events[:cut]), list(events[cut:])
    if not train or not test:
        raise ValueError(f"need logged feedback on both sides of the holdout; have {len(events)}")
    space = search_space(policy)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name(policy),
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        load_if_exists=True,
    )
    study.set_user_attr("policy", policy)
    study.set_user_attr("scored_by", "SNIPS on a temporal holdout")

    def objective(trial: optuna.Trial) -> float:
        params = space(trial)
        return score(make_policy(policy, seed=seed, **params), train, test, catalog=catalog)

    study.optimize(objective, n_trials=n_trials)
    return study


def best_params(policy: str, storage: str) -> dict[str, Any]:
    """Best hyperparameters found so far for ``policy`` ({} without a finished trial)."""
    try:
        study = optuna.load_study(study_name=study_name(policy), storage=storage)
        return dict(study.best_params)
    except (KeyError, ValueError):
        return {}
