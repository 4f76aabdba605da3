"""Cost-quality frontiers: the zero router's convex hull and interpolation along a frontier.

RouterBench's "zero router" mixes single models at random without looking at the prompt; its
achievable (cost, quality) set is the upper convex hull of the single models' points. A router is
only worth having where it lies above that hull.

Examples
--------
>>> pts = [(1.0, 0.5), (2.0, 0.9), (4.0, 0.95), (3.0, 0.6)]
>>> upper_hull(pts)
[(1.0, 0.5), (2.0, 0.9), (4.0, 0.95)]
>>> quality_at_cost(upper_hull(pts), 1.5)
0.7
>>> quality_at_cost(upper_hull(pts), 0.5) is None
True
"""

from __future__ import annotations

from collections.abc import Iterable


def upper_hull(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-decreasing upper convex hull of (cost, quality) points, cheapest first.

    A point costs at least as much as the one before and has higher quality: paying more for
    less is never on the frontier (RouterBench's AIQ uses the same hull).
    """
    pts = sorted(set(points), key=lambda p: (p[0], -p[1]))
    frontier: list[tuple[float, float]] = []
    for p in pts:  # keep only points that raise the best quality so far
        if not frontier or p[1] > frontier[-1][1]:
            frontier.append(p)
    hull: list[tuple[float, float]] = []
    for p in frontier:  # Andrew's monotone chain, upper part
        while len(hull) >= 2:  # noqa: PLR2004
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def quality_at_cost(hull: list[tuple[float, float]], cost: float) -> float | None:
    """Quality reachable on ``hull`` at ``cost`` (None below its cheapest point)."""
    if not hull or cost < hull[0][0]:
        return None
    for (x1, y1), (x2, y2) in zip(hull, hull[1:], strict=False):
        if x1 <= cost <= x2:
            if x2 == x1:
                return y2
            share = (cost - x1) / (x2 - x1)  # divide first: tiny costs must not underflow
            return round(y1 + (y2 - y1) * share, 12)
    return hull[-1][1]


def area_under_hull(hull: list[tuple[float, float]], lo: float, hi: float) -> float | None:
    """Mean quality of the hull over [lo, hi] (RouterBench's AIQ), None if it does not span it."""
    if not hull or hi <= lo or lo < hull[0][0]:
        return None
    n = 200
    step = (hi - lo) / n
    vals = [quality_at_cost(hull, lo + (i + 0.5) * step) for i in range(n)]
    return sum(v for v in vals if v is not None) / n


def lift_over_zero_router(
    points: Iterable[tuple[float, float]], hull: list[tuple[float, float]]
) -> float | None:
    """Largest quality margin of any (cost, quality) point over the zero router at the same cost.

    ``hull`` is the zero router's frontier (:func:`upper_hull` of the single models' points).
    A point cheaper than the hull's cheapest point is compared with that point's quality (no
    mix of models costs less, so it is the best the zero router offers down there); beyond the
    last point the hull is flat. Positive: the policy reaches somewhere the zero router cannot.
    None when there are no points or no hull.

    Examples
    --------
    >>> hull = upper_hull([(1.0, 0.5), (3.0, 0.9)])
    >>> lift_over_zero_router([(2.0, 0.8), (5.0, 0.85)], hull)
    0.1
    >>> lift_over_zero_router([(0.5, 0.4), (4.0, 0.85)], hull)
    -0.05
    >>> lift_over_zero_router([], hull) is None
    True
    """
    if not hull:
        return None
    lifts = []
    for cost, quality in points:
        reference = hull[0][1] if cost < hull[0][0] else quality_at_cost(hull, cost)
        if reference is not None:
            lifts.append(quality - reference)
    return round(max(lifts), 12) if lifts else None


def cost_to_reach(points: Iterable[tuple[float, float]], target_quality: float) -> float | None:
    """Least cost at which the upper hull of ``points`` reaches ``target_quality`` (None: never).

    Costs between hull vertices are interpolated linearly (mixing the two settings at random
    reaches every point of the segment). With the single models' points this is the zero
    router's cost to reach the target.

    Examples
    --------
    >>> pts = [(1.0, 0.5), (3.0, 0.9), (2.0, 0.55)]
    >>> round(cost_to_reach(pts, 0.7), 9)
    2.0
    >>> cost_to_reach(pts, 0.4)
    1.0
    >>> cost_to_reach(pts, 0.95) is None
    True
    """
    hull = upper_hull(points)
    if not hull or hull[-1][1] < target_quality:
        return None
    if hull[0][1] >= target_quality:
        return hull[0][0]
    for (x1, y1), (x2, y2) in zip(hull, hull[1:], strict=False):
        if y1 < target_quality <= y2:
            share = (target_quality - y1) / (y2 - y1)
            return x1 + (x2 - x1) * share
    return None  # pragma: no cover - the hull rises to at least the target
