"""Performance audit: accuracy, macro-F1, per-class recall and majority baseline by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import audits.performance as performance
from audits._scoring import SplitScores
from audits.context import AuditContext
from secure_ft.errors import DataError
from secure_ft.records.config import RunConfig
from secure_ft.records.data import DatasetSplits
from tiny_models import tiny_bert_folder
from secure_ft.records.policy import Policy, load_policy

LABELS = ["card", "loan", "report"]
TRUE = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
PRED = [0, 0, 0, 1, 1, 2, 2, 2, 0, 2]


def frame(labels):
    return pd.DataFrame({"row": range(len(labels)), "text": [f"text {i}" for i in range(len(labels))],
                         "label": labels, "label_name": [LABELS[i] for i in labels]})


def make_context(tmp_path, test_labels=TRUE, policy=None):
    splits = DatasetSplits(train=frame([0, 0, 0, 1, 2]), validation=frame([0, 1, 2]), test=frame(test_labels),
                           label_names=LABELS, group_columns=[], derived_group_columns=[], fingerprint="x", source="x")
    return AuditContext(run_dir=tmp_path, model_dir=tmp_path / "model", splits=splits, config=RunConfig(),
                        policy=policy or Policy())


@pytest.fixture
def predictions(monkeypatch):
    def install(predicted):
        def score(classifier, frame, context):
            return SplitScores(np.eye(len(LABELS))[np.asarray(predicted)], np.zeros(len(frame)),
                               frame["label"].to_numpy(dtype=int))

        monkeypatch.setattr(performance, "load_model_for", lambda context: None)
        monkeypatch.setattr(performance, "score_split", score)

    return install


def test_numbers_match_hand_computation(tmp_path, predictions):
    predictions(PRED)
    result = performance.performance_audit(make_context(tmp_path, policy=load_policy()[0]))
    metrics = result.metrics
    # confusion rows (true) card: 3 right, 1 -> loan; loan: 1 right, 1 -> report; report: 3 right, 1 -> card
    assert metrics["confusion_matrix"]["counts"] == [[3, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert metrics["accuracy"]["value"] == pytest.approx(7 / 10)
    per_class = {row["label"]: row for row in metrics["per_class"]}
    assert {label: (row["precision"], row["recall"], row["f1"], row["support"]) for label, row in per_class.items()} == {
        "card": (pytest.approx(3 / 4), pytest.approx(3 / 4), pytest.approx(3 / 4), 4),
        "loan": (pytest.approx(1 / 2), pytest.approx(1 / 2), pytest.approx(1 / 2), 2),
        "report": (pytest.approx(3 / 4), pytest.approx(3 / 4), pytest.approx(3 / 4), 4),
    }
    assert metrics["macro_f1"]["value"] == pytest.approx((0.75 + 0.5 + 0.75) / 3)
    assert metrics["majority_class"] == "card"  # most frequent in train
    assert metrics["majority_baseline_accuracy"]["value"] == pytest.approx(4 / 10)
    assert metrics["gain_over_majority"]["value"] == pytest.approx(7 / 10 - 4 / 10)
    assert metrics["min_class_recall"]["value"] == pytest.approx(1 / 2)
    low, high = metrics["accuracy"]["ci_lower"], metrics["accuracy"]["ci_upper"]
    assert 0 <= low <= 0.7 <= high <= 1
    # the shipped policy: gain >= 0.05 and macro-F1 >= 0.20
    assert result.passed and {c.name for c in result.checks} == {"gain_over_majority", "macro_f1"}
    assert sorted(result.evidence) == ["audits/performance/confusion_matrix.csv", "audits/performance/per_class.csv"]
    assert pd.read_csv(tmp_path / "audits/performance/confusion_matrix.csv", index_col=0).loc["report", "card"] == 1
    json.dumps(result.to_dict())


def test_matches_scikit_learn_on_random_predictions(tmp_path, predictions):
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 3, 200).tolist(), rng.integers(0, 3, 200).tolist()
    predictions(predicted)
    metrics = performance.performance_audit(make_context(tmp_path, truth)).metrics
    assert metrics["accuracy"]["value"] == pytest.approx(accuracy_score(truth, predicted))
    assert metrics["macro_f1"]["value"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert [row["recall"] for row in metrics["per_class"]] == pytest.approx(recall_score(truth, predicted, average=None))


def test_majority_guesser_fails_the_gain_check(tmp_path, predictions):
    predictions([0] * len(TRUE))
    result = performance.performance_audit(make_context(tmp_path, policy=Policy.model_validate(
        {"performance": {"min_gain_over_majority": 0.05, "min_class_recall": 0.1}})))
    failed = {c.name: c for c in result.checks if not c.passed}
    assert set(failed) == {"gain_over_majority", "min_class_recall"}
    assert failed["gain_over_majority"].actual == pytest.approx(0.0)
    assert any("never predicted ['loan', 'report']" in note for note in result.notes)


def test_ci_bound_is_judged_when_asked(tmp_path, predictions):
    predictions(PRED)
    result = performance.performance_audit(make_context(tmp_path, policy=Policy.model_validate(
        {"performance": {"min_accuracy": 0.6, "use_ci_bound": True}})))
    check = result.checks[0]
    assert check.actual == result.metrics["accuracy"]["ci_lower"] < 0.7 and "lower 95% CI bound" in check.note


def test_class_without_test_rows_is_reported_not_scored(tmp_path, predictions):
    truth = [0, 0, 1, 1]
    predictions([0, 0, 1, 0])
    metrics = performance.performance_audit(make_context(tmp_path, truth)).metrics
    report = next(row for row in metrics["per_class"] if row["label"] == "report")
    assert report["support"] == 0 and report["recall"] is None and report["f1"] is None
    assert metrics["macro_f1"]["value"] == pytest.approx((0.8 + 2 / 3) / 2)  # over the two classes present
    assert metrics["min_class_recall"]["value"] == pytest.approx(0.5)


def test_empty_test_split_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="test split is empty"):
        performance.performance_audit(make_context(tmp_path, []))


def test_runs_on_a_real_tiny_model(tmp_path):
    tiny_bert_folder(tmp_path / "model", ["text"], num_labels=3)
    result = performance.performance_audit(make_context(tmp_path))
    assert result.metrics["n_test"] == 10 and sum(map(sum, result.metrics["confusion_matrix"]["counts"])) == 10
