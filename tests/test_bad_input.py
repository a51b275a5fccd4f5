"""Bad input gets one clear error of the right type, and leaves nothing half-written behind."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from secure_ft.cli import main
from secure_ft.errors import CheckpointError, ConfigError, DataError, ModelError
from secure_ft.records.config import load_config
from secure_ft.training.central_run import train_run
from toy_data import toy_frame


def write_config(tmp_path: Path, config, **overrides) -> Path:
    raw = config.model_dump(mode="json")
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def assert_nothing_written(runs: Path) -> None:
    assert not runs.exists() or list(runs.iterdir()) == [], f"left behind: {list(runs.rglob('*'))}"


def run_cli_expecting_input_error(config_path: Path, runs: Path, capsys, needle: str) -> str:
    code = main(["train", "--config", str(config_path), "--out", str(runs)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err
    assert "Traceback" not in err
    assert_nothing_written(runs)
    return err


def csv_with(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    return path


def test_missing_column_names_file_and_columns(tmp_path, toy_config, capsys):
    path = csv_with(tmp_path, toy_frame().drop(columns=["region"]))
    config = write_config(tmp_path, toy_config, data__source=str(path))
    err = run_cli_expecting_input_error(config, tmp_path / "runs", capsys, "missing column(s) 'region'")
    assert str(path) in err


def test_empty_text_row_is_named(tmp_path, toy_config):
    frame = toy_frame()
    frame.loc[3, "text"] = ""
    toy_config.data.source = str(csv_with(tmp_path, frame))
    with pytest.raises(DataError, match=r"empty or whitespace-only text.*row\(s\) 5\b"):
        train_run(toy_config, output_dir=tmp_path / "runs")
    assert_nothing_written(tmp_path / "runs")


def test_whitespace_only_text(tmp_path, toy_config):
    frame = toy_frame()
    frame.loc[0, "text"] = "   \t "
    toy_config.data.source = str(csv_with(tmp_path, frame))
    with pytest.raises(DataError, match="whitespace-only"):
        train_run(toy_config, output_dir=tmp_path / "runs")
    assert_nothing_written(tmp_path / "runs")


def test_non_utf8_bytes_name_the_line(tmp_path, toy_config, capsys):
    path = csv_with(tmp_path, toy_frame())
    lines = path.read_bytes().split(b"\n")
    lines[4] = lines[4].replace(b"the", b"th\xe9", 1) if b"the" in lines[4] else lines[4] + b"\xff"
    path.write_bytes(b"\n".join(lines))
    config = write_config(tmp_path, toy_config, data__source=str(path))
    run_cli_expecting_input_error(config, tmp_path / "runs", capsys, "not UTF-8 at line 5")


def test_missing_label(tmp_path, toy_config):
    frame = toy_frame()
    frame.loc[7, "product"] = None
    toy_config.data.source = str(csv_with(tmp_path, frame))
    with pytest.raises(DataError, match=r"missing \(NaN / empty\) label.*row\(s\) 9\b"):
        train_run(toy_config, output_dir=tmp_path / "runs")
    assert_nothing_written(tmp_path / "runs")


def test_label_outside_declared_set(tmp_path, toy_config):
    frame = toy_frame()
    frame.loc[2, "product"] = "crypto"
    toy_config.data.source = str(csv_with(tmp_path, frame))
    toy_config.data.labels = ["cards", "loans", "reports"]
    with pytest.raises(DataError, match=r"not in the declared set.*'crypto'.*row\(s\) 4\b"):
        train_run(toy_config, output_dir=tmp_path / "runs")
    assert_nothing_written(tmp_path / "runs")


def test_class_too_small_to_split(tmp_path, toy_config):
    frame = pd.concat([toy_frame(), pd.DataFrame([{"text": "odd one", "product": "rare", "region": "north",
                                                   "senior": "False"}])])
    toy_config.data.source = str(csv_with(tmp_path, frame))
    toy_config.data.small_classes = "error"
    with pytest.raises(DataError, match=r"classes too small to split.*'rare' \(1 rows\)"):
        train_run(toy_config, output_dir=tmp_path / "runs")
    assert_nothing_written(tmp_path / "runs")


def test_unknown_file_extension(tmp_path, toy_config):
    path = tmp_path / "data.xlsx"
    path.write_text("not really")
    toy_config.data.source = str(path)
    with pytest.raises(DataError, match="cannot tell the format"):
        train_run(toy_config, output_dir=tmp_path / "runs")


def test_unknown_config_key_names_file_and_field(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text("training:\n  epocs: 3\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and "training.epocs: unknown key" in str(caught.value)
    code = main(["train", "--config", str(path), "--out", str(tmp_path / "runs")])
    assert code == 2 and "training.epocs" in capsys.readouterr().err
    assert_nothing_written(tmp_path / "runs")


def test_bad_config_value_says_what_is_allowed(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("privacy:\n  accountant: moments\ntraining:\n  learning_rate: -1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "privacy.accountant" in message and "'prv', 'rdp' or 'gdp'" in message
    assert "training.learning_rate" in message and "greater than 0" in message


def test_invalid_yaml_and_missing_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_pickle_only_model_folder_is_refused(tmp_path, toy_config, tiny_model_dir, capsys):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"pickle bytes")
    config = write_config(tmp_path, toy_config, model__name_or_path=str(folder))
    err = run_cli_expecting_input_error(config, tmp_path / "runs", capsys, "only pickle weights (pytorch_model.bin)")
    assert "safetensors" in err


def test_model_file_that_is_not_safetensors(tmp_path, toy_config, tiny_model_dir):
    folder = tmp_path / "fake"
    folder.mkdir()
    for item in tiny_model_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    toy_config.model.name_or_path = str(folder)
    with pytest.raises(ModelError, match="not a valid safetensors file"):
        train_run(toy_config, output_dir=tmp_path / "runs")
    assert_nothing_written(tmp_path / "runs")


def test_missing_model_folder(tmp_path, toy_config):
    toy_config.model.name_or_path = str(tmp_path / "nowhere" / "model")
    with pytest.raises(ModelError, match="model folder not found"):
        train_run(toy_config, output_dir=tmp_path / "runs")


def test_corrupt_checkpoint_is_refused_on_resume(tmp_path, toy_config, capsys):
    toy_config.training.epochs = 1
    trained = train_run(toy_config, output_dir=tmp_path / "runs", progress=False)
    checkpoint = trained.run_dir / "checkpoints" / "last.pt"
    payload = bytearray(checkpoint.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(payload))
    with pytest.raises(CheckpointError, match="corrupt or was modified"):
        train_run(None, trained.run_dir, resume=True)
    code = main(["train", "--resume", str(trained.run_dir)])
    assert code == 2 and "corrupt" in capsys.readouterr().err


def test_existing_run_dir_is_not_overwritten(tmp_path, toy_config):
    toy_config.training.epochs = 1
    trained = train_run(toy_config, output_dir=tmp_path / "runs", progress=False)
    before = (trained.run_dir / "model" / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already holds a run"):
        train_run(toy_config, trained.run_dir)
    assert (trained.run_dir / "model" / "model.safetensors").read_bytes() == before
