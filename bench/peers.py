"""Peer libraries' bandits behind our policy shape, so the benchmarks can replay them like ours.

Each adapter has a ``name``, ``pull(arm_ids, context) -> Decision`` and
``update(arm_id, context, reward)`` (:class:`llmopt.policy.Policy`), and says in its docstring how
the propensity of a decision is obtained: only VW reports one itself. The adapters add as little
as possible around the library's own calls (so the speed benchmark times the library), and every
peer gets one documented hyperparameter setting for every data file: no per-file tuning.

Rewards are "higher is better" (docs/style.md #11); VW minimises a cost, and :func:`vw_cost` is
the one place where the sign flips.

Peers (``PEERS``, by name):

* ``river_linucb``: River 0.26 ``bandit.LinUCBDisjoint`` (Bayesian linear regression per arm,
  upper bound ``mu + sigma`` of the predictive distribution), River's defaults ``alpha=1``
  (prior precision), ``beta=1`` (noise precision), each arm pulled once first.
* ``river_ts``: River 0.26 ``bandit.ThompsonSampling`` with ``proba.Gaussian`` per arm (rewards
  are real-valued and may be negative, so Beta does not apply); not contextual.
* ``mabwiser_linucb``: MABWiser ``LearningPolicy.LinUCB(alpha=0.1, l2_lambda=1.0)``, the same
  width and ridge as our registry's ``linucb``, so differences come from the implementation.
* ``vw_cb_adf``: Vowpal Wabbit 9 ``--cb_explore_adf -q sa --epsilon 0.05`` (the contextual
  bandit tutorial's setting; cost-sensitive regression with ``mtr``, VW's default).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from llmopt.policy import Policy
from llmopt.schemas import Decision
from llmopt.types import ArmID, Features


def _decision(arm: ArmID, propensity: float, name: str, version: int) -> Decision:
    return Decision(
        model=arm,
        propensity=min(max(float(propensity), 1e-12), 1.0),
        policy_name=name,
        policy_version=str(version),
    )


class RiverLinUCB:
    """River's ``bandit.LinUCBDisjoint`` with our policy shape.

    Propensity: River returns only an arm id; its rule is greedy on ``mu + sigma`` (ties broken
    at random), so the propensity is 1 (1/k when k arms tie, which only happens before an arm
    has data). River's own burn-in pulls untried arms in the order offered: propensity 1 too.

    River 0.26's constructor calls ``super().__init__(reward_obj, burn_in)``, which puts
    ``burn_in`` into the base class's ``reward_scaler`` slot (and leaves the burn-in at 0); the
    adapter therefore constructs it with ``burn_in=0`` (a falsy scaler, i.e. none) and sets the
    ``burn_in`` attribute afterwards.

    Parameters
    ----------
    alpha
        Prior precision of each arm's Bayesian linear regression (River's ``alpha``).
    beta
        Noise precision of each regression (River's ``beta``).
    burn_in
        Pulls of each arm before the rule takes over.
    seed
        Seed of River's tie-breaking generator.
    """

    name = "river_linucb"

    def __init__(
        self, alpha: float = 1.0, *, beta: float = 1.0, burn_in: int = 1, seed: int | None = None
    ) -> None:
        from river import bandit  # noqa: PLC0415 - optional peer dependency

        self.alpha, self.beta, self.burn_in, self.seed = alpha, beta, burn_in, seed
        self._policy = bandit.LinUCBDisjoint(alpha=alpha, beta=beta, burn_in=0, seed=seed)
        self._policy.burn_in = burn_in  # the constructor cannot set it (see the docstring)
        self._n = 0

    def pull(self, arm_ids: Sequence[ArmID], context: Features | None = None) -> Decision:
        arms = list(arm_ids)
        arm = self._policy.pull(arms, context=dict(context or {}))
        return _decision(arm, 1.0, self.name, self._n)

    def update(self, arm_id: ArmID, context: Features | None, reward: float) -> RiverLinUCB:
        self._policy.update(arm_id, dict(context or {}), reward)
        self._n += 1
        return self


class RiverThompson:
    """River's ``bandit.ThompsonSampling`` with a Gaussian reward model per arm; not contextual.

    River's TS keeps a ``proba.Gaussian`` fitted to each arm's rewards and pulls the arm whose
    draw from it is highest. The Gaussian is the rewards' own distribution (its sigma is the
    rewards' standard deviation, not the uncertainty of their mean), so exploration does not
    shrink with data; that is River's design and is kept as is. Beta does not fit: rewards are
    real-valued (quality minus cost over the willingness to pay) and can be negative.

    Propensity: River returns only an arm id. The adapter estimates the probability that the
    chosen arm has the highest draw by Monte Carlo: ``propensity_draws`` joint draws from the
    arms' current Gaussians with the adapter's own numpy generator (River's generators are left
    untouched), add-one smoothed over the arms so it is never 0. It is an estimate, not the
    exact probability; with ``propensity_draws=0`` no estimate is made and 1.0 is reported,
    which is *not* a true propensity (the speed benchmark uses that to time River alone).
    During River's burn-in (untried arms in the order offered) the choice is deterministic: 1.

    Parameters
    ----------
    burn_in
        Pulls of each arm before sampling takes over (a Gaussian needs two rewards for a spread).
    propensity_draws
        Monte Carlo draws per decision for the propensity estimate (0: report 1.0).
    seed
        Seed of River's generator and of the propensity estimate's.
    """

    name = "river_ts"

    def __init__(
        self, *, burn_in: int = 2, propensity_draws: int = 200, seed: int | None = None
    ) -> None:
        from river import bandit, proba  # noqa: PLC0415 - optional peer dependency

        self.burn_in, self.propensity_draws, self.seed = burn_in, propensity_draws, seed
        self._policy = bandit.ThompsonSampling(
            reward_obj=proba.Gaussian(), burn_in=burn_in, seed=seed
        )
        self._rng = np.random.default_rng(seed)
        self._n = 0

    def _propensity(self, arms: list[ArmID], chosen: ArmID) -> float:
        counts = self._policy._counts
        if self.propensity_draws <= 0 or any(counts[a] < self.burn_in for a in arms):
            return 1.0
        rewards = self._policy._rewards
        mu = np.array([rewards[a].mu if a in rewards else 0.0 for a in arms])
        sigma = np.array([rewards[a].sigma if a in rewards else 0.0 for a in arms])
        draws = self._rng.normal(mu, sigma, size=(self.propensity_draws, len(arms)))
        wins = np.bincount(draws.argmax(axis=1), minlength=len(arms))
        return float((wins[arms.index(chosen)] + 1) / (self.propensity_draws + len(arms)))

    def pull(self, arm_ids: Sequence[ArmID], context: Features | None = None) -> Decision:
        arms = list(arm_ids)
        arm = self._policy.pull(arms)
        return _decision(arm, self._propensity(arms, arm), self.name, self._n)

    def update(self, arm_id: ArmID, context: Features | None, reward: float) -> RiverThompson:
        self._policy.update(arm_id, reward)
        self._n += 1
        return self


class MABWiserLinUCB:
    """MABWiser's ``LearningPolicy.LinUCB``, trained online one ``partial_fit`` per reward.

    Contexts become a fixed-order vector: the feature order is taken from the first context seen
    (or from ``features`` when given); a feature missing at a step is 0 and a key first seen
    later is ignored (MABWiser's models have a fixed width once fitted). Our request features are
    a fixed set, so nothing is lost in the benchmarks. Arms not known yet are added with
    ``add_arm``; MABWiser cannot predict before its first fit, so until every offered arm has one
    reward the adapter pulls uniformly among the untried arms (a burn-in of one pull per arm).

    Propensity: 1/(number of untried arms) during that burn-in; afterwards MABWiser's rule is the
    argmax of the UCB scores, so 1 (ties, which need identical scores, go to the first arm).
    Scores come from ``predict_expectations`` so only the offered arms compete.

    Parameters
    ----------
    alpha
        Width of the confidence bonus.
    l2_lambda
        Ridge of every arm's regression.
    features
        Feature names in vector order (default: those of the first context).
    seed
        Seed of MABWiser's generator and of the burn-in's.
    """

    name = "mabwiser_linucb"

    def __init__(
        self,
        alpha: float = 0.1,
        *,
        l2_lambda: float = 1.0,
        features: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> None:
        self.alpha, self.l2_lambda, self.seed = alpha, l2_lambda, seed
        self.features = list(features) if features is not None else None
        self._mab: Any = None
        self._trained: set[ArmID] = set()
        self._rng = random.Random(seed)
        self._n = 0

    def _vector(self, context: Features | None) -> np.ndarray:
        ctx = context or {}
        if self.features is None:
            self.features = sorted(ctx)
        return np.array([[float(ctx.get(f, 0.0)) for f in self.features]])

    def _ensure_arms(self, arms: Sequence[ArmID]) -> None:
        if self._mab is None:
            from mabwiser.mab import MAB, LearningPolicy  # noqa: PLC0415 - optional peer

            self._mab = MAB(
                arms=list(arms),
                learning_policy=LearningPolicy.LinUCB(alpha=self.alpha, l2_lambda=self.l2_lambda),
                seed=self.seed if self.seed is not None else 123456,
            )
            return
        for arm in arms:
            if arm not in self._mab.arms:
                self._mab.add_arm(arm)

    def pull(self, arm_ids: Sequence[ArmID], context: Features | None = None) -> Decision:
        arms = list(arm_ids)
        self._ensure_arms(arms)
        x = self._vector(context)
        untried = [a for a in arms if a not in self._trained]
        if untried:
            return _decision(self._rng.choice(untried), 1.0 / len(untried), self.name, self._n)
        expectations = self._mab.predict_expectations(x)
        arm = max(arms, key=expectations.__getitem__)
        return _decision(arm, 1.0, self.name, self._n)

    def update(self, arm_id: ArmID, context: Features | None, reward: float) -> MABWiserLinUCB:
        self._ensure_arms([arm_id])
        self._mab.partial_fit([arm_id], [float(reward)], self._vector(context))
        self._trained.add(arm_id)
        self._n += 1
        return self


_VW_UNSAFE = re.compile(r"[\s|:]")


def _vw_name(name: str) -> str:
    """A feature or arm name VW's text format cannot misread (no spaces, ``|`` or ``:``)."""
    return _VW_UNSAFE.sub("_", name)


def vw_cost(reward: float) -> float:
    """VW minimises cost; our reward is higher-is-better: the one sign flip (docs/style.md #11)."""
    return -reward


class VWContextualBandit:
    """Vowpal Wabbit ``--cb_explore_adf`` through its Python binding (text examples).

    Each step builds a multi-line example: ``shared |s f:v ...`` with the request features
    (zeros omitted) and one ``|a arm=NAME`` line per offered arm; ``-q sa`` crosses the two
    namespaces, so VW learns a per-arm linear model of the cost (``mtr`` regression). The arm
    set may change from step to step (ADF: arms are examples, not indices).

    Propensity: VW's ``predict`` returns the exploration pmf over the offered arms (epsilon-greedy
    with ``epsilon``: ``1 - epsilon + epsilon/k`` for the best arm, ``epsilon/k`` otherwise); the
    adapter samples the arm from it with its own generator and reports that probability, which
    is also what ``learn`` receives in the ``0:cost:probability`` label of the chosen arm.

    Parameters
    ----------
    epsilon
        Exploration rate of VW's epsilon-greedy.
    extra_args
        More VW command-line arguments (e.g. ``"--squarecb"`` instead of epsilon-greedy).
    seed
        Seed of VW (``--random_seed``) and of the adapter's sampling.
    """

    name = "vw_cb_adf"

    def __init__(
        self, epsilon: float = 0.05, *, extra_args: str = "", seed: int | None = None
    ) -> None:
        from vowpalwabbit import Workspace  # noqa: PLC0415 - optional peer dependency

        self.epsilon, self.extra_args, self.seed = epsilon, extra_args, seed
        args = f"--cb_explore_adf -q sa --epsilon {epsilon} --quiet --random_seed {seed or 0}"
        self._vw = Workspace(f"{args} {extra_args}".strip())
        self._rng = random.Random(seed)
        self._last: tuple[tuple[ArmID, ...], str, ArmID, float] | None = None
        self._n = 0

    @staticmethod
    def _shared(context: Features | None) -> str:
        feats = " ".join(
            f"{_vw_name(k)}:{float(v):.6g}" for k, v in (context or {}).items() if v != 0
        )
        return f"shared |s {feats}"

    def pull(self, arm_ids: Sequence[ArmID], context: Features | None = None) -> Decision:
        arms = tuple(arm_ids)
        shared = self._shared(context)
        pmf = self._vw.predict([shared, *(f"|a arm={_vw_name(a)}" for a in arms)])
        u, acc, i = self._rng.random() * math.fsum(pmf), 0.0, len(arms) - 1
        for k, p in enumerate(pmf):
            acc += p
            if u < acc:
                i = k
                break
        self._last = (arms, shared, arms[i], float(pmf[i]))
        return _decision(arms[i], pmf[i], self.name, self._n)

    def update(self, arm_id: ArmID, context: Features | None, reward: float) -> VWContextualBandit:
        last = self._last
        if last is not None and last[2] == arm_id:
            arms, shared, _, prob = last
        else:  # feedback for a decision other than the last one: rebuild it with its propensity
            arms, shared = (arm_id,), self._shared(context)
            prob = 1.0
            if last is not None and arm_id in last[0]:
                arms = last[0]
                prob = float(
                    self._vw.predict([shared, *(f"|a arm={_vw_name(a)}" for a in arms)])[
                        arms.index(arm_id)
                    ]
                )
        cost = vw_cost(reward)
        lines = [shared] + [
            (f"0:{cost:.6g}:{prob:.6g} " if a == arm_id else "") + f"|a arm={_vw_name(a)}"
            for a in arms
        ]
        self._vw.learn(lines)
        self._last = None
        self._n += 1
        return self

    def state_bytes(self) -> int:
        """Size of VW's saved model (the Workspace itself cannot be pickled)."""
        import os  # noqa: PLC0415
        import tempfile  # noqa: PLC0415

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.vw")
            self._vw.save(path)
            return os.path.getsize(path)


PeerFactory = Callable[[int], Policy]

PEERS: dict[str, Callable[..., Policy]] = {
    RiverLinUCB.name: RiverLinUCB,
    RiverThompson.name: RiverThompson,
    MABWiserLinUCB.name: MABWiserLinUCB,
    VWContextualBandit.name: VWContextualBandit,
}
"""Peer adapters by name; each is built as ``PEERS[name](seed=seed, **overrides)``."""


def make_peer(name: str, *, seed: int | None = None, **params: Any) -> Policy:
    """A fresh peer adapter by name, with its documented default hyperparameters."""
    try:
        cls = PEERS[name]
    except KeyError:
        raise ValueError(f"unknown peer {name!r}; choose one of: {', '.join(PEERS)}") from None
    return cls(seed=seed, **params)


def peer_factories(**overrides: Mapping[str, Any]) -> dict[str, PeerFactory]:
    """Seed -> fresh adapter, for every peer (``overrides[name]`` holds per-peer parameters)."""

    def factory(name: str) -> PeerFactory:
        return lambda seed: make_peer(name, seed=seed, **dict(overrides.get(name, {})))

    return {name: factory(name) for name in PEERS}
