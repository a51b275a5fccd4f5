"""Confidence intervals for max-minus-min disparities, built from simultaneous intervals of differences.

A disparity such as the equalized-odds difference is a maximum over groups of absolute rate
differences. Its percentile bootstrap interval is not valid: resampling adds noise that the
max turns into upward bias, so near a zero gap the whole interval can sit above the point
estimate and the optimistic end breaks a limit on noise alone (Andrews 2000, "Inconsistency of
the bootstrap when a parameter is on the boundary of the parameter space", Econometrica 68;
Fang & Santos 2019, "Inference on directionally differentiable functions", Rev. Econ. Stud. 86).

Each difference of two group rates is smooth, so it is bootstrapped instead, and all the
differences entering one measure get *simultaneous* intervals
(:func:`audits._intervals.simultaneous_intervals`, bootstrap max-t). When every difference
lies in its interval, which happens with probability at least the level, the measure lies in
the interval derived from them:

* ``|d|`` with ``d`` in ``[L, U]`` lies in ``[0 if L <= 0 <= U else min(|L|, |U|), max(|L|, |U|)]``;
* a max-minus-min over groups is the largest ``|r_i - r_j|`` over pairs, so it lies between the
  largest lower bound and the largest upper bound;
* equalized odds (the larger of the TPR and FPR spreads) takes the larger lower and the larger
  upper bound, its TPR and FPR pairs forming one family;
* macro mode averages the per-class bounds, valid because the family spans every class's pairs;
* the worst-group accuracy gap is ``max_g (overall - accuracy_g)``: largest lower and largest
  upper bound of those differences; the worst-group accuracy is ``min_g accuracy_g``: smallest
  lower and smallest upper bound.

Each difference is studentized, in the point estimate and in every resample, by its
Agresti-Caffo standard error (one success and one failure added to each rate: Agresti & Caffo
2000, "Simple and effective confidence intervals for proportions and differences of
proportions", The American Statistician 54), which stays positive when a small group's rate is
0 or 1; studentizing each resample (bootstrap-t) rather than scaling by the resamples' spread
is what holds coverage with 15-30 positives per group (`tests/test_fairness_intervals.py`
simulates it against known gaps).

By construction each interval contains its point estimate. The cells compared are those
supported in the point estimate (``min_positives``), as in
:func:`audits._group_rates.summary_measures` with ``fixed_support``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from audits._group_rates import accuracy, class_rates, supported_cells
from audits._intervals import simultaneous_intervals

# measures whose interval is derived here; the ratios keep percentile intervals (no shipped policy judges them)
DERIVED_MEASURES = ("demographic_parity_difference", "equalized_odds_difference", "equal_opportunity_difference",
                    "worst_group_accuracy", "worst_group_accuracy_gap")


def absolute_bounds(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of |d| for d in [low, high], element-wise."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    straddles = (low <= 0) & (high >= 0)
    lower = np.where(straddles, 0.0, np.minimum(np.abs(low), np.abs(high)))
    return lower, np.maximum(np.abs(low), np.abs(high))


def adjusted_variance(hits: np.ndarray, trials: np.ndarray) -> np.ndarray:
    """Variance of a proportion with one success and one failure added (Agresti & Caffo 2000); never 0."""
    share = (hits + 1.0) / (trials + 2.0)
    return share * (1.0 - share) / (trials + 2.0)


def _pair_differences(values: np.ndarray, variance: np.ndarray, compared: np.ndarray) -> tuple[np.ndarray, ...]:
    """r_i - r_j over pairs i < j of the compared groups, with standard errors; inputs (B, G), index 0 the point.

    Returns (point (P,), resamples (B-1, P), point_se (P,), resample_se (B-1, P)).
    """
    index = np.flatnonzero(compared)
    first, second = np.triu_indices(len(index), 1)
    differences = values[:, index[first]] - values[:, index[second]]
    se = np.sqrt(variance[:, index[first]] + variance[:, index[second]])
    return differences[0], differences[1:], se[0], se[1:]


def _spread_bounds(parts: dict[str, tuple[np.ndarray, np.ndarray]], family: tuple[str, ...],
                   classes: list[int], eligible: np.ndarray, level: float) -> dict[tuple[str, int], tuple[float, float]]:
    """Bounds of every (rate, class) max-minus-min in one simultaneous family of pairwise differences."""
    keys = [(rate, c) for rate in family for c in classes]

    def blocks() -> Iterator[tuple[np.ndarray, ...]]:
        for rate, c in keys:
            values, variance = (array[:, :, c] for array in parts[rate])
            yield _pair_differences(values, variance, eligible & ~np.isnan(values[0]))

    intervals, _ = simultaneous_intervals(blocks(), level)
    bounds = {}
    for key, (low, high) in zip(keys, intervals):
        lower, upper = absolute_bounds(np.clip(low, -1.0, 1.0), np.clip(high, -1.0, 1.0))
        bounds[key] = (float(lower.max()), float(upper.max()))
    return bounds


def _compared_classes(parts: dict[str, tuple[np.ndarray, np.ndarray]], family: tuple[str, ...], classes: list[int],
                      eligible: np.ndarray) -> list[int]:
    """Classes where every rate of the family is defined (at the point estimate) in at least two eligible groups."""
    return [c for c in classes
            if all((eligible & ~np.isnan(parts[rate][0][0, :, c])).sum() >= 2 for rate in family)]


def _average(per_class: list[tuple[float, float]]) -> tuple[float, float]:
    if not per_class:
        return float("nan"), float("nan")
    return float(np.mean([low for low, _ in per_class])), float(np.mean([high for _, high in per_class]))


def disparity_intervals(confusion: np.ndarray, eligible: np.ndarray, positive_class: int | None,
                        overall_accuracy: np.ndarray, *, min_positives: int, level: float) -> dict[str, tuple[float, float]]:
    """Interval of each measure in `DERIVED_MEASURES`; NaN bounds where the measure is undefined.

    Parameters
    ----------
    confusion
        (B, G, K, K) counts: index 0 the point estimate, then the bootstrap resamples.
    eligible
        (G,) groups large enough to compare (``min_group_size``).
    positive_class
        Class whose one-vs-rest rates are compared; None averages the per-class bounds (macro).
    overall_accuracy
        (B,) accuracy of the whole split in the point estimate and each resample (same resamples).
    min_positives
        Support a (class, group) cell needs, in the point estimate, to enter TPR (and, in
        negatives, FPR) comparisons.
    level
        Coverage of each measure's interval.
    """
    eligible = np.asarray(eligible, dtype=bool)
    per_class = class_rates(confusion)
    tpr_ok, fpr_ok = supported_cells(confusion[:1], min_positives)
    n = confusion.sum(axis=(-2, -1))[..., None]
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    predicted = confusion.sum(axis=-2)
    # rate -> (values (B, G, K), adjusted variance); unsupported cells are NaN from the start
    parts = {
        "selection_rate": (per_class["selection_rate"], adjusted_variance(predicted, np.broadcast_to(n, predicted.shape))),
        "tpr": (np.where(tpr_ok, per_class["tpr"], np.nan), adjusted_variance(tp, per_class["positives"])),
        "fpr": (np.where(fpr_ok, per_class["fpr"], np.nan), adjusted_variance(predicted - tp, per_class["negatives"])),
    }
    candidates = [positive_class] if positive_class is not None else list(range(confusion.shape[-1]))

    def measure(family: tuple[str, ...]) -> tuple[float, float]:
        classes = _compared_classes(parts, family, candidates, eligible)
        bounds = _spread_bounds(parts, family, classes, eligible, level)
        # equalized odds per class: the larger of the TPR and FPR spreads, so the larger of each bound
        per_class_bounds = [(max(bounds[(rate, c)][0] for rate in family), max(bounds[(rate, c)][1] for rate in family))
                            for c in classes]
        return _average(per_class_bounds)

    result = {
        "demographic_parity_difference": measure(("selection_rate",)),
        "equal_opportunity_difference": measure(("tpr",)),
        "equalized_odds_difference": measure(("tpr", "fpr")),
    }
    group_accuracy = accuracy(confusion)
    compared = eligible & ~np.isnan(group_accuracy[0])
    if not compared.any():
        result["worst_group_accuracy"] = result["worst_group_accuracy_gap"] = (float("nan"), float("nan"))
        return result
    rows = confusion.sum(axis=(-2, -1))  # (B, G)
    correct = np.trace(confusion, axis1=-2, axis2=-1)
    group_variance = adjusted_variance(correct, rows)[:, compared]
    # overall - accuracy_g = (rest rows / all rows) * (accuracy of the other rows - accuracy_g)
    rest_rows = rows.sum(axis=1, keepdims=True) - rows[:, compared]
    rest_correct = correct.sum(axis=1, keepdims=True) - correct[:, compared]
    share = rest_rows / rows.sum(axis=1, keepdims=True)
    gap_se = share * np.sqrt(adjusted_variance(rest_correct, rest_rows) + group_variance)
    gaps = np.asarray(overall_accuracy, dtype=float)[:, None] - group_accuracy[:, compared]
    [(gap_low, gap_high)], _ = simultaneous_intervals([(gaps[0], gaps[1:], gap_se[0], gap_se[1:])], level)
    result["worst_group_accuracy_gap"] = (float(np.clip(gap_low, -1, 1).max()), float(np.clip(gap_high, -1, 1).max()))
    accuracy_se = np.sqrt(group_variance)
    [(acc_low, acc_high)], _ = simultaneous_intervals(
        [(group_accuracy[0, compared], group_accuracy[1:, compared], accuracy_se[0], accuracy_se[1:])], level)
    result["worst_group_accuracy"] = (float(np.clip(acc_low, 0, 1).min()), float(np.clip(acc_high, 0, 1).min()))
    return result
