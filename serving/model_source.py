"""Where serving gets its policies: the MLflow registry by alias, or a local state file.

One small interface, :class:`ModelSource`: ``version(alias)`` is the cheap check the poller
runs (which version does ``prod`` point at now?), ``load(alias)`` returns the policy and its
label, and the generation-parameter tuning versioned with it (registry versions trained by the
nightly flow; :mod:`models.tuning_snapshot`). :class:`RegistrySource` reads
``models:/llm-router@<alias>`` through :mod:`registry.mlflow_registry` (imported lazily:
MLflow costs seconds at import);
:class:`LocalFileSource` reads the embedded profile's state file (the CLI's ``policy.pkl``, or
a ``to_dict`` JSON file); :class:`ChainSource` tries several in order. A source that fails
raises :class:`SourceError`; the service then keeps the models it has.

Examples
--------
>>> import tempfile, pathlib
>>> from models.kinds import make_policy
>>> path = pathlib.Path(tempfile.mkdtemp()) / "policy.json"
>>> save_policy_file(make_policy("ucb1", seed=0), path)
>>> src = LocalFileSource(path)
>>> loaded = src.load("prod")
>>> loaded.policy.name, loaded.label.startswith("local/"), src.load("staging") is None
('ucb1', True, True)
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from llmopt.settings import Settings
from registry import MODEL_NAME, registry_exists

if TYPE_CHECKING:
    from models.tuning_snapshot import TuningSnapshot
    from serving.autopilot import Rollback


class SourceError(RuntimeError):
    """The source could not be read (registry down, corrupt file); current models stay."""


@dataclass(frozen=True)
class LoadedPolicy:
    """A policy ready to serve, with its version label and where it came from, and the
    generation-parameter tuning versioned with it (None: the version has none; serving then
    tunes from scratch, :mod:`serving.parameters`)."""

    label: str
    policy: Any
    source: str
    tuning: TuningSnapshot | None = None


class ModelSource(Protocol):
    """Policies by alias (``prod`` = champion, ``staging`` = challenger)."""

    def version(self, alias: str) -> str | None:
        """The label ``alias`` points at now (None: nothing); cheap, polled."""
        ...

    def load(self, alias: str) -> LoadedPolicy | None:
        """The policy ``alias`` points at, or None when there is none."""
        ...


def save_policy_file(policy: Any, path: Path) -> None:
    """Write a policy's JSON state (``to_dict``) atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(policy.to_dict()))
    tmp.replace(path)


