"""infra/prometheus and infra/grafana: valid, and written over metrics the service exposes.

Every PromQL expression (alerting rules, dashboard targets) is parsed with ``promql-parser``
(the Prometheus parser, with function and argument-type checks) and every metric name in it
must be one that :class:`serving.metrics.ServingMetrics` exposes. With ``promtool`` on PATH
(Debian package ``prometheus``) the rules and config are checked and the rules' unit tests
(``infra/prometheus/alerts_test.yml``) run too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serving.metrics import ServingMetrics

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS = ROOT / "infra" / "prometheus"
DASHBOARD = ROOT / "infra" / "grafana" / "llmopt-dashboard.json"
PROMETHEUS_OWN = {"up"}
"""Series Prometheus itself writes for each scrape target."""
EXPECTED_ALERTS = {
    # the design's critical alerts
    "LlmoptInferenceLatencyP99Critical": "critical",
    "LlmoptErrorRateHigh": "critical",
    "LlmoptModelUnavailable": "critical",
    "LlmoptFeatureStoreDown": "critical",
    "LlmoptDriftWithoutRecovery": "critical",
    # and its warnings
    "LlmoptInferenceLatencyP99High": "warning",
    "LlmoptFeatureCacheHitRateLow": "warning",
    "LlmoptTrainingLagHigh": "warning",
    "LlmoptExplorationRateLow": "warning",
}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def exposed_names() -> set[str]:
    """Every series name ServingMetrics can expose (counters with ``_total``, histograms'...)."""
    m = ServingMetrics()
    names: set[str] = set()
    for family in m.registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}{s}" for s in ("_bucket", "_count", "_sum", "_created")}
        else:
            names.add(family.name)
    # and what a rendered exposition holds, which must be among them
    rendered = {
        s.name for f in text_string_to_metric_families(m.render().decode()) for s in f.samples
    }
    assert rendered <= names
    return names


EXPOSED = exposed_names()


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (also ``{__name__="..."}``); parsing must succeed."""
    found: set[str] = set()

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                found.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    found.add(matcher.value)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def load_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    assert set(doc) == {"groups"} and doc["groups"]
    rules: list[dict[str, Any]] = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"] and group["rules"]
        rules.extend(group["rules"])
    return rules


RULES = load_rules()


def test_metric_names_of_an_expression():
    expr = 'sum(rate(a_total[5m])) / on() b{x="1"} or {__name__="c"} + absent(d offset 5m)'
    assert metric_names(expr) == {"a_total", "b", "c", "d"}
    with pytest.raises(ValueError, match="matrix"):
        metric_names("rate(a_total)")


def test_the_design_alerts_are_there_with_their_severity():
    assert {r["alert"]: r["labels"]["severity"] for r in RULES} == EXPECTED_ALERTS


@pytest.mark.parametrize("rule", RULES, ids=[r["alert"] for r in RULES])
def test_alert_rule_structure(rule: dict[str, Any]):
    assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}
    assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
    assert promql_parser.parse_duration(rule["for"]).total_seconds() >= 60
    assert rule["labels"]["severity"] in {"critical", "warning"}
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]


@pytest.mark.parametrize("rule", RULES, ids=[r["alert"] for r in RULES])
def test_alert_expressions_parse_and_use_exposed_metrics(rule: dict[str, Any]):
    names = metric_names(rule["expr"])
    assert names, "an alert over no metric"
    assert names <= EXPOSED | PROMETHEUS_OWN, names - EXPOSED - PROMETHEUS_OWN


def test_thresholds_are_the_design_s():
    by_name = {r["alert"]: " ".join(r["expr"].split()) for r in RULES}
    p99 = "histogram_quantile(0.99, sum by (job, le) (rate(llmopt_inference_latency_seconds_bucket"
    assert by_name["LlmoptInferenceLatencyP99Critical"].startswith(p99)
    assert by_name["LlmoptInferenceLatencyP99Critical"].endswith("> 0.015")
    assert by_name["LlmoptInferenceLatencyP99High"].endswith("> 0.010")
    assert by_name["LlmoptErrorRateHigh"].endswith("> 0.05")
    assert by_name["LlmoptFeatureCacheHitRateLow"].endswith("< 0.90")
    assert by_name["LlmoptTrainingLagHigh"].endswith("> 300")
    assert by_name["LlmoptExplorationRateLow"].startswith("llmopt_exploration_rate < 0.05")


def test_prometheus_config_scrapes_the_service_and_loads_the_rules():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).is_file()
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["127.0.0.1:3000"]}]
    assert job["job_name"] in (PROMETHEUS / "alerts.yml").read_text()  # the up{job=...} check


# -- Grafana --------------------------------------------------------------------------------------
def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows hold theirs
    return out


def test_dashboard_shape_and_datasource_variable():
    d = load_dashboard()
    assert d["schemaVersion"] >= 39 and d["uid"] and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids))
    for p in panels(d):
        grid = p["gridPos"]
        assert {"x", "y", "w", "h"} <= set(grid) and grid["x"] + grid["w"] <= 24
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["targets"], p["title"]


def test_dashboard_covers_the_design_metrics():
    exprs = " ".join(t["expr"] for p in panels(load_dashboard()) for t in p.get("targets", []))
    for name in (
        "llmopt_inference_latency_seconds_bucket",
        "llmopt_predictions_total",
        "llmopt_reward_total",
        "llmopt_estimated_regret_total",
        "llmopt_exploration_rate",
        "llmopt_drift_detections_total",
        "llmopt_feature_cache_hits_total",
        "llmopt_hot_swap_duration_seconds_bucket",
        "llmopt_training_examples_total",
        "llmopt_training_lag_seconds",
        "llmopt_model_available",
    ):
        assert name in exprs, name


def dashboard_targets() -> list[tuple[str, str]]:
    return [
        (f"{p['title']} {t['refId']}", t["expr"])
        for p in panels(load_dashboard())
        for t in p.get("targets", [])
    ]


@pytest.mark.parametrize(("target", "expr"), dashboard_targets())
def test_dashboard_expressions_parse_and_use_exposed_metrics(target: str, expr: str):
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"{target}: unknown dashboard variable"
    names = metric_names(expr)
    assert names and names <= EXPOSED, names - EXPOSED


# -- promtool -------------------------------------------------------------------------------------
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not on PATH (Debian: apt-get install prometheus)"
)


def promtool(*args: str) -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_checks_rules_and_config():
    promtool("check", "rules", "alerts.yml")
    promtool("check", "config", "prometheus.yml")


@needs_promtool
def test_promtool_rule_unit_tests_pass():
    promtool("test", "rules", "alerts_test.yml")
