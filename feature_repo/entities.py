"""Entities: what the features describe.

The model x task type entity of the design is the pair ``(model, task_type)``: the
``model_task_performance`` view is keyed by both entities, so the router sends ``model`` and
``task_type`` as two columns and Feast joins each view on the keys it needs.
"""

from feast import Entity, ValueType

from feature_store import names

model = Entity(
    name="model",
    join_keys=[names.MODEL_KEY],
    value_type=ValueType.STRING,
    description="An LLM the router can choose (a model id of the catalog).",
)

task_type = Entity(
    name="task_type",
    join_keys=[names.TASK_TYPE_KEY],
    value_type=ValueType.STRING,
    description="A request's task type: its first known task hint, 'other' or 'general'.",
)

tenant = Entity(
    name="tenant",
    join_keys=[names.TENANT_KEY],
    value_type=ValueType.STRING,
    description="A tenant (team, application) sending requests, with its budget and trade-off.",
)

deployment = Entity(
    name="deployment",
    join_keys=[names.DEPLOYMENT_KEY],
    value_type=ValueType.STRING,
    description="A serving fleet; its system features (load, queue depth, recent error rate).",
)
