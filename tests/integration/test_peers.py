"""The peer libraries' adapters (bench/peers.py) run through our policy shape and learn."""

from __future__ import annotations

import random

import pytest

from bench.peers import PEERS, make_peer, vw_cost
from llmopt.policy import Policy
from llmopt.schemas import Decision

pytestmark = pytest.mark.integration

CONTEXTUAL = ["river_linucb", "mabwiser_linucb", "vw_cb_adf"]


def _coder_world(policy: Policy, steps: int, seed: int) -> list[bool]:
    """2 arms: 'coder' pays 1 on code prompts, 'chatter' on the others; whether each was right."""
    rng = random.Random(seed)
    right = []
    for _ in range(steps):
        x = {"bias": 1.0, "code": float(rng.random() < 0.5)}
        d = policy.pull(["coder", "chatter"], x)
        good = (d.model == "coder") == (x["code"] == 1.0)
        policy.update(d.model, x, 1.0 if good else 0.0)
        right.append(good)
    return right


@pytest.mark.parametrize("name", list(PEERS))
def test_peer_runs_50_steps_with_valid_decisions(name: str) -> None:
    policy = make_peer(name, seed=1)
    assert isinstance(policy, Policy)
    rng = random.Random(0)
    arms = ["a", "b", "c"]
    for step in range(50):
        if step == 25:
            arms = [*arms, "d"]  # a model added while running
        x = {"bias": 1.0, "f1": rng.random(), "f2": rng.random()}
        d = policy.pull(arms, x)
        assert isinstance(d, Decision)
        assert d.model in arms
        assert 0.0 < d.propensity <= 1.0
        assert d.policy_name == policy.name == name
        reward = rng.random() - (0.5 if d.model == "a" else 0.0)  # negative rewards too
        assert policy.update(d.model, x, reward) is policy


@pytest.mark.parametrize("name", CONTEXTUAL)
def test_contextual_peer_learns_which_arm_suits_which_context(name: str) -> None:
    right = _coder_world(make_peer(name, seed=0), steps=300, seed=0)
    assert sum(right[-100:]) >= 85, name


def test_river_thompson_prefers_the_better_arm_with_an_estimated_propensity() -> None:
    policy = make_peer("river_ts", seed=0)
    rng = random.Random(0)
    chosen = []
    for _ in range(300):
        d = policy.pull(["good", "bad"])
        p_win = 0.8 if d.model == "good" else 0.2
        policy.update(d.model, None, float(rng.random() < p_win))
        chosen.append(d)
    late = chosen[-100:]
    assert sum(d.model == "good" for d in late) >= 70
    # after the burn-in the propensity is a Monte Carlo estimate, not a constant 1
    assert all(d.propensity < 1.0 for d in late)
    good = [d.propensity for d in late if d.model == "good"]
    assert 0.7 <= sum(good) / len(good) < 1.0


def test_vw_reports_its_pmf_and_learns_from_costs() -> None:
    assert vw_cost(0.25) == -0.25
    policy = make_peer("vw_cb_adf", seed=0)
    d = policy.pull(["x", "y", "z"], {"f": 1.0})
    assert d.propensity == pytest.approx(1 / 3, abs=1e-6)  # nothing learned: uniform pmf
    _coder_world(policy, steps=200, seed=1)
    props = {
        round(policy.pull(["coder", "chatter"], {"bias": 1.0}).propensity, 3) for _ in range(20)
    }
    assert props <= {0.975, 0.025}  # epsilon-greedy with epsilon 0.05 over 2 arms
