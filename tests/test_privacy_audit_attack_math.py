"""Membership-attack metrics against hand computations, and the attack's input checks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from audits._intervals import clopper_pearson
from audits._membership import attack_rates, attack_report, downsample_curve, empirical_epsilon, full_roc
from audits.context import AuditContext
from audits.privacy import attack_rows
from secure_ft.errors import AuditError
from secure_ft.records.config import RunConfig
from secure_ft.records.data import DatasetSplits
from secure_ft.records.policy import Policy

MEMBERS = np.array([3.0, 2.0, 1.0])
NON_MEMBERS = np.array([2.5, 0.5, 0.0])


def test_rates_match_a_hand_computation():
    rates = attack_rates(MEMBERS, NON_MEMBERS)
    # member > non-member pairs: 3 beats all 3, 2 beats 0.5 and 0, 1 beats 0.5 and 0 -> 7 of 9
    assert rates["auc"] == pytest.approx(7 / 9)
    # thresholds: >=3 (1/3, 0), >=2.5 (1/3, 1/3), >=2 (2/3, 1/3), >=1 (1, 1/3): best TPR - FPR = 2/3
    assert rates["advantage"] == pytest.approx(2 / 3)
    assert rates["balanced_accuracy"] == pytest.approx(5 / 6)
    assert rates["tpr_at_1pct_fpr"] == pytest.approx(1 / 3)  # only FPR 0 is below 1 %
    assert rates["tpr_at_0_1pct_fpr"] == pytest.approx(1 / 3)


def test_empirical_epsilon_point_estimate_by_hand():
    # (TPR, FPR) = (1, 1/3): log(1 / (1/3)) = log 3; (2/3, 1/3): log 2 both ways; (1/3, 0): log(1 / (2/3))
    result = empirical_epsilon(MEMBERS, NON_MEMBERS, delta=0.0, confidence=0.95)
    assert result["point_estimate"] == pytest.approx(math.log(3))
    assert result["point_estimate_at"] == {"fpr": pytest.approx(1 / 3), "tpr": 1.0}
    assert result["lower_bound"] == 0.0  # three rows prove nothing at 95 %


def test_perfect_separation_of_many_rows_proves_leakage():
    rng = np.random.default_rng(0)
    members, non_members = rng.uniform(1, 2, 500), rng.uniform(-2, -1, 500)
    rates = attack_rates(members, non_members)
    assert rates["auc"] == 1.0 and rates["tpr_at_1pct_fpr"] == 1.0
    bound = empirical_epsilon(members, non_members, delta=1e-5, confidence=0.95)
    # the weakest corner: TPR >= CP lower bound of 500/500 at the Bonferroni level, FPR <= CP upper of 0/500
    points = len(full_roc(members, non_members)[0])
    level = 1 - 0.05 / points
    expected = math.log((clopper_pearson(500, 500, level)[0] - 1e-5) / clopper_pearson(0, 500, level)[1])
    assert bound["lower_bound"] == pytest.approx(expected)
    assert bound["lower_bound"] > 3


def test_identical_distributions_give_chance_with_intervals_covering_it():
    rng = np.random.default_rng(1)
    report = attack_report(rng.normal(size=300), rng.normal(size=300), n_boot=200, ci_level=0.95,
                           rng=np.random.default_rng(2), delta=1e-5)
    assert report["auc"]["ci_lower"] <= 0.5 <= report["auc"]["ci_upper"]
    assert report["empirical_epsilon"]["lower_bound"] == 0.0
    assert len(report["roc_curve"]) <= 200
    assert report["roc_curve"][0] == [0.0, 0.0] and report["roc_curve"][-1] == [1.0, 1.0]
    assert report["fpr_resolution"] == pytest.approx(1 / 300)


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(3)
    members, non_members = rng.normal(0.3, 1, 100), rng.normal(0, 1, 100)
    first = attack_report(members, non_members, n_boot=50, ci_level=0.9, rng=np.random.default_rng(7), delta=1e-5)
    second = attack_report(members, non_members, n_boot=50, ci_level=0.9, rng=np.random.default_rng(7), delta=1e-5)
    assert first["auc"] == second["auc"]


def test_downsampled_curve_keeps_ends_and_is_monotone():
    fpr = np.linspace(0, 1, 1001)
    curve = downsample_curve(fpr, np.sqrt(fpr), max_points=200)
    assert len(curve) <= 200 and curve[0] == [0.0, 0.0] and curve[-1] == [1.0, 1.0]
    assert all(a[0] < b[0] and a[1] <= b[1] for a, b in zip(curve, curve[1:]))


def _frame(texts):
    return pd.DataFrame({"row": range(len(texts)), "text": texts, "label": 0, "label_name": "a"})


def _context(train, validation, test, examples=200):
    splits = DatasetSplits(train=_frame(train), validation=_frame(validation), test=_frame(test), label_names=["a", "b"],
                           group_columns=[], derived_group_columns=[], fingerprint="x", source="x")
    config = RunConfig.model_validate({"audits": {"privacy": {"membership_examples": examples}}})
    return AuditContext(run_dir=None, model_dir=None, splits=splits, config=config, policy=Policy())


def test_non_members_come_from_test_then_validation_and_exclude_training_texts():
    train = [f"train {i}" for i in range(30)]
    test = [f"test {i}" for i in range(12)] + ["train 0"]  # a duplicate of a member is no non-member
    members, non_members, info = attack_rows(_context(train, [f"val {i}" for i in range(10)], test, examples=20))
    assert len(members) == len(non_members) == 20
    assert info == {"excluded_duplicates": 1, "non_member_sources": {"test": 12, "validation": 8}}
    assert not set(non_members["text"]) & set(train)


def test_too_few_rows_for_an_attack_is_a_clear_error():
    with pytest.raises(AuditError, match="at least 10 members"):
        attack_rows(_context([f"t{i}" for i in range(30)], ["v"], ["x", "y"]))
