"""The llm-router registry on a real SQLite MLflow: versions, aliases, gates, rollback, CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from llmopt.app.cli import app
from llmopt.catalog import load_catalog
from llmopt.event_log import EventLog
from llmopt.settings import Settings
from models.base import BasePolicy
from models.kinds import RECOMMENDED, make_policy
from pipelines.promotion import PromotionPolicy, promote
from pipelines.training import training_target
from registry import mlflow_registry as registry

from ..conftest import log_rewards

pytestmark = pytest.mark.integration


def _trained(settings: Settings, target: Callable[[Any], float] | None = None) -> BasePolicy:
    """A policy trained on the whole log (optionally on a distorted target)."""
    policy = make_policy(RECOMMENDED, seed=0)
    log = EventLog(settings.event_log_url)
    for batch in log.training_batches(0, 1000):
        policy.learn_many(
            (e.model, e.features, target(e) if target else training_target(policy, e))
            for e in batch
        )
    log.close()
    return policy


def test_versions_aliases_tags_and_load_by_alias(env: Settings, filled: Callable[..., int]) -> None:
    filled(150)
    policy = _trained(env)
    v1 = registry.register_policy(policy, settings=env, tags={"data_window": "feedback (0, 150]"})
    client = registry.configure(env)
    (info,) = registry.list_versions(client)
    assert info.version == v1 and info.aliases == ("dev", "staging", "prod")
    for tag in ("artifact_sha256", "code_version", "validation_status", "data_window"):
        assert info.tags[tag]
    # One name everywhere: the policy's kind, not its algorithm's short name (cluster_thompson).
    assert info.tags["policy_name"] == RECOMMENDED == "cost_aware_cluster_thompson"
    assert info.run_id and client.get_run(info.run_id).data.params["policy"] == RECOMMENDED
    version, loaded = registry.load_policy(client, "prod")
    assert version == v1 and loaded.to_dict() == policy.to_dict()

    import mlflow.pyfunc  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    model = mlflow.pyfunc.load_model("models:/llm-router@prod")
    assert model.metadata.saved_input_example_info is not None  # logged with an input example
    out = model.predict(pd.DataFrame([{"bias": 1.0, "code": 1.0}]))
    assert (
        list(out.columns) == ["model", "propensity"]
        and out["model"][0] in policy.to_dict()["state"]["arms"]
    )

    with pytest.raises(registry.RegistryError, match="no version aliased"):
        registry.load_policy(client, "staging", name="other")


def test_staging_gate_with_a_better_and_a_worse_challenger(
    env: Settings, filled: Callable[..., int]
) -> None:
    filled(400)
    # Champion: always the mid-range model; better: learned from the logs; worse: learned the
    # opposite of quality.
    champion = _trained(env, lambda e: 1.0 if e.model == "gpt-4.1-mini" else 0.0)
    better = _trained(env)
    worse = _trained(env, lambda e: 1.0 - e.quality)
    v_champ = registry.register_policy(champion, settings=env)  # dev, staging, prod
    client = registry.configure(env)
    v_better = registry.log_version_in_run(client, env, better)
    v_worse = registry.log_version_in_run(client, env, worse)
    log = EventLog(env.event_log_url)
    rules = PromotionPolicy(eval_window=400, margin=0.01)
    catalog = load_catalog(env.catalog_path)

    bad = promote(client, v_worse, "staging", log=log, catalog=catalog, rules=rules)
    assert not bad.moved and bad.champion == v_champ
    assert "worse than the champion" in bad.gate.reason
    assert registry.version_for_alias(client, "staging") == v_champ
    good = promote(client, v_better, "staging", log=log, catalog=catalog, rules=rules)
    assert good.moved, good.gate.reason
    assert good.gate.details["challenger"] > good.gate.details["champion"]
    assert registry.version_for_alias(client, "staging") == v_better
    tags = {v.version: v.tags for v in registry.list_versions(client)}
    assert tags[v_worse]["validation_status"] == "failed_ope"
    assert tags[v_better]["validation_status"] == "passed_ope"
    log.close()


def test_prod_gate_uses_the_online_ab_comparison_and_rollback_is_an_alias_move(
    env: Settings, filled: Callable[..., int]
) -> None:
    filled(60)
    policy = _trained(env)
    v1 = registry.register_policy(policy, settings=env)
    client = registry.configure(env)
    v2 = registry.log_version_in_run(client, env, policy)
    v3 = registry.log_version_in_run(client, env, policy)
    label = registry.version_label
    log_rewards(env, {label(v1): 0.5, label(v2): 0.6, label(v3): 0.45}, 400)
    log = EventLog(env.event_log_url)
    lose = promote(client, v3, "prod", log=log)
    assert not lose.moved and "not better" in lose.gate.reason
    win = promote(client, v2, "prod", log=log)
    assert win.moved and win.champion == v1 and win.gate.details["p_value"] < 0.05
    forced = promote(client, v3, "prod", force=True)
    assert forced.moved and registry.version_for_alias(client, "prod") == v3
    log.close()

    assert registry.prod_history(client) == [v1, v2]
    assert registry.rollback(client) == (v3, v2)
    assert registry.version_for_alias(client, "prod") == v2
    assert registry.rollback(client) == (v2, v1)
    with pytest.raises(registry.RegistryError, match="no previous prod"):
        registry.rollback(client)
    tags = {v.version: v.tags for v in registry.list_versions(client)}
    assert tags[v3]["validation_status"] == "rolled_back"


def test_registry_cli_contract(env: Settings, filled: Callable[..., int]) -> None:
    runner = CliRunner()
    empty = runner.invoke(app, ["registry", "list"])
    assert empty.exit_code == 0 and "no versions yet" in empty.output
    filled(30)
    v1 = registry.register_policy(_trained(env), settings=env)
    client = registry.configure(env)
    v2 = registry.log_version_in_run(client, env, _trained(env))

    res = runner.invoke(app, ["registry", "list"])
    assert res.exit_code == 0, res.output
    assert f"llm-router version {v1}  aliases: dev,staging,prod" in res.output
    assert f"llm-router version {v2}  aliases: -" in res.output
    listed = json.loads(runner.invoke(app, ["registry", "list", "--json"]).output)
    assert [v["version"] for v in listed] == [v2, v1]

    res = runner.invoke(app, ["registry", "promote", v2, "--alias", "prod", "--force"])
    assert res.exit_code == 0 and "promoted" in res.output
    res = runner.invoke(app, ["registry", "rollback"])
    assert res.exit_code == 0 and f"prod {v2} -> {v1}" in res.output

    for args, message in (
        (["registry", "promote", v2, "--alias", "live"], "unknown alias"),
        (["registry", "promote", "99", "--alias", "staging"], "no version '99'"),
        (["registry", "promote", "abc", "--alias", "prod"], "version number"),
        (["registry", "rollback"], "no previous prod"),
        (["flows", "run", "nope"], "unknown flow"),
        (["flows", "run", "drift-report", "--param", "bogus=1"], "unknown parameter"),
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output and "Traceback" not in res.output
