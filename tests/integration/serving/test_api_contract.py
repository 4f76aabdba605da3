"""The API contract (issue 18): a valid OpenAPI 3.1 document, one error body, quiet 4xx.

In process (``DecisionService.to_asgi()`` + a TestClient). The same contract over a real
``llmopt serve`` process, with Schemathesis' command line, is in ``test_real_server.py``.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import schemathesis
from bentoml.exceptions import BentoMLException
from starlette.testclient import TestClient

from serving.errors import BENTOML_LOGGER, QuietClientErrors, reshape
from serving.schemas import EXAMPLE_DECIDE

pytestmark = pytest.mark.integration

CLIENT, ADMIN = "client-key-contract", "admin-key-contract"
MAX_BODY = 20_000
JSON_TYPE = {"content-type": "application/json"}


@contextmanager
def serve(tmp: Path, **env: str) -> Iterator[TestClient]:
    mp = pytest.MonkeyPatch()
    mp.setenv("BENTOML_HOME", str(tmp / "bentoml"))
    mp.setenv("LLMOPT_HOME", str(tmp / "llmopt"))
    mp.setenv("LLMOPT_SERVING_POLL_S", "0")
    mp.setenv("LLMOPT_SERVING_MODEL_SOURCE", "fresh")
    mp.setenv("LLMOPT_SERVING_FEATURES", "off")
    mp.setenv("LLMOPT_SERVING_MAX_BODY_BYTES", str(MAX_BODY))
    mp.setenv("LLMOPT_SERVING_TENANT_BUDGETS", '{"poor": 0.00001}')
    for key in ("LLMOPT_CLIENT_KEYS", "LLMOPT_ADMIN_KEYS", "LLMOPT_DATABASE_URL"):
        mp.delenv(key, raising=False)
    for key, value in env.items():
        mp.setenv(key, value)
    try:
        from serving.service import DecisionService  # noqa: PLC0415

        with TestClient(DecisionService.to_asgi(), raise_server_exceptions=False) as client:
            yield client
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with serve(tmp_path_factory.mktemp("contract"), LLMOPT_SERVING_RATE_LIMIT_PER_S="0") as c:
        yield c


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with serve(
        tmp_path_factory.mktemp("contract-keys"),
        LLMOPT_CLIENT_KEYS=CLIENT,
        LLMOPT_ADMIN_KEYS=ADMIN,
        LLMOPT_SERVING_RATE_LIMIT_PER_S="1",
    ) as c:
        yield c


@pytest.fixture(scope="module")
def spec(client: TestClient) -> dict[str, Any]:
    r = client.get("/docs.json")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def conforms(spec: dict[str, Any], component: str, instance: Any) -> None:
    """``instance`` is valid for ``#/components/schemas/<component>`` of the served spec."""
    schema = {"$ref": f"#/components/schemas/{component}", "components": spec["components"]}
    jsonschema.Draft202012Validator(schema).validate(instance)


# -- the OpenAPI document ----------------------------------------------------------------------
def _schemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every Schema Object of an OpenAPI document (components, bodies, parameters)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "schema" and isinstance(value, dict):
                yield value
            elif key == "schemas" and isinstance(value, dict):
                yield from value.values()
            else:
                yield from _schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schemas(value)


def test_the_served_spec_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1."), spec["openapi"]
    schema = schemathesis.openapi.from_dict(spec)
    schema.validate()  # the OpenAPI 3.1 meta-schema; raises on an invalid document
    operations = [result.ok() for result in schema.get_all_operations()]  # each one usable
    assert len(operations) >= 9
    found = list(_schemas(spec))
    assert len(found) > 20
    for one in found:  # OpenAPI 3.1 schemas are JSON Schema 2020-12
        jsonschema.Draft202012Validator.check_schema(one)
        assert "nullable" not in one, one  # a 3.0 keyword: 3.1 says "null" in a type


