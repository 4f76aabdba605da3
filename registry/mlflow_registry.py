"""The MLflow side of the pipelines: experiments, runs, the ``llm-router`` registered model.

One registered model, ``llm-router``. Each version is an ``mlflow.pyfunc`` model (a small
:class:`RouterModel` wrapping the policy's JSON state, :meth:`models.state.Stateful.to_dict`)
whose version tags carry its lineage: ``data_window``, ``last_feedback_id``, ``n_events``,
``feature_service_version``, ``code_version`` (git sha), ``artifact_sha256`` of the state file,
``policy_name`` (the policy's kind, :func:`models.kinds.kind_of`), ``source_flow`` and
``validation_status``; its description says what it learned and why it was registered, and its
model has an input example (one request's features). Promotion moves **aliases**
``dev`` -> ``staging`` -> ``prod`` (the stages API is deprecated); the registered model's tag
``prod_history`` keeps the previous prod versions, so :func:`rollback` is one alias move.

Serving loads ``models:/llm-router@prod`` either as a pyfunc or, faster,
with :func:`load_policy`, which reads the state file straight from the version's artifacts.
A version may also carry the served generation-parameter tuning it was trained with
(:mod:`models.tuning_snapshot`, fitted from the event log by nightly training, continued by
incremental training): the model artifact ``served_tuning.json``, tags ``tuning_sha256`` /
``tuning_n_feedback``, read by :func:`load_tuning`; serving gives it to the slot that serves the
version.

MLflow is configured explicitly (:func:`configure`), never at import time: tracking URI from
the settings (SQLite under ``LLMOPT_HOME`` by default), and every experiment created with an
artifact location under the settings' artifact root (MLflow's default, ``./mlruns``, would
write into whatever directory the process runs in).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.model import PythonModel

from llmopt import fast_json
from llmopt.settings import Settings
from models.base import BasePolicy
from models.kinds import kind_of
from models.state import Stateful
from models.tuning_snapshot import TuningSnapshot

# Re-exported (``X as X``) for callers that hold only this module; the package owns the names.
from registry import ALIASES as ALIASES  # noqa: PLC0414
from registry import CHAMPION_ALIAS as CHAMPION_ALIAS  # noqa: PLC0414
from registry import MODEL_NAME as MODEL_NAME  # noqa: PLC0414

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

STATE_FILE = "policy_state.json"
TUNING_FILE = "served_tuning.json"
PROD_HISTORY_TAG = "prod_history"
_REPO = Path(__file__).resolve().parents[1]


class RegistryError(ValueError):
    """A registry operation that cannot be done (unknown version, no previous prod, ...)."""


class ArtifactIntegrityError(RegistryError):
    """A version's policy state does not match its ``artifact_sha256`` tag (or has none)."""


# -- configuration ------------------------------------------------------------------------------
def configure(settings: Settings) -> MlflowClient:
    """Point MLflow at the settings' tracking store; return a client for it."""
    uri = settings.mlflow_uri
    if uri.startswith("sqlite:") and not settings.mlflow_tracking_uri:
        settings.ensure_home()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client: MlflowClient, settings: Settings, name: str) -> str:
    """The experiment ``name`` (one per flow), created under the settings' artifact root."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    try:
        return str(
            client.create_experiment(name, artifact_location=f"{settings.mlflow_artifacts}/{name}")
        )
    except MlflowException:  # created concurrently
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


def code_version() -> str:
    """Git sha of the working tree (``-dirty`` if modified), or ``unknown`` outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            cwd=_REPO,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            check=False,
            cwd=_REPO,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not sha:
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def version_label(version: str | int, name: str = MODEL_NAME) -> str:
    """The ``policy_version`` serving stamps on decisions made by a registry version.

    The online A/B gate groups the event log's rewards by this label.

    >>> version_label(3)
    'llm-router/3'
    """
    return f"{name}/{version}"


