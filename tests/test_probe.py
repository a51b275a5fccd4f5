"""The frozen-encoder probe: cached embeddings, a DP head through the one loop, an ordinary saved model."""

from __future__ import annotations

import json

import pytest
import torch

from dp_helpers import dp_config
from toy_data import toy_frame
from secure_ft.privacy.accountant_history import load_accountant_history
from secure_ft.privacy.recompute import verify_privacy
from secure_ft.records.checkpoint import CheckpointStore
from secure_ft.records.config import ModelConfig
from secure_ft.records.run_directory import RunDirectory
from secure_ft.text.embedding_cache import EmbeddingCache, text_sha256
from secure_ft.text.models import load_base_model, load_trained_model, predict
from secure_ft.training.central_run import train_run
from secure_ft.training.probe import embed_texts, embedding_cache
from secure_ft.training.probe_recipe import RECIPE_NAME


@pytest.fixture
def toy_data_csv(tmp_path):
    path = tmp_path / "data.csv"
    toy_frame().to_csv(path, index=False)
    return path


def probe_config(data_csv, model_dir, output_dir, **training):
    """A DP probe run whose training section sets only what a test needs (the recipe supplies the rest)."""
    config = dp_config(data_csv, model_dir, output_dir, transfer="probe")
    config.training = type(config.training).model_validate({"num_threads": 1, **training})
    return config


def test_saved_probe_predicts_like_the_head_on_cached_embeddings(tmp_path, toy_data_csv, tiny_model_dir):
    config = probe_config(toy_data_csv, tiny_model_dir, tmp_path / "runs", epochs=3)
    trained = train_run(config, output_dir=tmp_path / "runs", progress=False)
    run = RunDirectory(trained.run_dir)

    model, tokenizer = load_trained_model(trained.model_dir)  # the ordinary loader, no probe special case
    assert json.loads((trained.model_dir / "config.json").read_text())["pooling"] == "mean_normalized"
    texts = trained.splits.validation["text"].tolist()
    saved = predict(model, tokenizer, texts, max_length=16).probabilities

    (cache_file,) = run.cache_dir.glob("embeddings-*.safetensors")  # the cache lives in the run directory
    cache = EmbeddingCache(run.cache_dir, embedding_cache(run.cache_dir, config.model).key)
    found = cache.get([text_sha256(text) for text in texts])
    embeddings = torch.stack([found[text_sha256(text)] for text in texts])
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(len(texts)), atol=1e-5)
    with torch.no_grad():
        head = torch.softmax(model.classifier(embeddings), dim=-1)
    assert torch.allclose(saved, head, atol=1e-5)

    # only the head trained: the encoder is the base model's
    base, _ = load_base_model(ModelConfig(name_or_path=str(tiny_model_dir), transfer="probe", max_length=16),
                              trained.splits.label_names)
    for name, parameter in base.named_parameters():
        if name.startswith("bert.") and ".pooler." not in name:
            assert torch.equal(parameter, model.state_dict()[name]), name

    privacy = run.read_privacy()
    assert privacy["trained"] == "probe" and privacy["hyperparameters"] == f"fixed recipe {RECIPE_NAME} with configured training.epochs"
    verification = verify_privacy(run.path)  # ε recomputed from the accountant's history
    assert verification.passed, verification.to_dict()
    assert 0 < privacy["epsilon"] <= 8.0
    metrics = run.read_metrics()
    assert metrics["trainable_parameters"] == 32 * 3 + 3  # hidden 32 → 3 labels
    # where the time went, from the run's own clock: the embedding pass counted every text it was given
    timings = metrics["timings"]
    copies = metrics["robust_training"]["augmentation_copies"]
    train, validation = len(trained.splits.train), len(trained.splits.validation)
    assert timings["embedding"]["texts"] == (1 + copies) * train + validation
    assert timings["embedding"]["encoded"] == timings["embedding"]["distinct"] <= timings["embedding"]["texts"]
    phases = ("load_seconds", "front_end_build_seconds", "datasets_seconds", "fit_seconds", "save_seconds")
    assert all(timings[phase] >= 0 for phase in phases)
    assert timings["embedding"]["seconds"] <= timings["datasets_seconds"]
    assert sum(timings[phase] for phase in phases) <= timings["total_seconds"] + 0.01


