"""The probe head can start as a zero-shot classifier from the (public) label names."""

from __future__ import annotations

import pytest
import torch

from secure_ft.records.config import ModelConfig
from secure_ft.text.label_name_head import LOGIT_SCALE, names_are_descriptive, resolve_head_init
from secure_ft.text.models import load_base_model

WORDS = ["refund", "mortgage", "loan", "card", "student", "debt"]


@pytest.fixture
def word_model(tmp_path):
    from tiny_models import tiny_bert_folder

    return tiny_bert_folder(tmp_path / "tiny", vocab_words=WORDS, num_labels=2)


def test_descriptive_names_only():
    assert names_are_descriptive(["Student loan", "Mortgage", "Debt collection"])
    assert not names_are_descriptive(["0", "1"])
    assert not names_are_descriptive(["LABEL_0", "label_1"])
    assert not names_are_descriptive(["Mortgage", "7"])  # one meaningless name is enough to fall back
    assert resolve_head_init("auto", "probe", ["Mortgage", "Student loan"]) == "label_names"
    assert resolve_head_init("auto", "lora", ["Mortgage", "Student loan"]) == "random"
    assert resolve_head_init("auto", "probe", ["0", "1"]) == "random"
    assert resolve_head_init("random", "probe", ["Mortgage", "Student loan"]) == "random"


def test_probe_head_rows_are_the_names_embeddings(word_model):
    names = ["student loan", "mortgage debt"]
    model, tokenizer = load_base_model(ModelConfig(name_or_path=str(word_model), transfer="probe", max_length=16), names)
    weight = model.classifier.weight.detach()
    assert torch.allclose(weight.norm(dim=-1), torch.full((2,), LOGIT_SCALE), atol=1e-4)
    assert torch.count_nonzero(model.classifier.bias) == 0
    assert model.config.head_init == "label_names"
    # each row is the model's own pooled embedding of that name: the name scores itself highest
    batch = tokenizer(names, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.argmax(dim=-1).tolist() == [0, 1]
    assert torch.allclose(logits.diagonal(), torch.full((2,), LOGIT_SCALE), atol=1e-3)


def test_meaningless_names_and_explicit_random_keep_the_usual_head(word_model):
    coded, _ = load_base_model(ModelConfig(name_or_path=str(word_model), transfer="probe", max_length=16), ["0", "1"])
    explicit, _ = load_base_model(ModelConfig(name_or_path=str(word_model), transfer="probe", max_length=16,
                                              head_init="random"), ["student loan", "mortgage"])
    for model in (coded, explicit):
        assert model.classifier.weight.norm(dim=-1).max() < 1.0  # transformers' N(0, 0.02) rows, not 20
        assert getattr(model.config, "head_init", "random") == "random"


def test_label_name_head_is_refused_outside_the_probe():
    with pytest.raises(ValueError, match="head_init: label_names needs transfer: probe"):
        ModelConfig(transfer="lora", head_init="label_names")


def test_central_probe_recipe_trains_with_copies_unless_configured():
    from secure_ft.records.config import RunConfig
    from secure_ft.training.probe_recipe import AUGMENTATION_COPIES, RECIPE_NAME, apply_probe_recipe

    central, note = apply_probe_recipe(RunConfig.model_validate({"model": {"transfer": "probe"}}), 1000)
    assert central.training.robustness.augmentation_copies == AUGMENTATION_COPIES == 4
    assert note == f"fixed recipe {RECIPE_NAME}"
    chosen, note = apply_probe_recipe(RunConfig.model_validate(
        {"model": {"transfer": "probe"}, "training": {"robustness": {"augmentation_copies": 0}}}), 1000)
    assert chosen.training.robustness.augmentation_copies == 0
    assert "training.robustness.augmentation_copies" in note
    federated, _ = apply_probe_recipe(RunConfig.model_validate(
        {"mode": "federated", "model": {"transfer": "probe"}}), 1000)
    assert federated.training.robustness.augmentation_copies == 0
