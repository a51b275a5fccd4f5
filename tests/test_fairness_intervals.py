"""Intervals of max-minus-min disparities: they contain their estimate and cover the true disparity.

Synthetic populations with known group rates stand in for a model: each row's true class is
drawn, and the "model" is right with a group's own probability, so the true demographic
parity, equal opportunity and equalized odds differences and worst-group gap are known.
"""

from __future__ import annotations

import numpy as np
import pytest

from audits._disparity_intervals import DERIVED_MEASURES, absolute_bounds, disparity_intervals
from audits._group_rates import confusion_tensor, summary_measures
from audits._intervals import bootstrap_counts, percentile_intervals, simultaneous_intervals

LEVEL = 0.95


def _population(rng, tpr, fpr, rows_per_group):
    """Binary labels (half positive), predictions right with each group's TPR / 1 - FPR."""
    groups = np.repeat(np.arange(len(tpr)), rows_per_group)
    label = rng.integers(0, 2, len(groups))
    hit = rng.random(len(groups)) < np.where(label == 1, np.asarray(tpr)[groups], 1 - np.asarray(fpr)[groups])
    pred = np.where(hit, label, 1 - label)
    return label, pred, groups


def _both_intervals(label, pred, groups, n_classes, positive_class, rng, n_boot=200, min_positives=10):
    """Point estimates, the derived intervals and the percentile intervals of the resampled measures."""
    n_groups = int(groups.max()) + 1
    weights = np.vstack([np.ones((1, len(label))), bootstrap_counts(len(label), n_boot, rng)])
    confusion = confusion_tensor(label, pred, groups, n_groups, n_classes, weights)
    overall = np.trace(confusion.sum(axis=1), axis1=-2, axis2=-1) / confusion.sum(axis=(1, 2, 3))
    eligible = np.ones(n_groups, dtype=bool)
    measures = summary_measures(confusion, eligible, positive_class, overall, min_positives=min_positives)
    derived = disparity_intervals(confusion, eligible, positive_class, overall, min_positives=min_positives,
                                  level=LEVEL)
    percentile = {name: tuple(bound[0] for bound in percentile_intervals(measures[name][1:, None], LEVEL))
                  for name in DERIVED_MEASURES}
    return {name: measures[name][0] for name in DERIVED_MEASURES}, derived, percentile


def test_absolute_value_bounds():
    lower, upper = absolute_bounds(np.array([-0.2, 0.1, -0.5, 0.0]), np.array([0.3, 0.4, -0.1, 0.0]))
    assert lower.tolist() == [0.0, 0.1, 0.1, 0.0] and upper.tolist() == [0.3, 0.4, 0.5, 0.0]


def test_simultaneous_intervals_hold_their_points_and_widen_with_the_family():
    rng = np.random.default_rng(3)
    data = rng.normal(size=(200, 8))
    point = data.mean(axis=0)
    resamples = np.stack([data[rng.integers(0, 200, 200)].mean(axis=0) for _ in range(400)])
    [(low, high)], critical = simultaneous_intervals([(point, resamples)], LEVEL)
    assert np.all(low <= point) and np.all(point <= high)
    [(one_low, one_high)], one_critical = simultaneous_intervals([(point[:1], resamples[:, :1])], LEVEL)
    # one estimate: about the normal 1.96; eight at once: about the 0.95^(1/8) quantile of |z| (2.7)
    assert 1.7 < one_critical < 2.2 and 2.4 < critical < 3.1
    assert high[0] - low[0] > one_high[0] - one_low[0]
    # an estimate that never varies keeps its point; one undefined in most resamples is unbounded
    constant = np.vstack([np.full(400, 0.5), np.where(np.arange(400) < 300, np.nan, 0.2)]).T
    [(low, high)], _ = simultaneous_intervals([(np.array([0.5, 0.2]), constant)], LEVEL)
    assert low.tolist() == [0.5, -np.inf] and high.tolist() == [0.5, np.inf]


