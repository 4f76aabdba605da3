"""Schemathesis over the OpenAPI spec the service serves: thousands of generated requests, no 5xx.

The spec is read from ``/docs.json`` of the in-process ASGI app (``DecisionService.to_asgi()``);
for every operation Schemathesis generates bodies that fit the schema (positive) and bodies that
break it (negative: wrong types, missing or extra fields, out-of-range numbers, non-objects),
seeded (``derandomize``) so CI sees the same requests each run. The service runs twice: open,
and with API keys (an admin key is sent, so generated requests reach the handlers, not a 401).

Each response is checked with Schemathesis' ``not_a_server_error`` and against the spec's
response schemas (``response_schema_conformance``): the served spec is OpenAPI 3.1 with the
pydantic models' own schemas (``X | None`` fields nullable) and documents the one error body
for ``4XX``/``5XX`` (:mod:`serving.openapi`), so every answer, refusals included, must fit it.
``test_api_contract.py`` checks the document itself and each error status.

Schemathesis' own pytest integration (``schemathesis.pytest.from_fixture``) fails on pytest 9
(``'Function' object has no attribute '_nodeid'``), so each operation is driven through
``APIOperation.as_strategy`` and a plain Hypothesis ``@given``.

Hand-written bad bodies follow: not JSON, invalid UTF-8, wrong content types (415), huge bodies
(413), and the inputs that once got a 5xx or broke the policy (now 400, naming the field).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import response_schema_conformance
from starlette.testclient import TestClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN, CLIENT = "admin-key-fuzz", "client-key-fuzz"
MAX_BODY = 20_000
EXAMPLES = 100
"""Generated requests per operation, generation mode and service (open / with keys)."""

POSTS = ["/decide", "/decide_batch", "/feedback", "/admin/reload", "/admin/traffic"]
PROBES = ["/healthz", "/livez", "/readyz", "/metrics"]


@dataclass
class Fuzzed:
    """The service's schema, the headers every request carries, and what it answered."""

    schema: Any
    headers: dict[str, str]
    answered: Counter[tuple[str, int]] = field(default_factory=Counter)
    seconds: float = 0.0


RUNS: dict[str, Fuzzed] = {}


def _env(tmp: Path, mp: pytest.MonkeyPatch, **env: str) -> None:
    mp.setenv("BENTOML_HOME", str(tmp / "bentoml"))
    mp.setenv("LLMOPT_HOME", str(tmp / "llmopt"))
    mp.setenv("LLMOPT_SERVING_POLL_S", "0")
    mp.setenv("LLMOPT_SERVING_MODEL_SOURCE", "fresh")
    mp.setenv("LLMOPT_SERVING_FEATURES", "off")
    mp.setenv("LLMOPT_SERVING_RATE_LIMIT_PER_S", "0")
    mp.setenv("LLMOPT_SERVING_MAX_BODY_BYTES", str(MAX_BODY))
    for key in ("LLMOPT_CLIENT_KEYS", "LLMOPT_ADMIN_KEYS", "LLMOPT_DATABASE_URL"):
        mp.delenv(key, raising=False)
    for key, value in env.items():
        mp.setenv(key, value)


@pytest.fixture(scope="module", params=["open", "keys"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fuzzed]:
    """The running service's schema (Schemathesis' ASGI client; settings read at start-up)."""
    mode: str = request.param
    keys = {"LLMOPT_CLIENT_KEYS": CLIENT, "LLMOPT_ADMIN_KEYS": ADMIN} if mode == "keys" else {}
    mp = pytest.MonkeyPatch()
    _env(tmp_path_factory.mktemp(f"fuzz-{mode}"), mp, **keys)
    try:
        from serving.service import DecisionService  # noqa: PLC0415

        app = DecisionService.to_asgi()
        # The first request (for the spec) runs the app's lifespan, i.e. the service's
        # __init__ and the middleware's settings, with the environment above in force.
        schema = schemathesis.openapi.from_asgi("/docs.json", app)  # OpenAPI 3.1, as served
    finally:
        mp.undo()
    headers = {"Authorization": f"Bearer {ADMIN}"} if mode == "keys" else {}
    run = RUNS[mode] = Fuzzed(schema, headers)
    yield run
    asgi.shutdown_lifespans()  # the service's shutdown, as a TestClient's `with` block ends


def _fuzz(run: Fuzzed, method: str, path: str, mode: GenerationMode, examples: int) -> None:
    operation = run.schema[path][method]

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=operation.as_strategy(generation_mode=mode, headers=run.headers or None))
    def one(case: Any) -> None:
        response = case.call()
        run.answered[(f"{method} {path}", response.status_code)] += 1
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    started = time.perf_counter()
    one()
    run.seconds += time.perf_counter() - started


