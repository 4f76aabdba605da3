"""The online reader against a stand-in for Feast: the entity rows it sends and which values it
reports as defaults (per model and per feature)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from feature_store import names
from feature_store.reader import OnlineFeatureReader, RouterFeatures


def service(features: Mapping[str, Sequence[str]]) -> Any:
    return SimpleNamespace(
        feature_view_projections=[
            SimpleNamespace(
                name=view,
                name_to_use=lambda view=view: view,
                features=[SimpleNamespace(name=f) for f in fields],
            )
            for view, fields in features.items()
        ]
    )


class FakeStore:
    """Answers ``get_online_features`` from ``rows``: (view, key values) -> {field: value}."""

    def __init__(self, features: Mapping[str, Sequence[str]]) -> None:
        self.features = features
        self.rows: dict[tuple[str, tuple[str, ...]], dict[str, float]] = {}
        self.sent: list[list[dict[str, str]]] = []

    def get_feature_service(self, name: str) -> Any:
        return service(self.features)

    def get_online_features(
        self, *, features: Any, entity_rows: list[dict[str, str]], **_: Any
    ) -> Any:
        self.sent.append(entity_rows)
        out: dict[str, list[Any]] = {}
        for view, fields in self.features.items():
            for f in fields:
                out[names.feature_ref(view, f)] = [
                    self.rows.get((view, tuple(r[k] for k in names.VIEW_KEYS[view])), {}).get(f)
                    for r in entity_rows
                ]
        return SimpleNamespace(to_dict=lambda: out)


ERR = names.feature_ref(names.MODEL_PERF_VIEW, "error_rate_5m")
TASK_Q = names.feature_ref(names.MODEL_TASK_PERF_VIEW, "quality_mean_24h")


def test_router_rows_carry_only_model_and_task_type() -> None:
    store = FakeStore(names.ROUTER_FEATURES)
    reader = OnlineFeatureReader(store, budget_ms=1000)  # type: ignore[arg-type]
    assert reader.entity_rows(["a", "b"], tenant="acme", task_type="code") == [
        {names.MODEL_KEY: "a", names.TASK_TYPE_KEY: "code"},
        {names.MODEL_KEY: "b", names.TASK_TYPE_KEY: "code"},
    ]
    reader.read(["a"], tenant="acme", task_type="code")
    assert store.sent == [[{names.MODEL_KEY: "a", names.TASK_TYPE_KEY: "code"}]]
    reader.close()


def test_a_service_with_tenant_and_system_views_gets_their_keys() -> None:
    store = FakeStore(names.ROUTER_V1_FEATURES)
    reader = OnlineFeatureReader(store, budget_ms=1000, deployment="eu")  # type: ignore[arg-type]
    assert reader.entity_rows(["a"], tenant="acme", task_type="code") == [
        {names.MODEL_KEY: "a", names.TASK_TYPE_KEY: "code", names.TENANT_KEY: "acme",
         names.DEPLOYMENT_KEY: "eu"}
    ]  # fmt: skip
    reader.close()


def test_defaults_are_reported_per_feature() -> None:
    store = FakeStore(names.ROUTER_FEATURES)
    perf = {f: 1.0 for f in names.ROUTER_FEATURES[names.MODEL_PERF_VIEW]}
    task = {f: 0.5 for f in names.ROUTER_FEATURES[names.MODEL_TASK_PERF_VIEW]}
    store.rows[(names.MODEL_PERF_VIEW, ("seen",))] = perf
    store.rows[(names.MODEL_TASK_PERF_VIEW, ("seen", "code"))] = task
    store.rows[(names.MODEL_PERF_VIEW, ("other-task",))] = perf
    reader = OnlineFeatureReader(store, budget_ms=1000)  # type: ignore[arg-type]
    got = reader.read(["seen", "other-task", "new"], tenant="anyone", task_type="code")
    assert not got.degraded and got.defaulted == {"other-task", "new"}
    task_refs = {names.feature_ref(names.MODEL_TASK_PERF_VIEW, f) for f in task}
    assert got.defaulted_features["other-task"] == task_refs
    assert len(got.defaulted_features["new"]) == 5
    assert got.known("seen", [ERR, TASK_Q])
    assert got.known("other-task", [ERR]) and not got.known("other-task", [TASK_Q])
    assert not got.known("new", [ERR])
    assert got.values["other-task"][ERR] == 1.0 and got.values["other-task"][TASK_Q] == 0.0
    reader.close()


def test_a_failed_read_defaults_every_feature_of_models_never_read() -> None:
    store = FakeStore(names.ROUTER_FEATURES)
    store.rows[(names.MODEL_PERF_VIEW, ("seen",))] = {
        "error_rate_5m": 0.25, "latency_p95_ms_5m": 300.0, "request_count_1h": 9.0
    }  # fmt: skip
    store.rows[(names.MODEL_TASK_PERF_VIEW, ("seen", "code"))] = {
        "quality_mean_24h": 0.5, "request_count_24h": 9.0
    }  # fmt: skip
    reader = OnlineFeatureReader(store, budget_ms=1000)  # type: ignore[arg-type]
    assert not reader.read(["seen"], tenant="t", task_type="code").defaulted

    def broken(**_: Any) -> Any:
        raise ConnectionError("down")

    store.get_online_features = broken  # type: ignore[method-assign]
    got = reader.read(["seen", "new"], tenant="t", task_type="code")
    assert got.degraded and got.stale == {"seen"} and got.defaulted == {"new"}
    assert got.values["seen"][ERR] == 0.25 and got.known("seen", [ERR])
    assert not got.known("new", [ERR]) and got.defaulted_features["new"] == set(got.values["new"])
    reader.close()


def test_router_features_without_per_feature_detail_distrust_the_whole_model() -> None:
    f = RouterFeatures(values={"m": {ERR: 0.9}}, defaulted=frozenset({"m"}))
    assert not f.known("m", [ERR]) and f.known("other", [ERR])
