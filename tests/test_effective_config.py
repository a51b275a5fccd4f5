"""`secure-ft config show`: the config a run will use, every value with its source."""

from __future__ import annotations

import json

import yaml

from secure_ft.cli import main as cli_main
from secure_ft.records.config import load_config
from secure_ft.training.effective_config import effective_config
from secure_ft.training.probe_recipe import RECIPE_NAME
from secure_ft.training.transfer_choice import resolve_run_config


def write_config(tmp_path, toy_csv, **sections):
    raw = {"data": {"source": str(toy_csv), "label_column": "product", "group_columns": ["region"],
                    "min_class_count": 5}, **sections}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_show_resolves_transfer_recipe_copies_and_delta_with_sources(tmp_path, toy_csv, capsys):
    path = write_config(tmp_path, toy_csv, training={"momentum": 0.8})
    assert cli_main(["config", "show", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    settings = shown["settings"]
    rows = shown["train_rows"]
    assert 0 < rows < 120  # the toy data's training split, as a run splits it
    assert settings["model.transfer"]["value"] == "probe"
    assert settings["model.transfer"]["source"].startswith("auto") and f"N = {rows}" in settings["model.transfer"]["source"]
    recipe = f"recipe {RECIPE_NAME}"
    assert settings["training.epochs"] == {"value": 60, "source": recipe}
    assert settings["training.optimizer"] == {"value": "sgd", "source": recipe}
    assert settings["training.learning_rate"] == {"value": 0.5, "source": recipe}
    assert settings["training.robustness.augmentation_copies"] == {"value": 4, "source": recipe}
    assert settings["training.momentum"] == {"value": 0.8, "source": "file"}  # the file wins over the recipe
    assert settings["data.label_column"]["source"] == "file"
    assert settings["privacy.target_epsilon"] == {"value": 8.0, "source": "default"}
    assert settings["privacy.target_delta"]["value"] == min(1 / (10 * rows), 1e-5)
    assert settings["privacy.target_delta"]["source"].startswith("auto: min(1/(10 N), 1e-5)")
    assert settings["model.pooling"]["value"] == "mean_normalized"
    # the same values a run saves as its config.yaml
    config = load_config(path)
    resolved, _ = resolve_run_config(config, rows)
    assert resolved.training.epochs == 60 and resolved.training.momentum == 0.8


def test_show_text_marks_each_value_and_explicit_transfer_is_from_the_file(tmp_path, toy_csv, capsys):
    path = write_config(tmp_path, toy_csv, model={"transfer": "lora"}, privacy={"mode": "none"})
    assert cli_main(["config", "show", str(path)]) == 0
    text = capsys.readouterr().out
    assert "  transfer: lora  # file\n" in text
    assert "  epochs: 4  # default\n" in text  # lora keeps the configured defaults: no recipe
    assert "  target_delta: null  # default\n" in text  # not a DP run: no δ resolved
    assert all("  # " in line for line in text.splitlines() if line.strip() and not line.startswith("#")
               and not line.rstrip().endswith(":"))


def test_effective_config_of_given_rows_needs_no_data():
    effective = effective_config(load_config(None), train_rows=20_000)
    assert effective.values["model.transfer"] == "lora" and "20,000" in effective.sources["model.transfer"]
    assert effective.sources["training.epochs"] == "default"
