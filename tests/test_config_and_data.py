"""Config round trips and the data layer: formats, split, fingerprint, built-in sets."""

from __future__ import annotations

import pytest
import yaml

from secure_ft.cli import main
from secure_ft.records.config import DataConfig, RunConfig, load_config, starter_config_text
from secure_ft.records.data import load_splits
from toy_data import toy_frame


def test_starter_config_is_commented_and_loads_to_the_default(tmp_path, capsys):
    target = tmp_path / "starter.yaml"
    assert main(["config", "init", str(target)]) == 0
    text = target.read_text()
    assert "# per-sample clipping norm" in text and "target_epsilon: 8.0" in text
    assert load_config(target).model_dump() == RunConfig().model_dump()
    assert main(["config", "init", str(target)]) == 2  # never overwrites silently
    assert "--force" in capsys.readouterr().err
    assert starter_config_text() == text


def test_config_show_prints_the_effective_config(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  epochs: 7\n")
    assert main(["config", "show", str(path)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["training"]["epochs"] == 7 and shown["privacy"]["mode"] == "dp"


def test_relative_data_path_is_relative_to_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    toy_frame().to_csv(tmp_path / "sub" / "d.csv", index=False)
    path = tmp_path / "sub" / "c.yaml"
    path.write_text("data:\n  source: d.csv\n")
    assert load_config(path).data.source == str(tmp_path / "sub" / "d.csv")


@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl", "parquet"])
def test_every_file_format_gives_the_same_split_and_fingerprint(tmp_path, suffix):
    frame = toy_frame()
    path = tmp_path / f"data.{suffix}"
    if suffix == "csv":
        frame.to_csv(path, index=False)
    elif suffix == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    config = DataConfig(source=str(path), label_column="product", group_columns=["region"], min_class_count=5)
    splits = load_splits(config, seed=3)
    reference = load_splits(config.model_copy(update={"source": str(_csv(tmp_path, frame))}), seed=3)
    assert splits.fingerprint == reference.fingerprint
    assert splits.test["text"].tolist() == reference.test["text"].tolist()


def _csv(tmp_path, frame):
    path = tmp_path / "reference.csv"
    frame.to_csv(path, index=False)
    return path


def test_split_is_stratified_deterministic_and_disjoint(tmp_path):
    path = _csv(tmp_path, toy_frame(rows_per_class=60))
    config = DataConfig(source=str(path), label_column="product", group_columns=["region"])
    first, second = load_splits(config, seed=5), load_splits(config, seed=5)
    other_seed = load_splits(config, seed=6)
    assert first.train["row"].tolist() == second.train["row"].tolist()
    assert first.train["row"].tolist() != other_seed.train["row"].tolist()
    rows = [set(frame["row"]) for _, frame in first.items()]
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    assert sum(map(len, rows)) == 180
    for _, frame in first.items():  # every class in every split, in proportion
        assert set(frame["label_name"]) == {"cards", "loans", "reports"}
        assert frame["label_name"].value_counts().max() - frame["label_name"].value_counts().min() <= 1


def test_fingerprint_changes_with_one_character_or_the_mapping(tmp_path):
    frame = toy_frame()
    path = _csv(tmp_path, frame)
    config = DataConfig(source=str(path), label_column="product", group_columns=["region"])
    base = load_splits(config, seed=1).fingerprint
    changed = frame.copy()
    changed.loc[0, "text"] = changed.loc[0, "text"] + "!"
    changed_path = tmp_path / "changed.csv"
    changed.to_csv(changed_path, index=False)
    assert load_splits(config.model_copy(update={"source": str(changed_path)}), seed=1).fingerprint != base
    assert load_splits(config.model_copy(update={"group_columns": ["senior"]}), seed=1).fingerprint != base


def test_builtin_finance_data_drops_the_tiny_legacy_class():
    splits = load_splits(DataConfig(), seed=13)
    assert splits.dropped_classes == {"Consumer Loan": 2}
    assert len(splits.label_names) == 9
    assert {"older_american", "servicemember", "state"} <= set(splits.test.columns)
    assert splits.majority_baseline() == pytest.approx(0.5, abs=0.02)

