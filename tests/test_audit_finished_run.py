"""`secure-ft audit RUN_DIR`: the pipeline's audits, gate, report and signed verdict for a run trained elsewhere."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from secure_ft.cli import main
from secure_ft.errors import DataError
from secure_ft.records.config import DataConfig
from secure_ft.records.data import load_splits
from test_pipeline import write_policy


def _trained_run(tmp_path, toy_config):
    toy_config.training.epochs = 4
    toy_config.training.learning_rate = 2e-2
    config_path = tmp_path / "run.yaml"
    config_path.write_text(toy_config.to_yaml())
    assert main(["train", "--config", str(config_path), "--out", str(tmp_path / "runs")]) == 0
    (run_dir,) = list((tmp_path / "runs").iterdir())
    return run_dir


def test_audit_gates_a_finished_run_and_export_then_accepts_it(tmp_path, toy_config, capsys):
    run_dir = _trained_run(tmp_path, toy_config)
    assert main(["export", str(run_dir), "--out", str(tmp_path / "early")]) == 4  # no signed verdict yet
    assert "secure-ft audit" in capsys.readouterr().err
    assert main(["audit", str(run_dir), "--policy", str(write_policy(tmp_path, 0.99))]) == 3
    assert "verdict: BLOCKED" in capsys.readouterr().out
    assert main(["audit", str(run_dir), "--policy", str(write_policy(tmp_path, 0.1))]) == 0
    printed = capsys.readouterr().out
    assert "verdict: PASSED" in printed and "secure-ft export" in printed
    assert (run_dir / "verdict.dsse.json").is_file() and (run_dir / "audit_report.html").is_file()
    assert main(["export", str(run_dir), "--out", str(tmp_path / "bundle")]) == 0
    assert main(["verify", str(tmp_path / "bundle")]) == 0
    events = [json.loads(line)["event"] for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    assert events.count("policy_loaded") == 2 and "export" in events


def test_audit_refuses_data_that_is_not_what_the_run_recorded(tmp_path, toy_config, toy_csv, capsys):
    run_dir = _trained_run(tmp_path, toy_config)
    frame = pd.read_csv(toy_csv)
    frame.iloc[:-3].to_csv(toy_csv, index=False)
    assert main(["audit", str(run_dir), "--policy", str(write_policy(tmp_path, 0.1))]) == 2
    error = capsys.readouterr().err
    assert str(toy_csv) in error and "fingerprint" in error
    assert not (run_dir / "verdict.json").exists()


def test_audit_of_a_folder_without_a_finished_model_names_it(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["audit", str(tmp_path / "run")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_a_deployed_coordinators_small_hold_out_never_narrows_the_declared_labels(tmp_path, toy_csv):
    frame = pd.read_csv(toy_csv)
    rare = frame["product"].iloc[0]
    keep = frame[frame["product"] != rare]
    pd.concat([keep, frame[frame["product"] == rare].iloc[:2]]).to_csv(tmp_path / "holdout.csv", index=False)
    labels = sorted(frame["product"].unique())
    config = DataConfig(source=str(tmp_path / "holdout.csv"), label_column="product", labels=labels,
                        group_columns=[], min_class_count=5)
    assert rare not in load_splits(config, 0).label_names  # a central run drops what it cannot split
    splits = load_splits(config, 0, keep_declared_labels=True)
    assert splits.label_names == labels and splits.dropped_classes == {rare: 2}
    assert set(splits.test["label"]) <= set(range(len(labels)))
    with pytest.raises(DataError):
        load_splits(DataConfig(source=str(tmp_path / "holdout.csv"), label_column="product",
                               group_columns=[], labels=[label for label in labels if label != rare]), 0)