@pytest.mark.parametrize("mode", list(GenerationMode))
@pytest.mark.parametrize("path", POSTS)
def test_generated_bodies_never_get_a_server_error(
    service: Fuzzed, path: str, mode: GenerationMode
) -> None:
    _fuzz(service, "POST", path, mode, EXAMPLES)
    statuses = {status for (op, status), _ in service.answered.items() if op == f"POST {path}"}
    assert statuses and max(statuses) < 500, statuses
    if mode is GenerationMode.NEGATIVE:
        assert 400 in statuses, statuses  # refused by validation, named in the body


@pytest.mark.parametrize("path", PROBES)
def test_probes_answer(service: Fuzzed, path: str) -> None:
    _fuzz(service, "GET", path, GenerationMode.POSITIVE, 5)
    assert {s for (op, s) in service.answered if op == f"GET {path}"} == {200}


@pytest.mark.parametrize("mode", list(GenerationMode))
def test_generated_pareto_queries_never_get_a_server_error(
    service: Fuzzed, mode: GenerationMode
) -> None:
    _fuzz(service, "GET", "/pareto", mode, EXAMPLES)
    statuses = {s for (op, s) in service.answered if op == "GET /pareto"}
    assert statuses and max(statuses) < 500, statuses


def test_the_spec_lists_every_operation(service: Fuzzed) -> None:
    ops = {op.ok().label for op in service.schema.get_all_operations()}
    assert {f"POST {p}" for p in POSTS} | {f"GET {p}" for p in [*PROBES, "/pareto"]} <= ops


def test_thousands_of_requests_reached_the_handlers(
    service: Fuzzed, request: pytest.FixtureRequest
) -> None:
    """After the fuzz tests of this service (pytest runs a module's tests in file order)."""
    if not {f"POST {p}" for p in POSTS} <= {op for op, _ in service.answered}:
        pytest.skip("selected without all of this module's fuzz tests: nothing to count")
    by_status, by_operation = Counter[int](), Counter[str]()
    for (operation, status), n in service.answered.items():
        by_status[status] += n
        by_operation[operation] += n
    total = sum(by_status.values())
    request.node.user_properties += [("requests", total), ("seconds", round(service.seconds, 1))]
    # 5 operations x 2 modes x EXAMPLES, and the probes; x 2 services: thousands in all.
    assert total >= len(POSTS) * 2 * EXAMPLES, (total, by_operation)
    assert 200 in by_status and 400 in by_status and 401 not in by_status, by_status
    assert max(by_status) < 500, by_status


# -- hand-written bad bodies -------------------------------------------------------------------
@contextmanager
def _raw_service(tmp: Path) -> Iterator[TestClient]:
    mp = pytest.MonkeyPatch()
    _env(tmp, mp)
    try:
        from serving.service import DecisionService  # noqa: PLC0415

        with TestClient(DecisionService.to_asgi()) as client:
            yield client
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with _raw_service(tmp_path_factory.mktemp("fuzz-raw")) as client:
        yield client


JSON_TYPE = {"content-type": "application/json"}


