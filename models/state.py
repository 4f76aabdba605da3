"""Versioned, JSON-friendly state for every learner: ``to_dict`` / ``from_dict``.

Pickle is the fast path inside one Python version; the dict form is the stable one: it is what
MLflow artifacts, Redis snapshots and other languages read, and it is versioned (``format``) so a
later release can still load it. Every learner in ``models/`` derives from :class:`Stateful` and
implements two hooks, ``_get_state`` (JSON-friendly values: numbers, strings, lists, dicts) and
``_set_state``; constructor arguments are saved as ``params`` under their own names
(docs/style.md #9).

Examples
--------
>>> class Counter(Stateful):
...     kind = "doc_counter"
...     def __init__(self, step: int = 1) -> None:
...         self.step = step
...         self._n = 0
...     def _get_state(self):
...         return {"n": self._n}
...     def _set_state(self, state):
...         self._n = int(state["n"])
>>> c = Counter(step=2)
>>> c._n = 6
>>> d = c.to_dict()
>>> d["kind"], d["format"], d["params"], d["state"]
('doc_counter', 1, {'step': 2}, {'n': 6})
>>> restored = Stateful.from_dict(d)
>>> type(restored).__name__, restored.step, restored._n
('Counter', 2, 6)
"""

from __future__ import annotations

import copy
import importlib
import random
from typing import Any, ClassVar, Self

import numpy as np

STATE_FORMAT = 1
"""Version of the dict layout written by :meth:`Stateful.to_dict`."""

_KINDS: dict[str, type[Stateful]] = {}


class StateError(ValueError):
    """A state dict that cannot be loaded (unknown kind, newer format, corrupt content)."""


class Stateful:
    """Mixin: hyperparameters as public attributes, learned state behind two hooks."""

    kind: ClassVar[str]
    """Stable name of the learner in state dicts (never reuse one for another class)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if isinstance(kind, str):
            _KINDS[kind] = cls

    # -- hyperparameters --------------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in vars(self).items() if not k.startswith("_")}

    def clone(self) -> Self:
        """A fresh, unfitted learner with the same hyperparameters."""
        return type(self)(**self._params())

    # -- state ------------------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _set_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Hyperparameters and learned state as plain JSON-serialisable values."""
        return {
            "kind": self.kind,
            "format": STATE_FORMAT,
            "params": _plain(self._params()),
            "state": _plain(self._get_state()),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Rebuild a learner from :meth:`to_dict` output; it continues exactly where it was."""
        if not isinstance(data, dict) or "kind" not in data:
            raise StateError("a learner state must be a dict with a 'kind'")
        fmt = data.get("format")
        if fmt != STATE_FORMAT:
            raise StateError(f"unsupported state format {fmt!r}; this version reads {STATE_FORMAT}")
        target = _KINDS.get(str(data["kind"]))
        if target is None:  # a policy whose module is not imported yet: every policy's is
            importlib.import_module("models.kinds")
            target = _KINDS.get(str(data["kind"]))
        if target is None:
            raise StateError(
                f"unknown learner kind {data['kind']!r}; known: {', '.join(sorted(_KINDS))}"
            )
        if cls is not Stateful and not issubclass(target, cls):
            raise StateError(f"state of a {data['kind']!r} is not a {cls.__name__}")
        try:
            obj = target(**data.get("params", {}))
            obj._set_state(data.get("state", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"corrupt state for {data['kind']!r}: {exc}") from exc
        return obj


def rng_state(rng: random.Random) -> list[Any]:
    """A ``random.Random`` state as JSON-friendly lists."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list[Any]) -> None:
    """Inverse of :func:`rng_state`."""
    version, internal, gauss = state
    rng.setstate((int(version), tuple(int(x) for x in internal), gauss))


def np_rng_state(gen: np.random.Generator) -> dict[str, Any]:
    """A numpy generator's state, its 128-bit integers as strings (JSON stores beyond 64 bits
    lose them or refuse them: ``orjson``, PostgreSQL's ``jsonb`` numbers)."""
    state = gen.bit_generator.state
    return {
        "bit_generator": state["bit_generator"],
        "state": {k: str(v) for k, v in state["state"].items()},
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def set_np_rng_state(gen: np.random.Generator, state: dict[str, Any]) -> None:
    """Inverse of :func:`np_rng_state` (also reads the plain numeric form)."""
    gen.bit_generator.state = {
        "bit_generator": state["bit_generator"],
        "state": {k: int(v) for k, v in state["state"].items()},
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def _plain(value: Any) -> Any:
    """numpy arrays and scalars to lists and floats, tuples to lists, recursively."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
