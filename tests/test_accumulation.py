"""Non-private gradient accumulation: a logical batch computed in pieces takes the same step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from secure_ft.records.config import ModelConfig, TrainingConfig
from secure_ft.text.models import apply_transfer, load_base_model
from secure_ft.training.training_loop import encode, fit
from toy_data import TOPICS, toy_frame

LABELS = list(TOPICS)


def train(tiny_model_dir, pieces: int | None, transfer: str = "full"):
    config = ModelConfig(name_or_path=str(tiny_model_dir), transfer=transfer)
    torch.manual_seed(0)
    model, tokenizer = load_base_model(config, LABELS)
    model = apply_transfer(model, config)
    for module in model.modules():  # dropout masks depend on tensor shapes, which pieces change
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if hasattr(module, "dropout_prob"):  # BERT's SDPA attention applies its dropout itself
            module.dropout_prob = 0.0
    frame = toy_frame(rows_per_class=10)
    dataset = encode(tokenizer, frame["text"].tolist(), [LABELS.index(label) for label in frame["product"]], 32)
    training = TrainingConfig(epochs=2, batch_size=12, learning_rate=5e-3, head_learning_rate=2e-2,
                              max_physical_batch_size=pieces, early_stopping_patience=None)
    result = fit(model, dataset, dataset, LABELS, training, seed=0, progress=False)
    weights = {name: p.detach().clone() for name, p in result.model.named_parameters() if p.requires_grad}
    return result, weights


@pytest.mark.parametrize("transfer", ["full", "lora"])
def test_pieces_of_a_logical_batch_take_the_same_step_as_one_pass(tiny_model_dir, transfer):
    whole, whole_weights = train(tiny_model_dir, None, transfer)
    pieced, pieced_weights = train(tiny_model_dir, 5, transfer)  # 12 rows → pieces of 5, 5, 2
    assert pieced.steps == whole.steps == 6  # 30 rows / 12 → 3 steps per epoch, not 3 per piece
    for name, value in whole_weights.items():
        torch.testing.assert_close(pieced_weights[name], value, atol=2e-5, rtol=1e-4, msg=name)
    moved = max((whole_weights[name] - p).abs().max() for name, p in train(tiny_model_dir, 12, transfer)[1].items())
    assert moved == 0  # a piece as large as the batch changes nothing
    for a, b in zip(whole.history, pieced.history):  # the reported loss is the logical batches' mean loss
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)


def test_training_without_progress_prints_nothing(tiny_model_dir, capsys, caplog):
    """Benchmarks and sites train with progress=False: the epoch summaries go to the log, not stdout."""
    with caplog.at_level("INFO", logger="secure_ft.training.training_loop"):
        result, _ = train(tiny_model_dir, None)
    assert capsys.readouterr().out == ""
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(summaries) == len(result.history) == 2
