"""Permutation test of a group disparity: is it larger than shuffled group labels give?

Under the null hypothesis that the model's errors do not depend on group membership, the
group labels are exchangeable across test rows: shuffling them (keeping each row's true and
predicted class together) gives a dataset as likely as the observed one. Recomputing the
same statistic on many shuffles gives its null distribution, and the p-value is the share of
shuffles at least as extreme as the observed value (a randomization test: Fisher 1935;
Good, *Permutation Tests*, 2005). It is exact whatever the group sizes, which is why it suits
max-minus-min disparities over many small groups whose sampling distribution has no simple
form: a disparity that shuffled labels reproduce is what chance gives on this split.

Shuffles keep every group's size, so groups eligible by ``min_group_size`` stay eligible; the
per-cell support rule (``min_positives``) is re-applied to each shuffle because it is part of
the statistic. The p-value counts the observed data as one of the shuffles,
``(1 + #{T_perm ≥ T_obs}) / (1 + n)`` (Phipson & Smyth 2010), so it is never 0.
"""

from __future__ import annotations

import numpy as np

# shuffles per batch: bounds memory at batch x groups x classes^2 counts
_BATCH = 100


def shuffles(n_rows: int, n_permutations: int, rng: np.random.Generator) -> np.ndarray:
    """(n_permutations, n_rows) row orders: shuffle b assigns row i the group of row ``order[b, i]``."""
    if n_permutations == 0 or n_rows == 0:
        return np.zeros((n_permutations, n_rows), dtype=np.int64)
    return rng.permuted(np.tile(np.arange(n_rows), (n_permutations, 1)), axis=1)


def permuted_confusions(y_true: np.ndarray, y_pred: np.ndarray, codes: np.ndarray, n_groups: int, n_classes: int,
                        orders: np.ndarray):
    """Yield (b, G, K, K) confusion counts with the group codes shuffled by `orders`, a batch at a time."""
    y_true, y_pred, codes = (np.asarray(a, dtype=np.int64) for a in (y_true, y_pred, codes))
    cells = n_groups * n_classes * n_classes
    for start in range(0, len(orders), _BATCH):
        batch = orders[start:start + _BATCH]
        groups = codes[batch]  # (b, n)
        flat = ((np.arange(len(batch))[:, None] * n_groups + groups) * n_classes + y_true) * n_classes + y_pred
        counts = np.bincount(flat.ravel(), minlength=len(batch) * cells).astype(float)
        yield counts.reshape(len(batch), n_groups, n_classes, n_classes)


def permutation_p_value(observed: float | None, null: np.ndarray, larger_is_worse: bool) -> float | None:
    """One-sided p-value of `observed` against shuffled values `null` (undefined shuffles ignored).

    None when the observed value is undefined or fewer than half the shuffles gave a value.
    """
    values = np.asarray(null, dtype=float)
    defined = values[~np.isnan(values)]
    if observed is None or not np.isfinite(observed) or len(defined) < max(1, len(values) / 2):
        return None
    tolerance = 1e-12  # equal disparities computed in another order must count as ties
    extreme = defined >= observed - tolerance if larger_is_worse else defined <= observed + tolerance
    return float((1 + extreme.sum()) / (1 + len(defined)))


def null_summary(observed: float | None, null: np.ndarray, larger_is_worse: bool, bins: int = 24) -> dict:
    """What the report shows of a permutation test: p, the distribution's median and a histogram."""
    values = np.asarray(null, dtype=float)
    defined = values[~np.isnan(values)]
    summary = {
        "p_value": permutation_p_value(observed, values, larger_is_worse),
        "alternative": "greater" if larger_is_worse else "less",
        "n_permutations": int(len(values)),
        "n_defined": int(len(defined)),
        "median": float(np.median(defined)) if len(defined) else None,
        "histogram": None,
    }
    if len(defined):
        counts, edges = np.histogram(defined, bins=bins)
        summary["histogram"] = {"edges": [float(edge) for edge in edges], "counts": [int(c) for c in counts]}
    return summary
