from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmopt.frontier import area_under_hull, quality_at_cost, upper_hull

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
