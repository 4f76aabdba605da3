"""A bug behind the fast path (``serving/fast_path.py``) is a 500 in the one error shape, with no
details (in a module of its own: a second service alive in the process would be the one the
fast path finds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.serving.conftest import asgi_service

pytestmark = pytest.mark.integration


def test_a_bug_is_a_500_in_the_one_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("serving.service.response_json", broken)  # what the fast path writes with
    with asgi_service(tmp_path, LLMOPT_SERVING_RATE_LIMIT_PER_S="0") as c:
        r = c.post("/decide", json={"tenant": "acme"})
    assert r.status_code == 500
    assert r.json() == {
        "error": {"code": "internal_error", "message": "internal error", "field": None}
    }
