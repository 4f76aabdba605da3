"""Feature services: the versioned sets of features each consumer reads.

A new or changed consumer gets a new version; an existing version's features never change under
a running router. ``router_v2`` replaced ``router_v1`` (issue 16: only the features the router
uses, from model-keyed views); ``router_v1`` stays defined, deprecated, for the routers of the
previous release during a rolling deployment.
"""

from feast import FeatureService
from views import (
    model_performance_fv,
    model_task_performance_fv,
    request_features,
    system_fv,
    tenant_fv,
)

from feature_store import names
from llmopt.embeddings import embedding_version

_STORED = (model_performance_fv, model_task_performance_fv, tenant_fv, system_fv)

router_v2 = FeatureService(
    name=names.ROUTER_SERVICE,
    features=[
        fv[list(names.ROUTER_FEATURES[fv.name])]
        for fv in _STORED
        if fv.name in names.ROUTER_FEATURES
    ],
    description=(
        "What the router reads per decision, for every candidate model in one call, and nothing "
        "else: error rate and p95 latency over 5 min and requests over 1 h per model (exclusions, "
        "penalties), quality and requests over 24 h per model x task type (a cold arm's prior). "
        "Model-keyed views only: an entity row is (model, task_type). Request features are "
        "computed in-process by the router (the function request_v2 runs)."
    ),
    tags={"version": "2", "consumer": "router"},
)

# Superseded by router_v2 and read by nothing in this repository: kept only so that routers of
# the previous release, which resolve it by name in the shared registry, keep working through a
# rolling deployment (`feast apply` deletes services that are no longer defined). Delete it, and
# names.ROUTER_V1_*, once no such router runs.
router_v1 = FeatureService(
    name=names.ROUTER_V1_SERVICE,
    features=[fv[list(names.ROUTER_V1_FEATURES[fv.name])] for fv in _STORED],
    description="Deprecated: superseded by router_v2 (which holds only what the router uses).",
    tags={"version": "1", "consumer": "router", "deprecated": "true", "superseded_by": "router_v2"},
)

training_v1 = FeatureService(
    name=names.TRAINING_SERVICE,
    features=list(_STORED),
    description=(
        "Every stored feature, for point-in-time training sets and monitoring "
        "(request features come from the event log, where each decision keeps its own)."
    ),
    tags={"version": "1", "consumer": "training"},
)

request_v2 = FeatureService(
    name=names.REQUEST_SERVICE,
    features=[request_features],
    description=(
        "Request features computed by Feast on demand (for feast serve clients), the prompt "
        "embedding (emb_0 .. emb_31) included; its weights and projection are in the "
        "'embedding' tag."
    ),
    tags={"version": "2", "consumer": "feast-serve", "embedding": embedding_version()},
)