def test_the_percentile_defect_is_gone():
    """Ten groups of 30 with equal true rates: the old percentile interval of the equalized-odds
    difference lies wholly above its own estimate; the derived one contains it."""
    rng = np.random.default_rng(0)
    label, pred, groups = _population(rng, [0.75] * 10, [0.25] * 10, 30)
    point, derived, percentile = _both_intervals(label, pred, groups, 2, 1, rng, min_positives=5)
    assert percentile["equalized_odds_difference"][0] > point["equalized_odds_difference"]
    for name in DERIVED_MEASURES:
        low, high = derived[name]
        assert low <= point[name] <= high, name
    low, high = derived["equalized_odds_difference"]
    assert low == 0.0  # every TPR and FPR difference is compatible with no gap at all


@pytest.mark.parametrize("n_classes,positive_class,rows", [(2, 1, 25), (3, None, 40), (4, 2, 60), (5, None, 20)])
def test_every_interval_contains_its_estimate(n_classes, positive_class, rows):
    rng = np.random.default_rng(n_classes * 100 + rows)
    for _ in range(5):
        n_groups = int(rng.integers(2, 9))
        groups = np.repeat(np.arange(n_groups), rows)
        label = rng.integers(0, n_classes, len(groups))
        skill = rng.uniform(0.4, 0.95, n_groups)[groups]  # groups differ by chance, some by a lot
        pred = np.where(rng.random(len(groups)) < skill, label, rng.integers(0, n_classes, len(groups)))
        point, derived, _ = _both_intervals(label, pred, groups, n_classes, positive_class, rng, n_boot=100)
        for name in DERIVED_MEASURES:
            low, high = derived[name]
            if np.isnan(point[name]):
                assert np.isnan(low) and np.isnan(high), name
            else:
                assert low - 1e-12 <= point[name] <= high + 1e-12, name


# (TPR by group, FPR by group): no gap at all, and a known gap (TPR 0.6 vs 0.8, FPR equal)
POPULATIONS = {
    "no_gap": ([0.75] * 4, [0.25] * 4),
    "known_gap": ([0.6, 0.6, 0.6, 0.8], [0.25] * 4),
}


def _true_measures(tpr, fpr):
    tpr, fpr = np.asarray(tpr), np.asarray(fpr)
    selection = 0.5 * tpr + 0.5 * fpr  # half the rows are positive
    group_accuracy = 0.5 * tpr + 0.5 * (1 - fpr)
    return {
        "demographic_parity_difference": np.ptp(selection),
        "equal_opportunity_difference": np.ptp(tpr),
        "equalized_odds_difference": max(np.ptp(tpr), np.ptp(fpr)),
        "worst_group_accuracy": group_accuracy.min(),
        "worst_group_accuracy_gap": group_accuracy.mean() - group_accuracy.min(),  # equal group sizes
    }


@pytest.mark.parametrize("population", sorted(POPULATIONS))
def test_intervals_cover_the_true_disparity(population):
    """200 test splits of 4 groups x 60 rows (about 30 positives per group), 200 resamples each.

    Nominal 95%; the derived intervals cover each true measure in at least 90% of the splits
    (200 splits give a standard error of 1.5 points). With no gap the percentile interval of
    the max-minus-min almost never holds the true 0: it sits above it.
    """
    tpr, fpr = POPULATIONS[population]
    truth = _true_measures(tpr, fpr)
    rng = np.random.default_rng(20261202)
    covered = {name: 0 for name in DERIVED_MEASURES}
    percentile_covered = dict(covered)
    repetitions = 200
    for _ in range(repetitions):
        label, pred, groups = _population(rng, tpr, fpr, 60)
        _, derived, percentile = _both_intervals(label, pred, groups, 2, 1, rng)
        for name in DERIVED_MEASURES:
            covered[name] += derived[name][0] <= truth[name] <= derived[name][1]
            percentile_covered[name] += percentile[name][0] <= truth[name] <= percentile[name][1]
    coverage = {name: hits / repetitions for name, hits in covered.items()}
    assert all(share >= 0.90 for share in coverage.values()), coverage
    if population == "no_gap":
        for name in ("demographic_parity_difference", "equal_opportunity_difference", "equalized_odds_difference"):
            assert percentile_covered[name] / repetitions < 0.2, (name, percentile_covered)
