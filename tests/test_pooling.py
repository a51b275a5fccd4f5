"""Mean pooling for sentence-transformers bases: the same sentence embedding the base was trained for."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from secure_ft.errors import ModelError
from secure_ft.privacy.engine import PrivateEngine
from secure_ft.records.config import ModelConfig, PrivacyConfig, TrainingConfig
from secure_ft.text.models import apply_transfer, load_base_model, load_trained_model, save_trained_model
from secure_ft.text.pooling import MaskedMeanPooler, sentence_transformers_pooling
from secure_ft.training.training_loop import encode, fit
from toy_data import TOPICS, toy_frame

LABELS = list(TOPICS)


def sentence_transformers_copy(tiny_model_dir, tmp_path, mode: str = "mean"):
    """The tiny BERT laid out like a sentence-transformers export that pools with `mode`."""
    folder = tmp_path / f"st-{mode}"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
    }))
    return folder


def mean_pooled_lora(tiny_model_dir, tmp_path):
    """A seeded LoRA model over the tiny BERT laid out as a mean-pooling sentence-transformers export."""
    folder = sentence_transformers_copy(tiny_model_dir, tmp_path)
    config = ModelConfig(name_or_path=str(folder), transfer="lora", pooling="auto")
    torch.manual_seed(0)
    model, tokenizer = load_base_model(config, LABELS)
    return apply_transfer(model, config), tokenizer


def logits(model, tokenizer, texts):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def test_mean_pooled_head_reads_the_average_of_the_real_tokens(tiny_model_dir, tmp_path):
    folder = sentence_transformers_copy(tiny_model_dir, tmp_path)
    assert sentence_transformers_pooling(folder) == "mean"
    model, tokenizer = load_base_model(ModelConfig(name_or_path=str(folder), pooling="auto"), LABELS)
    model.eval()
    assert isinstance(model.bert.pooler, MaskedMeanPooler) and model.config.pooling == "mean"

    batch = tokenizer(["refund late fee", "refund late fee mortgage escrow payment account"], padding=True,
                      return_tensors="pt")
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # the first row is padded
    with torch.no_grad():
        output = model(**batch, output_hidden_states=True)
        states, mask = output.hidden_states[-1], batch["attention_mask"]
        expected = [model.classifier(states[row, mask[row].bool()].mean(dim=0)) for row in range(2)]
    torch.testing.assert_close(output.logits, torch.stack(expected))
    # padding never changes a sentence's prediction
    torch.testing.assert_close(logits(model, tokenizer, ["refund late fee"])[0], output.logits[0])


def test_mean_pooled_model_keeps_its_pooling_through_lora_save_load_and_copies(tiny_model_dir, tmp_path):
    model, tokenizer = mean_pooled_lora(tiny_model_dir, tmp_path)
    assert not any("pooler" in name for name, _ in model.named_parameters())  # nothing to train or to save
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # LoRA starts as a no-op; make the merge matter
                parameter.normal_(0, 0.5)
    model.eval()
    texts = ["refund late fee", "mortgage escrow payment account overdraft"]
    before = logits(model, tokenizer, texts)

    save_trained_model(model, tokenizer, tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["pooling"] == "mean"
    loaded, loaded_tokenizer = load_trained_model(tmp_path / "saved")
    assert isinstance(loaded.bert.pooler, MaskedMeanPooler)
    torch.testing.assert_close(logits(loaded, loaded_tokenizer, texts), before)
    torch.testing.assert_close(logits(copy.deepcopy(loaded), loaded_tokenizer, texts), before)


def test_cls_pooling_exports_keep_the_identity_pooler(tiny_model_dir, tmp_path):
    folder = sentence_transformers_copy(tiny_model_dir, tmp_path, mode="cls")
    assert sentence_transformers_pooling(folder) == "cls"
    model, _ = load_base_model(ModelConfig(name_or_path=str(folder), pooling="auto"), LABELS)
    assert model.config.pooler_init == "identity" and not hasattr(model.config, "pooling")
    assert sentence_transformers_pooling(tiny_model_dir) is None  # a plain transformers folder


def test_mean_pooled_lora_trains_under_dp(tiny_model_dir, tmp_path):
    model, tokenizer = mean_pooled_lora(tiny_model_dir, tmp_path)
    frame = toy_frame(rows_per_class=12)
    texts, labels = frame["text"].tolist(), [LABELS.index(label) for label in frame["product"]]
    train_set = encode(tokenizer, texts, labels, 32)
    engine = PrivateEngine(PrivacyConfig(target_epsilon=8.0, max_physical_batch_size=8),
                           dataset_size=len(train_set), transfer="lora")
    training = TrainingConfig(epochs=2, batch_size=12, learning_rate=1e-2, early_stopping_patience=None)
    head_before = model.base_model.model.classifier.modules_to_save.default.weight.detach().clone()
    result = fit(model, train_set, train_set, LABELS, training, seed=0, engine=engine, progress=False)
    assert result.steps > 0 and 0 < engine.guarantee(result)["epsilon"] <= 8.0
    assert not torch.equal(model.base_model.model.classifier.modules_to_save.default.weight, head_before)


def test_a_saved_model_missing_weights_is_refused(tiny_model_dir, tmp_path):
    model, tokenizer = load_base_model(ModelConfig(name_or_path=str(tiny_model_dir)), LABELS)
    save_trained_model(model, tokenizer, tmp_path / "saved")
    weights = tmp_path / "saved" / "model.safetensors"
    tensors = {name: tensor for name, tensor in load_file(weights).items() if "classifier" not in name}
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"saved: model.safetensors lacks 2 weight\(s\).*classifier.*export the model again"):
        load_trained_model(tmp_path / "saved")


def test_pooling_setting_overrides_what_the_export_declares(tiny_model_dir, tmp_path):
    folder = sentence_transformers_copy(tiny_model_dir, tmp_path)
    for cls_config in (ModelConfig(name_or_path=str(folder), pooling="cls"), ModelConfig(name_or_path=str(folder))):
        cls, _ = load_base_model(cls_config, LABELS)  # cls is the default
        assert cls.config.pooler_init == "identity" and not isinstance(cls.bert.pooler, MaskedMeanPooler)
    mean, _ = load_base_model(ModelConfig(name_or_path=str(tiny_model_dir), pooling="mean"), LABELS)
    assert isinstance(mean.bert.pooler, MaskedMeanPooler)  # a plain BERT folder can ask for it too
    own, _ = load_base_model(ModelConfig(name_or_path=str(tiny_model_dir), pooling="auto"), LABELS)
    assert not isinstance(own.bert.pooler, MaskedMeanPooler) and not hasattr(own.config, "pooler_init")


def test_mean_pooling_on_a_model_without_a_pooler_is_refused(tmp_path):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=40, num_labels=len(LABELS))
    RobertaForSequenceClassification(config).save_pretrained(tmp_path / "roberta", safe_serialization=True)
    with pytest.raises(ModelError, match=r"roberta: model.pooling: mean needs a BERT-style model.*pooling: auto or cls"):
        load_base_model(ModelConfig(name_or_path=str(tmp_path / "roberta"), pooling="mean"), LABELS)
