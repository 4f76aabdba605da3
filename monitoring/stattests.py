"""The drift reports' own statistical test: chi-square homogeneity of two categorical samples.

Each column's drift test is Evidently's default for its type and size: up to 1000 rows, K-S
(numerical), chi-square or Z-test (categorical, or numerical with at most 5 values), drifted at
p < 0.05; above, the normed Wasserstein distance (numerical) or the Jensen-Shannon distance
(categorical), drifted at >= 0.1. One exception: Evidently's chi-square is a goodness-of-fit
test against the reference counts, so a single event of a category the reference lacks (a
rarely explored model, a new template) gives p = 0; it is replaced by a chi-square test of
homogeneity of the two windows (:func:`chi2_homogeneity`, categories seen fewer than 5 times
pooled), registered with Evidently as ``chi2_homogeneity`` and used for the columns
:func:`homogeneity_columns` names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


HOMOGENEITY_TEST = "chi2_homogeneity"
RARE_COUNT = 5
"""Categories seen fewer times than this in both windows together are pooled before testing."""
SMALL_SAMPLE = 1000
"""Evidently tests up to this many reference rows with p-values, above with distances."""


def chi2_homogeneity(reference: pd.Series, current: pd.Series) -> float:
    """p-value of a chi-square test that both samples come from one categorical distribution.

    >>> import pandas as pd
    >>> same = chi2_homogeneity(pd.Series(list("aab" * 50)), pd.Series(list("aab" * 50 + "c")))
    >>> moved = chi2_homogeneity(pd.Series(list("aab" * 50)), pd.Series(list("abb" * 50)))
    >>> same > 0.5, moved < 0.001
    (True, True)
    """
    import numpy as np  # noqa: PLC0415
    from scipy.stats import chi2_contingency  # type: ignore[import-untyped]  # noqa: PLC0415

    r, c = reference.value_counts(), current.value_counts()
    keys = sorted(set(r.index) | set(c.index), key=str)
    table = np.array([[r.get(k, 0) for k in keys], [c.get(k, 0) for k in keys]], dtype=float)
    rare = table.sum(axis=0) < RARE_COUNT
    if rare.any():
        table = np.column_stack([table[:, ~rare], table[:, rare].sum(axis=1)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0
    return float(chi2_contingency(table, correction=table.shape[1] == 2).pvalue)


_registered = False


def register_homogeneity_test() -> None:
    """Make ``chi2_homogeneity`` known to Evidently (once per process)."""
    global _registered  # noqa: PLW0603 - one registration per process
    if _registered:
        return
    from evidently.legacy.calculations.stattests import registry  # noqa: PLC0415
    from evidently.legacy.core import ColumnType  # noqa: PLC0415

    def impl(
        reference: pd.Series, current: pd.Series, feature_type: Any, threshold: float
    ) -> tuple[float, bool]:
        p = chi2_homogeneity(reference, current)
        return p, p < threshold

    test = registry.StatTest(
        name=HOMOGENEITY_TEST,
        display_name="chi-square homogeneity p_value",
        allowed_feature_types=[ColumnType.Categorical, ColumnType.Numerical],
    )
    registry.register_stattest(test, default_impl=impl)
    _registered = True


def homogeneity_columns(
    ref: pd.DataFrame, cur: pd.DataFrame, numerical: Sequence[str], categorical: Sequence[str]
) -> list[str]:
    """Columns Evidently would test with its chi-square: they get ``chi2_homogeneity`` instead."""
    out = []
    for col in [*numerical, *categorical]:
        r = ref[col].dropna()
        n_values = len(set(r.unique()) | set(cur[col].dropna().unique()))
        limit = 5 if col in numerical else math.inf
        if len(r) <= SMALL_SAMPLE and 2 < n_values <= limit:
            out.append(col)
    return out
