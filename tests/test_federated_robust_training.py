"""Issue #16 in a federation: sites read through the same spelling front end and train with copies at the same ε.

Whole federated runs with the sites in this process (`backend="local"`: the server and the
ClientApp code are those of a Flower simulation or deployment, only the transport differs).
"""

from __future__ import annotations

import json

import pytest

from dp_helpers import without_dropout
from federated import run_federated
from federated.front_end import federation_front_end, front_end_sha256
from federated.site_training import Instructions, site_front_end
from secure_ft.errors import ConfigError, ModelError
from secure_ft.records.config import load_config
from secure_ft.records.robust_training_config import RobustTrainingConfig
from secure_ft.records.run_directory import RunDirectory
from secure_ft.text.embedding_cache import EmbeddingCache
from secure_ft.text.text_classifier import TextClassifier
from secure_ft.training.probe import embedding_cache
from tiny_models import tiny_bert_folder
from toy_data import VOCAB

TYPO, CORRECTED = "the mortgaeg paymnet was late", "the mortgage payment was late"
ROBUST = {"augmentation_copies": 2, "char_edit_fraction": 1.0, "synonym_fraction": 0.0, "front_end": "spelling"}
# what each site's accountant composes: none of it may depend on the copies or the front end
PRIVACY_INPUTS = ("history", "noise_multiplier", "sample_rate", "steps", "max_grad_norm", "dataset_size", "epsilon",
                  "delta", "accountant")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return without_dropout(tiny_bert_folder(tmp_path_factory.mktemp("tiny-bert"), VOCAB, num_labels=3))


def fed_dp_config(toy_config, model_dir, transfer: str, robustness: dict | None = None):
    config = toy_config.model_copy(deep=True)
    config.model = config.model.model_copy(update={"name_or_path": str(model_dir), "transfer": transfer})
    config.training = config.training.model_copy(update={"learning_rate": 0.01, "num_threads": 1})
    config.privacy = config.privacy.model_copy(update={"mode": "dp", "target_epsilon": 6.0, "accountant": "rdp",
                                                       "max_physical_batch_size": 16})
    config.federated = config.federated.model_copy(update={
        "num_sites": 3, "partition": "iid", "rounds": 2, "local_epochs": 1, "min_train_sites": 3})
    config.mode = "federated"
    if robustness:
        config.training.robustness = RobustTrainingConfig(**robustness)
    return config


def site_details(run_dir) -> dict[str, dict]:
    """Each site's own privacy.json (written by its engine in its state folder)."""
    sites = json.loads((run_dir / "privacy.json").read_text())["sites"]
    return {name: json.loads((run_dir / guarantee["details"]).read_text()) for name, guarantee in sites.items()}


@pytest.mark.parametrize("transfer", ["full", "probe"])
def test_sites_train_with_copies_behind_the_front_end_at_unchanged_privacy_inputs(toy_config, model_dir, tmp_path,
                                                                                   transfer):
    without_copies = {**ROBUST, "augmentation_copies": 0}
    plain = run_federated(fed_dp_config(toy_config, model_dir, transfer, without_copies), tmp_path / "plain",
                          progress=False, backend="local")
    robust_config = fed_dp_config(toy_config, model_dir, transfer, ROBUST)
    robust = run_federated(robust_config, tmp_path / "robust", progress=False, backend="local")

    assert all(entry["aggregated"] and entry["sites_accepted"] == 3 for entry in robust.metrics["rounds"])
    ours, theirs = (json.loads((run.run_dir / "privacy.json").read_text())["sites"] for run in (robust, plain))
    assert set(ours) == set(theirs) == {"site-1", "site-2", "site-3"}
    for site in ours:
        for key in PRIVACY_INPUTS:
            assert ours[site][key] == theirs[site][key], (site, key)
    for site, details in site_details(robust.run_dir).items():
        assert details["rows_per_example"] == 3, site  # each example and its 2 copies, averaged before clipping
    assert all(details["rows_per_example"] == 1 for details in site_details(plain.run_dir).values())
    if transfer == "probe":  # the copies were embedded once, in each site's own cache, like its rows
        data = json.loads((robust.run_dir / "data.json").read_text())["sites"]
        for site in data:
            cache_dir = RunDirectory(robust.run_dir).site(site["name"]).cache_dir
            cached = len(EmbeddingCache(cache_dir, embedding_cache(cache_dir, robust_config.model).key))
            assert cached > site["train_rows"] + site["validation_rows"], site["name"]

    # the global model carries the front end: audits, export and serving read through it
    assert (robust.model_dir / "front_end" / "dictionary.txt").is_file()
    classifier = TextClassifier.load(robust.model_dir, max_length=16)
    assert classifier.model_inputs([TYPO]) == [CORRECTED]
    assert classifier.predict_proba([TYPO]) == pytest.approx(classifier.predict_proba([CORRECTED]), abs=1e-6)
    summary = robust.metrics["robust_training"]
    assert summary["augmentation_copies"] == 2 and summary["uses_private_vocabulary"] is False
    ledger = [json.loads(line) for line in (robust.run_dir / "ledger.jsonl").read_text().splitlines()]
    saved = next(entry for entry in ledger if entry.get("event") == "model_saved")
    assert saved["data"]["front_end"] == "spelling" and saved["data"]["augmentation_copies"] == 2


def test_a_site_whose_front_end_differs_from_the_coordinators_refuses_to_train(toy_config, model_dir):
    from transformers import AutoTokenizer

    config = fed_dp_config(toy_config, model_dir, "full", ROBUST)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    ours = federation_front_end(config, tokenizer)
    agreed = Instructions(config=config, labels=["cards", "loans", "reports"], server_round=1,
                          front_end_sha256=front_end_sha256(ours))
    assert site_front_end(agreed, tokenizer) is ours
    other = Instructions(config=config, labels=agreed.labels, server_round=1, front_end_sha256="0" * 64)
    with pytest.raises(ModelError, match="same symspellpy, base model and secure-ft version"):
        site_front_end(other, tokenizer)


def test_federated_runs_refuse_training_words_in_the_front_end(tmp_path):
    config_file = tmp_path / "federated.yaml"
    config_file.write_text("mode: federated\nprivacy: {mode: none}\ntraining:\n  robustness:\n    front_end: spelling\n"
                           "    front_end_extra_words_from_training_data: true\n")
    with pytest.raises(ConfigError) as error:
        load_config(config_file)
    message = str(error.value)
    assert str(config_file) in message and "front_end_extra_words_from_training_data" in message
    assert "set it to false" in message
    central = config_file.read_text().replace("mode: federated", "mode: central")
    config_file.write_text(central)
    assert load_config(config_file).training.robustness.front_end_extra_words_from_training_data is True
