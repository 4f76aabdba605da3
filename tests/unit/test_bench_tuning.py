"""The tuning benchmark's simulated surface, grid and regret (bench/tuning.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bench import tuning
from bench.tuning import Surface


def _surface(seed: int = 0) -> Surface:
    return Surface.draw(np.random.default_rng([seed, 0]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_known_optimum_has_zero_regret_and_nothing_beats_it(seed: int) -> None:
    surface = _surface(seed)
    params, best = surface.optimum()
    assert surface.value(params) == pytest.approx(best, abs=1e-12)  # zero regret at the optimum
    rng = np.random.default_rng(seed)
    others = [tuning.random_params(rng) for _ in range(2000)] + tuning.grid(192)
    assert max(surface.value(p) for p in others) <= best + 1e-12
    # every parameter matters: moving one away from the optimum costs reward
    for name, moved in [("temperature", 0.6), ("top_p", 0.75), ("max_tokens", 128)]:
        if abs(float(params[name]) - moved) > 0.2:
            assert surface.value({**params, name: moved}) < best - 1e-4


def test_grids_have_exactly_the_budgets_size_and_stay_in_the_space() -> None:
    for budget in tuning.BUDGETS:
        points = tuning.grid(budget)
        assert len(points) == budget
        assert len({tuple(sorted(p.items())) for p in points}) == budget
        assert {p["prompt_template"] for p in points} == set(tuning.TEMPLATES)
        assert all(128 <= int(p["max_tokens"]) <= 4096 for p in points)
    assert tuning.grid_levels(81) == (3, 3, 3)
    with pytest.raises(ValueError):
        tuning.grid_levels(2)


def test_noise_free_grid_search_finds_an_optimum_that_lies_on_the_grid() -> None:
    # the 27-point grid per template has (temperature, top_p) at unit 1/6, 1/2, 5/6; short
    # answers and free tokens make every max_tokens of the grid's top level optimal
    centre = {"plain": (0.5, 0.5), "step_by_step": (1 / 6, 5 / 6), "concise": (5 / 6, 1 / 6)}
    surface = Surface(
        centre=centre,
        width=(0.2, 0.2),
        length=dict.fromkeys(tuning.TEMPLATES, 100.0),
        effect={"plain": 0.1, "step_by_step": 0.0, "concise": -0.05},
        token_cost=0.0,
        runaway=0.0,
    )
    params, best = surface.optimum()
    assert params["prompt_template"] == "plain"
    _, top, smooth = tuning.run_grid(surface, 81, noise=0.0, seed=0)
    assert best - top == pytest.approx(0.0, abs=1e-6)
    # the smoothed best averages neighbours: it may pick a near-tie (max_tokens 724, not 2280)
    assert 0 <= best - smooth < 1e-3
    # a noisy grid still returns a grid point, whose regret is >= 0
    _, noisy_top, _ = tuning.run_grid(surface, 81, noise=0.3, seed=0)
    assert best - noisy_top >= 0


def test_served_tuning_keeps_the_safe_default_before_enough_feedback() -> None:
    surface = _surface()
    trace = tuning.run_served(surface, [12], noise=0.1, seed=0)
    default = surface.value(tuning.ServedTuning().defaults(tuning.CATALOG))
    assert len(trace.served) == 12
    assert trace.served == [default] * 12  # min_feedback is 20: every request gets the default
    assert trace.recommended[12] == default


def test_one_surface_reports_non_negative_regret_for_every_method_and_a_summary() -> None:
    budgets = (3, 6)
    rows = [tuning.one_surface(seed, 0.1, budgets) for seed in (0, 1)]
    for row in rows:
        assert set(row["regret"]) == set(tuning.METHODS)
        for per_budget in row["regret"].values():
            assert set(per_budget) == {"3", "6"}
            for r in per_budget.values():
                assert r["simple"] >= -1e-9 and r["cumulative"] >= -1e-9
        served = row["regret"]["served"]["6"]  # still the safe default at 6 requests
        assert served["simple"] == served["cumulative"] == row["default_regret"]
    summary = tuning._summary(rows, 0.1, budgets)
    assert summary["seeds"] == [0, 1]
    assert 0 <= summary["versus_grid"]["tpe"]["6"]["seeds_below_grid"] <= 2
    assert isinstance(summary["targets"]["tpe_simple_regret_below_grid"]["6"], bool)
    assert tuning.summary([*rows, summary])[0].startswith("noise 0.1")
