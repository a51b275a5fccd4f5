"""Support-aware fairness judged three ways (pass / fail / inconclusive), and what the gate makes of it.

Predictions are fixed (no model), so each case is built to have a known truth: errors that
do not depend on the group (any disparity is chance), errors that clearly do, and classes
with too few positives in a group to compare.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import audits.fairness as fairness
from audits.gate import decide
from audits.result import Check
from secure_ft.pipeline.report.html import render_html
from secure_ft.records.policy import Policy
from test_fairness_audit import fixed_predictions, make_context  # noqa: F401  (fixture)

LIMITS = {"max_equalized_odds_difference": 0.3, "max_demographic_parity_difference": 0.2,
          "max_worst_group_accuracy_gap": 0.1}


def _policy(**fairness_settings) -> Policy:
    return Policy.model_validate({"name": "review-policy", "required_audits": ["fairness"],
                                  "fairness": {**LIMITS, "inconclusive": "review", **fairness_settings}})


def _null_table(seed: int = 0) -> pd.DataFrame:
    """12 groups x 30 rows; the model is right 75% of the time whatever the group."""
    rng = np.random.default_rng(seed)
    n = 12 * 30
    label = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < 0.75, label, 1 - label)
    return pd.DataFrame({"group": np.repeat([f"g{i:02d}" for i in range(12)], 30), "label": label, "pred": pred})


def _clear_table() -> pd.DataFrame:
    """Two groups of 150: right on every row of A, on a third of B's positives and half of its negatives."""
    label = np.tile([1, 0], 150)
    pred_a = label[:150].copy()
    pred_b = label[150:].copy()
    positives_b = np.flatnonzero(pred_b == 1)
    pred_b[positives_b[: 2 * len(positives_b) // 3]] = 0
    negatives_b = np.flatnonzero(label[150:] == 0)
    pred_b[negatives_b[: len(negatives_b) // 2]] = 1
    return pd.DataFrame({"group": ["A"] * 150 + ["B"] * 150, "label": label, "pred": np.concatenate([pred_a, pred_b])})


def _audit(tmp_path, fixed_predictions, table, policy, labels=("0", "1"), **settings):  # noqa: F811
    fixed_predictions(table["pred"])
    settings = {"min_group_size": 20, "n_boot": 200, **settings}
    return fairness.fairness_audit(make_context(tmp_path, table, list(labels), policy=policy, **settings))


@pytest.mark.parametrize("comparison,low,high,p,expected", [
    ("<=", 0.10, 0.25, 0.50, "pass"),          # pessimistic (upper) end meets the limit
    ("<=", 0.35, 0.60, 0.01, "fail"),          # optimistic end breaks it and the breach is significant
    ("<=", 0.35, 0.60, 0.30, "inconclusive"),  # breach that shuffled labels reproduce
    ("<=", 0.20, 0.60, 0.001, "inconclusive"), # interval straddles the limit
    ("<=", 0.35, 0.60, None, "inconclusive"),  # no test: never a failure
    (">=", 0.85, 0.95, 0.50, "pass"),          # a minimum: the lower end is the pessimistic one
    (">=", 0.60, 0.75, 0.01, "fail"),
])
def test_interval_judgement(comparison, low, high, p, expected):
    check = Check.from_interval("m", (low + high) / 2, low, high, comparison, 0.3 if comparison == "<=" else 0.8,
                                p_value=p, alpha=0.05, review="look at the table")
    assert check.outcome == expected and check.passed == (expected == "pass")
    assert (check.review == "look at the table") == (expected == "inconclusive")
    assert Check(**{**check.__dict__}) == check  # round-trips through its fields (JSON form)


def test_check_outcome_must_agree_with_passed():
    with pytest.raises(ValueError, match="contradicts"):
        Check("m", 0.1, "<=", 0.3, True, outcome="inconclusive")
    assert Check("m", 0.5, "<=", 0.3, False).outcome == "fail"  # results stored before outcomes existed


def test_disparity_that_shuffled_labels_reproduce_is_never_a_fail(tmp_path, fixed_predictions):  # noqa: F811
    result = _audit(tmp_path, fixed_predictions, _null_table(), _policy())
    checks = {check.name: check for check in result.checks}
    assert set(checks) == {f"group.{m}" for m in ("equalized_odds_difference", "demographic_parity_difference",
                                                  "worst_group_accuracy_gap")}
    for check in checks.values():
        low, high = check.interval
        # the point estimates break the limits, but the true gaps are 0 and the intervals say so
        # (a percentile interval of the max-minus-min sat wholly above the limits here)
        assert check.actual > check.threshold and low <= 0.0 <= check.actual <= high
        assert check.p_value >= 0.05  # and chance gives a gap this large
        assert check.outcome == "inconclusive" and "permutation distribution" in check.review
    tests = result.metrics["columns"]["group"]["tests"]
    assert tests["equalized_odds_difference"]["n_permutations"] == 1000
    assert sum(tests["equalized_odds_difference"]["histogram"]["counts"]) == tests["equalized_odds_difference"]["n_defined"]
    verdict = decide([result], _policy(), "m" * 64, "p" * 64)
    assert verdict.outcome == "needs_review" and not verdict.passed and verdict.reasons == []
    assert len(verdict.review) == 3 and all("review:" in item for item in verdict.review)
    html = render_html({"audits": {"fairness": result.to_dict()}, "verdict": verdict.to_dict()})
    assert "NEEDS REVIEW" in html and "INCONCLUSIVE" in html
    assert 'alt="permutation distribution of equalized_odds_difference for group"' in html


def test_clear_disparity_fails_and_blocks(tmp_path, fixed_predictions):  # noqa: F811
    result = _audit(tmp_path, fixed_predictions, _clear_table(), _policy())
    check = {c.name: c for c in result.checks}["group.equalized_odds_difference"]
    assert check.actual == pytest.approx(0.66, abs=0.01)  # TPR 1.0 vs 0.33 (FPR gap 0.5 is smaller)
    assert check.outcome == "fail" and check.p_value < 0.01 and check.interval[0] > 0.3
    verdict = decide([result], _policy(), "m" * 64, "p" * 64)
    assert verdict.outcome == "blocked" and any("equalized_odds_difference" in r for r in verdict.reasons)


def test_inconclusive_follows_the_policy(tmp_path, fixed_predictions):  # noqa: F811
    result = _audit(tmp_path, fixed_predictions, _null_table(), _policy())
    block = decide([result], _policy(inconclusive="block"), "m" * 64, "p" * 64)
    assert block.outcome == "blocked" and all("inconclusive: block" in reason for reason in block.reasons)
    warn = decide([result], _policy(inconclusive="warn"), "m" * 64, "p" * 64)
    assert warn.outcome == "passed" and len(warn.warnings) == 3 and warn.review == []


def test_cells_with_few_positives_are_left_out_and_listed(tmp_path, fixed_predictions):  # noqa: F811
    # three classes, groups X and Y of 60 rows; class 2 has 4 positives in Y (all missed) and 20 in X
    rng = np.random.default_rng(1)
    labels_x = np.repeat([0, 1, 2], 20)
    labels_y = np.concatenate([np.repeat(0, 28), np.repeat(1, 28), np.repeat(2, 4)])
    label = np.concatenate([labels_x, labels_y])
    pred = label.copy()
    pred[120 - 4:] = 0  # Y's four class-2 rows all predicted as class 0
    flip = rng.choice(np.flatnonzero(label < 2), 6, replace=False)
    pred[flip] = 1 - pred[flip]
    table = pd.DataFrame({"group": ["X"] * 60 + ["Y"] * 60, "label": label, "pred": pred})
    policy = Policy.model_validate({"fairness": {"max_equal_opportunity_difference": 0.5}})
    result = _audit(tmp_path, fixed_predictions, table, policy, labels=("a", "b", "c"))
    column = result.metrics["columns"]["group"]
    assert column["excluded_cells"] == [{"class": "c", "group": "Y", "positives": 4, "negatives": 56,
                                         "left_out": ["tpr"]}]
    assert any("'c' in 'Y' (4 positives, 56 negatives)" in note and "min_positives = 10" in note
               for note in result.notes)
    # class c's recall gap (1.0 vs 0.0) is not in the macro equal-opportunity difference: only a and b are
    recall = {g["group"]: {k: v["value"] for k, v in g["class_recall"].items()} for g in column["groups"]}
    expected = np.mean([abs(recall["X"][c] - recall["Y"][c]) for c in ("a", "b")])
    assert column["summary"]["equal_opportunity_difference"]["value"] == pytest.approx(expected)
    lenient = _audit(tmp_path, fixed_predictions, table, Policy.model_validate(
        {"fairness": {"max_equal_opportunity_difference": 0.5, "min_positives": 1}}), labels=("a", "b", "c"))
    gaps = [abs(recall["X"][c] - recall["Y"][c]) for c in ("a", "b", "c")]
    assert lenient.metrics["columns"]["group"]["summary"]["equal_opportunity_difference"]["value"] == pytest.approx(
        np.mean(gaps))
    assert (tmp_path / "audits" / "fairness" / "excluded_cells.csv").read_text().startswith(
        "column,class,group,positives,negatives,left_out")


def test_too_few_shuffles_to_ever_fail_is_refused(tmp_path, fixed_predictions):  # noqa: F811
    from secure_ft.errors import AuditError

    with pytest.raises(AuditError, match="n_permutations = 10 .*cannot give a p-value below"):
        _audit(tmp_path, fixed_predictions, _null_table(), _policy(), n_permutations=10)


def test_point_estimate_switch_is_refused_with_the_fix(tmp_path):
    from secure_ft.errors import PolicyError
    from secure_ft.records.policy import load_policy

    path = tmp_path / "old.yaml"
    path.write_text("fairness:\n  max_equalized_odds_difference: 0.5\n  use_ci_bound: false\n")
    with pytest.raises(PolicyError, match="old.yaml: invalid policy: fairness: .*use_ci_bound is no longer a fairness "
                                          "setting.*remove the line"):
        load_policy(path)


def test_shipped_regulated_policies_ask_for_review():
    from importlib import resources

    from secure_ft.records.policy import load_policy

    folder = resources.files("secure_ft.records") / "policies"
    for name, mode in (("regulated-default.yaml", "review"), ("strict.yaml", "review"), ("research.yaml", "warn")):
        policy = load_policy(str(folder / name))[0]
        assert policy.fairness.inconclusive == mode and policy.fairness.min_positives == 10