def test_killed_probe_run_resumes_to_the_same_model_and_epsilon(tmp_path, toy_data_csv, tiny_model_dir, monkeypatch):
    config = probe_config(toy_data_csv, tiny_model_dir, tmp_path / "runs", epochs=2, checkpoint_every_steps=3)
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

    encoded = []
    monkeypatch.setattr("secure_ft.training.probe.tqdm", lambda *a, **k: encoded.append(k["total"]) or _NoBar())
    resumed = train_run(None, killed_dir, resume=True, progress=False)
    assert encoded == []  # every embedding came from the run's cache
    expected = json.loads((reference.run_dir / "privacy.json").read_text())
    got = json.loads((killed_dir / "privacy.json").read_text())
    assert got["epsilon"] == expected["epsilon"] and got["steps"] == expected["steps"]
    assert resumed.model_sha256 == reference.model_sha256
    assert {"event": "resumed", "step": 3} in load_accountant_history(killed_dir).events


class _NoBar:
    def update(self, _):
        pass

    def close(self):
        pass


def test_embeddings_are_cached_by_text_and_recomputed_for_new_ones(tmp_path, tiny_model_dir):
    config = ModelConfig(name_or_path=str(tiny_model_dir), transfer="probe", max_length=16)
    model, tokenizer = load_base_model(config, ["a", "b", "c"])
    cache = embedding_cache(tmp_path / "cache", config)
    first = embed_texts(model, tokenizer, ["card fee", "loan late", "card fee"], max_length=16, cache=cache,
                        progress=False)
    assert len(cache) == 2 and torch.equal(first[0], first[2])
    reopened = embedding_cache(tmp_path / "cache", config)
    again = embed_texts(model, tokenizer, ["loan late", "new text"], max_length=16, cache=reopened, progress=False)
    assert torch.allclose(again[0], first[1], atol=1e-6) and len(reopened) == 3
    other = embedding_cache(tmp_path / "cache", config.model_copy(update={"max_length": 8}))
    assert other.key != cache.key and len(other) == 0  # another setting, another file


def test_probe_trains_with_augmentation_copies_at_the_same_epsilon(tmp_path, toy_data_csv, tiny_model_dir, monkeypatch):
    from secure_ft.records.robust_training_config import RobustTrainingConfig
    import secure_ft.training.robust_training as robust_training

    plain = train_run(probe_config(toy_data_csv, tiny_model_dir, tmp_path / "plain", epochs=2),
                      output_dir=tmp_path / "plain", progress=False)
    config = probe_config(toy_data_csv, tiny_model_dir, tmp_path / "copies", epochs=2)
    config.training.robustness = RobustTrainingConfig(augmentation_copies=2, char_edit_fraction=1.0,
                                                      synonym_fraction=0.0)
    stacked, stack_copies = [], robust_training.stack_copies
    monkeypatch.setattr(robust_training, "stack_copies", lambda original, copies: stacked.append(
        stack_copies(original, copies)) or stacked[-1])
    with_copies = train_run(config, output_dir=tmp_path / "copies", progress=False)

    (train_set,) = stacked
    rows = len(with_copies.splits.train)
    features, labels = train_set.tensors
    assert features.shape[:2] == (rows, 3) and labels.shape == (rows, 3)  # the example and its 2 copies
    assert torch.equal(labels[:, 0], labels[:, 1]) and torch.equal(labels[:, 0], labels[:, 2])
    assert not torch.equal(features[:, 0], features[:, 1])  # the copies read perturbed text
    cache_dir = RunDirectory(with_copies.run_dir).cache_dir
    validation = len(with_copies.splits.validation)
    assert len(EmbeddingCache(cache_dir, embedding_cache(cache_dir, config.model).key)) > rows + validation
    # augmentation multiplicity: one clipped gradient per example, so the accountant's inputs do not change
    a, b = RunDirectory(plain.run_dir).read_privacy(), RunDirectory(with_copies.run_dir).read_privacy()
    for key in ("epsilon", "noise_multiplier", "sample_rate", "steps", "delta"):
        assert a[key] == b[key], key
    assert verify_privacy(with_copies.run_dir).passed


def test_the_head_trains_on_one_thread_unless_the_config_says_otherwise():
    from secure_ft.training.probe import head_training_threads

    before = torch.get_num_threads()
    with head_training_threads(None):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with head_training_threads(3):  # training.num_threads set: fit applies it, nothing changes here
        assert torch.get_num_threads() == before
