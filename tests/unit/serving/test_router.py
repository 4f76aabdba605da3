"""Router logic with fake policies: canary, shadow, breaker, budget, swap, rollback, fallback."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from llmopt.catalog import ModelCatalog, load_catalog
from llmopt.event_log import EventLog, UnknownDecisionError
from llmopt.schemas import Decision, Feedback, RequestContext
from llmopt.settings import AutopilotRules
from llmopt.types import ArmID, Features
from serving.guards import BudgetExceededError, BudgetLedger, CircuitBreaker
from serving.router import STATIC_LABEL, Router, tenant_bucket


class FakePolicy:
    """Chooses ``model`` when offered (else the first arm); records what it learns."""

    def __init__(self, model: str, name: str = "fake", propensity: float = 0.8) -> None:
        self.model = model
        self.name = name
        self.propensity = propensity
        self.updates: list[tuple[ArmID, float]] = []

    def pull(self, arm_ids: Sequence[ArmID], context: Features | None = None) -> Decision:
        model = self.model if self.model in arm_ids else arm_ids[0]
        return Decision(model=model, propensity=self.propensity, policy_name=self.name)

    def update(self, arm_id: ArmID, context: Features | None, reward: float) -> FakePolicy:
        self.updates.append((arm_id, reward))
        return self


class BrokenPolicy(FakePolicy):
    def pull(self, arm_ids: Sequence[ArmID], context: Features | None = None) -> Decision:
        raise RuntimeError("corrupt state")


@pytest.fixture(scope="module")
def catalog() -> ModelCatalog:
    return load_catalog()


@pytest.fixture
def log() -> EventLog:
    return EventLog("sqlite://")


def make_router(catalog: ModelCatalog, log: EventLog, **kwargs: Any) -> Router:
    return Router(catalog, log, **kwargs)


def ctx(tenant: str = "acme", **kw: Any) -> RequestContext:
    return RequestContext(tenant=tenant, prompt="What is 2 + 2?", **kw)


def test_no_policy_means_the_static_default_answers_and_says_so(catalog, log):
    router = make_router(catalog, log)
    routed = router.decide(ctx())
    assert routed.slot.fallback and routed.slot.label == STATIC_LABEL
    assert routed.decision.model == "gpt-4.1-nano"  # the cheapest current catalog model
    assert any("static default" in n for n in routed.decision.notes)
    assert log.get_decision(routed.decision.decision_id) is not None


def test_decisions_carry_the_version_label_and_feedback_teaches_that_policy(catalog, log):
    router = make_router(catalog, log)
    champ, chall = FakePolicy("gpt-4o"), FakePolicy("gpt-4o-mini")
    router.swap(champion=(champ, "llm-router/1"), challenger=(chall, "llm-router/2"))
    router.set_traffic("canary", 100.0)
    routed = router.decide(ctx())
    assert routed.slot.role == "challenger"
    assert routed.decision.policy_version == "llm-router/2"
    assert log.get_decision(routed.decision.decision_id)["policy_version"] == "llm-router/2"
    out = router.feedback(Feedback(decision_id=routed.decision.decision_id, quality=0.9))
    assert out.status == "stored"
    assert [arm for arm, _ in chall.updates] == ["gpt-4o-mini"]  # learned by the challenger
    assert champ.updates == []


def test_canary_is_sticky_per_tenant_and_near_its_share(catalog, log):
    router = make_router(catalog, log)
    router.swap(champion=(FakePolicy("gpt-4o"), "v1"), challenger=(FakePolicy("gpt-4o-mini"), "v2"))
    router.set_traffic("canary", 30.0)
    tenants = [f"tenant-{i}" for i in range(300)]
    first = {t: router.decide(ctx(t)).slot.role for t in tenants}
    again = {t: router.decide(ctx(t)).slot.role for t in tenants}
    assert first == again  # sticky
    share = sum(r == "challenger" for r in first.values()) / len(tenants)
    assert 0.2 < share < 0.4
    assert all((tenant_bucket(t) < 30.0) == (first[t] == "challenger") for t in tenants)
    router.set_traffic("canary", 0.0)
    assert all(router.decide(ctx(t)).slot.role == "champion" for t in tenants[:50])


def test_shadow_logs_the_challenger_decision_but_serves_the_champion(catalog, log):
    router = make_router(catalog, log)
    router.swap(
        champion=(FakePolicy("gpt-4o"), "v1"),
        challenger=(FakePolicy("gpt-4o-mini", propensity=0.3), "v2"),
    )
    router.set_traffic("shadow")
    routed = router.decide(ctx())
    assert routed.slot.role == "champion" and routed.decision.model == "gpt-4o"
    assert routed.shadow is not None and routed.shadow.model == "gpt-4o-mini"
    row = log.get_decision(routed.shadow.decision_id)
    assert row["policy_version"] == "v2" and row["propensity"] == pytest.approx(0.3)
    assert router.events.shadow_decisions == 1 and router.events.shadow_agreements == 0


def test_traffic_modes_other_than_champion_need_a_challenger(catalog, log):
    router = make_router(catalog, log)
    router.swap(champion=(FakePolicy("gpt-4o"), "v1"))
    with pytest.raises(ValueError, match="needs a challenger"):
        router.set_traffic("shadow")


def test_circuit_breaker_excludes_a_failing_model_then_probes_it(catalog, log):
    now = [0.0]
    breaker = CircuitBreaker(min_calls=3, error_rate=0.5, cooldown_s=10, clock=lambda: now[0])
    router = make_router(catalog, log, breaker=breaker)
    router.swap(champion=(FakePolicy("gpt-4o"), "v1"))
    for _ in range(3):
        d = router.decide(ctx()).decision
        assert d.model == "gpt-4o"
        router.feedback(Feedback(decision_id=d.decision_id, error_kind="timeout"))
    routed = router.decide(ctx())
    assert routed.decision.model != "gpt-4o"
    assert any("gpt-4o excluded: circuit breaker open" in n for n in routed.decision.notes)
    now[0] = 11.0  # cooled down: half-open, offered again
    probe = router.decide(ctx()).decision
    assert probe.model == "gpt-4o"
    router.feedback(Feedback(decision_id=probe.decision_id, quality=1.0))
    assert breaker.state("gpt-4o") == "closed"


def test_every_model_open_means_all_are_probed(catalog, log):
    breaker = CircuitBreaker(min_calls=1, error_rate=0.5, cooldown_s=100)
    for m in catalog.ids:
        breaker.record(m, ok=False)
    router = make_router(catalog, log, breaker=breaker)
    router.swap(champion=(FakePolicy("gpt-4o"), "v1"))
    routed = router.decide(ctx())
    assert routed.decision.model == "gpt-4o"
    assert any("probing them all" in n for n in routed.decision.notes)


def test_budget_cap_is_never_exceeded_and_refuses_when_nothing_fits(catalog, log):
    budget = 0.001
    ledger = BudgetLedger(per_tenant={"acme": budget})
    router = make_router(catalog, log, ledger=ledger)
    router.swap(champion=(FakePolicy("gpt-4o"), "v1"))  # wants an expensive model
    committed = 0.0
    refused = 0
    for _ in range(200):
        try:
            routed = router.decide(ctx())
        except BudgetExceededError as exc:
            assert "daily budget" in str(exc)
            refused += 1
            break
        assert routed.decision.model != "gpt-4o"  # 0.0026 USD predicted: above the budget
        committed += routed.predicted_cost_usd or 0.0
        assert committed <= budget + 1e-12
    assert refused == 1
    assert ledger.remaining("acme") >= -1e-12
    # other tenants are not capped
    assert router.decide(ctx("other")).decision.model == "gpt-4o"


def test_budget_settles_to_the_actual_cost_at_feedback(catalog, log):
    ledger = BudgetLedger(per_tenant={"acme": 0.01})
    router = make_router(catalog, log, ledger=ledger)
    router.swap(champion=(FakePolicy("gpt-4o-mini"), "v1"))
    routed = router.decide(ctx())
    assert ledger.remaining("acme") == pytest.approx(0.01 - routed.predicted_cost_usd)
    router.feedback(Feedback(decision_id=routed.decision.decision_id, quality=1, cost_usd=0.002))
    assert ledger.remaining("acme") == pytest.approx(0.008)


def test_request_caps_are_honoured(catalog, log):
    router = make_router(catalog, log)
    router.swap(champion=(FakePolicy("gpt-4o"), "v1"))
    d = router.decide(ctx(max_cost_usd=0.0005)).decision
    assert d.model != "gpt-4o"
    assert any("max_cost_usd" in n for n in d.notes)
    d = router.decide(ctx(max_latency_ms=1700)).decision  # current models: 1,630 ms at best
    assert catalog[d.model].expected_latency_ms(256) <= 1700


def test_a_broken_champion_falls_back_to_the_static_default(catalog, log):
    router = make_router(catalog, log)
    router.swap(champion=(BrokenPolicy("gpt-4o"), "v1"))
    routed = router.decide(ctx())
    assert routed.slot.fallback
    assert router.events.champion_failures == 1


def test_a_broken_challenger_falls_back_to_the_champion(catalog, log):
    router = make_router(catalog, log)
    router.swap(champion=(FakePolicy("gpt-4o"), "v1"), challenger=(BrokenPolicy("x"), "v2"))
    router.set_traffic("canary", 100.0)
    routed = router.decide(ctx())
    assert routed.slot.role == "champion" and routed.decision.model == "gpt-4o"
    router.set_traffic("shadow")
    assert router.decide(ctx()).shadow is None


def test_hot_swap_is_atomic_under_concurrent_requests(catalog, tmp_path):
    # a file database: the in-memory one is a single connection bound to its thread
    router = make_router(catalog, EventLog(f"sqlite:///{tmp_path / 'events.db'}"))
    router.swap(champion=(FakePolicy("gpt-4o"), "v1"))
    errors: list[BaseException] = []
    labels: set[str] = set()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                r = router.decide(ctx())
                labels.add(r.decision.policy_version)
                assert (r.decision.policy_version, r.decision.model) in {
                    ("v1", "gpt-4o"),
                    ("v2", "gpt-4o-mini"),
                }
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(20):
        model, label = ("gpt-4o-mini", "v2") if i % 2 == 0 else ("gpt-4o", "v1")
        router.swap(champion=(FakePolicy(model), label))
        time.sleep(0.01)
    router.swap(champion=(FakePolicy("gpt-4o-mini"), "v2"))
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert labels == {"v1", "v2"}
    assert router.decide(ctx()).decision.policy_version == "v2"


def test_feedback_for_a_retired_version_teaches_the_current_champion(catalog, log):
    router = make_router(catalog, log)
    router.swap(champion=(FakePolicy("gpt-4o"), "v1"))
    d = router.decide(ctx()).decision
    new = FakePolicy("gpt-4o-mini")
    router.swap(champion=(new, "v2"))
    router.feedback(Feedback(decision_id=d.decision_id, quality=0.5))
    assert new.updates and new.updates[0][0] == "gpt-4o"


def test_unknown_decision_is_refused(catalog, log):
    router = make_router(catalog, log)
    with pytest.raises(UnknownDecisionError):
        router.feedback(Feedback(decision_id="nope", quality=0.5))


def test_a_worse_canary_is_rolled_back(catalog, log):
    rule = AutopilotRules(min_feedback=20, reward_margin=0.05, error_margin=0.1)
    router = make_router(catalog, log, rules=rule)
    router.swap(
        champion=(FakePolicy("gpt-4o-mini"), "good"), challenger=(FakePolicy("gpt-4o"), "bad")
    )
    router.set_traffic("canary", 50.0)
    tenants = [f"t{i}" for i in range(400)]
    for t in tenants:
        routed = router.decide(ctx(t))
        bad = routed.slot.role == "challenger"
        router.feedback(
            Feedback(decision_id=routed.decision.decision_id, quality=0.2 if bad else 0.9)
        )
        if router.traffic.mode != "canary":
            break
    assert router.traffic.mode == "champion"
    assert router.events.rollbacks == 1
    assert any("rolled back" in n for n in router.events.notes)


def test_an_equal_canary_is_not_rolled_back(catalog, log):
    router = make_router(catalog, log, rules=AutopilotRules(min_feedback=20))
    router.swap(champion=(FakePolicy("gpt-4o-mini"), "a"), challenger=(FakePolicy("gpt-4o"), "b"))
    router.set_traffic("canary", 50.0)
    for i in range(200):
        routed = router.decide(ctx(f"t{i}"))
        router.feedback(Feedback(decision_id=routed.decision.decision_id, quality=0.9))
    assert router.traffic.mode == "canary" and router.events.rollbacks == 0


def test_learn_from_log_applies_other_workers_feedback_once(catalog, log):
    worker_a = make_router(catalog, log)
    worker_b = make_router(catalog, log, ledger=BudgetLedger(per_tenant={"acme": 1.0}))
    pa, pb = FakePolicy("gpt-4o"), FakePolicy("gpt-4o")
    worker_a.swap(champion=(pa, "v1"))
    worker_b.swap(champion=(pb, "v1"))
    own_a: set[int] = set()
    for _ in range(3):
        d = worker_a.decide(ctx()).decision
        out = worker_a.feedback(Feedback(decision_id=d.decision_id, quality=0.7))
        assert out.feedback_id is not None
        own_a.add(out.feedback_id)
    assert len(pa.updates) == 3 and pb.updates == []
    cursor_b = worker_b.learn_from_log(0, set()).feedback_id
    assert len(pb.updates) == 3 and cursor_b == 3
    assert worker_b.ledger.remaining("acme") < 1.0  # worker a's spend counts against acme
    assert worker_a.learn_from_log(0, own_a).feedback_id == 3
    assert len(pa.updates) == 3  # its own feedback is not learned twice


def test_the_canary_statistics_count_every_workers_feedback(catalog, log):
    """Two workers, one log: all the feedback reaches worker a, yet worker b's canary
    statistics hold it once b follows the log, and b rolls the bad canary back on that
    evidence; a retired version's late feedback does not revive its statistics."""
    rule = AutopilotRules(min_feedback=20, reward_margin=0.05, error_margin=0.1)
    a, b = make_router(catalog, log, rules=rule), make_router(catalog, log, rules=rule)
    for w in (a, b):
        w.swap(champion=(FakePolicy("gpt-4o-mini"), "good"), challenger=(FakePolicy("x"), "bad"))
        w.set_traffic("canary", 50.0)
    own: set[int] = set()
    for i in range(60):
        routed = a.decide(ctx(f"t{i}"))
        bad = routed.slot.role == "challenger"
        out = a.feedback(
            Feedback(decision_id=routed.decision.decision_id, quality=0.2 if bad else 0.9)
        )
        assert out.feedback_id is not None
        own.add(out.feedback_id)
        if a.traffic.mode != "canary":
            break
    assert a.traffic.mode == "champion"  # a saw it all and rolled back
    assert b.live_stats() == {} and b.traffic.mode == "canary"
    cursor = b.learn_from_log(0, set())
    assert b.traffic.mode == "champion" and b.events.rollbacks == 1  # on a's evidence
    assert a.learn_from_log(0, own) == cursor and a.events.rollbacks == 1  # nothing twice
    assert a.rolled_back[0].verdict == b.rolled_back[0].verdict  # the same statistics
    assert b.live_stats() == {}  # cleared at the rollback
    routed = a.decide(ctx("late"))
    a.feedback(Feedback(decision_id=routed.decision.decision_id, quality=0.9))
    b.learn_from_log(cursor, set())
    assert set(b.live_stats()) == {"good"}