# -- the pyfunc model -----------------------------------------------------------------------------
class RouterModel(PythonModel):
    """A policy as an MLflow pyfunc: rows of request features in, chosen model out.

    ``predict`` pulls the policy for each row (columns are feature names; NaN: absent) among
    the ``arms`` parameter (default: every model the policy knows), without penalties: it is a
    view for MLflow consumers; the learning loop adds per-request cost penalties in serving.
    """

    def load_context(self, context: Any) -> None:
        state = json.loads(Path(context.artifacts["policy_state"]).read_text())
        self.policy: BasePolicy = Stateful.from_dict(state)
        self.arms: list[str] = known_arms(state)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        arms = list((params or {}).get("arms") or self.arms)
        rows = []
        for record in model_input.to_dict(orient="records"):
            feats = {str(k): float(v) for k, v in record.items() if not math.isnan(v)}
            d = self.policy.pull(arms, feats)
            rows.append({"model": d.model, "propensity": d.propensity})
        return pd.DataFrame(rows, columns=["model", "propensity"])


def known_arms(state: Mapping[str, Any]) -> list[str]:
    """Models a policy state knows (its arm table, else the arms it has counts for)."""
    inner = state.get("state", {})
    arms = inner.get("arms") or list(inner.get("updates", {}))
    return [str(a) for a in arms]


def state_bytes(state: Mapping[str, Any]) -> bytes:
    """The canonical JSON of a policy's state dict (what is logged and hashed)."""
    return json.dumps(state, separators=(",", ":"), sort_keys=True).encode()


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Silence log_model's advice (cloudpickle, input example, pip version): known and chosen."""
    names = (
        "mlflow.pyfunc",
        "mlflow.utils.environment",
        "mlflow.models.model",
        "mlflow.utils.uv_utils",
    )
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    # MLflow would also copy the project's uv.lock (~0.5 MB) into every version; the explicit
    # pip requirements and the code_version tag already pin what a version needs.
    uv_files = os.environ.get("MLFLOW_LOG_UV_FILES")
    os.environ.setdefault("MLFLOW_LOG_UV_FILES", "false")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if uv_files is None:
            os.environ.pop("MLFLOW_LOG_UV_FILES", None)


# -- versions -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionInfo:
    """One model version: number, aliases, tags, run and creation time (ms since epoch)."""

    version: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    run_id: str | None
    created_ms: int


