"""Membership inference on tiny models: an overfitted model leaks, a DP-trained one does not.

The data are random word sequences with random labels, so a model can only fit its training
rows by memorising them: the strongest possible membership signal without DP. The training
loop here is deliberately minimal (plain AdamW, or Opacus DP-SGD) and independent of the
product's training module.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from audits.context import AuditContext
from audits.privacy import privacy_audit
from secure_ft.records.config import RunConfig
from secure_ft.records.data import DatasetSplits
from secure_ft.text.models import save_trained_model
from tiny_models import tiny_bert_folder
from secure_ft.records.policy import Policy

WORDS = [f"w{index}" for index in range(40)]
LABELS = ["a", "b", "c", "d"]
ROWS = 80  # members and non-members each


def random_frame(rows: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(rows)]
    labels = [rng.randrange(len(LABELS)) for _ in range(rows)]
    return pd.DataFrame({"row": range(rows), "text": texts, "label": labels,
                         "label_name": [LABELS[label] for label in labels], "site": "one"})


def synthetic_splits() -> DatasetSplits:
    return DatasetSplits(train=random_frame(ROWS, 1), validation=random_frame(20, 2), test=random_frame(ROWS, 3),
                         label_names=LABELS, group_columns=["site"], derived_group_columns=[],
                         fingerprint="synthetic", source="synthetic")


def train_tiny(base_dir, splits: DatasetSplits, *, epochs: int, dp: dict | None = None):
    """Fit the tiny BERT on the train split; with `dp`, Opacus DP-SGD (returns the model and its ε)."""
    from torch.utils.data import DataLoader, TensorDataset
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = BertForSequenceClassification.from_pretrained(base_dir).train()
    encoded = tokenizer(splits.train["text"].tolist(), padding="max_length", max_length=10, truncation=True,
                        return_tensors="pt")
    dataset = TensorDataset(encoded["input_ids"], encoded["attention_mask"], torch.tensor(splits.train["label"].to_numpy()))
    loader = DataLoader(dataset, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    engine = None
    if dp is not None:
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant="rdp")
        model, optimizer, loader = engine.make_private_with_epsilon(
            module=model, optimizer=optimizer, data_loader=loader, target_epsilon=dp["epsilon"],
            target_delta=dp["delta"], epochs=epochs, max_grad_norm=1.0, poisson_sampling=True)
        dp["noise_multiplier"] = optimizer.noise_multiplier
    for _ in range(epochs):
        for input_ids, attention_mask, labels in loader:
            if len(labels) == 0:
                continue
            optimizer.zero_grad()
            positions = torch.arange(input_ids.shape[1]).repeat(input_ids.shape[0], 1)
            logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                           token_type_ids=torch.zeros_like(input_ids)).logits
            torch.nn.functional.cross_entropy(logits, labels).backward()
            optimizer.step()
    if engine is not None:
        epsilon = engine.get_epsilon(delta=dp["delta"])
        model.remove_hooks()
        return model._module.eval(), tokenizer, epsilon
    return model.eval(), tokenizer, None


def make_context(tmp_path, splits, base_dir, model, tokenizer, **privacy_settings) -> AuditContext:
    run_dir = tmp_path / "run"
    save_trained_model(model, tokenizer, run_dir / "model")
    config = RunConfig.model_validate({
        "model": {"name_or_path": str(base_dir), "max_length": 10},
        "audits": {"privacy": {"membership_examples": ROWS, "n_boot": 200, **privacy_settings}},
        "privacy": {"mode": "none"},
    })
    policy = Policy.model_validate({"privacy": {"require_dp": True, "max_epsilon": 8.0, "max_delta": 1e-3,
                                                "max_membership_auc": 0.6, "max_tpr_at_1pct_fpr": 0.1}})
    return AuditContext(run_dir=run_dir, model_dir=run_dir / "model", splits=splits, config=config, policy=policy)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tiny_bert_folder(tmp_path_factory.mktemp("tiny-base"), WORDS, num_labels=len(LABELS), seed=0)


def test_overfitted_model_leaks_membership(tmp_path, base_dir):
    splits = synthetic_splits()
    model, tokenizer, _ = train_tiny(base_dir, splits, epochs=60)
    context = make_context(tmp_path, splits, base_dir, model, tokenizer)

    result = privacy_audit(context)
    membership = result.metrics["membership"]
    loss_attack = membership["attacks"]["loss"]

    assert membership["n_members"] == membership["n_non_members"] == ROWS
    assert loss_attack["auc"]["value"] > 0.8
    assert loss_attack["auc"]["ci_lower"] > 0.65  # clearly above chance, not by luck
    assert loss_attack["balanced_accuracy"]["value"] > 0.7
    assert loss_attack["tpr_at_1pct_fpr"]["value"] > 0.1
    assert 0 < len(loss_attack["roc_curve"]) <= 200
    assert loss_attack["empirical_epsilon"]["lower_bound"] > 0  # the leak is provable at 95 %
    assert "calibrated" in membership["attacks"]
    # no privacy.json: a non-private run, which fails a DP-requiring policy with that reason
    assert result.metrics["guarantee"]["dp"] is False
    assert not result.passed
    reasons = " ".join(result.failure_reasons())
    assert "dp_guarantee" in reasons and "without differential privacy" in reasons
    assert "membership_auc" in reasons
    assert (context.run_dir / "audits" / "privacy" / "roc_loss.csv").is_file()
    json.dumps(result.to_dict())  # the report reads it as JSON


def test_dp_model_membership_auc_near_chance(tmp_path, base_dir):
    splits = synthetic_splits()
    delta = 1e-3
    dp = {"epsilon": 1.0, "delta": delta}
    model, tokenizer, epsilon = train_tiny(base_dir, splits, epochs=60, dp=dp)  # the same recipe as above, with DP
    assert epsilon <= 1.05  # small ε, the regime where the attack must fail
    context = make_context(tmp_path, splits, base_dir, model, tokenizer)
    (context.run_dir / "privacy.json").write_text(json.dumps({
        "epsilon": epsilon, "delta": delta, "accountant": "rdp", "noise_multiplier": dp["noise_multiplier"], "max_grad_norm": 1.0,
        "sample_rate": 0.2, "steps": 300, "epochs": 60, "dataset_size": ROWS, "trained": "full",
        "opacus_version": "1.6.0", "epsilon_history": [[100, epsilon / 2], [200, epsilon]],
    }))

    result = privacy_audit(context)
    loss_attack = result.metrics["membership"]["attacks"]["loss"]
    auc = loss_attack["auc"]
    assert auc["ci_lower"] <= 0.5 <= auc["ci_upper"], auc
    assert abs(auc["value"] - 0.5) < 0.12
    assert result.metrics["guarantee"]["epsilon"] == pytest.approx(epsilon)
    assert result.metrics["epsilon_comparison"]["accountant_epsilon"] == pytest.approx(epsilon)
    # the empirical bound can never provably exceed a correct accountant's ε
    assert result.metrics["epsilon_comparison"]["empirical_lower_bound"] <= epsilon
    passed = {check.name: check.passed for check in result.checks}
    assert passed["dp_guarantee"] and passed["epsilon"] and passed["delta"]
