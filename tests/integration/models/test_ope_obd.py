"""Off-policy evaluation on real logs: the Open Bandit Dataset sample (80 items x 3 positions).

The sample ships in the repo, gzip-compressed, with its source and licence:
``tests/data/obd/README.md`` (dataset by ZOZO, CC BY 4.0; from the ``obp`` package, Apache-2.0).

The uniform-random policy's click rate is estimated from the logs of Bernoulli Thompson Sampling
(IPS, SNIPS, DR) and compared with its on-policy click rate, measured in the random policy's own
logs. With about 40 clicks per file the estimates are noisy (IPS gives about 0.0024 against
0.0038 measured), so the honest check is that every 95% interval covers the measured value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.ope import Estimate, LoggedBandit, doubly_robust, ips, replay, reward_matrix, snips
from models.quality import QualityModel
from models.random_policy import UniformRandom

pytestmark = pytest.mark.integration

OBD = Path(__file__).resolve().parents[2] / "data" / "obd"
N_ITEMS = 80
N_POSITIONS = 3


def _read(policy: str) -> pd.DataFrame:
    path = OBD / policy / "all" / "all.csv.gz"
    # Shipped in the repo: a missing file is a broken checkout, and fails (never skips).
    assert path.is_file(), f"Open Bandit Dataset sample missing at {path} (see {OBD / 'README.md'})"
    return pd.read_csv(path, index_col=0)  # the first, unnamed column is a row index


@pytest.fixture(scope="module")
def on_policy_ctr() -> float:
    """Click rate of the uniform-random policy, measured in its own logs."""
    df = _read("random")
    assert np.allclose(df["propensity_score"], 1 / N_ITEMS)  # really uniform over 80 items
    return float(df["click"].mean())


@pytest.fixture(scope="module")
def bts() -> tuple[LoggedBandit, np.ndarray]:
    """BTS logs (action = item, context = one-hot position) and the position of each row."""
    df = _read("bts")
    position = df["position"].to_numpy() - 1  # 1, 2, 3 in the file
    assert set(np.unique(position)) == set(range(N_POSITIONS))
    logs = LoggedBandit(
        actions=df["item_id"].to_numpy(),
        rewards=df["click"].to_numpy(dtype=float),
        propensities=df["propensity_score"].to_numpy(),
        contexts=np.eye(N_POSITIONS)[position],
    )
    assert logs.n == 10_000 and int(logs.actions.max()) == N_ITEMS - 1
    return logs, position


def smoothed_click_rates(logs: LoggedBandit, position: np.ndarray, strength: float) -> np.ndarray:
    """q_hat: click rate per (item, position), shrunk towards the position's rate."""
    clicks = np.zeros((N_ITEMS, N_POSITIONS))
    shows = np.zeros((N_ITEMS, N_POSITIONS))
    np.add.at(clicks, (logs.actions, position), logs.rewards)
    np.add.at(shows, (logs.actions, position), 1.0)
    per_position = clicks.sum(axis=0) / shows.sum(axis=0)
    rates = (clicks + strength * per_position) / (shows + strength)
    q: np.ndarray = rates.T[position]  # (n, items)
    return q


def _uniform(n: int) -> np.ndarray:
    return np.full((n, N_ITEMS), 1 / N_ITEMS)


def _check(est: Estimate, truth: float) -> None:
    assert est.covers(truth), f"{est.method} {est} does not cover the on-policy {truth:.4f}"
    assert est.upper - est.lower < 0.005  # an interval that says something
    assert 0 < est.lower


def test_on_policy_click_rate(on_policy_ctr: float) -> None:
    assert on_policy_ctr == pytest.approx(0.0038)


def test_ips_covers_the_on_policy_click_rate(
    bts: tuple[LoggedBandit, np.ndarray], on_policy_ctr: float
) -> None:
    logs, _ = bts
    est = ips(logs, _uniform(logs.n), seed=0)
    assert est.value == pytest.approx(0.00236, abs=1e-5)  # the value the README reports
    _check(est, on_policy_ctr)


def test_snips_covers_the_on_policy_click_rate(
    bts: tuple[LoggedBandit, np.ndarray], on_policy_ctr: float
) -> None:
    logs, _ = bts
    _check(snips(logs, _uniform(logs.n), seed=0), on_policy_ctr)


def test_dr_with_smoothed_click_rates_covers_the_on_policy_click_rate(
    bts: tuple[LoggedBandit, np.ndarray], on_policy_ctr: float
) -> None:
    logs, position = bts
    q_hat = smoothed_click_rates(logs, position, strength=50.0)
    _check(doubly_robust(logs, _uniform(logs.n), q_hat, seed=0), on_policy_ctr)


def test_dr_with_a_quality_model_covers_the_on_policy_click_rate(
    bts: tuple[LoggedBandit, np.ndarray], on_policy_ctr: float
) -> None:
    logs, _ = bts
    model = QualityModel(lr=0.05, binary=True, prior=float(logs.rewards.mean()))
    q_hat = reward_matrix(
        logs, model, arm_ids=[str(i) for i in range(N_ITEMS)], feature_names=["p1", "p2", "p3"]
    )
    assert q_hat.shape == (logs.n, N_ITEMS) and np.all((q_hat > 0) & (q_hat < 0.1))
    _check(doubly_robust(logs, _uniform(logs.n), q_hat, seed=0), on_policy_ctr)


def test_replay_refuses_the_thompson_sampling_logs(bts: tuple[LoggedBandit, np.ndarray]) -> None:
    logs, _ = bts
    with pytest.raises(ValueError, match="uniformly random policy"):
        replay(logs, UniformRandom(seed=0), arm_ids=[str(i) for i in range(N_ITEMS)])