def log_policy_version(
    client: MlflowClient,
    policy: BasePolicy,
    *,
    tags: Mapping[str, str] | None = None,
    aliases: Iterable[str] = ("dev",),
    example_features: Mapping[str, float] | None = None,
    description: str | None = None,
    name: str = MODEL_NAME,
    tuning: TuningSnapshot | None = None,
) -> str:
    """Log ``policy`` in the active run as a pyfunc model and register it; return the version.

    The state file is also a run artifact (``policy/policy_state.json``); its SHA-256 and the
    given ``tags`` go on the version (``validation_status`` defaults to ``pending``,
    ``policy_name`` to :func:`models.kinds.kind_of`). ``example_features`` (one request's features;
    default: the features the policy knows, at 0) are the model's input example and signature;
    ``description`` becomes the version's description. ``tuning``: the served generation
    parameters' snapshot (:mod:`models.tuning_snapshot`), versioned with the policy as a model
    artifact (``served_tuning.json``, also the run artifact ``tuning/served_tuning.json``) with
    the tags ``tuning_sha256``, ``tuning_format``, ``tuning_n_feedback`` (rewards it was
    fitted on) and ``tuning_pairs``; :func:`load_tuning` reads it back.
    """
    from mlflow.models import infer_signature  # noqa: PLC0415

    state = policy.to_dict()
    payload = state_bytes(state)
    digest = hashlib.sha256(payload).hexdigest()
    arms = known_arms(state)
    with tempfile.TemporaryDirectory(prefix="llmopt-mlflow-") as tmp:
        path = Path(tmp) / STATE_FILE
        path.write_bytes(payload)
        mlflow.log_artifact(str(path), artifact_path="policy")
        artifacts = {"policy_state": str(path)}
        tuning_tags: dict[str, str] = {}
        if tuning is not None:
            tuning_payload = tuning.to_json().encode()
            tuning_path = Path(tmp) / TUNING_FILE
            tuning_path.write_bytes(tuning_payload)
            mlflow.log_artifact(str(tuning_path), artifact_path="tuning")
            artifacts["served_tuning"] = str(tuning_path)
            tuning_tags = {
                "tuning_sha256": hashlib.sha256(tuning_payload).hexdigest(),
                "tuning_format": str(tuning.to_dict()["format"]),
                "tuning_n_feedback": str(tuning.n_feedback),
                "tuning_pairs": str(len(tuning.pairs)),
            }
        known = state["state"].get("features") or ["bias"]
        features = dict(example_features or dict.fromkeys(known, 0.0))
        example = pd.DataFrame([{k: float(v) for k, v in sorted(features.items())}])
        out = pd.DataFrame([{"model": arms[0] if arms else "", "propensity": 1.0}])
        signature = infer_signature(example, out, params={"arms": arms or [""]})
        with _quiet_mlflow():
            info = mlflow.pyfunc.log_model(
                name="policy",
                python_model=RouterModel(),
                artifacts=artifacts,
                registered_model_name=name,
                pip_requirements=["mlflow", "numpy", "pandas", "river"],
                signature=signature,
                input_example=example,
            )
    version = str(info.registered_model_version)
    all_tags = {
        "validation_status": "pending",
        "artifact_sha256": digest,
        "code_version": code_version(),
        "policy_name": kind_of(policy),
        **tuning_tags,
        **dict(tags or {}),
    }
    for key, value in all_tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    if description:
        client.update_model_version(name, version, description=description)
    for alias in aliases:
        set_alias(client, version, alias, name=name)
    return version


def list_versions(client: MlflowClient, name: str = MODEL_NAME) -> list[VersionInfo]:
    """Every version of ``name``, newest first, with its aliases and tags."""
    try:
        model = client.get_registered_model(name)
    except MlflowException:  # not registered yet
        return []
    found = client.search_model_versions(f"name='{name}'")
    by_version: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        by_version.setdefault(str(version), []).append(str(alias))
    out = [
        VersionInfo(
            version=str(v.version),
            aliases=tuple(a for a in ALIASES if a in by_version.get(str(v.version), [])),
            tags=dict(v.tags or {}),
            run_id=v.run_id,
            created_ms=int(v.creation_timestamp or 0),
        )
        for v in found
    ]
    return sorted(out, key=lambda v: int(v.version), reverse=True)


_NOT_FOUND = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})
"""Error codes MLflow answers for an unknown model (the first) or alias (the second)."""


def version_for_alias(client: MlflowClient, alias: str, name: str = MODEL_NAME) -> str | None:
    """The version ``alias`` points at, or None when the model or the alias does not exist.

    Any other error (the tracking server down, a 5xx) is raised: an unreachable registry is
    not "no version" (serving would drop its challenger, training would restart from scratch).
    """
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND:
            return None
        raise


def client_model_version(client: MlflowClient, version: str, name: str) -> ModelVersion:
    """The model version ``version`` of ``name``, or a :class:`RegistryError`."""
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(f"model {name!r} has no version {version!r}") from None


def set_alias(client: MlflowClient, version: str, alias: str, *, name: str = MODEL_NAME) -> None:
    """Point ``alias`` at ``version`` (moving ``prod`` records the previous one for rollback)."""
    if alias not in ALIASES:
        raise RegistryError(f"unknown alias {alias!r}; choose one of: {', '.join(ALIASES)}")
    client_model_version(client, version, name)
    if alias == CHAMPION_ALIAS:
        previous = version_for_alias(client, CHAMPION_ALIAS, name)
        if previous is not None and previous != str(version):
            history = prod_history(client, name) + [previous]
            client.set_registered_model_tag(name, PROD_HISTORY_TAG, json.dumps(history[-50:]))
    client.set_registered_model_alias(name, alias, str(version))


