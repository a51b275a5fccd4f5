"""DP-SGD inside the one training loop: resume, per-sample clipping, budget, empty batches."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from dp_helpers import dp_config, without_dropout
from secure_ft.records.checkpoint import CheckpointStore
from secure_ft.records.config import PrivacyConfig
from secure_ft.text.models import load_trained_model, predict
from tiny_models import tiny_bert_folder
from secure_ft.privacy.accountant_history import load_accountant_history
from secure_ft.privacy.engine import PrivateEngine
from secure_ft.training.central_run import train_run
from secure_ft.training.training_loop import encode, forward_logits
from toy_data import VOCAB, toy_frame


@pytest.fixture
def toy_data_csv(tmp_path):
    path = tmp_path / "data.csv"
    toy_frame().to_csv(path, index=False)
    return path


def test_killed_dp_run_resumes_to_the_same_epsilon_steps_and_weights(tmp_path, toy_data_csv, tiny_model_dir,
                                                                     monkeypatch):
    config = dp_config(toy_data_csv, tiny_model_dir, tmp_path / "runs", transfer="full", epochs=2)
    config.training.checkpoint_every_steps = 4  # the first checkpoint falls inside epoch 1 (6 steps each)
    reference = train_run(config, output_dir=tmp_path / "reference", progress=False)

    original_save = CheckpointStore.save

    def save_then_die(self, state):
        original_save(self, state)
        raise KeyboardInterrupt("simulated kill right after the first checkpoint")

    monkeypatch.setattr(CheckpointStore, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_run(config, output_dir=tmp_path / "killed", progress=False)
    monkeypatch.setattr(CheckpointStore, "save", original_save)
    (killed_dir,) = (tmp_path / "killed").iterdir()
    checkpoint = CheckpointStore(killed_dir / "checkpoints").load()
    assert checkpoint["step"] == 4 and checkpoint["engine"]["ledger"]["steps"] == 4  # ledger saved with it

    resumed = train_run(None, killed_dir, resume=True, progress=False)
    expected = json.loads((reference.run_dir / "privacy.json").read_text())
    got = json.loads((killed_dir / "privacy.json").read_text())
    assert got["epsilon"] == expected["epsilon"]
    assert got["steps"] == expected["steps"] == resumed.metrics["steps"] == 12
    assert got["epsilon_history"] == expected["epsilon_history"]
    assert got["grad_sample_mode"] == "bookkeeping"  # auto: the fastest exact mode
    assert resumed.model_sha256 == reference.model_sha256  # same Poisson batches, same noise
    events = load_accountant_history(killed_dir).events
    assert {"event": "resumed", "step": 4} in events


@pytest.mark.parametrize("mode", ["hooks", "ghost", "bookkeeping"])
def test_every_per_sample_gradient_is_clipped_before_noise(tmp_path, mode):
    """With one example per physical batch, each accumulated increment is one clipped per-sample
    gradient: it must equal the example's true gradient scaled to norm ≤ C."""
    model_dir = without_dropout(tiny_bert_folder(tmp_path / "tiny", VOCAB, num_labels=3))
    model, tokenizer = load_trained_model(model_dir)
    frame = toy_frame(rows_per_class=8)
    dataset = encode(tokenizer, frame["text"].tolist(), [hash(t) % 3 for t in frame["product"]], 16)
    clip = 0.05
    settings = PrivacyConfig(mode="dp", noise_multiplier=1.0, target_epsilon=None, max_grad_norm=clip,
                             max_physical_batch_size=1, grad_sample_mode=mode)  # lr 0: weights stay fixed
    engine = PrivateEngine(settings, dataset_size=len(dataset))
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    loader = DataLoader(dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    prepared = engine.attach(model, optimizer, loader, epochs=1)
    dp_optimizer, plain = prepared.optimizer, engine.unwrap(prepared.model)
    # the same weights without Opacus' hooks (lr = 0 keeps them fixed): true per-sample gradients
    reference, _ = load_trained_model(model_dir)
    reference.load_state_dict(plain.state_dict())
    names = {id(p): name for name, p in plain.named_parameters()}

    increments = []
    accumulate_name = "clip_and_accumulate" if mode == "hooks" else "accumulate"
    original = getattr(dp_optimizer, accumulate_name)

    def recording_accumulate():
        before = {id(p): None if p.summed_grad is None else p.summed_grad.clone() for p in dp_optimizer.params}
        original()
        increments.append({names[id(p)]: p.summed_grad - (0 if before[id(p)] is None else before[id(p)])
                           for p in dp_optimizer.params})

    setattr(dp_optimizer, accumulate_name, recording_accumulate)
    checked = clipped = 0
    engine.begin_epoch(prepared, 1, seed=0)
    with engine.physical_batches(prepared) as batches:
        for batch in batches:
            batch = list(batch)
            if len(batch[-1]) == 0:
                engine.before_step(prepared)
                dp_optimizer.step()
                dp_optimizer.zero_grad()
                continue
            reference.zero_grad()
            nn.functional.cross_entropy(forward_logits(reference, batch), batch[-1]).backward()
            true = {name: p.grad for name, p in reference.named_parameters() if p.requires_grad}
            true_norm = torch.sqrt(sum((g ** 2).sum() for g in true.values()))

            loss = prepared.criterion(forward_logits(prepared.model, batch), batch[-1])
            loss.backward()
            engine.before_step(prepared)
            dp_optimizer.step()
            dp_optimizer.zero_grad()
            used = increments[-1]
            used_norm = torch.sqrt(sum((g ** 2).sum() for g in used.values()))
            assert used_norm <= clip * (1 + 1e-5)
            scale = min(1.0, clip / (float(true_norm) + 1e-6))
            for name, gradient in used.items():
                torch.testing.assert_close(gradient, true[name] * scale, rtol=1e-4, atol=1e-7)
            checked += 1
            clipped += scale < 1
            if checked >= 6:
                break
    assert checked == 6 and clipped >= 1


def test_budget_exhaustion_stops_cleanly_with_a_valid_model(tmp_path, toy_data_csv, tiny_model_dir):
    # fixed noise and a budget too small for the 3 epochs: the run must stop before overspending
    config = dp_config(toy_data_csv, tiny_model_dir, tmp_path / "runs", transfer="lora", epochs=3,
                       noise_multiplier=0.6, target_epsilon=4.0, target_delta=1e-3)
    trained = train_run(config, progress=False)
    report = json.loads((trained.run_dir / "privacy.json").read_text())
    assert trained.metrics["stopped_reason"].startswith("privacy budget exhausted")
    assert "target_epsilon=4" in trained.metrics["stopped_reason"]
    assert report["stopped_early"] is True and report["stop_reason"] == trained.metrics["stopped_reason"]
    assert 0 < report["steps"] < 18 and report["epsilon"] <= 4.0
    ledger = load_accountant_history(trained.run_dir)
    assert ledger.epsilon(extra_steps=1) > 4.0  # one more step would have exceeded the budget
    model, tokenizer = load_trained_model(trained.model_dir)
    texts = trained.splits.test["text"].tolist()
    assert predict(model, tokenizer, texts, max_length=16).probabilities.shape == (len(texts), 3)


@pytest.mark.parametrize("transfer", ["lora", "full"])
def test_empty_poisson_batches_take_noise_only_steps(tmp_path, toy_data_csv, tiny_model_dir, transfer,
                                                    monkeypatch):
    # q = 1/84: about a third of the logical batches are empty; each must still be a (noisy) step
    config = dp_config(toy_data_csv, tiny_model_dir, tmp_path / "runs", transfer=transfer, epochs=1,
                       noise_multiplier=1.0, target_epsilon=None)
    config.training.batch_size = 1
    config.training.max_steps = 30
    empty = []
    original = PrivateEngine.before_step

    def counting_before_step(self, prepared):
        first = self._optimizer.params[0]
        empty.append(first.grad_sample is None if self.grad_sample_mode == "hooks" else first.grad is None)
        return original(self, prepared)

    monkeypatch.setattr(PrivateEngine, "before_step", counting_before_step)
    trained = train_run(config, progress=False)
    report = json.loads((trained.run_dir / "privacy.json").read_text())
    assert len(empty) == trained.metrics["steps"] == report["steps"] == 30
    assert 3 <= sum(empty) <= 25  # empty batches happened, and were steps too
    assert report["sample_rate"] == pytest.approx(1 / 84)