def test_the_served_spec_validates_with_openapi_spec_validator(spec: dict[str, Any]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(spec)


def test_the_spec_version_is_the_projects(spec: dict[str, Any]) -> None:
    assert spec["info"]["version"] == importlib.metadata.version("llm-auto-optimizer")
    assert spec["info"]["version"] != "None"


def test_optional_fields_keep_their_null(spec: dict[str, Any], client: TestClient) -> None:
    decided = client.post("/decide", json=EXAMPLE_DECIDE)
    assert decided.status_code == 200, decided.text
    assert decided.json()["shadow"] is None  # served with null: the schema must allow it
    conforms(spec, "DecideResponseIODescriptor", decided.json())
    conforms(
        spec,
        "FeedbackResponseIODescriptor",
        {"status": "stored", "decision_id": "d", "reward": 0.5, "feedback_id": None},
    )
    request = spec["paths"]["/decide"]["post"]["requestBody"]["content"]["application/json"]
    assert request["schema"] == {"$ref": "#/components/schemas/DecideRequestIODescriptor"}
    conforms(spec, "DecideRequestIODescriptor", {"tenant": "acme", "max_cost_usd": None})
    with pytest.raises(jsonschema.ValidationError):  # gt=0: exclusiveMinimum kept
        conforms(spec, "DecideRequestIODescriptor", {"tenant": "acme", "max_cost_usd": 0})


def test_every_operation_documents_the_error_body(spec: dict[str, Any]) -> None:
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path in ("/decide", "/decide_batch", "/feedback", "/admin/reload", "/admin/traffic"):
        responses = spec["paths"][path]["post"]["responses"]
        for status in ("4XX", "5XX"):
            assert responses[status]["content"]["application/json"]["schema"] == ref, path


# -- one error body ----------------------------------------------------------------------------
def one_shape(spec: dict[str, Any], r: Any, status: int, code: str, field: str | None = None):
    """``status`` and ``{"error": {"code", "message", "field"}}``, nothing else."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "field"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert body["error"]["field"] == field, body
    conforms(spec, "ErrorResponse", body)
    return body["error"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/decide", {"prompt": "hi"}, "tenant"),
        ("/decide", {"tenant": "acme", "max_cost_usd": -1}, "max_cost_usd"),
        ("/decide", {"tenant": "acme", "colour": "red"}, "colour"),
        ("/decide_batch", {"requests": [{"prompt": "x"}]}, "requests.0.tenant"),
        ("/feedback", {"decision_id": "d", "quality": 2}, "quality"),
        ("/admin/traffic", {"mode": "sideways"}, "mode"),
    ],
)
def test_validation_errors_are_400_naming_the_field(
    spec: dict[str, Any], client: TestClient, path: str, body: dict[str, Any], field: str
) -> None:
    error = one_shape(spec, client.post(path, json=body), 400, "validation_error", field)
    assert field in error["message"]


@pytest.mark.parametrize("body", [b"{nope", b"[]", b"null"])
def test_a_body_that_is_not_a_json_object_is_400(
    spec: dict[str, Any], client: TestClient, body: bytes
) -> None:
    one_shape(
        spec, client.post("/decide", content=body, headers=JSON_TYPE), 400, "validation_error"
    )


def test_domain_refusals(spec: dict[str, Any], client: TestClient) -> None:
    r = client.post("/decide", json={**EXAMPLE_DECIDE, "models": ["nope"]})
    assert "nope" in one_shape(spec, r, 400, "no_candidate", "models")["message"]
    r = client.post("/admin/traffic", json={"mode": "canary", "canary_percent": 5})
    assert "challenger" in one_shape(spec, r, 400, "invalid_traffic")["message"]
    r = client.post("/decide", json={"tenant": "poor", "prompt": "hi"})
    assert "daily budget" in one_shape(spec, r, 402, "budget_exceeded")["message"]


def test_feedback_refusals_404_and_409(spec: dict[str, Any], client: TestClient) -> None:
    r = client.post("/feedback", json={"decision_id": "nope", "quality": 0.5})
    assert (
        "unknown decision_id"
        in one_shape(spec, r, 404, "unknown_decision", "decision_id")["message"]
    )
    did = client.post("/decide", json=EXAMPLE_DECIDE).json()["decision_id"]
    assert client.post("/feedback", json={"decision_id": did, "thumbs": "up"}).status_code == 200
    r = client.post("/feedback", json={"decision_id": did, "thumbs": "down"})
    assert "different feedback" in one_shape(spec, r, 409, "conflicting_feedback")["message"]


def test_guard_refusals_413_415(spec: dict[str, Any], client: TestClient) -> None:
    huge = {"tenant": "acme", "prompt": "x" * (MAX_BODY + 1)}
    one_shape(spec, client.post("/decide", json=huge), 413, "payload_too_large")
    r = client.post("/decide", content=b"tenant=acme", headers={"content-type": "text/plain"})
    assert "application/json" in one_shape(spec, r, 415, "unsupported_media_type")["message"]


def test_routing_refusals_404_405(spec: dict[str, Any], client: TestClient) -> None:
    one_shape(spec, client.post("/nowhere", json={}), 404, "not_found")
    one_shape(spec, client.get("/decide"), 405, "method_not_allowed")


def test_key_and_rate_refusals_401_403_429(spec: dict[str, Any], keyed: TestClient) -> None:
    one_shape(spec, keyed.post("/decide", json=EXAMPLE_DECIDE), 401, "unauthorized")
    r = keyed.post("/admin/reload", json={}, headers={"Authorization": f"Bearer {CLIENT}"})
    one_shape(spec, r, 403, "forbidden")
    statuses = []
    for _ in range(6):  # 1/s with a burst of 2
        r = keyed.post("/decide", json=EXAMPLE_DECIDE, headers={"Authorization": f"Bearer {ADMIN}"})
        statuses.append(r.status_code)
    one_shape(spec, r, 429, "rate_limited")
    assert 200 in statuses, statuses


def test_reshape_keeps_the_one_shape_and_converts_the_others() -> None:
    same = b'{"error": {"code": "x", "message": "m", "field": null}}'
    assert reshape(400, same) == same
    assert reshape(503, b"").startswith(b'{"error": {"code": "unavailable"')
    assert b'"message": "boom"' in reshape(500, b'{"detail": "boom"}')


# -- no traceback for a client error -----------------------------------------------------------
class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def bentoml_records() -> Iterator[Records]:
    """What BentoML's server logger lets through (its filters apply before any handler)."""
    handler = Records()
    logger = logging.getLogger(BENTOML_LOGGER)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def test_client_errors_log_no_traceback_at_error(
    client: TestClient, bentoml_records: Records, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    did = client.post("/decide", json=EXAMPLE_DECIDE).json()["decision_id"]
    client.post("/feedback", json={"decision_id": did, "quality": 0.9})
    refusals = [
        client.post("/decide", json={"prompt": "hi"}),  # 400, validation
        client.post("/decide", json={**EXAMPLE_DECIDE, "models": ["nope"]}),  # 400, domain
        client.post("/decide", json={"tenant": "poor", "prompt": "hi"}),  # 402
        client.post("/feedback", json={"decision_id": "nope", "quality": 0.5}),  # 404
        client.post("/feedback", json={"decision_id": did, "quality": 0.1}),  # 409
        client.post("/admin/traffic", json={"mode": "canary"}),  # 400, domain
    ]
    assert [r.status_code for r in refusals] == [400, 400, 402, 404, 409, 400]
    loud = [r for r in bentoml_records.records if r.levelno >= logging.ERROR]
    loud += [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]


def test_the_filter_drops_client_errors_only() -> None:
    def record(exc: BaseException) -> logging.LogRecord:
        return logging.LogRecord(
            BENTOML_LOGGER,
            logging.ERROR,
            __file__,
            1,
            "Exception on /x [POST]",
            (),
            (
                type(exc),
                exc,
                None,
            ),
        )

    quiet = QuietClientErrors()
    from serving.errors import ConflictError, UnavailableError  # noqa: PLC0415

    assert not quiet.filter(record(ConflictError("taken")))
    assert quiet.filter(record(UnavailableError("event log down")))
    assert quiet.filter(record(BentoMLException("unexpected")))  # a 500
    assert quiet.filter(record(RuntimeError("bug")))
