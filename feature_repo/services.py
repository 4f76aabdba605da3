"""Feature services: the versioned sets of features each consumer reads.

A new or changed consumer gets a new version (``router_v2``); an existing version's features
never change under a running router.
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

router_v1 = FeatureService(
    name=names.ROUTER_SERVICE,
    features=[fv[list(names.ROUTER_FEATURES[fv.name])] for fv in _STORED],
    description=(
        "What the router reads per decision, for every candidate model in one call: recent "
        "errors, latency and quality per model, quality per model x task type, the tenant's "
        "budget and trade-off, the fleet's load. Request features are computed in-process by "
        "the router (the function request_v2 runs)."
    ),
    tags={"version": "1", "consumer": "router"},
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
