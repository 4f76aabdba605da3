"""Drift on real routing data: the monitor sees a model break, and the response restores reward.

RouteLLM's MMLU outcomes (14,042 questions x 2 models, GPT-4-1106 and Mixtral-8x7B, 0/1
correctness, list-price cost; shipped in ``bench/data/routing``) stream in a seeded order, 5,500
requests (each a different question), through the learning loop with ``cost_aware_linucb`` at a
willingness to pay of 0.05 USD per unit quality, with bandit feedback only. From request 3,000 on,
GPT-4 (the model the policy chooses most before that: 0.89-0.97 of choices) breaks: its answers are
worth 0.3 of what they were, or its price rises tenfold. Every feedback feeds a
:class:`~monitoring.detectors.StreamMonitor` (default detectors); a
:class:`~monitoring.drift_response.DriftResponder` acts on its events in one run and does nothing
in the other. Both runs share the data, order and seeds.

With two models the only response is to move to Mixtral, worth 0.87 of GPT-4's pre-change reward
on average: "recovered" is a trailing-200 reward back at >= 80% of its pre-change level. A tripled
price (the change on an 11-model file) would not be worth responding to here: GPT-4 would still
be the better choice (0.806 - 3 x 0.0245 = 0.733 against Mixtral's 0.679), hence a tenfold rise
(0.561 against 0.679).

Measured (seed 0; seeds 1-5 in brackets), quality x 0.3: first detection on GPT-4's quality 19
requests after the change (12-24); recovery 259 requests after the change with the response
(205-411), never without (never at any seed); mean reward over the next 1,000 requests 0.661 with,
0.281 without (0.611-0.673 vs 0.240-0.305); GPT-4 chosen 65 of the next 500 times with the
response, 443 without (73-120 vs 440-474). Price x 10: detection on GPT-4's cost 0 requests after
the change (0-3); recovery 200 with the response, 1,013 without (200-238 vs 200-1,611); 0.675 vs
0.587 over the next 1,000 (+0.050 to +0.096); GPT-4 chosen 266 of the next 500 times vs 457
(288-357 vs 445-479).

Before the change the monitor raises 29 events in 3,000 requests (23-30), all on cost, nearly all
on GPT-4's. They are false alarms of the cost detectors on MMLU's long-tailed prompt lengths:
GPT-4's own per-prompt costs streamed in a random order raise as many (28-30 in 3,000). Acting on
them costs nothing measurable (the pre-change reward is the same with and without the response);
but the responder's cooldown (200 of a model's values) can swallow the real price change when a
false alarm came just before it, so the price test checks the outcome (reward, choices), not that
the response fired on the change itself (it did at seed 0; at seeds 2 and 5 a false alarm 10 and
34 requests earlier had just reset GPT-4's costs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from llmopt.features import request_features
from llmopt.loop import LearningLoop
from llmopt.reward import TradeOff
from llmopt.routing_data import RoutingData, load_routing_data
from llmopt.schemas import Feedback, RequestContext
from models.kinds import make_policy
from monitoring.detectors import DriftEvent, StreamMonitor
from monitoring.drift_response import DriftResponder

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[3] / "bench" / "data" / "routing" / "routellm_mmlu.parquet"
"""RouteLLM's MMLU outcomes, shipped with the benchmarks (``bench/data/README.md``)."""
SEED = 0
POLICY = "cost_aware_linucb"
"""The policy whose drift response the figures above were measured on (a linear policy that,
unaided, keeps choosing a degraded favourite: what the response must fix)."""
WTP = 0.05
N_REQUESTS = 5500
CHANGE = 3000
"""Request from which the broken model's outcomes change."""
BROKEN = "gpt-4-1106-preview"
WINDOW = 200
"""Trailing window of the rolling reward."""
RECOVERED = 0.8
"""Share of the pre-change reward level that counts as recovered. Mixtral, the one alternative,
is worth 0.87 of GPT-4's pre-change reward on average (0.679 vs 0.782 at this willingness to
pay), so no response can get back to 0.9 of it."""
DETECTION_BOUND = 50
"""Requests after the change within which the monitor must flag the broken model."""
RECOVERY_BOUND = 500
"""Requests after the change within which the trailing reward must be back at RECOVERED."""


@dataclass
class Run:
    rewards: np.ndarray
    chosen: list[str]
    events: list[tuple[int, DriftEvent]]  # (request index, event)
    acted: list[tuple[int, DriftEvent]]  # events the responder acted on

    def pre_level(self) -> float:
        return float(self.rewards[CHANGE - 500 : CHANGE].mean())

    def recovery(self) -> int | None:
        """Requests after the change until the trailing-WINDOW mean reward (of post-change
        requests only) is back at >= RECOVERED of the pre-change level; None: never."""
        roll = np.convolve(self.rewards, np.ones(WINDOW) / WINDOW, mode="valid")
        for end in range(CHANGE + WINDOW, len(self.rewards) + 1):
            if roll[end - WINDOW] >= RECOVERED * self.pre_level():
                return end - CHANGE
        return None

    def first_detection(self, model: str, stream: str) -> int | None:
        after = [
            i - CHANGE
            for i, e in self.events
            if i >= CHANGE and (e.model, e.stream) == (model, stream)
        ]
        return after[0] if after else None

    def share_before(self, model: str) -> float:
        return self.chosen[CHANGE - 1000 : CHANGE].count(model) / 1000


