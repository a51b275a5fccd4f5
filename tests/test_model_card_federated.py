"""The model card says what trained a deployed federation's model: the sites, not the coordinator's hold-out."""

from __future__ import annotations

from secure_ft.release.model_card import render_model_card

DATA = {"source": "/srv/secure-ft/holdout.csv", "fingerprint": "ab" * 32, "rows": {"train": 143, "validation": 171,
        "test": 256}, "labels": ["cards", "loans"], "group_columns": ["servicemember"]}


def section(card: str, heading: str) -> str:
    return card.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_a_deployed_federations_card_lists_the_sites_as_training_data_and_the_holdout_as_evaluation_data():
    sites = [{"name": "hospital-a", "train_rows": 408, "validation_rows": 72},
             {"name": "hospital-b", "train_rows": 408, "validation_rows": 72}]
    card = render_model_card({"run": {"mode": "federated", "data": {**DATA, "sites": sites,
                                                                      "train_rows_used_for_training": False}}})
    training = section(card, "Training data")
    assert "hospital-a" in training and "408" in training and "holdout.csv" not in training
    evaluation = section(card, "Evaluation data (the coordinator's hold-out)")
    assert "holdout.csv" in evaluation and "143 / 171 / 256" in evaluation


def test_a_central_runs_card_keeps_its_training_data_section():
    card = render_model_card({"run": {"mode": "train", "data": DATA}})
    assert "holdout.csv" in section(card, "Training data") and "Evaluation data" not in card
