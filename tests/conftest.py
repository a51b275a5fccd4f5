"""Shared fixtures: a tiny BERT built from a config (no downloads) and small labelled CSVs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)
# keys and trust lists never land in the real home folder; subprocesses inherit this
os.environ.pop("SECURE_FT_SIGNING_KEY", None)
# MLflow tracking is opt-in: a developer's own tracking server never receives test runs
os.environ.pop("MLFLOW_TRACKING_URI", None)
if "SECURE_FT_CONFIG_DIR" not in os.environ or not os.environ["SECURE_FT_CONFIG_DIR"].startswith("/tmp"):
    import tempfile

    os.environ["SECURE_FT_CONFIG_DIR"] = tempfile.mkdtemp(prefix="secure-ft-test-config-")
# exported ONNX encoders of the tests' tiny models: cached for the session, never in the user's cache
if not os.environ.get("SECURE_FT_CACHE", "").startswith("/tmp"):
    import tempfile

    os.environ["SECURE_FT_CACHE"] = tempfile.mkdtemp(prefix="secure-ft-test-cache-")
# nor does the privacy budget ledger (every training run records its spend there)
if "SECURE_FT_BUDGET_DIR" not in os.environ or not os.environ["SECURE_FT_BUDGET_DIR"].startswith("/tmp"):
    import tempfile

    os.environ["SECURE_FT_BUDGET_DIR"] = tempfile.mkdtemp(prefix="secure-ft-test-budget-")

from toy_data import TOY_CARD, VOCAB, toy_frame  # noqa: E402  (tests/ is on sys.path under pytest)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tiny_models import tiny_bert_folder

    return tiny_bert_folder(tmp_path_factory.mktemp("tiny-bert"), VOCAB, num_labels=3)


@pytest.fixture
def toy_csv(tmp_path) -> Path:
    path = tmp_path / "complaints.csv"
    toy_frame().to_csv(path, index=False)
    return path


@pytest.fixture
def toy_config(tmp_path, toy_csv, tiny_model_dir):
    """A fast plain-training config on the toy data and the tiny model."""
    from secure_ft.records.config import RunConfig

    return RunConfig.model_validate({
        "output_dir": str(tmp_path / "runs"),
        "data": {"source": str(toy_csv), "label_column": "product", "group_columns": ["region", "senior"],
                 "min_class_count": 5},
        "model": {"name_or_path": str(tiny_model_dir), "transfer": "full", "max_length": 16},
        # one learning rate for everything: the tiny random model has no pretrained body to protect
        "training": {"epochs": 2, "batch_size": 16, "learning_rate": 5e-3, "head_learning_rate": None,
                     "early_stopping_patience": None},
        "privacy": {"mode": "none"},
        "card": TOY_CARD,
    })