@pytest.fixture(scope="module")
def mmlu() -> tuple[RoutingData, list[dict[str, float]]]:
    # Shipped in the repo: a missing file is a broken checkout, and fails (never skips).
    assert DATA.is_file(), f"routing data missing at {DATA} (see bench/data/README.md)"
    data = load_routing_data(DATA)
    # the hand-made request features the figures were measured with (no prompt embedding)
    return data, [request_features(p, embeddings=False) for p in data.prompts]


def replay(
    bench: tuple[RoutingData, list[dict[str, float]]],
    *,
    respond: bool,
    quality_factor: float = 1.0,
    cost_factor: float = 1.0,
) -> Run:
    data, features = bench
    rng = np.random.default_rng(SEED)
    order = rng.permutation(data.n_prompts)[:N_REQUESTS]  # every request a different prompt
    column = {m: j for j, m in enumerate(data.models)}
    loop = LearningLoop(
        make_policy(POLICY, seed=SEED),
        data.models,
        default_tradeoff=TradeOff(willingness_to_pay=WTP),
    )
    monitor = StreamMonitor()
    responder = DriftResponder(loop if respond else None)
    rewards, chosen, events, acted = [], [], [], []
    for step, i in enumerate(order.tolist()):
        decision = loop.decide(
            RequestContext(tenant="replay", prompt=data.prompts[i]), features=features[i]
        )
        j = column[decision.model]
        quality, cost = float(data.quality[i, j]), float(data.cost_usd[i, j])
        if decision.model == BROKEN and step >= CHANGE:
            quality, cost = quality * quality_factor, cost * cost_factor
        outcome = loop.feedback(
            Feedback(decision_id=decision.decision_id, quality=quality, cost_usd=cost)
        )
        found = monitor.observe(
            decision.model, reward=outcome.reward, quality=quality, cost_usd=cost
        )
        events += [(step, e) for e in found]
        acted += [(step, e) for e in responder.handle(found)]
        rewards.append(outcome.reward)
        chosen.append(decision.model)
    return Run(np.array(rewards), chosen, events, acted)


@pytest.fixture(autouse=True)
def _quiet_alerts() -> None:
    logging.getLogger("llmopt.monitoring").setLevel(logging.ERROR)


def test_quality_collapse_is_detected_and_the_response_restores_reward(
    mmlu: tuple[RoutingData, list[dict[str, float]]],
) -> None:
    with_response = replay(mmlu, respond=True, quality_factor=0.3)
    without = replay(mmlu, respond=False, quality_factor=0.3)
    for run in (with_response, without):
        # GPT-4 is the policy's favourite before the change (measured 0.92 of choices).
        assert run.share_before(BROKEN) == max(run.share_before(m) for m in set(run.chosen))
        delay = run.first_detection(BROKEN, "quality")
        assert delay is not None and delay <= DETECTION_BOUND  # measured 19 (seeds 0-5: 12-24)
    # Acting on drift events, false alarms included, did not hurt before the change
    # (pre-change level measured 0.798 with the response and without).
    assert with_response.pre_level() >= without.pre_level() - 0.01
    assert sum(i < CHANGE for i, _ in with_response.events) <= 40  # measured 29 (23-30)
    assert any(
        CHANGE <= i <= CHANGE + DETECTION_BOUND and e.model == BROKEN and e.stream != "cost_usd"
        for i, e in with_response.acted
    )
    recovered = with_response.recovery()
    assert recovered is not None and recovered <= RECOVERY_BOUND  # measured 259 (205-411)
    not_recovered = without.recovery()
    assert not_recovered is None or not_recovered > 2 * RECOVERY_BOUND  # measured never
    after = slice(CHANGE, CHANGE + 1000)
    # measured 0.661 vs 0.281 (seeds 0-5: a difference of 0.36-0.40)
    assert with_response.rewards[after].mean() > without.rewards[after].mean() + 0.25
    # The broken model stops being chosen: measured 65 of the next 500 choices vs 443
    # (seeds 0-5: 65-120 vs 440-474).
    assert with_response.chosen[CHANGE : CHANGE + 500].count(BROKEN) < 200


def test_price_rise_is_detected_and_the_response_restores_reward(
    mmlu: tuple[RoutingData, list[dict[str, float]]],
) -> None:
    with_response = replay(mmlu, respond=True, cost_factor=10.0)
    without = replay(mmlu, respond=False, cost_factor=10.0)
    for run in (with_response, without):
        delay = run.first_detection(BROKEN, "cost_usd")
        assert delay is not None and delay <= 10  # measured 0 (seeds 0-5: 0-3)
    recovered = with_response.recovery()
    assert recovered is not None and recovered <= RECOVERY_BOUND  # measured 200 (200-238)
    not_recovered = without.recovery()
    assert not_recovered is None or not_recovered >= recovered  # measured 1,013 (200-1,611)
    after = slice(CHANGE, CHANGE + 1000)
    # measured 0.675 vs 0.587 (seeds 0-5: a difference of 0.050-0.096)
    assert with_response.rewards[after].mean() > without.rewards[after].mean() + 0.03
    # The broken model is chosen less: measured 266 of the next 500 choices vs 457
    # (seeds 0-5: 266-357 vs 445-479, at least 100 fewer).
    next_500 = slice(CHANGE, CHANGE + 500)
    assert (
        with_response.chosen[next_500].count(BROKEN) < without.chosen[next_500].count(BROKEN) - 50
    )
