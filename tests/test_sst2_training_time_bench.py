"""bench/sst2_training_time.py: missing data is one message and exit 2; the run config is the shipped default
with only the data pointed at the sample, whose training split has the asked-for rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_loading import load_bench

@pytest.fixture(scope="module")
def bench():
    return load_bench("sst2_training_time")


def glue_tsv(path: Path, rows: int) -> Path:
    """A file in GLUE SST-2's format: header, ``sentence<TAB>label``, the sentence with a trailing space."""
    lines = ["sentence\tlabel"] + [f"sentence number {i} , quite {'good' if i % 2 else 'bad'} \t{i % 2}"
                                   for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_missing_data_names_the_files_and_exits_2(bench, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        bench.data_files(tmp_path)
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert str(tmp_path / "glue_sst2_train.tsv") in message and "--data" in message


def test_the_run_config_is_the_default_with_only_the_data_changed(bench, tmp_path):
    from secure_ft.records.config import RunConfig, load_config
    from secure_ft.records.data import load_splits
    from secure_ft.training.transfer_choice import resolve_run_config

    rows = bench.dataset_rows(2800)
    assert rows == 4000  # 70/15/15: 2,800 training rows, 600 validation, 600 test
    csv_path = bench.write_dataset(glue_tsv(tmp_path / "train.tsv", 5000), rows, 0, tmp_path)
    config = load_config(bench.write_config(csv_path, "onnx", tmp_path))
    changed = {"data", "model", "privacy"}
    default = RunConfig()
    assert config.model_dump(exclude=changed) == default.model_dump(exclude=changed)
    assert config.model.model_dump(exclude={"encoder_backend"}) == default.model.model_dump(exclude={"encoder_backend"})
    assert config.privacy.model_dump(exclude={"budget_dir"}) == default.privacy.model_dump(exclude={"budget_dir"})
    assert not config.training.model_fields_set  # nothing set: the probe recipe supplies the training keys
    splits = load_splits(config.data, config.seed)
    assert (len(splits.train), len(splits.validation)) == (2800, 600)
    assert splits.label_names == ["negative", "positive"]  # words: the head starts from the label names
    resolved, _ = resolve_run_config(config, len(splits.train))
    assert resolved.model.transfer == "probe" and resolved.training.robustness.augmentation_copies == 4