class LocalFileSource:
    """The champion from a local state file (pickle or JSON); it never has a challenger.

    The label is ``local/<first 12 hex of the file's SHA-256>``, so a rewritten file is a new
    version to the poller.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SourceError(f"cannot read {self.path}: {exc}") from exc

    def version(self, alias: str) -> str | None:
        if alias != "prod":
            return None
        data = self._read()
        return None if data is None else f"local/{hashlib.sha256(data).hexdigest()[:12]}"

    def load(self, alias: str) -> LoadedPolicy | None:
        if alias != "prod":
            return None
        data = self._read()
        if data is None:
            return None
        try:
            if data[:1] == b"{":
                from models.state import Stateful  # noqa: PLC0415

                policy: Any = Stateful.from_dict(json.loads(data))
            else:
                policy = pickle.loads(data)  # noqa: S301 - our own state file
        except Exception as exc:
            raise SourceError(f"cannot load the policy in {self.path}: {exc}") from exc
        label = f"local/{hashlib.sha256(data).hexdigest()[:12]}"
        return LoadedPolicy(label, policy, str(self.path))


FAIL_FAST_MLFLOW_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
"""MLflow client settings of a serving process that reads a tracking *server*: one quick retry
(a dropped keep-alive connection), then :class:`SourceError`. MLflow's defaults (7 retries with
exponential backoff, ~4 minutes) would hold the alias poller inside one call for minutes while
the server is down (no "current model kept" until then) and delay the first alias check after
it is back by up to a backoff step; the poller itself retries every ``serving_poll_s``."""


class RegistrySource:
    """Policies from the MLflow registry, ``models:/llm-router@<alias>`` (see pipelines).

    With an ``http(s)://`` tracking URI it sets :data:`FAIL_FAST_MLFLOW_HTTP` in the process
    environment (variables already set win): MLflow reads them on every request, and in a
    serving process this source is MLflow's only user.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Any = None
        if (settings.mlflow_tracking_uri or "").startswith(("http://", "https://")):
            for key, value in FAIL_FAST_MLFLOW_HTTP.items():
                os.environ.setdefault(key, value)

    def _registry(self) -> tuple[Any, Any]:
        try:
            from registry import mlflow_registry as registry  # noqa: PLC0415

            if self._client is None:
                self._client = registry.configure(self.settings)
        except Exception as exc:
            raise SourceError(f"model registry unavailable: {exc}") from exc
        return registry, self._client

    def _absent(self) -> bool:
        """The embedded registry was never created: nothing to load (and nothing to create)."""
        return not registry_exists(self.settings)

    def version(self, alias: str) -> str | None:
        if self._absent():
            return None
        registry, client = self._registry()
        try:
            v = registry.version_for_alias(client, alias)
        except Exception as exc:
            raise SourceError(f"model registry unreachable: {exc}") from exc
        return None if v is None else registry.version_label(v)

    def record_rollback(self, rollback: Rollback) -> str:
        """Take a rolled-back version out of the registry's aliases (see ``withdraw``)."""
        prefix = f"{MODEL_NAME}/"
        if self._absent() or not rollback.label.startswith(prefix):
            return f"{rollback.label}: not a registry version (this process only)"
        registry, client = self._registry()
        reason = f"{rollback.verdict.kind}: {rollback.verdict.reason}"
        return str(
            registry.withdraw(client, rollback.label[len(prefix) :], reason, role=rollback.role)
        )

    def load(self, alias: str) -> LoadedPolicy | None:
        if self._absent():
            return None
        registry, client = self._registry()
        try:
            version = registry.version_for_alias(client, alias)
            if version is None:
                return None
            # By number, both: the alias may move between the two reads.
            version, policy = registry.load_policy(client, version)
            tuning = registry.load_tuning(client, version)
        except Exception as exc:
            raise SourceError(f"cannot load {registry.MODEL_NAME}@{alias}: {exc}") from exc
        return LoadedPolicy(
            registry.version_label(version),
            policy,
            f"models:/{registry.MODEL_NAME}@{alias}",
            tuning,
        )


class ChainSource:
    """The first source that has the alias wins.

    A source that *fails* stops the chain (:class:`SourceError`): falling through to the next
    one would swap the served model whenever the registry has a hiccup. Start-up code that
    prefers any model to none catches the error and asks a fallback source itself.
    """

    def __init__(self, *sources: ModelSource) -> None:
        self.sources = sources

    def version(self, alias: str) -> str | None:
        for src in self.sources:
            v = src.version(alias)
            if v is not None:
                return v
        return None

    def load(self, alias: str) -> LoadedPolicy | None:
        for src in self.sources:
            loaded = src.load(alias)
            if loaded is not None:
                return loaded
        return None

    def record_rollback(self, rollback: Rollback) -> str:
        """The first source that records rollbacks records it."""
        for src in self.sources:
            record = getattr(src, "record_rollback", None)
            if record is not None:
                return str(record(rollback))
        return f"{rollback.label}: no source records rollbacks (this process only)"


def source_from_settings(settings: Settings) -> ModelSource | None:
    """The source ``serving_model_source`` names (``fresh``: None, start from a new policy)."""
    local = LocalFileSource(settings.policy_state_path)
    kind = settings.serving_model_source
    if kind == "registry":
        return ChainSource(RegistrySource(settings), local)
    if kind == "local":
        return local
    if kind == "fresh":
        return None
    raise ValueError(f"serving_model_source must be registry, local or fresh, got {kind!r}")
