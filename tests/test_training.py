"""The one fine-tuning loop: learning, checkpoints, resume, early stopping, run directory."""

from __future__ import annotations

import json
import math

import pytest
import torch

from secure_ft.records.checkpoint import CheckpointStore
from secure_ft.records.model_identity import model_digest as model_hash
from secure_ft.records.run_ledger import verify_ledger
from secure_ft.text.models import load_trained_model, predict
from secure_ft.training.central_run import train_run


def test_plain_run_learns_and_writes_a_complete_run_dir(tmp_path, toy_config):
    toy_config.training.epochs = 4
    toy_config.training.learning_rate = 2e-2
    trained = train_run(toy_config, output_dir=tmp_path / "runs", progress=False)
    run = trained.run_dir
    for name in ("config.yaml", "data.json", "metrics.json", "ledger.jsonl", "model/model.safetensors",
                 "model/model_hash.json", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 * math.ceil(len(trained.splits.train) / 16)
    assert metrics["best"]["val_accuracy"] > metrics["majority_baseline_accuracy"] + 0.2
    assert json.loads((run / "model" / "model_hash.json").read_text())["sha256"] == model_hash(run / "model")
    events = [json.loads(line)["event"] for line in (run / "ledger.jsonl").read_text().splitlines()]
    assert events[:2] == ["config_loaded", "data_fingerprinted"] and events.count("epoch_done") == 4
    assert events[-1] == "model_saved"
    verify_ledger(run)
    model, tokenizer = load_trained_model(run / "model")
    test = trained.splits.test
    predicted = predict(model, tokenizer, test["text"].tolist(), max_length=16).labels
    assert (predicted.numpy() == test["label"].to_numpy()).mean() > 0.6


def test_killed_run_resumes_to_the_same_steps_and_weights(tmp_path, toy_config, monkeypatch):
    toy_config.training.epochs = 3
    toy_config.training.checkpoint_every_steps = 2
    reference = train_run(toy_config, output_dir=tmp_path / "reference", progress=False)

    original_save = CheckpointStore.save
    calls = {"n": 0}

    def save_then_die(self, state):
        path = original_save(self, state)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt("simulated kill right after the first checkpoint")
        return path

    monkeypatch.setattr(CheckpointStore, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_run(toy_config, output_dir=tmp_path / "killed", progress=False)
    monkeypatch.setattr(CheckpointStore, "save", original_save)
    (killed_dir,) = (tmp_path / "killed").iterdir()
    assert not (killed_dir / "model").exists()
    assert CheckpointStore(killed_dir / "checkpoints").load()["step"] == 2

    resumed = train_run(None, killed_dir, resume=True, progress=False)
    assert resumed.metrics["resumed_from_step"] == 2
    assert resumed.metrics["steps"] == reference.metrics["steps"]
    assert resumed.model_sha256 == reference.model_sha256  # same batches, same RNG: same weights
    events = [json.loads(line)["event"] for line in (killed_dir / "ledger.jsonl").read_text().splitlines()]
    assert "run_resumed" in events
    verify_ledger(killed_dir)


def test_early_stopping_keeps_the_best_epoch(tmp_path, toy_config):
    toy_config.training.epochs = 8
    toy_config.training.learning_rate = 5e-2  # too hot: validation gets worse after a while
    toy_config.training.early_stopping_patience = 1
    trained = train_run(toy_config, output_dir=tmp_path / "runs", progress=False)
    history = trained.metrics["epochs"]
    best = max(history, key=lambda record: record["val_macro_f1"])
    assert trained.metrics["best_epoch"] == best["epoch"]
    if len(history) < 8:
        assert trained.metrics["stopped_reason"].startswith("early stopping")


def test_same_seed_same_model(tmp_path, toy_config):
    toy_config.training.epochs = 1
    toy_config.model.transfer = "lora"  # randomly initialised adapters: the seed must decide them
    torch.manual_seed(1)  # whatever state the process happens to be in
    first = train_run(toy_config, output_dir=tmp_path / "a", progress=False)
    torch.manual_seed(2)
    second = train_run(toy_config, output_dir=tmp_path / "b", progress=False)
    assert first.model_sha256 == second.model_sha256
    assert first.splits.fingerprint == second.splits.fingerprint


@pytest.mark.parametrize("transfer", ["lora", "top_k"])
def test_partial_transfer_modes_train_only_what_they_should(tmp_path, toy_config, transfer):
    toy_config.model.transfer = transfer
    toy_config.model.top_k_layers = 1
    toy_config.training.epochs = 1
    trained = train_run(toy_config, output_dir=tmp_path / "runs", progress=False)
    assert 0 < trained.metrics["trainable_parameters"] < trained.metrics["total_parameters"]
    model, _ = load_trained_model(trained.model_dir)  # LoRA is merged: a plain transformers model
    assert not any("lora" in name for name, _ in model.named_parameters())
