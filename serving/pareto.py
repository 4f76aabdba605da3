"""The live cost/quality/latency front per task: ``GET /pareto`` and ``llmopt pareto``.

Which models are worth considering for a kind of work, and where a tenant's willingness to pay
sits among them, from what the service has observed: the last ``window`` feedback of the event
log (the whole fleet's, not one worker's), grouped by model for the requested task type
(:func:`llmopt.tasks.task_type` of each request's hints), averaged by
:class:`models.pareto.ParetoTracker` and reduced to its Pareto front (higher quality, lower
cost, lower latency). A model needs ``min_samples`` feedback in the window to be a candidate.
Latency is the observed mean where feedback carried one, else the catalog's expected latency
(each candidate says which). The willingness to pay is the request's, else the tenant's paced
one (:mod:`serving.pacing`), else the service default; ``choice`` is the candidate the reward
ranks first at it (:func:`models.pareto.best_for`), ``knee`` the front's compromise point.

Example
-------
>>> from llmopt.event_log import EventLog
>>> from llmopt.schemas import Decision, Feedback, RequestContext
>>> log = EventLog("sqlite://")
>>> for model, q, cost in [("small", 0.6, 0.0005)] * 5 + [("large", 0.9, 0.02)] * 5:
...     d = Decision(model=model, propensity=1.0, policy_name="p", policy_version="v")
...     _ = log.record_decision(d, RequestContext(tenant="t", task_hints=["code"]), features={})
...     _ = log.record_feedback(Feedback(decision_id=d.decision_id, quality=q, cost_usd=cost))
>>> view = live_front(log, task="code", willingness_to_pay=0.01)
>>> [c["model"] for c in view["candidates"] if c["on_front"]], view["choice"]
(['small', 'large'], 'small')
>>> live_front(log, task="code", willingness_to_pay=1.0)["choice"]
'large'
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any
from urllib.parse import parse_qs

from llmopt.catalog import ModelCatalog
from llmopt.event_log import EventLog
from llmopt.loop import DEFAULT_OUTPUT_TOKENS
from llmopt.tasks import GENERAL_TASK, KNOWN_HINTS, OTHER_TASK, task_type
from models.pareto import ParetoTracker, best_for, knee_point, pareto_front
from serving.errors import error_body
from serving.health import RuntimeOfApp
from serving.http_guard import tenant_refusal

TASK_TYPES: tuple[str, ...] = (*KNOWN_HINTS, GENERAL_TASK, OTHER_TASK)
"""Task types a front can be asked for."""
DEFAULT_WINDOW = 5000
MAX_WINDOW = 100_000
MIN_SAMPLES = 5


class ParetoQueryError(ValueError):
    """A bad ``/pareto`` query (a 400 naming the parameter; 403: a tenant the key may not act
    for)."""

    def __init__(self, message: str, field: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


def check_query(
    task: str | None, window: int, willingness_to_pay: float | None
) -> tuple[str | None, int, float | None]:
    """Validate a query's values; raises :class:`ParetoQueryError` naming the bad one."""
    if task is not None and task not in TASK_TYPES:
        raise ParetoQueryError(
            f"unknown task {task!r}; choose one of: {', '.join(TASK_TYPES)}", "task"
        )
    if not 1 <= window <= MAX_WINDOW:
        raise ParetoQueryError(f"window must be in [1, {MAX_WINDOW}], got {window}", "window")
    if willingness_to_pay is not None and not 1e-9 <= willingness_to_pay < float("inf"):
        raise ParetoQueryError(
            f"willingness_to_pay must be a finite number >= 1e-9, got {willingness_to_pay}",
            "willingness_to_pay",
        )
    return task, window, willingness_to_pay


