"""Domain type aliases shared by every package (one place, docs/style.md #13)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

ArmID: TypeAlias = str
"""An arm a policy can pull: a model id from the catalog (or a model+parameters config)."""

TenantID: TypeAlias = str
DecisionID: TypeAlias = str
Features: TypeAlias = Mapping[str, float]
"""Numeric features of one request, by name. Policies and estimators read these."""
