"""Shared pieces of the DP tests (importable as `dp_helpers`): configs and tiny models."""

from __future__ import annotations

import json
from pathlib import Path

from secure_ft.records.config import RunConfig


def dp_config(data_csv: Path, model_dir: Path, output_dir: Path, *, transfer: str = "full", epochs: int = 2,
              **privacy) -> RunConfig:
    """A fast DP config on the toy data (84 training rows, q = 1/6) and a tiny BERT."""
    settings = {"mode": "dp", "target_epsilon": 8.0, "max_physical_batch_size": 8, **privacy}
    return RunConfig.model_validate({
        "output_dir": str(output_dir),
        "data": {"source": str(data_csv), "label_column": "product", "group_columns": ["region", "senior"],
                 "min_class_count": 5},
        "model": {"name_or_path": str(model_dir), "transfer": transfer, "max_length": 16},
        "training": {"epochs": epochs, "batch_size": 16, "learning_rate": 1e-2, "early_stopping_patience": None,
                     "num_threads": 1},
        "privacy": settings,
    })


def without_dropout(model_dir: Path) -> Path:
    """Turn dropout off in a saved tiny BERT, so that runs differ only by what a test varies."""
    config_file = Path(model_dir) / "config.json"
    config = json.loads(config_file.read_text())
    config["hidden_dropout_prob"] = 0.0
    config["attention_probs_dropout_prob"] = 0.0
    config_file.write_text(json.dumps(config))
    return Path(model_dir)
