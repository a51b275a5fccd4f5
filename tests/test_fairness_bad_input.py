"""Fairness audit on bad or thin input: clear errors, or explicit insufficient-data results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import audits.fairness as fairness
from audits.registry import run_audit
from secure_ft.errors import AuditError, ConfigError, DataError
from secure_ft.text.models import save_trained_model
from tiny_models import tiny_bert_folder
from secure_ft.records.policy import Policy
from test_fairness_audit import BINARY, fixed_predictions, make_context  # noqa: F401  (fixture)

POLICY = Policy.model_validate({"fairness": {"min_positives": 1, "max_demographic_parity_difference": 0.5,
                                             "min_demographic_parity_ratio": 0.5}})


def test_missing_group_column_names_the_column_and_the_fix(tmp_path):
    context = make_context(tmp_path, BINARY, ["0", "1"], sensitive_columns=["group", "ethnicity"])
    with pytest.raises(AuditError, match=r"\['ethnicity'\].*data.group_columns"):
        fairness.fairness_audit(context)
    assert "ethnicity" in run_audit("fairness", context).error  # the registry turns it into a failed result


def test_no_sensitive_columns_at_all_is_an_error(tmp_path):
    context = make_context(tmp_path, BINARY, ["0", "1"], sensitive_columns=[])
    with pytest.raises(AuditError, match="no sensitive columns"):
        fairness.fairness_audit(context)


def test_group_column_with_one_value_is_insufficient_data_and_never_passes(tmp_path, fixed_predictions):
    fixed_predictions(BINARY["pred"])
    table = BINARY.assign(group="everyone")
    result = fairness.fairness_audit(make_context(tmp_path, table, ["0", "1"], policy=POLICY))
    report = result.metrics["columns"]["group"]
    assert report["status"] == "insufficient_data" and "only one group ('everyone')" in report["reason"]
    assert all(value["value"] is None for value in report["summary"].values())
    assert not result.passed  # nothing could be compared: fairness unmeasured is a failure
    assert [c.name for c in result.checks if not c.passed] == ["assessable_columns"]
    assert any("not assessed" in note for note in result.notes)


def test_one_comparable_column_is_enough_when_the_other_is_thin(tmp_path, fixed_predictions):
    fixed_predictions(BINARY["pred"])
    table = BINARY.assign(region="north")
    result = fairness.fairness_audit(make_context(tmp_path, table, ["0", "1"], policy=POLICY))
    assert result.metrics["columns"]["region"]["status"] == "insufficient_data"
    assert result.metrics["columns"]["group"]["status"] == "ok"
    # judged on the one comparable column (12 rows: too few to settle its gaps, so inconclusive, not failed)
    assert {c.name.split(".")[0] for c in result.checks} == {"group"}
    assert result.failure_reasons() == [] and result.inconclusive_checks()
    strict = Policy.model_validate({"fairness": {"min_positives": 1, "insufficient_data": "fail"}})
    failed = fairness.fairness_audit(make_context(tmp_path, table, ["0", "1"], policy=strict))
    assert {c.name for c in failed.checks if not c.passed} == {"group.groups_below_min_size", "region.comparable_groups"}


def test_positive_class_never_predicted_makes_ratios_undefined_and_fails(tmp_path, fixed_predictions):
    fixed_predictions(np.zeros(len(BINARY), dtype=int))  # the model only ever says "0"
    result = fairness.fairness_audit(make_context(tmp_path, BINARY, ["0", "1"], policy=POLICY))
    summary = result.metrics["columns"]["group"]["summary"]
    assert summary["demographic_parity_difference"]["value"] == 0.0
    assert summary["demographic_parity_ratio"]["value"] is None  # 0 / 0
    ratio = next(c for c in result.checks if c.name == "group.demographic_parity_ratio")
    assert not ratio.passed and "undefined" in ratio.note
    assert result.metrics["predicted_classes"] == ["0"]
    assert any("never predicted ['1']" in note for note in result.notes)


def test_positive_class_absent_from_the_labels_is_reported(tmp_path, fixed_predictions):
    table = BINARY.assign(label=0)
    fixed_predictions(table["pred"])
    result = fairness.fairness_audit(make_context(tmp_path, table, ["0", "1"], policy=POLICY))
    groups = result.metrics["columns"]["group"]["groups"]
    assert all(group["tpr"]["value"] is None and group["fnr"]["value"] is None for group in groups)
    assert result.metrics["columns"]["group"]["summary"]["equal_opportunity_difference"]["value"] is None
    assert any("does not occur in the test split" in note for note in result.notes)


def test_empty_test_split_is_a_data_error(tmp_path):
    context = make_context(tmp_path, BINARY, ["0", "1"])
    context.splits.test = context.splits.test.iloc[:0]
    with pytest.raises(DataError, match="test split is empty"):
        fairness.fairness_audit(context)


def test_unknown_positive_class_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="audits.fairness.positive_class"):
        fairness.fairness_audit(make_context(tmp_path, BINARY, ["0", "1"], positive_class="toxic"))


def test_thresholds_without_bootstrap_are_an_error(tmp_path):
    context = make_context(tmp_path, BINARY, ["0", "1"], n_boot=0, policy=POLICY)  # judged on intervals
    with pytest.raises(AuditError, match="n_boot"):
        fairness.fairness_audit(context)


def test_model_trained_for_other_labels_is_refused(tmp_path):
    model_dir = tiny_bert_folder(tmp_path / "model", ["complaint", "number"], num_labels=3)
    context = make_context(tmp_path, BINARY, ["0", "1"])
    with pytest.raises(AuditError, match="3 output classes but the data has 2 labels"):
        fairness.fairness_audit(context)
    assert context.model_dir == model_dir


def test_real_model_sees_only_the_text_column(tmp_path, monkeypatch):
    """End to end with a tiny model: group values never reach the model, predictions happen once."""
    import secure_ft.text.text_classifier as scoring  # audits score through the served-model path

    model_dir = tiny_bert_folder(tmp_path / "model", ["complaint", "number"], num_labels=2)
    seen = []
    original = scoring.predict

    def recording_predict(model, tokenizer, texts, **kwargs):
        seen.append(list(texts))
        return original(model, tokenizer, texts, **kwargs)

    monkeypatch.setattr(scoring, "predict", recording_predict)
    table = BINARY.assign(group=[f"secretgroup{g}" for g in BINARY["group"]])
    context = make_context(tmp_path, table, ["0", "1"])
    result = fairness.fairness_audit(context)
    assert len(seen) == 1 and seen[0] == context.splits.test["text"].tolist()
    assert not any("secretgroup" in text for text in seen[0])
    assert result.metrics["n_test"] == 12 and context.model_dir == model_dir
    assert pd.read_csv(tmp_path / "audits/fairness/groups.csv")["count"].sum() == 12


def test_disagreement_with_fairlearn_is_refused_not_reported(tmp_path, fixed_predictions, monkeypatch):
    import audits._disaggregation as disaggregation

    original = disaggregation.fairlearn_group_table

    def corrupted(*args, **kwargs):
        table = original(*args, **kwargs)
        table["tpr[1]"] = table["tpr[1]"] + 0.1
        return table

    fixed_predictions(BINARY["pred"])
    monkeypatch.setattr(disaggregation, "fairlearn_group_table", corrupted)
    with pytest.raises(AuditError, match="internal inconsistency .* tpr"):
        fairness.fairness_audit(make_context(tmp_path, BINARY, ["0", "1"]))
