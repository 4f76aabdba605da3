"""Pareto fronts of configurations and the online tracker."""

from __future__ import annotations

import itertools
import json
import math
import pickle
import random

import numpy as np
import pytest

from llmopt.reward import reward
from models.pareto import (
    Candidate,
    ParetoTracker,
    best_for,
    dominates,
    knee_point,
    pareto_front,
)
from models.state import Stateful

MENU = [
    Candidate("small", quality=0.60, cost_usd=0.0005, latency_ms=400.0, params={"model": "s"}),
    Candidate("medium", quality=0.80, cost_usd=0.0030, latency_ms=900.0),
    Candidate("large", quality=0.90, cost_usd=0.0150, latency_ms=1500.0),
    Candidate("large-slow", quality=0.90, cost_usd=0.0150, latency_ms=2500.0),
    Candidate("bad", quality=0.55, cost_usd=0.0040, latency_ms=900.0),
]


def _random_candidates(n: int, seed: int) -> list[Candidate]:
    rng = random.Random(seed)
    return [
        Candidate(
            f"c{i}",
            quality=round(rng.random(), 1),  # coarse values: plenty of ties
            cost_usd=round(rng.random(), 1),
            latency_ms=float(rng.randrange(3)),
        )
        for i in range(n)
    ]


def test_front_of_a_small_menu() -> None:
    assert [c.name for c in pareto_front(MENU)] == ["small", "medium", "large"]
    assert pareto_front([]) == []


@pytest.mark.parametrize("seed", range(5))
def test_front_matches_brute_force(seed: int) -> None:
    cands = _random_candidates(80, seed)
    front = pareto_front(cands)
    brute = {c.name for c in cands if not any(dominates(o, c) for o in cands)}
    assert {c.name for c in front} == brute
    for a, b in itertools.combinations(front, 2):  # the front is mutually non-dominated
        assert not dominates(a, b) and not dominates(b, a)
    costs = [c.cost_usd for c in front]
    assert costs == sorted(costs)


def test_ties_are_kept_and_duplicate_names_refused() -> None:
    twins = [Candidate("a", 0.5, 0.1), Candidate("b", 0.5, 0.1)]
    assert [c.name for c in pareto_front(twins)] == ["a", "b"]
    assert not dominates(twins[0], twins[1])
    with pytest.raises(ValueError, match="unique; repeated: a"):
        pareto_front([Candidate("a", 0.5, 0.1), Candidate("a", 0.6, 0.1)])


def test_dominates_is_strict() -> None:
    a = Candidate("a", 0.8, 0.01, 100.0)
    assert not dominates(a, a)
    assert dominates(a, Candidate("b", 0.8, 0.01, 101.0))
    assert not dominates(a, Candidate("c", 0.81, 0.02, 50.0))


@pytest.mark.parametrize("wtp", [0.001, 0.01, 0.05, 0.2, 1.0, math.inf])
@pytest.mark.parametrize("lam", [0.0, 0.05, 0.5])
def test_best_for_maximises_reward_over_everything(wtp: float, lam: float) -> None:
    best = best_for(MENU, wtp, lam)
    top = max(
        reward(c.quality, c.cost_usd, c.latency_ms, willingness_to_pay=wtp, latency_weight=lam)
        for c in MENU
    )
    assert best.reward(wtp, lam) == pytest.approx(top)
    assert best in pareto_front(MENU)


def test_best_for_moves_up_the_menu_with_willingness_to_pay() -> None:
    assert best_for(MENU, 0.001).name == "small"
    assert best_for(MENU, 0.05).name == "medium"
    assert best_for(MENU, 1.0).name == "large"
    ties = [Candidate("b", 0.5, 0.0), Candidate("a", 0.5, 0.0)]
    assert best_for(ties, 1.0).name == "a"  # deterministic tie-break


def test_knee_point_is_a_balanced_member_of_the_front() -> None:
    assert knee_point(MENU).name == "medium"
    assert knee_point([MENU[0]]) == MENU[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "", "quality": 0.5, "cost_usd": 0.0}, "name"),
        ({"name": "x", "quality": math.nan, "cost_usd": 0.0}, "quality"),
        ({"name": "x", "quality": 1.1, "cost_usd": 0.0}, "quality"),
        ({"name": "x", "quality": 0.5, "cost_usd": -0.01}, "cost_usd"),
        ({"name": "x", "quality": 0.5, "cost_usd": math.inf}, "cost_usd"),
        ({"name": "x", "quality": 0.5, "cost_usd": 0.0, "latency_ms": -1.0}, "latency_ms"),
        ({"name": "x", "quality": 0.5, "cost_usd": 0.0, "latency_ms": math.nan}, "latency_ms"),
    ],
)
def test_bad_candidates_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Candidate(**kwargs)  # type: ignore[arg-type]


def test_bad_queries_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one candidate"):
        best_for([], 1.0)
    with pytest.raises(ValueError, match="at least one candidate"):
        knee_point([])
    with pytest.raises(ValueError, match="willingness_to_pay"):
        best_for(MENU, 0.0)
    with pytest.raises(ValueError, match="latency_weight"):
        best_for(MENU, 1.0, -1.0)


def test_candidates_are_hashable_and_compare_params() -> None:
    a = Candidate("a", 0.5, 0.1, params={"temperature": 0.2})
    assert len({a, Candidate("a", 0.5, 0.1, params={"temperature": 0.2})}) == 1
    assert a != Candidate("a", 0.5, 0.1, params={"temperature": 0.7})


