"""Where serving gets its policies: the MLflow registry by alias, or a local state file.

One small interface, :class:`ModelSource`: ``version(alias)`` is the cheap check the poller
runs (which version does ``prod`` point at now?), ``load(alias)`` returns the policy and its
label, and the generation-parameter tuning versioned with it (registry versions trained by the
nightly or incremental flow; :mod:`models.tuning_snapshot`). :class:`RegistrySource` reads
``models:/llm-router@<alias>`` through :mod:`registry.mlflow_registry` (imported lazily:
MLflow costs seconds at import);
:class:`LocalFileSource` reads the embedded profile's state file (the CLI's ``policy.pkl``, or
a ``to_dict`` JSON file), and its tuning from ``<policy file>.tuning.json`` next to it when
there is one; :class:`ChainSource` tries several in order. A source that fails
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


def tuning_file(path: Path) -> Path:
    """Where :class:`LocalFileSource` looks for the tuning of the policy file ``path``: next to
    it, ``<policy file>.tuning.json`` (e.g. ``policy.pkl.tuning.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".tuning.json")


def save_tuning_file(snapshot: TuningSnapshot, path: Path) -> Path:
    """Write ``snapshot`` (:meth:`TuningSnapshot.to_json`) atomically as the tuning of the
    policy file ``path`` (:func:`tuning_file`); its path."""
    target = tuning_file(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(snapshot.to_json())
    tmp.replace(target)
    return target


class LocalFileSource:
    """The champion from a local state file (pickle or JSON); it never has a challenger.

    When ``<policy file>.tuning.json`` lies next to it (:func:`tuning_file`, a
    :class:`~models.tuning_snapshot.TuningSnapshot` in JSON, e.g. a registry version's
    ``served_tuning.json``; :func:`save_tuning_file`), it is the policy's served tuning,
    as a registry version's is (:class:`LoadedPolicy`); absent, serving tunes from scratch.

    The label is ``local/<first 12 hex of the file's SHA-256>`` (with a tuning file, of the
    policy file's bytes followed by the tuning's), so a rewritten file is a new version to the
    poller.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tuning_path = tuning_file(self.path)

    @staticmethod
    def _read_file(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc}") from exc

    def _read(self) -> tuple[bytes, bytes | None] | None:
        data = self._read_file(self.path)
        if data is None:
            return None
        return data, self._read_file(self.tuning_path)

    @staticmethod
    def _label(data: bytes, tuning: bytes | None) -> str:
        digest = hashlib.sha256(data)
        if tuning is not None:
            digest.update(tuning)
        return f"local/{digest.hexdigest()[:12]}"

    def version(self, alias: str) -> str | None:
        if alias != "prod":
            return None
        files = self._read()
        return None if files is None else self._label(*files)

    def load(self, alias: str) -> LoadedPolicy | None:
        if alias != "prod":
            return None
        files = self._read()
        if files is None:
            return None
        data, tuning_data = files
        try:
            if data[:1] == b"{":
                from models.state import Stateful  # noqa: PLC0415

                policy: Any = Stateful.from_dict(json.loads(data))
            else:
                policy = pickle.loads(data)  # noqa: S301 - our own state file
        except Exception as exc:
            raise SourceError(f"cannot load the policy in {self.path}: {exc}") from exc
        tuning = None
        if tuning_data is not None:
            from models.tuning_snapshot import TuningSnapshot  # noqa: PLC0415

            try:
                tuning = TuningSnapshot.from_json(tuning_data)
            except Exception as exc:
                raise SourceError(f"cannot load the tuning in {self.tuning_path}: {exc}") from exc
        return LoadedPolicy(self._label(data, tuning_data), policy, str(self.path), tuning)


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
