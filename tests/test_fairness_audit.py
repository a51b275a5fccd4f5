"""Fairness audit numbers against hand computations on synthetic predictions (not against Fairlearn).

The trained model is replaced by fixed predictions, so every group rate and summary measure
below can be checked by counting on paper; the computations are written out next to each
expected value.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import audits.fairness as fairness
from audits._intervals import bootstrap_counts
from audits._scoring import SplitScores
from audits.context import AuditContext
from secure_ft.records.config import RunConfig
from secure_ft.records.data import DatasetSplits
from secure_ft.records.policy import Policy

# binary task; groups A (6 rows), B (4 rows), C (2 rows, below min_group_size 3)
BINARY = pd.DataFrame({
    "group": list("AAAAAABBBBCC"),
    "label": [1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 1, 0],
    "pred":  [1, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1],
})
# three classes; groups X and Y (4 rows each)
MULTI = pd.DataFrame({
    "group": list("XXXXYYYY"),
    "label": [0, 1, 2, 0, 0, 1, 2, 2],
    "pred":  [0, 1, 1, 2, 0, 2, 2, 2],
})


def make_context(tmp_path, table: pd.DataFrame, label_names, *, policy=None, derived=(), **fairness_settings):
    test = pd.DataFrame({
        "row": range(len(table)),
        "text": [f"complaint number {i}" for i in range(len(table))],
        "label": table["label"],
        "label_name": [label_names[i] for i in table["label"]],
        **{column: table[column] for column in table.columns if column not in ("label", "pred")},
    })
    group_columns = [c for c in table.columns if c not in ("label", "pred")]
    splits = DatasetSplits(train=test.copy(), validation=test.copy(), test=test, label_names=list(label_names),
                           group_columns=group_columns, derived_group_columns=list(derived), fingerprint="synthetic",
                           source="synthetic")
    settings = {"min_group_size": 3, "n_boot": 100, **fairness_settings}
    config = RunConfig.model_validate({"audits": {"fairness": settings}})
    policy = policy or Policy.model_validate({"fairness": {"min_positives": 1}})
    return AuditContext(run_dir=tmp_path, model_dir=tmp_path / "model", splits=splits, config=config, policy=policy)


@pytest.fixture
def fixed_predictions(monkeypatch):
    """Make the audit 'score' the split with given predictions; counts how often it scores."""
    calls = []

    def install(predictions):
        def score(classifier, frame, context):
            calls.append(len(frame))
            n_classes = len(context.splits.label_names)
            probabilities = np.eye(n_classes)[np.asarray(predictions)] * 0.9 + 0.1 / n_classes
            return SplitScores(probabilities, np.zeros(len(frame)), frame["label"].to_numpy(dtype=int))

        monkeypatch.setattr(fairness, "load_model_for", lambda context: None)
        monkeypatch.setattr(fairness, "score_split", score)
        return calls

    return install


def rows(report):
    return {group["group"]: group for group in report["groups"]}


def values(group, names=("accuracy", "selection_rate", "tpr", "fpr", "fnr")):
    return {name: group[name]["value"] for name in names}


def test_binary_groups_and_summaries_match_hand_computation(tmp_path, fixed_predictions):
    calls = fixed_predictions(BINARY["pred"])
    result = fairness.fairness_audit(make_context(tmp_path, BINARY, ["0", "1"]))
    assert calls == [12]  # the test split is scored once
    metrics = result.metrics
    assert metrics["mode"] == "one_vs_rest" and metrics["positive_class"] == "1"
    report = metrics["columns"]["group"]
    groups = rows(report)
    # A: TP 2 FN 1 FP 1 TN 2 -> accuracy 4/6, selected 3/6, TPR 2/3, FPR 1/3, FNR 1/3
    assert values(groups["A"]) == pytest.approx({"accuracy": 4 / 6, "selection_rate": 3 / 6, "tpr": 2 / 3,
                                                 "fpr": 1 / 3, "fnr": 1 / 3})
    # B: TP 1 FN 1 FP 0 TN 2 -> 3/4, 1/4, 1/2, 0, 1/2
    assert values(groups["B"]) == pytest.approx({"accuracy": 3 / 4, "selection_rate": 1 / 4, "tpr": 1 / 2,
                                                 "fpr": 0.0, "fnr": 1 / 2})
    # C: TP 0 FN 1 FP 1 TN 0 -> 0, 1/2, 0, 1, 1 (reported, but too small to compare)
    assert values(groups["C"]) == pytest.approx({"accuracy": 0.0, "selection_rate": 0.5, "tpr": 0.0,
                                                 "fpr": 1.0, "fnr": 1.0})
    assert [(g["count"], g["insufficient_data"], g["positives"], g["negatives"]) for g in report["groups"]] == [
        (6, False, 3, 3), (4, False, 2, 2), (2, True, 1, 1)]
    assert report["insufficient_groups"] == ["C"] and report["status"] == "ok"

    summary = {name: value["value"] for name, value in report["summary"].items()}
    assert summary == pytest.approx({
        "demographic_parity_difference": 1 / 2 - 1 / 4,  # C excluded
        "demographic_parity_ratio": (1 / 4) / (1 / 2),
        "equal_opportunity_difference": 2 / 3 - 1 / 2,
        "equalized_odds_difference": max(2 / 3 - 1 / 2, 1 / 3 - 0),
        "equalized_odds_ratio": min((1 / 2) / (2 / 3), 0 / (1 / 3)),
        "worst_group_accuracy": 4 / 6,
        "worst_group_accuracy_gap": 7 / 12 - 4 / 6,  # overall: 4 + 3 + 0 correct of 12
    })
    assert report["worst_group"] == "A"
    overall = {name: value["value"] for name, value in metrics["overall"].items()}
    # overall: TP 3 FN 3 FP 2 TN 4
    assert overall == pytest.approx({"accuracy": 7 / 12, "selection_rate": 5 / 12, "tpr": 3 / 6, "fpr": 2 / 6,
                                     "fnr": 3 / 6})
    json.dumps(result.to_dict())


def test_macro_multiclass_matches_hand_computation(tmp_path, fixed_predictions):
    fixed_predictions(MULTI["pred"])
    result = fairness.fairness_audit(make_context(tmp_path, MULTI, ["0", "1", "2"]))
    report = result.metrics["columns"]["group"]
    assert result.metrics["mode"] == "macro" and result.metrics["positive_class"] is None
    x, y = rows(report)["X"], rows(report)["Y"]
    # X per class (TPR, FPR, selection): c0 (1/2, 0, 1/4), c1 (1, 1/3, 2/4), c2 (0, 1/3, 1/4)
    # Y per class:                       c0 (1, 0, 1/4),   c1 (0, 0, 0),     c2 (1, 1/2, 3/4)
    assert values(x, ("accuracy", "tpr", "fpr", "fnr")) == pytest.approx(
        {"accuracy": 2 / 4, "tpr": (1 / 2 + 1 + 0) / 3, "fpr": (0 + 1 / 3 + 1 / 3) / 3, "fnr": (1 / 2 + 0 + 1) / 3})
    assert values(y, ("accuracy", "tpr", "fpr", "fnr")) == pytest.approx(
        {"accuracy": 3 / 4, "tpr": (1 + 0 + 1) / 3, "fpr": (0 + 0 + 1 / 2) / 3, "fnr": (0 + 1 + 0) / 3})
    assert x["selection_rate"]["value"] is None  # macro: 1/K in every group, not reported
    assert {label: r["value"] for label, r in x["class_recall"].items()} == pytest.approx({"0": 0.5, "1": 1.0, "2": 0.0})
    assert y["class_selection_rate"] == pytest.approx({"0": 0.25, "1": 0.0, "2": 0.75})
    summary = {name: value["value"] for name, value in report["summary"].items()}
    assert summary == pytest.approx({
        "demographic_parity_difference": (0 + 1 / 2 + 1 / 2) / 3,
        "demographic_parity_ratio": (1 + 0 + 1 / 3) / 3,
        "equal_opportunity_difference": (1 / 2 + 1 + 1) / 3,
        "equalized_odds_difference": (max(1 / 2, 0) + max(1, 1 / 3) + max(1, 1 / 2 - 1 / 3)) / 3,
        # class 0: FPR is 0 in both groups, its ratio 0/0 is undefined: averaged over classes 1 and 2
        "equalized_odds_ratio": (min(0 / 1, 0 / (1 / 3)) + min(0 / 1, (1 / 3) / (1 / 2))) / 2,
        "worst_group_accuracy": 2 / 4,
        "worst_group_accuracy_gap": 5 / 8 - 2 / 4,
    })


def test_positive_class_gives_one_vs_rest_rates(tmp_path, fixed_predictions):
    fixed_predictions(MULTI["pred"])
    result = fairness.fairness_audit(make_context(tmp_path, MULTI, ["0", "1", "2"], positive_class="1"))
    report = result.metrics["columns"]["group"]
    assert result.metrics["mode"] == "one_vs_rest" and result.metrics["positive_class"] == "1"
    assert values(rows(report)["X"]) == pytest.approx(
        {"accuracy": 2 / 4, "selection_rate": 2 / 4, "tpr": 1.0, "fpr": 1 / 3, "fnr": 0.0})
    assert values(rows(report)["Y"]) == pytest.approx(
        {"accuracy": 3 / 4, "selection_rate": 0.0, "tpr": 0.0, "fpr": 0.0, "fnr": 1.0})
    summary = {name: value["value"] for name, value in report["summary"].items()}
    assert summary["demographic_parity_difference"] == pytest.approx(1 / 2)
    assert summary["demographic_parity_ratio"] == pytest.approx(0.0)
    assert summary["equalized_odds_difference"] == pytest.approx(1.0)
    assert summary["equal_opportunity_difference"] == pytest.approx(1.0)


def test_bootstrap_intervals_match_a_naive_reference(tmp_path, fixed_predictions):
    fixed_predictions(BINARY["pred"])
    context = make_context(tmp_path, BINARY, ["0", "1"], n_boot=300, ci_level=0.9)
    report = fairness.fairness_audit(context).metrics["columns"]["group"]
    # reference: the same seeded resamples, each metric counted row by row
    counts = bootstrap_counts(12, 300, np.random.default_rng(context.config.seed))
    y, p, g = BINARY["label"].to_numpy(), BINARY["pred"].to_numpy(), BINARY["group"].to_numpy()

    def selection(weights, name):
        size = sum(w for w, gi in zip(weights, g) if gi == name)
        return sum(w * (pi == 1) for w, pi, gi in zip(weights, p, g) if gi == name) / size if size else np.nan

    def adjusted_variance(weights, name):  # one selection and one non-selection added (Agresti & Caffo)
        size = sum(w for w, gi in zip(weights, g) if gi == name)
        share = (sum(w * (pi == 1) for w, pi, gi in zip(weights, p, g) if gi == name) + 1) / (size + 2)
        return share * (1 - share) / (size + 2)

    studentized, ratio, tpr_a = [], [], []
    point = selection(np.ones(12), "A") - selection(np.ones(12), "B")  # 4/6 - 1/4
    point_se = np.sqrt(adjusted_variance(np.ones(12), "A") + adjusted_variance(np.ones(12), "B"))
    for weights in counts:
        rates = [selection(weights, name) for name in "AB"]  # C is below min_group_size
        se = np.sqrt(adjusted_variance(weights, "A") + adjusted_variance(weights, "B"))
        studentized.append(abs(rates[0] - rates[1] - point) / se)
        # a resample without any row of a group leaves both measures undefined there
        ratio.append(np.nan if np.isnan(rates).any() or max(rates) == 0 else min(rates) / max(rates))
        positives = sum(w for w, yi, gi in zip(weights, y, g) if gi == "A" and yi == 1)
        hits = sum(w for w, yi, pi, gi in zip(weights, y, p, g) if gi == "A" and yi == 1 and pi == 1)
        tpr_a.append(hits / positives if positives else np.nan)
    # ratio and group rates: equal-tailed percentile intervals
    for measured, reference in ((report["summary"]["demographic_parity_ratio"], ratio),
                                (rows(report)["A"]["tpr"], tpr_a)):
        reference = np.array(reference)
        expected = np.quantile(reference[~np.isnan(reference)], [0.05, 0.95])
        assert [measured["ci_lower"], measured["ci_upper"]] == pytest.approx(expected.tolist())
    # demographic-parity difference = |SR_A - SR_B|: studentized bootstrap interval of the one difference, then |.|
    studentized = np.array(studentized)
    critical = np.quantile(studentized[~np.isnan(studentized)], 0.9)
    low, high = point - critical * point_se, point + critical * point_se
    expected = [0.0 if low <= 0 <= high else min(abs(low), abs(high)), max(abs(low), abs(high))]
    measured = report["summary"]["demographic_parity_difference"]
    assert measured["value"] == pytest.approx(abs(point))
    assert [measured["ci_lower"], measured["ci_upper"]] == pytest.approx(expected)


def test_checks_are_judged_on_the_interval_and_the_permutation_test(tmp_path, fixed_predictions):
    fixed_predictions(BINARY["pred"])
    thresholds = {"max_demographic_parity_difference": 0.3, "max_equalized_odds_difference": 0.3,
                  "min_demographic_parity_ratio": 0.4, "max_worst_group_accuracy_gap": 0.2, "min_positives": 1}
    result = fairness.fairness_audit(make_context(tmp_path, BINARY, ["0", "1"], policy=Policy.model_validate(
        {"fairness": thresholds})))
    column = result.metrics["columns"]["group"]
    checks = {check.name: check for check in result.checks}
    assert set(checks) == {f"group.{m}" for m in ("demographic_parity_difference", "demographic_parity_ratio",
                                                  "equalized_odds_difference", "worst_group_accuracy_gap")}
    for name, check in checks.items():
        measure = name.split(".", 1)[1]
        summary, test = column["summary"][measure], column["tests"][measure]
        assert check.actual == summary["value"] and check.interval == [summary["ci_lower"], summary["ci_upper"]]
        assert check.p_value == test["p_value"] is not None
        larger_is_worse = check.comparison == "<="
        pessimistic = summary["ci_upper"] if larger_is_worse else summary["ci_lower"]
        optimistic = summary["ci_lower"] if larger_is_worse else summary["ci_upper"]
        meets = (lambda v: v <= check.threshold) if larger_is_worse else (lambda v: v >= check.threshold)
        expected = ("pass" if meets(pessimistic) else
                    "fail" if not meets(optimistic) and test["p_value"] < 0.05 else "inconclusive")
        assert check.outcome == expected, name
    # 12 rows cannot settle a 0.25 demographic-parity gap against 0.3 either way
    assert checks["group.demographic_parity_difference"].outcome == "inconclusive"
    assert checks["group.demographic_parity_difference"].actual == pytest.approx(0.25)
    assert not result.passed


def test_small_groups_warn_or_fail_as_the_policy_says(tmp_path, fixed_predictions):
    fixed_predictions(BINARY["pred"])
    warn = fairness.fairness_audit(make_context(tmp_path, BINARY, ["0", "1"]))
    assert warn.passed and any("below the minimum size" in note and "C" in note for note in warn.notes)
    fail = fairness.fairness_audit(make_context(tmp_path, BINARY, ["0", "1"], policy=Policy.model_validate(
        {"fairness": {"min_positives": 1, "insufficient_data": "fail"}})))
    assert not fail.passed
    assert [c.name for c in fail.checks if not c.passed] == ["group.groups_below_min_size"]


def test_intersection_and_derived_columns_are_labelled(tmp_path, fixed_predictions):
    table = BINARY.assign(sex_derived=list("FMFMFMFMFMFM"))
    fixed_predictions(table["pred"])
    result = fairness.fairness_audit(make_context(tmp_path, table, ["0", "1"], derived=["sex_derived"],
                                                  intersections=True))
    columns = result.metrics["columns"]
    assert list(columns) == ["group", "sex_derived", "group & sex_derived"]
    assert columns["sex_derived"]["derived"] and not columns["group"]["derived"]
    assert columns["group & sex_derived"]["intersection"] and columns["group & sex_derived"]["derived"]
    assert {g["group"] for g in columns["group & sex_derived"]["groups"]} == {"A | F", "A | M", "B | F", "B | M",
                                                                               "C | F", "C | M"}
    assert rows(columns["group & sex_derived"])["A | F"]["count"] == 3
    assert any("derived (proxy)" in note for note in result.notes)


def test_evidence_tables_are_written_and_listed(tmp_path, fixed_predictions):
    fixed_predictions(MULTI["pred"])
    result = fairness.fairness_audit(make_context(tmp_path, MULTI, ["0", "1", "2"]))
    assert sorted(result.evidence) == ["audits/fairness/class_recall.csv", "audits/fairness/excluded_cells.csv",
                                       "audits/fairness/groups.csv", "audits/fairness/summary.csv"]
    groups = pd.read_csv(tmp_path / "audits/fairness/groups.csv")
    assert list(groups["group"]) == ["X", "Y"] and "tpr_ci_upper" in groups.columns
    assert len(pd.read_csv(tmp_path / "audits/fairness/class_recall.csv")) == 6
    summary = pd.read_csv(tmp_path / "audits/fairness/summary.csv")
    assert set(summary["measure"]) >= {"equalized_odds_difference"} and "permutation_p_value" in summary.columns