def prod_history(client: MlflowClient, name: str = MODEL_NAME) -> list[str]:
    """Previous prod versions, oldest first."""
    tags = client.get_registered_model(name).tags or {}
    raw = tags.get(PROD_HISTORY_TAG)
    return [str(v) for v in json.loads(raw)] if raw else []


def rollback(client: MlflowClient, name: str = MODEL_NAME) -> tuple[str, str]:
    """Move ``prod`` back to the previous prod version; return ``(from, to)``.

    The version rolled back from is tagged ``validation_status=rolled_back``.
    """
    current = version_for_alias(client, CHAMPION_ALIAS, name)
    if current is None:
        raise RegistryError(f"model {name!r} has no prod version to roll back")
    history = prod_history(client, name)
    while history and history[-1] == current:
        history.pop()
    if not history:
        raise RegistryError(f"no previous prod version of {name!r} to roll back to")
    target = history.pop()
    client.set_registered_model_alias(name, CHAMPION_ALIAS, target)
    client.set_registered_model_tag(name, PROD_HISTORY_TAG, json.dumps(history))
    client.set_model_version_tag(name, current, "validation_status", "rolled_back")
    return current, target


def withdraw(
    client: MlflowClient,
    version: str,
    reason: str,
    *,
    role: str,
    status: str = "rolled_back",
    name: str = MODEL_NAME,
) -> str:
    """Take a version out of service after a live rollback; what was done.

    ``role="challenger"``: the ``staging`` alias is removed if it still points at ``version``.
    ``role="champion"``: ``prod`` moves back (:func:`rollback`) if it still points at
    ``version``, and ``staging`` is removed from it too (else it would be tested again).
    Either way the version is tagged ``validation_status=<status>`` (``rolled_back``, or
    ``rejected_ab`` when the A/B test decided against it) with the reason.
    Idempotent: several serving replicas may report the same rollback.
    """
    done = []
    if role == "champion" and version_for_alias(client, CHAMPION_ALIAS, name) == version:
        _, target = rollback(client, name)
        done.append(f"prod moved back to version {target}")
    if version_for_alias(client, "staging", name) == version:
        client.delete_registered_model_alias(name, "staging")
        done.append("staging alias removed")
    client.set_model_version_tag(name, version, "validation_status", status)
    client.set_model_version_tag(name, version, "rollback_reason", reason[:500])
    what = status.replace("_", " ")
    return f"version {version} {what}: " + ("; ".join(done) or "aliases had moved already")


def set_tags(
    client: MlflowClient, version: str, tags: Mapping[str, Any], *, name: str = MODEL_NAME
) -> None:
    """Set version tags (values as strings)."""
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


# -- loading --------------------------------------------------------------------------------------
def _local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri:
        return Path(uri)
    return None


def load_state(
    client: MlflowClient, ref: str, name: str = MODEL_NAME
) -> tuple[str, dict[str, Any]]:
    """``(version, state dict)`` of a version given by number or alias (``3``, ``prod``).

    Reads the state file from the version's model artifacts (a plain file read when artifacts
    are local); checks it against the version's ``artifact_sha256`` tag, on every load: a
    mismatch or a missing tag raises :class:`ArtifactIntegrityError` (nothing is deserialised).
    """
    mv = _resolve(client, ref, name)
    payload = _model_artifact(client, mv, STATE_FILE)
    expected = (mv.tags or {}).get("artifact_sha256")
    if not expected:
        raise ArtifactIntegrityError(
            f"version {mv.version}: no artifact_sha256 tag; refused (register with "
            "registry.mlflow_registry.register_policy)"
        )
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise ArtifactIntegrityError(
            f"version {mv.version}: policy state SHA-256 {actual[:12]}... does not match its "
            f"artifact_sha256 tag {expected[:12]}...; refused"
        )
    return str(mv.version), fast_json.loads(payload)


