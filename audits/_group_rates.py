"""Group rates and fairness summary measures from per-group confusion counts.

Everything here works on a confusion tensor ``C[b, g, t, p]``: how many rows of group ``g``
with true class ``t`` were predicted as ``p``, in resample ``b`` (``b`` = 0 only for the
point estimate). One definition thus serves the point estimates and every bootstrap
resample, and rates that are undefined (no rows, no positives, no negatives) stay NaN
instead of silently becoming 0.

Binary view of class ``c`` (one-vs-rest) inside a group::

    TP = C[c, c]   FN = row c minus TP   FP = column c minus TP   TN = the rest
    selection rate = (TP + FP) / n      TPR = TP / (TP + FN)
    FPR = FP / (FP + TN)                FNR = FN / (TP + FN)

Summary measures over the *eligible* groups (those with at least ``min_group_size`` rows),
for one class ``c``::

    demographic parity difference = max_g SR - min_g SR        ratio = min_g SR / max_g SR
    equal opportunity difference  = max_g TPR - min_g TPR
    equalized odds difference     = max(TPR difference, FPR difference)
    equalized odds ratio          = min(TPR ratio, FPR ratio)

Groups where a rate is undefined are left out of that rate's max/min; a measure needs two
groups with a defined rate. For a positive class the measures are those of its binary view;
in *macro* mode each measure is computed for every class and averaged over the classes where
it is defined. Accuracy is the exact multi-class accuracy; the worst-group accuracy is the
lowest over eligible groups and its gap is overall accuracy minus it.

**Support of a cell.** A (class, group) cell with fewer than ``min_positives`` positives has
a TPR too noisy to compare (with 5 positives one more hit moves it by 0.2; Fairlearn's
guidance on small groups and its ``MetricFrame`` docs warn that such rates have very large
variance), so its TPR is left out of equal opportunity and equalized odds; likewise its
FPR with fewer than ``min_positives`` negatives. Demographic parity and accuracy use the
whole group and are governed by ``min_group_size`` instead. `supported_cells` says which
cells count; with ``fixed_support`` the cells are those supported in the point estimate
(the bootstrap then measures the noise of those cells' rates), otherwise the rule is
re-applied to each confusion tensor (the permutation test recomputes the whole statistic).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

SUMMARY_MEASURES = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equalized_odds_difference",
    "equalized_odds_ratio",
    "equal_opportunity_difference",
    "worst_group_accuracy",
    "worst_group_accuracy_gap",
)
GROUP_RATES = ("accuracy", "selection_rate", "tpr", "fpr", "fnr")
# measures where a larger value is the worse one (differences, gaps); the others are worse when smaller
WORSE_WHEN_LARGER = frozenset({"demographic_parity_difference", "equalized_odds_difference",
                               "equal_opportunity_difference", "worst_group_accuracy_gap"})


def confusion_tensor(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, n_groups: int,
                     n_classes: int, row_weights: np.ndarray | None = None) -> np.ndarray:
    """(B, G, K, K) counts; `row_weights` (B, n) are bootstrap multiplicities (None: one plain copy)."""
    codes = (groups * n_classes + y_true) * n_classes + y_pred
    cells = n_groups * n_classes * n_classes
    if row_weights is None:
        row_weights = np.ones((1, len(codes)))
    indicator = sparse.csr_matrix((np.ones(len(codes)), (np.arange(len(codes)), codes)), shape=(len(codes), cells))
    counts = np.asarray((indicator.T @ np.asarray(row_weights, dtype=float).T).T)
    return counts.reshape(len(row_weights), n_groups, n_classes, n_classes)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def class_rates(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest rates of every class in every group: arrays of shape (B, G, K)."""
    n = confusion.sum(axis=(-2, -1))[..., None]
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    actual = confusion.sum(axis=-1)  # rows: true class
    predicted = confusion.sum(axis=-2)  # columns: predicted class
    fn, fp = actual - tp, predicted - tp
    negatives = n - actual
    return {
        "selection_rate": _divide(predicted, np.broadcast_to(n, predicted.shape)),
        "tpr": _divide(tp, actual),
        "fpr": _divide(fp, negatives),
        "fnr": _divide(fn, actual),
        "positives": actual,
        "negatives": negatives,
    }


def accuracy(confusion: np.ndarray) -> np.ndarray:
    """Exact multi-class accuracy per group: (B, G)."""
    correct = np.trace(confusion, axis1=-2, axis2=-1)
    return _divide(correct, confusion.sum(axis=(-2, -1)))


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    defined = ~np.isnan(values)
    total = np.where(defined, values, 0.0).sum(axis=axis)
    return _divide(total, defined.sum(axis=axis).astype(float))


