"""The scenario's measures on synthetic timelines: adaptation, exclusion, a new model's uptake."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llmopt.app.scenario import (
    Request,
    Roles,
    ScenarioConfig,
    degraded_adaptation,
    failing_exclusion,
    new_model_uptake,
    phase_at,
    phase_bounds,
)

CFG = ScenarioConfig(out=Path("unused"), minutes=10.0, rate=10.0)  # 600 s, 10 requests/s


def timeline(pick: Callable[[float], str]) -> list[Request]:
    """10 requests a second; ``pick(t)`` names the model chosen at second ``t``."""
    out = []
    for k in range(int(CFG.seconds * CFG.rate)):
        t = k / CFG.rate
        model = pick(t)
        out.append(Request(t, phase_at(t, CFG.seconds), model, "v1", 0.5, 0.0, 0.4, 200))
    return out


def test_phases_split_the_run() -> None:
    bounds = phase_bounds(CFG)
    assert bounds["baseline"] == (0.0, 180.0) and bounds["failing"] == (480.0, 600.0)
    assert phase_at(179.9, CFG.seconds) == "baseline" and phase_at(180.0, CFG.seconds) == "degraded"


def test_degraded_adaptation_is_when_the_share_halves() -> None:
    records = timeline(lambda t: "fav" if t < 200 else "other")
    seconds, requests, pre = degraded_adaptation(records, phase_bounds(CFG), "fav")
    assert pre == 1.0
    # The 100-request window is mostly "other" 10 s after the switch at 200 s: 30 s after 180 s.
    assert seconds is not None and 24 <= seconds <= 26
    assert requests is not None and 240 <= requests <= 260
    never = timeline(lambda t: "fav")
    assert degraded_adaptation(never, phase_bounds(CFG), "fav")[0] is None


def test_failing_exclusion_is_from_the_last_second_above_five_percent() -> None:
    clean = timeline(lambda t: "bad" if t < 483 else "ok")
    assert failing_exclusion(clean, phase_bounds(CFG), "bad")[0] == 3.0
    # A later probe that takes 1 of that second's 10 requests (10% > 5%) moves it to 21 s.
    probe = timeline(lambda t: "bad" if t < 483 or 500 <= t < 500.1 else "ok")
    assert failing_exclusion(probe, phase_bounds(CFG), "bad")[0] == 21.0


def test_new_model_uptake_counts_it_even_when_it_is_the_one_failing_later() -> None:
    def pick(t: float) -> str:
        if t < 330:
            return "old"
        return "new"  # takes over in its phase, and is the top model when the failing phase starts

    records = timeline(pick)
    roles = Roles(held_back="new", favourite="old", weak="w", failing="new")
    first_s, first_n, share, top = new_model_uptake(records, CFG, roles)
    assert first_s == 0.0 and first_n == 1
    assert share == 1.0 and top
    roles_other = Roles(held_back="new", favourite="old", weak="w", failing="old")
    assert new_model_uptake(timeline(lambda t: "old"), CFG, roles_other)[2:] == (0.0, False)