def refused(r: Any, status: int, *words: str) -> None:
    """``status``, the one error body, and the words that name the problem."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "field"}, body
    for word in words:
        assert word in r.text, r.text


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{nope", ["Invalid JSON"]),
        (b"tenant=acme", ["Invalid JSON"]),
        (b'{"tenant": "acme"} trailing', ["Invalid JSON", "trailing characters"]),
        (b'{"tenant": "\xff\xfe"}', ["Invalid JSON"]),  # invalid UTF-8 inside a string
        (b"\xff\xfe\x00\x01", ["Invalid JSON"]),  # not UTF-8 at all
        (b'{"tenant": "\\ud800"}', ["Invalid JSON"]),  # a lone surrogate escape
        (b"[" * 5000 + b"]" * 5000, ["recursion limit"]),
        (b"[]", ["Input should be an object"]),
        (b"null", ["Input should be an object"]),
        (b'"acme"', ["Input should be an object"]),
        (b"12", ["Input should be an object"]),
    ],
)
def test_a_body_that_is_not_a_json_object_is_400_naming_the_problem(
    raw: TestClient, path: str, body: bytes, words: list[str]
) -> None:
    refused(raw.post(path, content=body, headers=JSON_TYPE), 400, *words)


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",  # BentoML's own parser answered this with a 500
        "",
    ],
)
def test_a_body_that_is_not_json_by_content_type_is_415(
    raw: TestClient, path: str, content_type: str
) -> None:
    r = raw.post(path, content=b'{"tenant": "acme"}', headers={"content-type": content_type})
    refused(r, 415, "unsupported content type", "application/json")


def test_json_content_types_with_parameters_are_json(raw: TestClient) -> None:
    for content_type in ("application/json; charset=utf-8", "Application/JSON", None):
        headers = {"content-type": content_type} if content_type else {}
        r = raw.post("/decide", content=b'{"tenant": "acme"}', headers=headers)
        assert r.status_code == 200, (content_type, r.text)


@pytest.mark.parametrize("path", POSTS)
def test_a_huge_body_is_413_by_length_or_by_counting(raw: TestClient, path: str) -> None:
    huge = b'{"tenant": "' + b"x" * (MAX_BODY + 1) + b'"}'
    refused(raw.post(path, content=huge, headers=JSON_TYPE), 413, f"above {MAX_BODY} bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length
        for start in range(0, len(huge), 4096):
            yield huge[start : start + 4096]

    refused(raw.post(path, content=chunks(), headers=JSON_TYPE), 413, f"above {MAX_BODY} bytes")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        # Each of these once got a 503 (event log / reward errors) or made the policy fail
        # into the static default; now the schema refuses them.
        ("/feedback", '{"decision_id": "D", "quality": 0.5, "cost_usd": Infinity}', "cost_usd"),
        ("/feedback", '{"decision_id": "D", "quality": 0.5, "cost_usd": 1e308}', "cost_usd"),
        ("/feedback", '{"decision_id": "D", "quality": 0.5, "latency_ms": 1e308}', "latency_ms"),
        (
            "/feedback",
            '{"decision_id": "D", "quality": 0.5, "input_tokens": 9223372036854775808}',
            "input_tokens",
        ),
        ("/feedback", '{"decision_id": "\\u0000", "quality": 0.5}', "decision_id"),
        ("/decide", '{"tenant": "\\u0000"}', "tenant"),
        ("/decide", '{"tenant": "acme", "latency_weight": Infinity}', "latency_weight"),
        ("/decide", '{"tenant": "acme", "latency_weight": 1e308}', "latency_weight"),
        ("/decide", '{"tenant": "acme", "willingness_to_pay": 1e-320}', "willingness_to_pay"),
        ("/decide", '{"tenant": "acme", "features": {"x": 1e200}}', "features"),
        ("/decide", '{"tenant": "acme", "features": {"x": NaN}}', "features"),
        ("/decide_batch", '{"requests": [{"tenant": "acme", "max_cost_usd": Infinity}]}', "max"),
    ],
)
def test_inputs_that_once_broke_the_service_are_400(
    raw: TestClient, path: str, body: str, field: str
) -> None:
    decision_id = raw.post("/decide", json={"tenant": "acme"}).json()["decision_id"]
    r = raw.post(path, content=body.replace('"D"', f'"{decision_id}"'), headers=JSON_TYPE)
    refused(r, 400, field)
    after = raw.post("/decide", json={"tenant": "acme", "features": {"x": 1.0}})
    assert after.status_code == 200 and not after.json()["fallback"], after.text