def group_rates(confusion: np.ndarray, positive_class: int | None) -> dict[str, np.ndarray]:
    """Per-group accuracy, selection rate, TPR, FPR, FNR: arrays of shape (B, G).

    With a positive class these are its one-vs-rest rates; in macro mode TPR / FPR / FNR are
    averaged over the classes defined in the group and the selection rate is undefined (it
    averages to 1/K in every group, so it says nothing).
    """
    rates = class_rates(confusion)
    result = {"accuracy": accuracy(confusion)}
    if positive_class is not None:
        for name in ("selection_rate", "tpr", "fpr", "fnr"):
            result[name] = rates[name][..., positive_class]
    else:
        result["selection_rate"] = np.full(result["accuracy"].shape, np.nan)
        result["tpr"] = _nanmean(rates["tpr"], axis=-1)
        result["fpr"] = _nanmean(rates["fpr"], axis=-1)
        result["fnr"] = _nanmean(rates["fnr"], axis=-1)
    return result


def _spread(values: np.ndarray, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """max - min and min / max over eligible groups (axis -2 of (B, G, K)); NaN with < 2 defined."""
    masked = np.where(eligible[None, :, None], values, np.nan)
    defined = (~np.isnan(masked)).sum(axis=1)
    high = np.where(defined >= 2, np.nanmax(np.where(np.isnan(masked), -np.inf, masked), axis=1), np.nan)
    low = np.where(defined >= 2, np.nanmin(np.where(np.isnan(masked), np.inf, masked), axis=1), np.nan)
    return high - low, _divide(low, high)


def supported_cells(confusion: np.ndarray, min_positives: int) -> tuple[np.ndarray, np.ndarray]:
    """Which (class, group) cells may enter TPR and FPR comparisons: two boolean (B, G, K) arrays.

    A cell's TPR counts with at least `min_positives` positives, its FPR with at least as many
    negatives (one-vs-rest, within the group).
    """
    rates = class_rates(confusion)
    return rates["positives"] >= min_positives, rates["negatives"] >= min_positives


def summary_measures(confusion: np.ndarray, eligible: np.ndarray, positive_class: int | None,
                     overall_accuracy: np.ndarray, *, min_positives: int = 0,
                     fixed_support: bool = True) -> dict[str, np.ndarray]:
    """The fairness summary measures, each an array of shape (B,); see the module docstring.

    `min_positives` leaves unsupported cells out of the TPR / FPR comparisons; with
    `fixed_support` the supported cells are those of resample 0 (the point estimate).
    """
    eligible = np.asarray(eligible, dtype=bool)
    rates = class_rates(confusion)
    tpr_ok, fpr_ok = supported_cells(confusion, min_positives)
    if fixed_support:
        tpr_ok, fpr_ok = np.broadcast_to(tpr_ok[:1], tpr_ok.shape), np.broadcast_to(fpr_ok[:1], fpr_ok.shape)
    dp_diff, dp_ratio = _spread(rates["selection_rate"], eligible)
    tpr_diff, tpr_ratio = _spread(np.where(tpr_ok, rates["tpr"], np.nan), eligible)
    fpr_diff, fpr_ratio = _spread(np.where(fpr_ok, rates["fpr"], np.nan), eligible)
    # NaN-propagating max/min: equalized odds needs both of its parts
    per_class = {
        "demographic_parity_difference": dp_diff,
        "demographic_parity_ratio": dp_ratio,
        "equalized_odds_difference": np.maximum(tpr_diff, fpr_diff),
        "equalized_odds_ratio": np.minimum(tpr_ratio, fpr_ratio),
        "equal_opportunity_difference": tpr_diff,
    }
    if positive_class is not None:
        result = {name: values[:, positive_class] for name, values in per_class.items()}
    else:
        result = {name: _nanmean(values, axis=-1) for name, values in per_class.items()}
    group_accuracy = np.where(eligible[None, :], accuracy(confusion), np.nan)
    has_groups = (~np.isnan(group_accuracy)).sum(axis=1) >= 1
    worst = np.where(has_groups, np.nanmin(np.where(np.isnan(group_accuracy), np.inf, group_accuracy), axis=1), np.nan)
    result["worst_group_accuracy"] = worst
    result["worst_group_accuracy_gap"] = overall_accuracy - worst
    return result
