"""One sensitive column's fairness table: per-group rates, summary measures, bootstrap intervals.

Fairlearn's ``MetricFrame`` disaggregates the predictions by group (count, accuracy and every
class's one-vs-rest selection rate, TPR, FPR, FNR). The same numbers are recomputed from
per-group confusion counts (:mod:`audits._group_rates`), which also serve every seeded
bootstrap resample of the test split; the audit refuses to report if the two disagree on any
defined value. Fairlearn's own ``n_boot`` is not used because the summary measures combine
several metrics of one resample (equalized odds is the larger of two differences, the
worst-group gap subtracts a group from the overall accuracy) and need joint resamples, and
because Fairlearn scores an undefined rate (no positives in a group) as 0, which would enter
the differences as a real value; here such a rate stays undefined (null).

The differences and gaps (demographic parity, equal opportunity and equalized odds
differences, worst-group accuracy and its gap) get intervals derived from simultaneous
bootstrap intervals of the group-rate differences they are made of
(:mod:`audits._disparity_intervals`), not percentile intervals of the resampled max-minus-min,
which are biased upward near a zero gap; the ratios keep percentile intervals.

Each column's report also lists the (class, group) cells left out of the TPR / FPR
comparisons for want of support (``excluded_cells``) and, per summary measure, a
permutation test (``tests``, :mod:`audits._permutation`): the same measure recomputed with
the group labels shuffled, its p-value and the shape of that null distribution.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    count,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score

from audits._group_rates import (GROUP_RATES, SUMMARY_MEASURES, WORSE_WHEN_LARGER, class_rates, confusion_tensor,
                                 group_rates, summary_measures, supported_cells)
from audits._disparity_intervals import DERIVED_MEASURES, disparity_intervals
from audits._permutation import null_summary, permuted_confusions
from audits._intervals import estimate, finite_or_none, percentile_intervals
from secure_ft.errors import AuditError

_FAIRLEARN_RATES = {
    "selection_rate": selection_rate,
    "tpr": true_positive_rate,
    "fpr": false_positive_rate,
    "fnr": false_negative_rate,
}


def _one_vs_rest(metric, positive: int, y_true, y_pred):
    return metric((np.asarray(y_true) == positive).astype(int), (np.asarray(y_pred) == positive).astype(int), pos_label=1)


def fairlearn_group_table(y_true: np.ndarray, y_pred: np.ndarray, groups: pd.Series, n_classes: int) -> pd.DataFrame:
    """Fairlearn's by-group table: count, accuracy and every class's one-vs-rest rates."""
    metrics = {"count": count, "accuracy": accuracy_score}
    for positive in range(n_classes):
        for name, metric in _FAIRLEARN_RATES.items():
            metrics[f"{name}[{positive}]"] = partial(_one_vs_rest, metric, positive)
    frame = MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=groups)
    return frame.by_group


def _check_agreement(table: pd.DataFrame, point: dict[str, np.ndarray], confusion: np.ndarray, n_classes: int) -> None:
    """Fairlearn and the confusion counts must give the same counts, accuracies and defined rates."""
    counts = confusion.sum(axis=(1, 2))
    if not np.array_equal(table["count"].to_numpy(dtype=float), counts):
        raise AuditError("internal inconsistency between Fairlearn and the confusion counts for count; report this bug")
    correct = np.trace(confusion, axis1=1, axis2=2)
    if not np.allclose(table["accuracy"].to_numpy(dtype=float), correct / counts, atol=1e-9):
        raise AuditError("internal inconsistency between Fairlearn and the confusion counts for accuracy; report this bug")
    for name in _FAIRLEARN_RATES:
        ours = point[name][0]  # (G, K)
        theirs = np.stack([table[f"{name}[{c}]"].to_numpy(dtype=float) for c in range(n_classes)], axis=1)
        defined = ~np.isnan(ours)
        if not np.allclose(ours[defined], theirs[defined], atol=1e-9):
            raise AuditError(f"internal inconsistency between Fairlearn and the confusion counts for {name}; report this bug")


def excluded_cells(confusion: np.ndarray, names: list[str], eligible: np.ndarray, label_names: list[str],
                   positive_class: int | None, min_positives: int) -> list[dict]:
    """The (class, group) cells of eligible groups whose TPR or FPR is left out for want of support."""
    positives = class_rates(confusion[None])["positives"][0]
    negatives = class_rates(confusion[None])["negatives"][0]
    tpr_ok, fpr_ok = supported_cells(confusion[None], min_positives)
    classes = [positive_class] if positive_class is not None else range(len(label_names))
    cells = []
    for g, name in enumerate(names):
        if not eligible[g]:
            continue  # the whole group is out (min_group_size); listed as an insufficient group
        for c in classes:
            left_out = [rate for rate, ok in (("tpr", tpr_ok[0, g, c]), ("fpr", fpr_ok[0, g, c])) if not ok]
            if left_out:
                cells.append({"class": label_names[c], "group": name, "positives": int(positives[g, c]),
                              "negatives": int(negatives[g, c]), "left_out": left_out})
    return cells


def permutation_tests(y_true: np.ndarray, y_pred: np.ndarray, codes: np.ndarray, n_groups: int, n_classes: int,
                      eligible: np.ndarray, positive_class: int | None, min_positives: int,
                      overall_accuracy: float, observed: dict[str, float | None], orders: np.ndarray) -> dict:
    """Per summary measure: the measure recomputed on shuffled group labels, summarised (p, median, histogram)."""
    null = {name: [] for name in SUMMARY_MEASURES}
    for confusion in permuted_confusions(y_true, y_pred, codes, n_groups, n_classes, orders):
        measures = summary_measures(confusion, eligible, positive_class, np.full(len(confusion), overall_accuracy),
                                    min_positives=min_positives, fixed_support=False)
        for name, values in measures.items():
            null[name].append(values)
    return {name: null_summary(observed[name], np.concatenate(values) if values else np.array([]),
                               name in WORSE_WHEN_LARGER)
            for name, values in null.items()}


def disaggregate(y_true: np.ndarray, y_pred: np.ndarray, group_values: pd.Series, *, label_names: list[str],
                 positive_class: int | None, min_group_size: int, row_weights: np.ndarray, ci_level: float,
                 overall_accuracy: np.ndarray, min_positives: int = 0, orders: np.ndarray | None = None) -> dict:
    """The fairness report of one sensitive column.

    `row_weights` is the (n_boot, n) bootstrap multiplicity matrix shared by every column;
    `overall_accuracy` holds the whole split's accuracy for the point estimate (index 0) and
    then each resample, so the worst-group gap's interval is joint. `min_positives` is the
    support a cell needs to enter TPR / FPR comparisons; `orders` (n_permutations, n) are the
    row shuffles of the permutation test (None or empty: no test).
    """
    n_classes = len(label_names)
    names = sorted(group_values.unique().tolist())
    codes = group_values.map({name: index for index, name in enumerate(names)}).to_numpy(dtype=int)
    weights = np.vstack([np.ones((1, len(y_true))), row_weights])
    confusion = confusion_tensor(y_true, y_pred, codes, len(names), n_classes, weights)
    counts = confusion[0].sum(axis=(1, 2)).astype(int)
    eligible = counts >= min_group_size

    table = fairlearn_group_table(y_true, y_pred, group_values, n_classes).reindex(names)
    per_class = class_rates(confusion)
    _check_agreement(table, per_class, confusion[0], n_classes)
    rates = group_rates(confusion, positive_class)
    low, high = {}, {}
    for name in GROUP_RATES:
        low[name], high[name] = percentile_intervals(rates[name][1:], ci_level) if len(weights) > 1 else (
            np.full(len(names), np.nan), np.full(len(names), np.nan))
    recall_low, recall_high = percentile_intervals(per_class["tpr"][1:], ci_level) if len(weights) > 1 else (
        np.full((len(names), n_classes), np.nan),) * 2

    groups = []
    for index, name in enumerate(names):
        row = {
            "group": name,
            "count": int(counts[index]),
            "insufficient_data": bool(not eligible[index]),
            "positives": int(per_class["positives"][0, index, positive_class]) if positive_class is not None else None,
            "negatives": int(per_class["negatives"][0, index, positive_class]) if positive_class is not None else None,
        }
        for rate in GROUP_RATES:
            row[rate] = estimate(rates[rate][0, index], low[rate][index], high[rate][index])
        if n_classes > 2:
            row["class_recall"] = {
                label_names[c]: estimate(per_class["tpr"][0, index, c], recall_low[index, c], recall_high[index, c])
                for c in range(n_classes)
            }
            row["class_selection_rate"] = {
                label_names[c]: finite_or_none(per_class["selection_rate"][0, index, c]) for c in range(n_classes)
            }
        groups.append(row)

    report = {
        "n_groups": len(names),
        "n_sufficient_groups": int(eligible.sum()),
        "insufficient_groups": [name for name, ok in zip(names, eligible) if not ok],
        "groups": groups,
        "status": "ok",
        "reason": None,
        "summary": {name: estimate(np.nan) for name in SUMMARY_MEASURES},
        "worst_group": None,
        "min_positives": min_positives,
        "excluded_cells": excluded_cells(confusion[0], names, eligible, label_names, positive_class, min_positives),
        "tests": {},
    }
    if eligible.sum() < 2:
        report["status"] = "insufficient_data"
        if len(names) < 2:
            report["reason"] = f"only one group ({names[0]!r}) in the test split; nothing to compare"
        else:
            report["reason"] = (f"{int(eligible.sum())} of {len(names)} groups have at least {min_group_size} "
                                "test rows; at least two are needed to compare groups")
        return report

    measures = summary_measures(confusion, eligible, positive_class, overall_accuracy, min_positives=min_positives)
    derived = disparity_intervals(confusion, eligible, positive_class, overall_accuracy, min_positives=min_positives,
                                  level=ci_level) if len(weights) > 1 else {}
    for name, values in measures.items():
        if name in DERIVED_MEASURES:
            low, high = derived.get(name, (np.nan, np.nan))
        else:  # ratios: percentile interval of the resampled measure
            interval = percentile_intervals(values[1:, None], ci_level) if len(weights) > 1 else ([np.nan],) * 2
            low, high = interval[0][0], interval[1][0]
        report["summary"][name] = estimate(values[0], low, high)
    if orders is not None and len(orders):
        observed = {name: report["summary"][name]["value"] for name in SUMMARY_MEASURES}
        report["tests"] = permutation_tests(y_true, y_pred, codes, len(names), n_classes, eligible, positive_class,
                                            min_positives, float(overall_accuracy[0]), observed, orders)
    eligible_accuracy = np.where(eligible, rates["accuracy"][0], np.inf)
    report["worst_group"] = names[int(np.argmin(eligible_accuracy))]
    return report
