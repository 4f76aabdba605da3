"""The OpenAPI document the service serves at ``/docs.json``: valid OpenAPI 3.1.

BentoML 1.4 labels its document 3.0.2 while filling it with pydantic's JSON Schema 2020-12
(numeric ``exclusiveMinimum``, ``anyOf`` with ``null``), flattens each request and response
schema so that ``X | None`` fields lose their ``null``, lists only its own error bodies
(400/404/500) and gives ``info.version`` as ``"None"``. :func:`build_spec` starts from
BentoML's document (paths, infrastructure endpoints) and

- labels it ``3.1.0``, the OpenAPI whose schemas *are* JSON Schema 2020-12;
- takes the schemas of every request and response from the pydantic models themselves
  (``pydantic.json_schema.models_json_schema``: requests as validated, responses as
  serialized), referenced from ``components.schemas``, so nullability and constraints are the
  ones the service enforces;
- documents the one error body (:class:`serving.errors.ErrorResponse`) for ``4XX``/``5XX``;
- sets ``info.version`` to the project's version.

:class:`OpenAPIMiddleware` answers ``GET /docs.json`` with it (built once per process).
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
from collections.abc import Callable
from typing import Any

from pydantic.json_schema import JsonSchemaMode, models_json_schema

from serving.errors import ASGIApp, ErrorResponse, Receive, Scope, Send

OPENAPI_VERSION = "3.1.0"
SPEC_PATH = "/docs.json"
REF = "#/components/schemas/{model}"
DISTRIBUTION = "llm-auto-optimizer"


def project_version() -> str:
    """The installed project's version (``0.0.0+unknown`` when it is not installed)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}},
    }


PARETO_OPERATION: dict[str, Any] = {
    "summary": "The live cost/quality/latency front of a task, and the tenant's choice on it",
    "description": (
        "From the event log's last `window` feedback: per model, the mean quality, cost and "
        "latency for the task type, whether it is on the Pareto front, its reward at the "
        "willingness to pay (the query's, else the tenant's paced one, else the default), "
        "and the choice at that willingness to pay."
    ),
    "parameters": [
        {"name": "task", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "Task type (code, math, ..., general, other); unset: every task."},
        {"name": "tenant", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "willingness_to_pay", "in": "query", "required": False,
         "schema": {"type": "number", "minimum": 1e-9}},
        {"name": "window", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 5000}},
    ],
    "responses": {
        "200": {
            "description": "The front",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
    },
}  # fmt: skip
"""``GET /pareto`` (:mod:`serving.pareto`), served by a middleware, not a BentoML API."""


def build_spec(service: Any) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a ``@bentoml.service`` (see the module docstring)."""
    spec: dict[str, Any] = copy.deepcopy(service.openapi_spec.asdict())
    spec["openapi"] = OPENAPI_VERSION
    spec["info"] = {
        "title": service.name,
        "version": project_version(),
        "description": (service.inner.__doc__ or "").strip(),
    }
    keys: list[tuple[type[Any], JsonSchemaMode]] = []
    for api in service.apis.values():
        keys += [(api.input_spec, "validation"), (api.output_spec, "serialization")]
    keys.append((ErrorResponse, "serialization"))
    refs, top = models_json_schema(keys, ref_template=REF)
    schemas: dict[str, Any] = top.get("$defs", {})
    errors = {
        "4XX": _error_response("Refused: the request is wrong (the body names the problem)"),
        "5XX": _error_response("The service cannot answer right now"),
    }
    for api in service.apis.values():
        post = spec["paths"][api.route]["post"]
        media = api.input_spec.mime_type()
        required = any(f.is_required() for f in api.input_spec.model_fields.values())
        post["requestBody"] = {
            "required": required,  # a missing body is {} (e.g. /admin/reload)
            "content": {media: {"schema": refs[(api.input_spec, "validation")]}},
        }
        ok = refs[(api.output_spec, "serialization")]
        post["responses"] = {
            "200": {
                "description": "Successful Response",
                "content": {api.output_spec.mime_type(): {"schema": ok}},
            },
            **errors,
        }
    pareto = copy.deepcopy(PARETO_OPERATION)
    pareto["responses"]["4XX"] = errors["4XX"]
    spec["paths"]["/pareto"] = {"get": pareto}
    for item in spec["paths"].values():  # the infrastructure endpoints (GET)
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"].setdefault("5XX", errors["5XX"])
    spec["components"] = {"schemas": schemas}
    return spec


class OpenAPIMiddleware:
    """Answers ``GET /docs.json`` with ``spec()`` (called once, on the first request)."""

    def __init__(self, app: ASGIApp, spec: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self._spec = spec
        self._body: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != SPEC_PATH or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if self._body is None:
            self._body = json.dumps(self._spec()).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self._body})
