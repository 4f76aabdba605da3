"""Issue 16's contract through the ASGI app: parameters, context limits, cascade plans."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("decision_parts")
    mp = pytest.MonkeyPatch()
    mp.setenv("BENTOML_HOME", str(tmp / "bentoml"))
    mp.setenv("LLMOPT_HOME", str(tmp / "llmopt"))
    mp.setenv("LLMOPT_SERVING_POLL_S", "0")
    mp.setenv("LLMOPT_SERVING_MODEL_SOURCE", "local")
    mp.setenv("LLMOPT_SERVING_MAX_BODY_BYTES", "2000000")
    for key in ("LLMOPT_CLIENT_KEYS", "LLMOPT_ADMIN_KEYS", "LLMOPT_DATABASE_URL"):
        mp.delenv(key, raising=False)
    try:
        from serving.service import DecisionService  # noqa: PLC0415

        with TestClient(DecisionService.to_asgi()) as c:
            yield c
    finally:
        mp.undo()


def test_every_decision_has_parameters_with_their_reason(client: TestClient) -> None:
    r = client.post("/decide", json={"tenant": "acme", "prompt": "What is 2 + 2?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert {"temperature", "max_tokens"} <= set(body["parameters"])
    assert body["parameters_reason"].startswith("default: 0 of 20 feedback needed")
    assert body["plan"] is None
    fb = client.post("/feedback", json={"decision_id": body["decision_id"], "quality": 0.8})
    assert fb.status_code == 200, fb.text
    again = client.post("/decide", json={"tenant": "acme", "prompt": "What is 3 + 3?"}).json()
    if again["model"] == body["model"]:  # same (task type, model): one feedback counted
        assert again["parameters_reason"].startswith("default: 1 of 20")


def test_a_prompt_longer_than_every_allowed_window_is_a_4xx_naming_it(client: TestClient) -> None:
    body = {"tenant": "acme", "prompt": "x" * 900_000, "models": ["gpt-4o", "gpt-4o-mini"]}
    r = client.post("/decide", json=body)
    assert 400 <= r.status_code < 500, r.text
    assert "context window" in r.text


def test_a_long_prompt_is_routed_to_a_model_it_fits(client: TestClient) -> None:
    body = {"tenant": "acme", "prompt": "x" * 900_000, "models": ["gpt-4o", "gpt-4.1"]}
    r = client.post("/decide", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == "gpt-4.1"
    assert any("gpt-4o excluded" in n and "context window" in n for n in out["notes"])
    assert out["parameters"]["max_tokens"] <= 1_047_576 - 225_000


def test_cascade_mode_answers_with_a_plan_whose_steps_take_feedback(client: TestClient) -> None:
    body = {"tenant": "acme", "prompt": "Prove that sqrt(2) is irrational.", "mode": "cascade"}
    r = client.post("/decide", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    plan = out["plan"]
    assert len(plan) >= 1 and all(step["model"] for step in plan)
    assert plan[-1]["decision_id"] == out["decision_id"] and plan[-1]["model"] == out["model"]
    for step in plan[:-1]:
        assert step["escalate_to"] and isinstance(step["escalate_on"], list)
    for step in plan:
        fb = client.post("/feedback", json={"decision_id": step["decision_id"], "quality": 0.3})
        assert fb.status_code == 200 and fb.json()["status"] == "stored", fb.text


def test_an_unknown_mode_is_refused(client: TestClient) -> None:
    r = client.post("/decide", json={"tenant": "acme", "mode": "tree"})
    assert r.status_code == 400, r.text