def live_front(
    log: EventLog,
    *,
    task: str | None,
    willingness_to_pay: float,
    latency_weight: float = 0.0,
    catalog: ModelCatalog | None = None,
    window: int = DEFAULT_WINDOW,
    min_samples: int = MIN_SAMPLES,
) -> dict[str, Any]:
    """The front of ``task`` (None: every task) over the last ``window`` feedback."""
    task, window, _ = check_query(task, window, willingness_to_pay)
    events = log.feedback_since(log.cursor_before_latest(window))
    tracker = ParetoTracker(min_samples=min_samples)
    tasks: Counter[str] = Counter()
    observed_latency: Counter[str] = Counter()
    for e in events:
        kind = task_type(e.context.get("task_hints"))
        tasks[kind] += 1
        if task is not None and kind != task:
            continue
        latency = e.latency_ms
        if latency is None or latency < 0:
            spec = catalog.get(e.model) if catalog is not None else None
            latency = spec.expected_latency_ms(DEFAULT_OUTPUT_TOKENS) if spec is not None else 0.0
        else:
            observed_latency[e.model] += 1
        tracker.learn_one(
            e.model,
            quality=min(1.0, max(0.0, e.quality)),
            cost_usd=max(0.0, e.cost_usd or 0.0),
            latency_ms=latency,
        )
    candidates = tracker.candidates()
    front = {c.name for c in pareto_front(candidates)}
    rows = [
        {
            "model": c.name,
            "n": tracker.n_samples(c.name),
            "quality": round(c.quality, 6),
            "cost_usd": round(c.cost_usd, 8),
            "latency_ms": round(c.latency_ms, 1),
            "latency_source": "observed"
            if observed_latency[c.name] == tracker.n_samples(c.name)
            else ("catalog" if observed_latency[c.name] == 0 else "observed and catalog"),
            "on_front": c.name in front,
            "reward_at_wtp": round(c.reward(willingness_to_pay, latency_weight), 6),
        }
        for c in candidates
    ]
    rows.sort(key=lambda r: (float(r["cost_usd"]), -float(r["quality"])))
    too_few = sorted(
        m for m in {e.model for e in events} - {c.name for c in candidates} if tracker.n_samples(m)
    )
    return {
        "task": task,
        "window": {
            "feedback": len(events),
            "of_task": sum(tracker.n_samples(c) for c in {e.model for e in events}),
            "from": events[0].received_at.isoformat() if events else None,
            "to": events[-1].received_at.isoformat() if events else None,
        },
        "willingness_to_pay": willingness_to_pay,
        "latency_weight": latency_weight,
        "candidates": rows,
        "choice": best_for(candidates, willingness_to_pay, latency_weight).name
        if candidates
        else None,
        "knee": knee_point(candidates).name if candidates else None,
        "too_few_samples": too_few,
        "min_samples": min_samples,
        "tasks_in_window": dict(tasks.most_common()),
    }


def dumps(view: dict[str, Any]) -> bytes:
    """The JSON body of ``GET /pareto``."""
    return json.dumps(view).encode()


class ParetoMiddleware(RuntimeOfApp):
    """ASGI middleware answering ``GET /pareto?task=T&tenant=X&willingness_to_pay=W&window=N``.

    Added inside the guard (a client key, when keys are set; a key bound to tenants may name
    only its own in ``tenant``: 403 otherwise, the fleet's front without one). The event log is
    read on a thread, so a long window never blocks the decision path's event loop.
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(scope, receive, send)
            return
        if scope["type"] != "http" or scope.get("path") != "/pareto" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        runtime = self.runtime
        status, body = 503, error_body(503, "the service is starting")
        if runtime is not None:
            try:
                view = await asyncio.to_thread(pareto_for_query, runtime, scope["query_string"])
                status, body = 200, dumps(view)
            except ParetoQueryError as exc:
                status, body = exc.status, error_body(exc.status, str(exc), field=exc.field)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def pareto_for_query(runtime: Any, query_string: bytes) -> dict[str, Any]:
    """The front a ``/pareto`` query asks for, from the worker's runtime (its event log,
    catalog, default trade-off and budget pacing)."""
    query = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
    unknown = sorted(set(query) - {"task", "tenant", "willingness_to_pay", "window"})
    if unknown:
        raise ParetoQueryError(
            f"unknown query parameter(s): {', '.join(unknown)}; use task, tenant, "
            "willingness_to_pay, window",
            unknown[0],
        )

    def one(name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    def number(name: str, kind: type) -> Any:
        raw = one(name)
        if raw is None:
            return None
        try:
            return kind(raw)
        except ValueError:
            raise ParetoQueryError(f"{name} must be a number, got {raw!r}", name) from None

    router = runtime.router
    tenant = one("tenant")
    why = tenant_refusal(tenant) if tenant else None  # keys bound to tenants (http_guard)
    if why is not None:
        raise ParetoQueryError(why, "tenant", status=403)
    wtp = number("willingness_to_pay", float)
    window = number("window", int)
    task, window, wtp = check_query(one("task"), DEFAULT_WINDOW if window is None else window, wtp)
    source = "request"
    if wtp is None and tenant and router.pacing is not None:
        wtp = router.pacing.current(tenant)
        source = "tenant's budget pacing"
    if wtp is None:
        wtp = router.default_tradeoff.willingness_to_pay
        source = "service default"
    view = live_front(
        runtime.event_log,
        task=task,
        willingness_to_pay=wtp,
        latency_weight=router.default_tradeoff.latency_weight,
        catalog=router.catalog,
        window=window,
    )
    return {**view, "tenant": tenant, "willingness_to_pay_source": source}
