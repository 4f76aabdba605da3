"""ClusterThompson: cells from the embedding, shrinkage, warm start, merge, state, speed shape."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest

from models.cluster_thompson import ClusterThompson, kmeans
from models.state import Stateful

ARMS = ["maths", "code", "chat"]
CENTRES = {"maths": (1.0, 0.0, 0.0), "code": (0.0, 1.0, 0.0), "chat": (0.0, 0.0, 1.0)}
BEST = {"maths": "maths", "code": "code", "chat": "chat"}


def _prompt(rng: random.Random, task: str) -> dict[str, float]:
    v = np.array(CENTRES[task]) + np.array([rng.gauss(0, 0.05) for _ in range(3)])
    v /= np.linalg.norm(v)
    return {"bias": 1.0, **{f"emb_{i}": float(x) for i, x in enumerate(v)}}


def _quality(rng: random.Random, task: str, arm: str) -> float:
    return float(rng.random() < (0.8 if BEST[task] == arm else 0.4))


def _events(n: int, seed: int) -> list[tuple[str, dict[str, float], float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        task, arm = rng.choice(ARMS), rng.choice(ARMS)
        out.append((arm, _prompt(rng, task), _quality(rng, task, arm)))
    return out


def _policy(**kw: object) -> ClusterThompson:
    params: dict[str, object] = {"n_clusters": 3, "fit_after": 30, "seed": 0, **kw}
    return ClusterThompson(**params)  # type: ignore[arg-type]


def test_learns_the_best_model_of_each_cell_and_beats_a_global_sampler() -> None:
    rng = random.Random(1)
    clustered, flat = _policy(), _policy(feature_prefix="none_")
    wins = {"clustered": 0.0, "flat": 0.0}
    for _ in range(1500):
        task = rng.choice(ARMS)
        ctx = _prompt(rng, task)
        for name, p in (("clustered", clustered), ("flat", flat)):
            d = p.pull(ARMS, ctx)
            q = _quality(rng, task, d.model)
            p.update(d.model, ctx, q)
            wins[name] += q
    assert clustered.n_cells_fitted == 3 and flat.n_cells_fitted == 0
    assert wins["clustered"] > wins["flat"] + 200  # ~0.8 vs ~0.53 per prompt
    for task in ARMS:
        assert clustered.pull(ARMS, _prompt(rng, task)).model == BEST[task]


def test_observations_before_the_fit_are_kept_in_their_cells() -> None:
    events = _events(200, seed=2)
    p = _policy(fit_after=150).learn_many(events)
    assert p.n_cells_fitted == 3
    total = float(p._n.sum())  # every update landed in a cell (none lost at the fit)
    assert total == 200
    assert p.n_updates == 200


def test_without_embedding_features_it_uses_global_statistics() -> None:
    p = _policy()
    for _ in range(50):
        p.update("maths", {"bias": 1.0}, 1.0)
        p.update("chat", {"bias": 1.0}, 0.0)
    assert p.n_cells_fitted == 0
    assert p.predict_one("maths", {"bias": 1.0}) > 0.9
    assert p.predict_one("chat", {"bias": 1.0}) < 0.1


def test_a_cell_with_few_observations_is_shrunk_towards_the_models_global_mean() -> None:
    p = _policy().learn_many(_events(300, seed=3))
    rng = random.Random(4)
    ctx = _prompt(rng, "maths")
    cell = p._cell(p._embedding(ctx))
    i = p._arms["code"]
    n, mean_in_cell = p._n[cell, i], p._s[cell, i] / max(p._n[cell, i], 1)
    glob = p.arm_mean("code")
    assert glob is not None and n > 0
    estimate = p.predict_one("code", ctx)
    lo, hi = sorted((mean_in_cell, glob))
    assert lo - 1e-9 <= estimate <= hi + 1e-9  # between the cell's mean and the global one


def test_merge_of_replicas_from_a_fitted_snapshot_equals_the_whole() -> None:
    events = _events(400, seed=5)
    snapshot = _policy().learn_many(events[:100])
    assert snapshot.n_cells_fitted == 3
    r1 = pickle.loads(pickle.dumps(snapshot)).learn_many(events[100:250])
    r2 = pickle.loads(pickle.dumps(snapshot)).learn_many(events[250:])
    whole = _policy().learn_many(events)
    merged = r1.merge(r2, base=snapshot)
    rng = random.Random(6)
    for task in ARMS:
        ctx = _prompt(rng, task)
        for arm in ARMS:
            assert merged.predict_one(arm, ctx) == pytest.approx(whole.predict_one(arm, ctx))
    assert merged.n_updates == 400


def test_merge_of_replicas_that_clustered_apart_is_refused() -> None:
    a = _policy(seed=1).learn_many(_events(100, seed=7))
    b = _policy(seed=1).learn_many(_events(100, seed=8))  # other prompts: other cells
    with pytest.raises(ValueError, match="different cells"):
        a.merge(b)


def test_state_round_trips_through_json_before_and_after_the_fit() -> None:
    for n in (10, 100):
        p = _policy().learn_many(_events(n, seed=9))
        restored = Stateful.from_dict(json.loads(json.dumps(p.to_dict())))
        rng = random.Random(10)
        ctx = _prompt(rng, "code")
        a, b = p.pull(ARMS, ctx), restored.pull(ARMS, ctx)
        assert (a.model, a.propensity, a.scores) == (b.model, b.propensity, b.scores)
        assert restored.n_cells_fitted == p.n_cells_fitted


def test_discounting_an_arm_forgets_it_in_every_cell() -> None:
    p = _policy().learn_many(_events(300, seed=11))
    before = p._arm_weight("code")
    p.discount_arm("code", 0.0)
    assert before > 0 and p._arm_weight("code") == 0.0
    assert float(p._n[:, p._arms["code"]].sum()) == 0.0


def test_a_prohibitive_penalty_is_never_played() -> None:
    p = _policy(max_reward=1.0).learn_many(_events(100, seed=12))
    ctx = _prompt(random.Random(13), "code")
    for _ in range(50):
        d = p.pull(ARMS, ctx, penalties={"code": 5.0})
        assert d.model != "code"


def test_bad_hyperparameters_are_refused() -> None:
    for kw in ({"n_clusters": 0}, {"sigma": 0.0}, {"prior_weight": -1.0}, {"fit_after": 2}):
        with pytest.raises(ValueError):
            _policy(**kw)


def test_kmeans_separates_well_separated_groups() -> None:
    rng = np.random.default_rng(0)
    pts = np.vstack([rng.normal(c, 0.05, size=(50, 2)) for c in ((0, 0), (3, 0), (0, 3))])
    centres = kmeans(pts, 3, rng)
    found = sorted(tuple(np.round(c).astype(int).tolist()) for c in centres)
    assert found == [(0, 0), (0, 3), (3, 0)]


def test_empirical_bayes_shrinks_hard_without_structure_and_little_with_it() -> None:
    rng = random.Random(14)
    structured, flat = _policy(prior_weight=None), _policy(prior_weight=None)
    for _ in range(900):
        task, arm = rng.choice(ARMS), rng.choice(ARMS)
        ctx = _prompt(rng, task)
        structured.update(arm, ctx, _quality(rng, task, arm))
        flat.update(arm, ctx, float(rng.random() < 0.5))  # every cell alike
    assert structured.shrinkage_weight() < 5.0
    assert flat.shrinkage_weight() >= 50.0


def _twin_prompt(rng: random.Random, task: str) -> dict[str, float]:
    """Two tasks with the same embedding, told apart only by a structural marker (``math``)."""
    v = np.array([1.0, 0.0, 0.0]) + np.array([rng.gauss(0, 0.05) for _ in range(3)])
    v /= np.linalg.norm(v)
    emb = {f"emb_{i}": float(x) for i, x in enumerate(v)}
    return {"bias": 1.0, "math": float(task == "maths"), **emb}


def test_structural_cell_features_separate_tasks_the_embedding_confuses() -> None:
    best = {"maths": "maths", "chat": "chat"}
    arms = ["maths", "chat"]
    rng = random.Random(3)
    marked = _policy(n_clusters=2, cell_features=("math",), cell_feature_weight=0.7)
    blind = _policy(n_clusters=2)
    totals = {"marked": 0.0, "blind": 0.0}
    for _ in range(1500):
        task = rng.choice(arms)
        ctx = _twin_prompt(rng, task)
        for name, p in (("marked", marked), ("blind", blind)):
            d = p.pull(arms, ctx)
            q = float(rng.random() < (0.8 if best[task] == d.model else 0.4))
            p.update(d.model, ctx, q)
            totals[name] += q
    assert totals["marked"] > totals["blind"] + 150  # ~0.78 vs ~0.6 per prompt
    for task in arms:
        assert marked.pull(arms, _twin_prompt(rng, task)).model == best[task]
    restored = Stateful.from_dict(json.loads(json.dumps(marked.to_dict())))
    ctx = _twin_prompt(rng, "maths")
    a, b = marked.pull(arms, ctx), restored.pull(arms, ctx)
    assert (a.model, a.propensity, a.scores) == (b.model, b.propensity, b.scores)


def test_a_request_without_the_structural_features_uses_global_statistics() -> None:
    p = _policy(n_clusters=2, cell_features=("math",)).learn_many(
        [
            (a, _twin_prompt(random.Random(i), t), 1.0)
            for i, (a, t) in enumerate([("maths", "maths"), ("chat", "chat")] * 40)
        ]
    )
    assert p.n_cells_fitted == 2
    no_marker = {k: v for k, v in _twin_prompt(random.Random(0), "maths").items() if k != "math"}
    assert p._cell(p._embedding(no_marker)) == -1


def test_copies_continue_exactly_and_pickles_hold_no_derived_caches() -> None:
    """The pull's cached denominators and scratch arrays are derived: a pickle or a deepcopy
    without them decides exactly as the policy that kept them (prior_weight=None: the estimated
    shrinkage changes every 16 updates, and the caches with it). (The JSON state does not keep
    when the shrinkage was last estimated, so a restored policy re-estimates it at once.)"""
    import copy  # noqa: PLC0415

    p = _policy(prior_weight=None, max_reward=1.0, explore_decay=5.0)
    p.learn_many(_events(60, seed=12))
    rng = random.Random(13)
    for _ in range(40):  # warm the caches
        task = rng.choice(ARMS)
        ctx = _prompt(rng, task)
        d = p.pull(ARMS, ctx, penalties={"chat": 0.2})
        p.update(d.model, ctx, _quality(rng, task, d.model))
    assert p.n_cells_fitted == 3 and p._den_m is not None
    assert "_cden" not in pickle.loads(pickle.dumps(p)).__getstate__()
    copies = [pickle.loads(pickle.dumps(p)), copy.deepcopy(p)]
    for k in range(80):
        task = rng.choice(ARMS)
        ctx = _prompt(rng, task)
        offer = ARMS if k % 5 else ARMS[::-1]  # another order of the arms now and then
        ds = [q.pull(offer, ctx, penalties={"chat": 0.2}) for q in [p, *copies]]
        first = (ds[0].model, ds[0].propensity, ds[0].scores)
        assert [(d.model, d.propensity, d.scores) for d in ds[1:]] == [first] * len(copies), k
        reward = _quality(rng, task, ds[0].model)
        for q in [p, *copies]:
            q.update(ds[0].model, ctx, reward)


def test_pull_many_draws_every_context_at_once_exactly_as_one_by_one() -> None:
    events = _events(400, seed=4)
    a, b = _policy(max_reward=1.0, explore_decay=5.0), _policy(max_reward=1.0, explore_decay=5.0)
    a.learn_many(events)
    b.learn_many(events)
    assert a.n_cells_fitted == 3
    rng = random.Random(9)
    contexts = [_prompt(rng, rng.choice(ARMS)) for _ in range(30)] + [{"bias": 1.0}, {}]
    penalties = [{arm: rng.random() * 0.3 for arm in ARMS} for _ in contexts]
    many = a.pull_many(ARMS, contexts, penalties=penalties)
    alone = [b.pull(ARMS, c, penalties=p) for c, p in zip(contexts, penalties, strict=True)]
    view = [(d.model, d.propensity, d.scores, d.explanation) for d in many]
    assert view == [(d.model, d.propensity, d.scores, d.explanation) for d in alone]
    assert len({d.model for d in many}) > 1  # the cells and penalties made a difference
    # and the generators are where one-by-one pulls leave them: the next pulls agree too
    assert a.pull(ARMS, contexts[0]).scores == b.pull(ARMS, contexts[0]).scores