def _model_artifact(client: MlflowClient, mv: ModelVersion, filename: str) -> bytes:
    """The bytes of ``filename`` among a version's model artifacts (a plain read when local)."""
    source = str(mv.source)
    if source.startswith("models:/"):
        location = client.get_logged_model(source.rsplit("/", 1)[-1]).artifact_location
    else:
        location = source
    uri = f"{location.rstrip('/')}/artifacts/{filename}"
    local = _local_path(uri)
    if local is None or not local.exists():
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    return local.read_bytes()


def load_tuning(client: MlflowClient, ref: str, name: str = MODEL_NAME) -> TuningSnapshot | None:
    """The served-tuning snapshot of a version (number or alias), or None when it has none.

    Checked against the version's ``tuning_sha256`` tag like the policy state
    (:class:`ArtifactIntegrityError` on a mismatch).
    """
    mv = _resolve(client, ref, name)
    expected = (mv.tags or {}).get("tuning_sha256")
    if not expected:
        return None
    payload = _model_artifact(client, mv, TUNING_FILE)
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise ArtifactIntegrityError(
            f"version {mv.version}: served tuning SHA-256 {actual[:12]}... does not match its "
            f"tuning_sha256 tag {expected[:12]}...; refused"
        )
    return TuningSnapshot.from_json(payload)


def load_policy(
    client: MlflowClient, ref: str = CHAMPION_ALIAS, name: str = MODEL_NAME
) -> tuple[str, BasePolicy]:
    """``(version, policy)`` for a version number or alias, e.g. ``load_policy(client, "prod")``."""
    version, state = load_state(client, ref, name)
    policy: BasePolicy = Stateful.from_dict(state)
    return version, policy


def _resolve(client: MlflowClient, ref: str, name: str) -> ModelVersion:
    if str(ref).isdigit():
        return client_model_version(client, str(ref), name)
    try:
        return client.get_model_version_by_alias(name, ref)
    except MlflowException:
        raise RegistryError(f"model {name!r} has no version aliased {ref!r}") from None


def log_version_in_run(
    client: MlflowClient,
    settings: Settings,
    policy: BasePolicy,
    *,
    experiment: str = "manual",
    aliases: Iterable[str] = (),
    tags: Mapping[str, str] | None = None,
) -> str:
    """Log ``policy`` as a new version in a run of its own (no alias unless given)."""
    exp = experiment_id(client, settings, experiment)
    with mlflow.start_run(experiment_id=exp, run_name=f"{experiment}-version"):
        return log_policy_version(
            client, policy, tags={"source_flow": experiment, **dict(tags or {})}, aliases=aliases
        )


def register_policy(
    policy: BasePolicy,
    *,
    settings: Settings,
    aliases: Sequence[str] = ALIASES,
    tags: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    experiment: str = "bootstrap",
    run_name: str = "register-policy",
    tuning: TuningSnapshot | None = None,
) -> str:
    """Log ``policy`` in its own run and register it under ``aliases``; return the version.

    The one call the demo needs to leave a version aliased ``prod`` in the embedded registry::

        from registry.mlflow_registry import register_policy
        register_policy(policy, settings=settings, tags={"data_window": "demo"})
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = configure(settings)
    if CHAMPION_ALIAS in aliases:  # straight to prod, past the gates: say so on the version
        tags = {"validation_status": "bootstrap", **dict(tags or {})}
    exp = experiment_id(client, settings, experiment)
    with mlflow.start_run(experiment_id=exp, run_name=run_name):
        mlflow.log_params({"policy": kind_of(policy), **(params or {})})
        if metrics:
            mlflow.log_metrics(dict(metrics))
        version = log_policy_version(
            client,
            policy,
            tags={"source_flow": experiment, **dict(tags or {})},
            aliases=[a for a in aliases if a != CHAMPION_ALIAS],
            tuning=tuning,
        )
    if CHAMPION_ALIAS in aliases:
        set_alias(client, version, CHAMPION_ALIAS)
    return version
