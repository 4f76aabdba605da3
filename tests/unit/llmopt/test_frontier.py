from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmopt.frontier import (
    area_under_hull,
    cost_to_reach,
    lift_over_zero_router,
    quality_at_cost,
    upper_hull,
)

point = st.tuples(st.floats(0.0, 10.0), st.floats(0.0, 1.0))


@given(st.lists(point, min_size=1, max_size=30))
def test_hull_dominates_every_point_and_is_increasing(points: list[tuple[float, float]]) -> None:
    hull = upper_hull(points)
    xs, ys = [p[0] for p in hull], [p[1] for p in hull]
    assert xs == sorted(xs) and ys == sorted(ys)
    assert set(hull) <= set(points)
    for c, q in points:
        reachable = quality_at_cost(hull, c)
        assert reachable is not None and reachable >= q - 1e-9


def test_mixing_two_models_is_linear_and_interior_points_drop() -> None:
    hull = upper_hull([(0.0, 0.0), (1.0, 0.5), (2.0, 1.0)])
    assert hull == [(0.0, 0.0), (2.0, 1.0)]
    assert quality_at_cost(hull, 1.0) == 0.5
    assert quality_at_cost(hull, 5.0) == 1.0  # paying more than the best model: its quality
    assert area_under_hull(hull, 0.0, 2.0) == pytest.approx(0.5)
    assert area_under_hull(hull, -1.0, 2.0) is None


ZERO = upper_hull([(1.0, 0.5), (2.0, 0.7), (4.0, 0.9)])


def test_lift_is_the_best_margin_over_the_hull_at_equal_cost() -> None:
    # at cost 3 the hull gives 0.8; at cost 2 it gives 0.7
    assert lift_over_zero_router([(3.0, 0.85), (2.0, 0.72)], ZERO) == pytest.approx(0.05)
    assert lift_over_zero_router([(3.0, 0.7)], ZERO) == pytest.approx(-0.1)


def test_lift_below_and_beyond_the_hull() -> None:
    # cheaper than every model: compared with the cheapest model's quality
    assert lift_over_zero_router([(0.5, 0.6)], ZERO) == pytest.approx(0.1)
    # dearer than every model: the hull is flat at the best model's quality
    assert lift_over_zero_router([(10.0, 0.95)], ZERO) == pytest.approx(0.05)
    assert lift_over_zero_router([(1.0, 0.5)], []) is None


def test_the_zero_routers_own_points_have_no_lift() -> None:
    assert lift_over_zero_router(ZERO, ZERO) == pytest.approx(0.0)


@given(st.lists(point, min_size=1, max_size=20))
def test_single_models_never_lift_over_their_own_hull(points: list[tuple[float, float]]) -> None:
    lift = lift_over_zero_router(points, upper_hull(points))
    assert lift is not None and lift <= 1e-9


def test_cost_to_reach_interpolates_along_the_hull() -> None:
    assert cost_to_reach(ZERO, 0.8) == pytest.approx(3.0)
    assert cost_to_reach(ZERO, 0.5) == pytest.approx(1.0)
    assert cost_to_reach(ZERO, 0.1) == pytest.approx(1.0)  # the cheapest point already does
    assert cost_to_reach(ZERO, 0.95) is None
    assert cost_to_reach([], 0.1) is None
    # dominated points do not matter: only the hull does
    assert cost_to_reach([*ZERO, (3.5, 0.6)], 0.8) == pytest.approx(3.0)


@given(st.lists(point, min_size=1, max_size=20), st.floats(0.0, 1.0))
def test_cost_to_reach_is_consistent_with_quality_at_cost(
    points: list[tuple[float, float]], target: float
) -> None:
    hull = upper_hull(points)
    cost = cost_to_reach(points, target)
    if cost is None:
        assert hull[-1][1] < target
    else:
        reached = quality_at_cost(hull, cost)
        assert reached is not None and reached >= target - 1e-9
