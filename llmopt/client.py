"""A small Python client of the decision service (``llmopt serve`` / ``bentoml serve``).

One keep-alive HTTP connection pool (httpx); responses are plain dicts, errors one exception
carrying the HTTP status and the service's message.

Examples
--------
A sketch (needs a running service)::

    from llmopt.client import DecisionClient

    with DecisionClient("http://127.0.0.1:3000", api_key="...") as client:
        d = client.decide("acme", "What is 2 + 2?", max_cost_usd=0.001)
        answer = call_the_llm(d["model"], **d["parameters"])      # your code
        client.feedback(d["decision_id"], quality=0.8, cost_usd=0.0001)
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx


class DecisionServiceError(RuntimeError):
    """The service refused a request.

    ``status`` is the HTTP status (401, 404, 409, ...); ``code``, ``message`` and ``field`` are
    the service's error body, ``{"error": {"code", "message", "field"}}``.
    """

    def __init__(
        self, status: int, message: str, *, code: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.code = code
        self.field = field


class DecisionClient:
    """Client of the decision service.

    Parameters
    ----------
    base_url
        Where the service listens, e.g. ``http://127.0.0.1:3000``.
    api_key
        Sent as ``Authorization: Bearer KEY`` (None: the service runs open).
    timeout
        Seconds per request.
    transport
        An httpx transport (tests pass an in-process one).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:3000",
        *,
        api_key: str | None = None,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self._http.post(path, json=body)
        if r.status_code != 200:
            raise _error(r)
        data: dict[str, Any] = r.json()
        return data

    def decide(self, tenant: str, prompt: str | None = None, **fields: Any) -> dict[str, Any]:
        """Which model to call for one request; ``fields``: task_hints, max_cost_usd, ..."""
        return self._post("/decide", {"tenant": tenant, "prompt": prompt, **fields})

    def decide_batch(self, requests: list[dict[str, Any]]) -> dict[str, Any]:
        """Decisions for several requests (``decisions`` in order, ``errors`` for refusals)."""
        return self._post("/decide_batch", {"requests": requests})

    def feedback(self, decision_id: str, **fields: Any) -> dict[str, Any]:
        """Report the outcome: one of quality / thumbs / rating, or error_kind; costs, tokens."""
        return self._post("/feedback", {"decision_id": decision_id, **fields})

    def ready(self) -> bool:
        """True when ``/readyz`` answers 200."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> DecisionClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _error(r: httpx.Response) -> DecisionServiceError:
    """The service's error body as an exception (a body of another shape: its text)."""
    try:
        data = r.json()
    except ValueError:
        return DecisionServiceError(r.status_code, r.text)
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return DecisionServiceError(r.status_code, r.text)
    code, field = error.get("code"), error.get("field")
    return DecisionServiceError(
        r.status_code,
        str(error.get("message", "")),
        code=code if isinstance(code, str) else None,
        field=field if isinstance(field, str) else None,
    )
