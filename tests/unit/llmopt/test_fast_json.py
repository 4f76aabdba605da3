"""llmopt/fast_json.py: orjson, with the standard library for what orjson refuses."""

from __future__ import annotations

import pytest

from llmopt import fast_json


def test_json_is_read_and_written_whatever_orjson_refuses() -> None:
    """orjson on the hot path; what it refuses falls back to the standard library, and what
    neither reads is a ValueError (the gateway then falls back to the next model)."""
    doc = {"choices": [{"message": {"content": "héllo"}}], "usage": {"total_tokens": 3}}
    assert fast_json.loads(fast_json.dumps_bytes(doc)) == doc
    assert fast_json.loads(b'{"n": 123456789012345678901234567890}')["n"] == pytest.approx(
        1.2345e29, rel=1e-3
    )
    assert fast_json.dumps_bytes({"n": 2**70}) == b'{"n":1180591620717411303424}'
    assert (
        fast_json.loads('{"x": NaN}')["x"] != fast_json.loads('{"x": NaN}')["x"]
    )  # NaN, as json reads it
    with pytest.raises(ValueError):
        fast_json.loads(b"<html>bad gateway</html>")
    assert fast_json.dumps({"n": 2**70, "s": "é"}) == '{"n":1180591620717411303424,"s":"é"}'
    with pytest.raises(TypeError):
        fast_json.dumps({"x": object()})
