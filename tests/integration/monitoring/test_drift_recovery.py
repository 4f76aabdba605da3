"""Drift on real routing data: the monitor sees a model break, and the response restores reward.

RouterBench (ARC + Winogrande, 2,737 prompts x 11 models, 0/1 correctness, real per-call cost)
streams twice, in a seeded order (5,474 requests), through the learning loop with the
recommended policy at a willingness to pay of 0.05 USD per unit quality, with bandit feedback
only. From request 3,000 on, GPT-4 (the model the policy chooses most before that) breaks: its
answers are worth 0.3 of what they were, or its price triples. Every feedback feeds a
:class:`~monitoring.detectors.StreamMonitor` (default detectors); a
:class:`~monitoring.drift_response.DriftResponder` acts on its events in one run and does
nothing in the other. Both runs share the data, order and seeds.

Measured (seed 0), quality x 0.3: first detection on GPT-4's quality 13 requests after the
change (CUSUM); the trailing-200 reward is back at >= 90% of its pre-drift level 235 requests
after the change with the response, 1,262 without; mean reward over the next 1,000 requests
0.757 with, 0.474 without. Price x 3: detection 0 requests after the change (CUSUM on cost);
recovery 255 requests with the response, 1,291 without; 0.744 vs 0.675 over the next 1,000.
Seeds 1-3 behave alike (recovery 200-421 with the response, 580 to never without).

Before the change the monitor raises 8 events in 3,000 requests (5 on GPT-4's cost, 3 on its
quality or reward). They are not noise: the policy keeps changing which prompts it sends to
each model, so a model's observed outcomes do shift (the same per-prompt costs streamed in a
random order raise none). Acting on them costs nothing measurable, because the responder
keeps the weight of 20 observations rather than forgetting a model outright.
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

SEED = 0
POLICY = "cost_aware_linucb"
"""The policy whose drift response the figures below were measured on (a linear policy that,
unaided, keeps choosing a degraded favourite: what the response must fix)."""
WTP = 0.05
CHANGE = 3000
"""Request from which the broken model's outcomes change."""
BROKEN = "gpt-4-1106-preview"
WINDOW = 200
"""Trailing window of the rolling reward."""
DETECTION_BOUND = 50
"""Requests after the change within which the monitor must flag the broken model."""
RECOVERY_BOUND = 500
"""Requests after the change within which the trailing reward must be back at >= 90%."""


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
        requests only) is back at >= 90% of the pre-change level; None: never."""
        roll = np.convolve(self.rewards, np.ones(WINDOW) / WINDOW, mode="valid")
        for end in range(CHANGE + WINDOW, len(self.rewards) + 1):
            if roll[end - WINDOW] >= 0.9 * self.pre_level():
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
def routerbench(routing_dir: Path) -> tuple[RoutingData, list[dict[str, float]]]:
    data = load_routing_data(routing_dir / "routerbench_arc_winogrande.parquet")
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
    order = np.r_[rng.permutation(data.n_prompts), rng.permutation(data.n_prompts)]
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
    routerbench: tuple[RoutingData, list[dict[str, float]]],
) -> None:
    with_response = replay(routerbench, respond=True, quality_factor=0.3)
    without = replay(routerbench, respond=False, quality_factor=0.3)
    for run in (with_response, without):
        # GPT-4 is the policy's favourite before the change (measured 0.99 of choices).
        assert run.share_before(BROKEN) == max(run.share_before(m) for m in set(run.chosen))
        delay = run.first_detection(BROKEN, "quality")
        assert delay is not None and delay <= DETECTION_BOUND  # measured 12-13
    # Acting on drift events, false alarms included, did not hurt before the change
    # (pre-change level measured 0.832 with the response, 0.834 without).
    assert with_response.pre_level() >= without.pre_level() - 0.01
    assert sum(i < CHANGE for i, _ in with_response.events) <= 10  # measured 8
    assert any(
        CHANGE <= i <= CHANGE + DETECTION_BOUND and e.model == BROKEN and e.stream != "cost_usd"
        for i, e in with_response.acted
    )
    recovered = with_response.recovery()
    assert recovered is not None and recovered <= RECOVERY_BOUND  # measured 235
    not_recovered = without.recovery()
    assert not_recovered is None or not_recovered > 2 * RECOVERY_BOUND  # measured 1,262
    after = slice(CHANGE, CHANGE + 1000)
    # measured 0.757 vs 0.474
    assert with_response.rewards[after].mean() > without.rewards[after].mean() + 0.15
    # The broken model stops being chosen: measured 19 of the next 500 choices vs 375.
    assert with_response.chosen[CHANGE : CHANGE + 500].count(BROKEN) < 50


def test_price_tripling_is_detected_and_the_response_restores_reward(
    routerbench: tuple[RoutingData, list[dict[str, float]]],
) -> None:
    with_response = replay(routerbench, respond=True, cost_factor=3.0)
    without = replay(routerbench, respond=False, cost_factor=3.0)
    for run in (with_response, without):
        delay = run.first_detection(BROKEN, "cost_usd")
        assert delay is not None and delay <= 10  # measured 0
    assert any(
        CHANGE <= i <= CHANGE + 10 and e.model == BROKEN and e.stream == "cost_usd"
        for i, e in with_response.acted
    )
    recovered = with_response.recovery()
    assert recovered is not None and recovered <= RECOVERY_BOUND  # measured 255
    not_recovered = without.recovery()
    assert not_recovered is None or not_recovered > 2 * RECOVERY_BOUND  # measured 1,291
    after = slice(CHANGE, CHANGE + 1000)
    # measured 0.744 vs 0.675
    assert with_response.rewards[after].mean() > without.rewards[after].mean() + 0.04