def test_unknown_traffic_modes_are_refused(catalog, log):
    router = make_router(catalog, log)
    router.swap(champion=(FakePolicy("gpt-4o"), "v1"), challenger=(FakePolicy("x"), "v2"))
    with pytest.raises(ValueError, match="champion, canary or shadow"):
        router.set_traffic("sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="canary_percent"):
        router.set_traffic("canary", 150.0)


def test_the_canary_steps_up_by_schedule_until_rolled_back(catalog, log):
    now = [0.0]
    router = make_router(catalog, log, clock=lambda: now[0])
    router.swap(champion=(FakePolicy("gpt-4o"), "v1"), challenger=(FakePolicy("x"), "v2"))
    router.set_traffic("canary", 1.0, schedule=(10, 50, 100), step_s=60)
    router.decide(ctx())
    assert router.traffic.canary_percent == 1.0
    seen = []
    for t in (61.0, 62.0, 121.0, 181.0, 1000.0):
        now[0] = t
        router.decide(ctx())
        seen.append(router.traffic.canary_percent)
    assert seen == [10.0, 10.0, 50.0, 100.0, 100.0]
    assert router.traffic.schedule == ()
    assert all(router.decide(ctx(f"t{i}")).slot.role == "challenger" for i in range(20))
    with pytest.raises(ValueError, match="schedule must increase"):
        router.set_traffic("canary", 10.0, schedule=(5, 50))


def test_a_rollback_stops_the_schedule(catalog, log):
    router = make_router(catalog, log, rules=AutopilotRules(min_feedback=10))
    router.swap(champion=(FakePolicy("gpt-4o-mini"), "a"), challenger=(FakePolicy("gpt-4o"), "b"))
    router.set_traffic("canary", 50.0, schedule=(100,), step_s=3600)
    for i in range(200):
        routed = router.decide(ctx(f"t{i}"))
        q = 0.1 if routed.slot.role == "challenger" else 0.9
        router.feedback(Feedback(decision_id=routed.decision.decision_id, quality=q))
    assert router.traffic.mode == "champion" and router.traffic.schedule == ()


def test_a_model_failing_one_call_in_five_is_penalised_before_its_breaker_opens(catalog, log):
    """The breaker's window gives a live error rate at once: 20% failures never open it (50%),
    but the next decisions price the risk in (error rate x expected quality) and say so."""
    from models.kinds import make_policy  # noqa: PLC0415

    policy = make_policy("cost_aware_cluster_thompson", seed=0)
    router = make_router(catalog, log)
    router.swap(champion=(policy, "v1"))
    models = ["gpt-4o", "gpt-4o-mini"]
    for _ in range(10):  # both answer well
        routed = router.decide(ctx(models=models))
        router.feedback(Feedback(decision_id=routed.decision.decision_id, quality=0.9))
    loop = router.lineup.champion.loop
    before = router.decide(ctx(models=models)).decision
    assert not any("recent error rate" in n for n in before.notes)
    base = loop.penalties(models, 8, loop.tradeoff_for(ctx()))
    for i in range(20):  # the breaker's whole window
        router.breaker.record("gpt-4o", ok=i % 5 != 0)
    assert router.breaker.state("gpt-4o") == "closed"
    assert router.breaker.recent_error_rate("gpt-4o") == pytest.approx(0.2)
    after = router.decide(ctx(models=models)).decision
    assert any("gpt-4o recent error rate 20%" in n for n in after.notes), after.notes
    risked = loop.penalties(models, 8, loop.tradeoff_for(ctx()))
    mean = policy.arm_mean("gpt-4o")
    assert mean is not None
    assert risked["gpt-4o"] - base["gpt-4o"] == pytest.approx(0.2 * mean)
    assert risked["gpt-4o-mini"] == base["gpt-4o-mini"]


def test_a_decision_never_waits_for_a_feedback_transaction(
    catalog: ModelCatalog, log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = make_router(catalog, log)
    r.swap((FakePolicy("gpt-4o-mini"), "v1"))
    d = r.decide(ctx()).decision
    entered, release = threading.Event(), threading.Event()
    store = log.record_feedback

    def slow_store(*args: Any, **kwargs: Any) -> Any:  # waits like a busy database write lock
        entered.set()
        release.wait(10)
        return store(*args, **kwargs)

    monkeypatch.setattr(log, "record_feedback", slow_store)
    outcomes: list[Any] = []
    fb = Feedback(decision_id=d.decision_id, quality=0.9)
    t = threading.Thread(target=lambda: outcomes.append(r.feedback(fb)))
    t.start()
    assert entered.wait(5)
    started = time.monotonic()
    r.decide(ctx())  # while the feedback's transaction is stuck
    waited = time.monotonic() - started
    release.set()
    t.join(10)
    assert waited < 2, f"the decision waited {waited:.1f} s behind the feedback"
    assert outcomes[0].status == "stored"
    learned = r.lineup.champion.loop.policy.inner.updates  # type: ignore[attr-defined]
    assert learned == [("gpt-4o-mini", outcomes[0].reward)]
