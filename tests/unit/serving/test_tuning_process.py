"""The tuning child's side (:class:`serving.tuning_process.Studies`, :func:`serve`), in-process."""

from __future__ import annotations

import io
import json
from typing import Any

from models.tuning import ParameterTuner
from serving.parameters import SERVING_SPACE
from serving.tuning_process import Studies, serve

DEFAULTS = ParameterTuner(SERVING_SPACE).defaults()
SPACE = ParameterTuner(SERVING_SPACE).space
"""The space as the parent sends it (plain data)."""


def _trials(temperatures: list[float]) -> list[list[Any]]:
    """One trial per temperature, its reward the temperature (the best: the highest)."""
    return [[{**DEFAULTS, "temperature": t}, t] for t in temperatures]


def _request(trials: list[list[Any]], *, have: int = 0, last: Any = None, **extra: Any) -> dict:
    return {
        "owner": "o",
        "key": "chat/m",
        "space": SPACE,
        "n_startup": 2,
        "smoothing": 0.0,
        "seed": 0,
        "suggest": True,
        "have": have,
        "last": last,
        "trials": trials,
        **extra,
    }


def test_the_answer_is_the_best_and_a_next_suggestion_inside_the_space() -> None:
    answer = Studies().answer(_request(_trials([0.1, 0.8, 0.4])))
    assert answer["best"] == {**DEFAULTS, "temperature": 0.8}
    nxt = answer["next"]
    assert set(nxt) == set(SERVING_SPACE)
    ParameterTuner(SERVING_SPACE).validate(nxt)  # raises if outside the space
    assert answer["cpu_s"] >= 0


def test_new_trials_extend_the_held_study_and_leave_no_pending_trial() -> None:
    studies = Studies()
    first = _trials([0.1, 0.2])
    studies.answer(_request(first))
    more = _trials([0.9])
    answer = studies.answer(_request(more, have=2, last=first[-1], suggest=False))
    assert answer["best"]["temperature"] == 0.9 and answer["next"] is None
    tuner = studies._held[("o", "chat/m")][0]
    assert tuner.n_trials("chat/m") == 3
    assert tuner.expire("chat/m", keep=0) == 0  # the suggestions asked were expired at once


def test_a_copy_that_is_not_the_parents_asks_for_every_trial() -> None:
    studies = Studies()
    first = _trials([0.1, 0.2])
    studies.answer(_request(first))
    # the parent believes the child holds 3 trials, or another last trial: resync
    assert studies.answer(_request([], have=3, last=first[-1])) == {"resync": True}
    studies.answer(_request(first))
    assert studies.answer(_request([], have=2, last=_trials([0.7])[0])) == {"resync": True}
    # a child that holds nothing (restarted) asks too
    assert Studies().answer(_request([], have=2, last=first[-1])) == {"resync": True}


def test_the_held_studies_are_bounded() -> None:
    studies = Studies(kept=2)
    for owner in ("a", "b", "c"):
        studies.answer(_request(_trials([0.5]), owner=owner, suggest=False))
    assert [o for o, _ in studies._held] == ["b", "c"]


def test_serve_answers_each_line_and_a_bad_request_with_an_error() -> None:
    lines = [
        json.dumps(_request(_trials([0.3]), suggest=False)),
        json.dumps({"owner": "o"}),  # no key
        json.dumps(_request([[{"temperature": 5.0}, 1.0]], owner="x")),  # outside the space
        json.dumps(_request(_trials([0.6]), have=1, last=_trials([0.3])[0], suggest=False)),
    ]
    out = io.BytesIO()
    serve(io.BytesIO(("\n".join(lines) + "\n").encode()), out)
    answers = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(answers) == 4
    assert answers[0]["best"]["temperature"] == 0.3
    assert "KeyError" in answers[1]["error"]
    assert "ValueError" in answers[2]["error"]
    assert answers[3]["best"]["temperature"] == 0.6  # the child went on after the errors
