"""The DP fine-tuning recipe: a fast-learning head over a sensible pooled representation."""

from __future__ import annotations

import shutil

import torch
from torch.utils.data import DataLoader

from secure_ft.privacy.engine import PrivateEngine
from secure_ft.records.config import ModelConfig, PrivacyConfig, TrainingConfig
from secure_ft.text.models import apply_transfer, load_base_model
from secure_ft.training.training_loop import encode, fit, give_head_its_learning_rate
from toy_data import toy_frame


def test_head_gets_its_own_learning_rate(tiny_model_dir):
    model, _ = load_base_model(ModelConfig(name_or_path=str(tiny_model_dir), transfer="lora"), ["a", "b", "c"])
    model = apply_transfer(model, ModelConfig(name_or_path=str(tiny_model_dir), transfer="lora"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-3)
    moved = give_head_its_learning_rate(optimizer, model, 3e-2)
    head = {name for name, p in model.named_parameters() if p.requires_grad and ".classifier." in f".{name}"}
    assert moved == len(head) == 2  # weight and bias of the trainable classifier copy
    body, head_group = optimizer.param_groups
    assert body["lr"] == 2e-3 and head_group["lr"] == 3e-2
    assert len(body["params"]) + len(head_group["params"]) == len(trainable)
    body_names = [name for name, p in model.named_parameters() if any(p is q for q in body["params"])]
    assert any("lora_" in name for name in body_names) and not any("classifier" in name for name in body_names)


def test_private_engine_keeps_the_heads_learning_rate(tiny_model_dir):
    model, tokenizer = load_base_model(ModelConfig(name_or_path=str(tiny_model_dir), transfer="lora"), ["a", "b", "c"])
    model = apply_transfer(model, ModelConfig(name_or_path=str(tiny_model_dir), transfer="lora"))
    frame = toy_frame(rows_per_class=10)
    dataset = encode(tokenizer, frame["text"].tolist(), [i % 3 for i in range(len(frame))], 16)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    give_head_its_learning_rate(optimizer, model, 5e-2)  # what the loop does before the engine attaches
    engine = PrivateEngine(PrivacyConfig(), dataset_size=len(dataset), transfer="lora")
    prepared = engine.attach(model, optimizer, DataLoader(dataset, batch_size=8, generator=torch.Generator()), 1)
    assert sorted(group["lr"] for group in prepared.optimizer.param_groups) == [1e-3, 5e-2]


def test_the_loop_moves_the_head_faster_than_the_adapters(tiny_model_dir):
    """One plain step with a 50x head learning rate: the head's update dwarfs the adapters'."""
    config = ModelConfig(name_or_path=str(tiny_model_dir), transfer="lora")
    frame = toy_frame(rows_per_class=10)
    moves = {}
    for head_lr in (None, 5e-2):
        torch.manual_seed(0)
        model, tokenizer = load_base_model(config, ["a", "b", "c"])
        model = apply_transfer(model, config)
        dataset = encode(tokenizer, frame["text"].tolist(), [i % 3 for i in range(len(frame))], 16)
        before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        training = TrainingConfig(epochs=1, batch_size=len(dataset), learning_rate=1e-3, head_learning_rate=head_lr,
                                  warmup_ratio=0.0, early_stopping_patience=None)
        fit(model, dataset, dataset, ["a", "b", "c"], training, seed=0, progress=False)
        after = dict(model.named_parameters())
        moves[head_lr] = {name: (after[name].detach() - value).abs().max().item() for name, value in before.items()}
    head = [name for name in moves[None] if "classifier" in name]
    assert head
    for name in head:  # Adam's first step moves each coordinate by ~lr: 50x further for the head
        assert moves[5e-2][name] > 20 * moves[None][name]


def test_sentence_transformers_export_gets_a_frozen_identity_pooler(tiny_model_dir, tmp_path):
    folder = tmp_path / "st-export"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "modules.json").write_text('[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]')
    model, _ = load_base_model(ModelConfig(name_or_path=str(folder)), ["a", "b", "c"])
    dense = model.bert.pooler.dense
    assert torch.equal(dense.weight, torch.eye(dense.in_features)) and not dense.bias.any()
    assert model.config.pooler_init == "identity"
    lora = apply_transfer(model, ModelConfig(name_or_path=str(folder), transfer="lora"))
    assert not any(p.requires_grad for name, p in lora.named_parameters() if "pooler" in name)
    plain, _ = load_base_model(ModelConfig(name_or_path=str(tiny_model_dir)), ["a", "b", "c"])
    assert not torch.equal(plain.bert.pooler.dense.weight, torch.eye(dense.in_features))  # others untouched
