"""The served tuning as data: fitted from logged rewards, a JSON round trip, a strict format."""

from __future__ import annotations

import json
import random

import pytest

from llmopt.event_log import ParameterFeedback
from models.tuning import FloatRange
from models.tuning_snapshot import (
    FORMAT,
    PairSnapshot,
    TuningSnapshot,
    continue_snapshot,
    fit_snapshot,
)

DEFAULT = {"temperature": 0.7, "top_p": 1.0, "max_tokens": 1024, "prompt_template": "plain"}


def rewarded(
    key: str, params: dict[str, object], reward: float, *, i: int = 0, error: str | None = None
) -> ParameterFeedback:
    return ParameterFeedback(i, {"key": key, "trial": None}, dict(params), reward, error)


def surface(seed: int, n: int, key: str = "code/m") -> list[ParameterFeedback]:
    """``n`` rewards of random configurations on a surface whose best temperature is 0.2."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        t = rng.uniform(0.0, 1.2)
        params = {**DEFAULT, "temperature": t, "max_tokens": rng.choice([256, 1024])}
        rows.append(rewarded(key, params, 1.0 - (t - 0.2) ** 2 + rng.gauss(0, 0.02), i=i))
    return rows


def test_fit_learns_the_best_configuration_per_pair_and_counts_its_feedback() -> None:
    rows = surface(0, 60) + [rewarded("chat/m", DEFAULT, 0.5, i=99)]
    snap = fit_snapshot(rows, min_feedback=20, until_feedback_id=99)
    assert set(snap.pairs) == {"code/m", "chat/m"}
    assert snap.pairs["code/m"].n_feedback == 60 and snap.pairs["chat/m"].n_feedback == 1
    assert abs(float(snap.pairs["code/m"].best["temperature"]) - 0.2) < 0.2
    assert snap.n_feedback == 61 and snap.n_tuned == 1 and snap.until_feedback_id == 99
    assert "61 feedback over 2" in snap.summary()


def test_fit_skips_what_serving_would_not_learn() -> None:
    rows = [
        rewarded("code/m", DEFAULT, 0.0, error="timeout"),  # says nothing about the parameters
        rewarded("code/m", {**DEFAULT, "max_tokens": 64}, 0.9),  # capped below the space
        rewarded("code/m", {"temperature": 0.7}, 0.9),  # parameters missing
        ParameterFeedback(3, {"trial": 4}, DEFAULT, 0.9, None),  # no key
        rewarded("code/m", DEFAULT, 0.3, error="context_length"),  # learned
        rewarded("code/m", {**DEFAULT, "max_tokens": 512.0}, 0.4),  # a whole float: an int
    ]
    snap = fit_snapshot(rows)
    assert snap.pairs["code/m"].n_feedback == 2
    assert [p["max_tokens"] for p, _ in snap.pairs["code/m"].trials] == [1024, 512]


def test_fit_keeps_the_most_recent_max_trials_but_counts_them_all() -> None:
    snap = fit_snapshot(surface(1, 50), min_feedback=5, max_trials=10)
    pair = snap.pairs["code/m"]
    assert pair.n_feedback == 50 and len(pair.trials) == 10
    last = surface(1, 50)[-1]
    assert pair.trials[-1] == (last.parameters, last.reward)


def test_json_round_trip_is_exact_and_the_format_is_checked() -> None:
    snap = fit_snapshot(surface(2, 30), min_feedback=10, until_feedback_id=29)
    text = snap.to_json()
    data = json.loads(text)
    assert data["format"] == FORMAT and data["settings"]["min_feedback"] == 10
    assert TuningSnapshot.from_json(text) == snap
    assert TuningSnapshot.from_json(text).to_json() == text
    with pytest.raises(ValueError, match="format"):
        TuningSnapshot.from_dict({**data, "format": "llmopt.served-tuning/0"})
    with pytest.raises(ValueError, match="format"):
        TuningSnapshot.from_dict({k: v for k, v in data.items() if k != "format"})


def test_an_empty_log_fits_an_empty_snapshot() -> None:
    snap = fit_snapshot([])
    assert snap.pairs == {} and snap.n_feedback == 0
    assert TuningSnapshot.from_json(snap.to_json()) == snap
    assert PairSnapshot.from_dict(PairSnapshot(1, DEFAULT, ((DEFAULT, 0.5),)).to_dict()) == (
        PairSnapshot(1, DEFAULT, ((DEFAULT, 0.5),))
    )


def mixed_log(n: int, seed: int) -> list[ParameterFeedback]:
    """Two pairs interleaved, a third appearing late, and rows serving would not learn; ids
    1..N in log order."""
    rng = random.Random(seed)
    code, chat = surface(seed, n, "code/m"), surface(seed + 1, n // 2, "chat/m")
    rows: list[ParameterFeedback] = []
    for i, fb in enumerate(code):
        rows.append(fb)
        if i % 2 and chat:
            rows.append(chat.pop())
        if rng.random() < 0.1:
            rows.append(rewarded("code/m", DEFAULT, 0.0, error="timeout"))
        if i > n * 3 // 4:
            rows.append(rewarded("math/m", {**DEFAULT, "temperature": rng.uniform(0, 1)}, 0.6))
    return [
        ParameterFeedback(i, r.tuning, r.parameters, r.reward, r.error_kind)
        for i, r in enumerate(rows, start=1)
    ]


@pytest.mark.parametrize("split", [0, 1, 17, 60, 95, 130])
def test_continuing_a_snapshot_with_the_later_rows_equals_fitting_them_all(split: int) -> None:
    rows = mixed_log(80, seed=split)
    last = rows[-1].feedback_id
    whole = fit_snapshot(rows, min_feedback=5, max_trials=12, until_feedback_id=last)
    first = fit_snapshot(rows[:split], min_feedback=5, max_trials=12, until_feedback_id=split)
    stored = TuningSnapshot.from_json(first.to_json())  # as a registered version carries it
    continued = continue_snapshot(stored, rows[split:], until_feedback_id=last)
    assert continued == whole
    assert continued.to_json() == whole.to_json()  # same bytes: same tuning_sha256
    # in two steps, and handed every row each time (those already learned are skipped)
    middle = (split + last) // 2
    step = continue_snapshot(stored, rows, until_feedback_id=middle)
    assert continue_snapshot(step, rows) == whole


def test_a_continuation_keeps_the_previous_settings_and_space_and_its_last_id() -> None:
    space = {"temperature": FloatRange(0.0, 1.0, default=0.5)}
    rows = [rewarded("code/m", {"temperature": t / 10}, t / 10, i=t) for t in range(1, 9)]
    first = fit_snapshot(rows[:4], space=space, min_feedback=3, max_trials=3, until_feedback_id=4)
    out = continue_snapshot(first, rows[4:] + [rewarded("code/m", {"temperature": 1.1}, 1, i=9)])
    assert out.settings == first.settings and out.space == first.space
    pair = out.pairs["code/m"]
    assert pair.n_feedback == 8 and [p["temperature"] for p, _ in pair.trials] == [0.6, 0.7, 0.8]
    assert out.until_feedback_id == 9  # the largest id read, learned or not
    whole = fit_snapshot(rows, space=space, min_feedback=3, max_trials=3, until_feedback_id=9)
    assert out == whole
    # nothing new: the same snapshot, its last id never going back
    assert continue_snapshot(out, [], until_feedback_id=5) == out
