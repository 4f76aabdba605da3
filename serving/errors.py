"""One error shape for every 4xx/5xx the service answers, and no traceback for a client error.

Every refusal, whoever produces it (:mod:`serving.http_guard`, BentoML's request validation,
the handlers in :mod:`serving.service`, Starlette's routing), has the body::

    {"error": {"code": "not_found", "message": "unknown decision_id ...", "field": null}}

``code`` is stable and machine-readable (:data:`CODES`, or the error's own), ``message`` is
for people, ``field`` names the offending request field (dotted, e.g. ``requests.0.tenant``)
when there is one.

BentoML writes its own shapes (``{"error": ..., "detail": [...]}`` for validation,
``[{"error": ...}]`` for an exception raised by a handler); :class:`ErrorShapeMiddleware`
rewrites them into this one, using the :class:`ApiError` a handler raised (its code, field and
message: BentoML hides the message of a 5xx) when there is one. BentoML also logs every such
exception at ERROR with a traceback; :class:`QuietClientErrors` drops those records for client
errors (4xx), which are answers, not faults.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from http import HTTPStatus
from typing import Any

from bentoml.exceptions import BentoMLException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    402: "budget_exceeded",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}
VALIDATION = "validation_error"
"""The code of a 400 from request validation (the body does not fit the schema)."""

BENTOML_LOGGER = "bentoml._internal.server.http_app"
"""Where BentoML logs ``Exception on PATH [METHOD]`` with a traceback for every error."""


class ErrorDetail(BaseModel):
    """What went wrong."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="Stable, machine-readable: " + ", ".join(CODES.values()))
    message: str = Field(description="For people.")
    field: str | None = Field(
        default=None, description="The offending request field, dotted (null: none)."
    )


class ErrorResponse(BaseModel):
    """The body of every 4xx/5xx answer."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


def code_for(status: int) -> str:
    """The ``code`` of an error with HTTP ``status`` and nothing more specific.

    >>> code_for(404), code_for(418)
    ('not_found', 'im_a_teapot')
    """
    if status in CODES:
        return CODES[status]
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "client_error" if status < 500 else "server_error"
    return "".join(c if c.isalnum() else "_" for c in phrase.lower().replace("'", ""))


def error_body(
    status: int, message: str, *, code: str | None = None, field: str | None = None
) -> bytes:
    """The JSON body of an error answer.

    >>> error_body(404, "no such decision")
    b'{"error": {"code": "not_found", "message": "no such decision", "field": null}}'
    """
    error = {"code": code or code_for(status), "message": message, "field": field}
    return json.dumps({"error": error}).encode()


class ApiError(BentoMLException):
    """An error a handler answers with: its status (``error_code``), code and field.

    Created inside a request, it is noted for :class:`ErrorShapeMiddleware` (BentoML passes
    only ``str(exc)`` on, and not even that for a 5xx).
    """

    error_code = HTTPStatus.BAD_REQUEST
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field
        raised = _RAISED.get()
        if raised is not None:
            raised.append(self)


_RAISED: ContextVar[list[ApiError] | None] = ContextVar("llmopt_raised", default=None)
"""The :class:`ApiError` s created in the current request (set by :class:`ErrorShapeMiddleware`)."""


class BadRequestError(ApiError):
    """400: a request the domain refuses (e.g. canary without a challenger)."""


class BudgetRefusedError(ApiError):
    """402: the tenant's daily budget pays for no model."""

    error_code = HTTPStatus.PAYMENT_REQUIRED
    code = "budget_exceeded"


class NotFoundError(ApiError):
    """404: the feedback names a decision the service never made."""

    error_code = HTTPStatus.NOT_FOUND
    code = "unknown_decision"


class ConflictError(ApiError):
    """409: a different feedback for this decision was stored first."""

    error_code = HTTPStatus.CONFLICT
    code = "conflicting_feedback"


class UnavailableError(ApiError):
    """503: a dependency (the event log) failed; retry."""

    error_code = HTTPStatus.SERVICE_UNAVAILABLE
    code = "unavailable"


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _loc(loc: Any) -> str | None:
    if not isinstance(loc, list | tuple) or not loc:
        return None
    return ".".join(str(p) for p in loc)


def _validation(data: dict[str, Any]) -> bytes:
    """BentoML's ``{"error": "N validation errors for X", "detail": [pydantic errors]}``."""
    details = [d for d in data.get("detail") or () if isinstance(d, dict)]
    if not details:
        return error_body(400, str(data.get("error")), code=VALIDATION)
    parts = []
    for d in details:
        where = _loc(d.get("loc"))
        parts.append(f"{where}: {d.get('msg')}" if where else str(d.get("msg")))
    return error_body(400, "; ".join(parts), code=VALIDATION, field=_loc(details[0].get("loc")))


def validation_body(exc: ValidationError) -> bytes:
    """The 400 body of a request that does not fit its model, as BentoML's is reshaped."""
    detail = exc.errors(include_url=False, include_input=False, include_context=False)
    return _validation({"error": str(exc), "detail": detail})


def _message(status: int, data: Any) -> bytes:
    """The one shape from another JSON body (BentoML's, Starlette's)."""
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    message = _phrase(status)
    if isinstance(data, dict):
        if "detail" in data and status == HTTPStatus.BAD_REQUEST:
            return _validation(data)
        for key in ("error", "detail"):  # BentoML's, Starlette's HTTPException
            if isinstance(data.get(key), str):
                message = data[key]
                break
    return error_body(status, message)


def reshape(status: int, body: bytes, raised: ApiError | None = None) -> bytes:
    """The body of an error answer, in the one shape whatever shape ``body`` had.

    >>> reshape(409, b'[{"error": "taken"}]')
    b'{"error": {"code": "conflict", "message": "taken", "field": null}}'
    >>> reshape(404, b"Not Found")
    b'{"error": {"code": "not_found", "message": "Not Found", "field": null}}'
    """
    if raised is not None and int(raised.error_code) == status:
        return error_body(status, raised.message, code=raised.code, field=raised.field)
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return error_body(status, text or _phrase(status))
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        if isinstance(data["error"].get("code"), str):
            return body  # the one shape already
    return _message(status, data)


class ErrorShapeMiddleware:
    """Rewrites every 4xx/5xx body of the app it wraps into the one shape.

    Answers below 400 pass untouched (one extra call per message); an error's body is
    collected (errors are small) and sent again, reshaped, with its length and JSON type.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raised: list[ApiError] = []
        token = _RAISED.set(raised)
        start: Message | None = None
        chunks: list[bytes] = []

        async def send_reshaped(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    await send(message)
                else:
                    start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            status: int = start["status"]
            body = reshape(status, b"".join(chunks), raised[-1] if raised else None)
            headers = [
                (k, v)
                for k, v in start.get("headers", ())
                if k.lower() not in (b"content-length", b"content-type")
            ]
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        try:
            await self.app(scope, receive, send_reshaped)
        finally:
            _RAISED.reset(token)


class QuietClientErrors(logging.Filter):
    """Drops BentoML's ERROR record (with traceback) for an exception that is a 4xx answer."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            return False
        if isinstance(exc, BentoMLException):
            return int(exc.error_code) >= 500
        return True


def quiet_client_errors() -> None:
    """Install :class:`QuietClientErrors` on BentoML's server logger (once)."""
    logger = logging.getLogger(BENTOML_LOGGER)
    if not any(isinstance(f, QuietClientErrors) for f in logger.filters):
        logger.addFilter(QuietClientErrors())