def test_front_scales_to_hundreds() -> None:
    rng = np.random.default_rng(0)
    cands = [
        Candidate(f"c{i}", float(q), float(c), float(lat))
        for i, (q, c, lat) in enumerate(rng.random((500, 3)))
    ]
    front = pareto_front(cands)
    assert 0 < len(front) < 500


# -- ParetoTracker ---------------------------------------------------------------------------------
TRUTH = {"small": (0.6, 0.0005, 400.0), "medium": (0.8, 0.003, 900.0), "bad": (0.55, 0.004, 950.0)}


def _feed(tracker: ParetoTracker, n: int, seed: int) -> ParetoTracker:
    rng = random.Random(seed)
    for _ in range(n):
        name = rng.choice(sorted(TRUTH))
        q, c, lat = TRUTH[name]
        tracker.learn_one(
            name,
            quality=min(1.0, max(0.0, q + rng.gauss(0, 0.05))),
            cost_usd=c * rng.uniform(0.5, 1.5),
            latency_ms=lat * rng.uniform(0.8, 1.2),
        )
    return tracker


def test_tracker_learns_the_front() -> None:
    tracker = _feed(ParetoTracker(min_samples=10), 600, seed=0)
    assert [c.name for c in tracker.front()] == ["small", "medium"]
    assert tracker.best_for(0.005).name == "small"
    assert tracker.best_for(0.1).name == "medium"
    means = {c.name: c for c in tracker.candidates()}
    assert means["medium"].quality == pytest.approx(0.8, abs=0.02)


def test_min_samples_keeps_a_lucky_newcomer_off_the_front() -> None:
    tracker = _feed(ParetoTracker(min_samples=10), 300, seed=1)
    for _ in range(9):
        tracker.learn_one("lucky", quality=1.0, cost_usd=0.0, latency_ms=10.0)
    assert "lucky" not in {c.name for c in tracker.front()}
    assert tracker.n_samples("lucky") == 9 and tracker.n_samples("nope") == 0
    tracker.learn_one("lucky", quality=1.0, cost_usd=0.0, latency_ms=10.0, params={"t": 0.0})
    assert [c.name for c in tracker.front()] == ["lucky"]
    assert tracker.front()[0].params == {"t": 0.0}


def test_tracker_refuses_bad_input_and_changes_nothing() -> None:
    tracker = _feed(ParetoTracker(), 50, seed=0)
    before = pickle.dumps(tracker)
    for kwargs, match in [
        ({"quality": math.nan, "cost_usd": 0.0}, "quality"),
        ({"quality": 0.5, "cost_usd": -1.0}, "cost_usd"),
        ({"quality": 0.5, "cost_usd": 0.0, "latency_ms": math.inf}, "latency_ms"),
    ]:
        with pytest.raises(ValueError, match=match):
            tracker.learn_one("small", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        tracker.learn_one("", quality=0.5, cost_usd=0.0)
    assert pickle.dumps(tracker) == before
    with pytest.raises(ValueError, match="min_samples"):
        ParetoTracker(min_samples=0)
    with pytest.raises(ValueError, match="no configuration has 5"):
        ParetoTracker().best_for(1.0)


def test_merge_adds_replicas_and_counts_the_base_once() -> None:
    base = _feed(ParetoTracker(min_samples=3), 100, seed=0)
    a = _feed(pickle.loads(pickle.dumps(base)), 80, seed=1)
    b = _feed(pickle.loads(pickle.dumps(base)), 60, seed=2)
    merged = pickle.loads(pickle.dumps(a)).merge(b, base=base)
    serial = _feed(_feed(_feed(ParetoTracker(min_samples=3), 100, 0), 80, 1), 60, 2)
    assert sum(merged.n_samples(n) for n in TRUTH) == 240
    for m, s in zip(merged.candidates(), serial.candidates(), strict=True):
        assert m.name == s.name
        assert m.quality == pytest.approx(s.quality)
        assert m.cost_usd == pytest.approx(s.cost_usd)
        assert m.latency_ms == pytest.approx(s.latency_ms)
    without_base = pickle.loads(pickle.dumps(a)).merge(b)
    assert sum(without_base.n_samples(n) for n in TRUTH) == 340  # the base counted twice
    with pytest.raises(ValueError, match="not an ancestor"):
        pickle.loads(pickle.dumps(base)).merge(b, base=a)
    with pytest.raises(ValueError, match="ParetoTracker"):
        a.merge("x")  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["pickle", "dict"])
def test_round_trip_continues_identically(how: str) -> None:
    tracker = _feed(ParetoTracker(min_samples=4), 60, seed=3)
    if how == "pickle":
        copy = pickle.loads(pickle.dumps(tracker))
    else:
        copy = Stateful.from_dict(json.loads(json.dumps(tracker.to_dict())))
    assert isinstance(copy, ParetoTracker)
    _feed(tracker, 40, seed=4)
    _feed(copy, 40, seed=4)
    assert copy.candidates() == tracker.candidates()
    assert copy.to_dict() == tracker.to_dict()


def test_clone_is_empty_with_same_hyperparameters() -> None:
    tracker = _feed(ParetoTracker(min_samples=7), 60, seed=3)
    fresh = tracker.clone()
    assert fresh.min_samples == 7 and fresh.candidates() == [] and fresh.front() == []
    assert tracker.to_dict()["kind"] == "pareto_tracker"
