"""`model.transfer: auto` and the probe's fixed recipe: pure functions of the config and the row count."""

from __future__ import annotations

import pytest

from secure_ft.records.config import RunConfig, config_from_dict
from secure_ft.training.probe_recipe import RECIPE, RECIPE_NAME
from secure_ft.training.transfer_choice import choose_transfer, resolve_run_config


@pytest.mark.parametrize("privacy, rows, expected", [
    ({"mode": "dp", "target_epsilon": 8.0}, 1_070, "probe"),
    ({"mode": "dp", "target_epsilon": 1.0}, 7_499, "probe"),
    ({"mode": "dp", "target_epsilon": 8.0}, 7_500, "lora"),
    ({"mode": "dp", "target_epsilon": 10.0}, 1_070, "lora"),
    ({"mode": "dp", "target_epsilon": None, "noise_multiplier": 1.0}, 1_070, "probe"),
    ({"mode": "none"}, 999, "probe"),
    ({"mode": "none"}, 5_000, "lora"),
    ({"mode": "none"}, 20_000, "full"),
])
def test_auto_rule(privacy, rows, expected):
    config = config_from_dict({"privacy": privacy})
    transfer, reason = choose_transfer(rows, config.privacy)
    assert transfer == expected and reason.startswith("auto (secure_ft.training.transfer_choice)")


def test_builtin_default_resolves_to_the_probe_with_the_whole_recipe():
    config, choice = resolve_run_config(RunConfig(), 1_070)
    assert (choice.requested, choice.transfer) == ("auto", "probe")
    assert choice.hyperparameters == f"fixed recipe {RECIPE_NAME}"
    assert config.model.transfer == "probe"
    for key, value in RECIPE.items():
        assert getattr(config.training, key) == value, key
    assert config.training.batch_size == 256  # min(256, 1070 // 4)


def test_explicit_training_keys_win_and_are_named():
    config, choice = resolve_run_config(config_from_dict({"training": {"learning_rate": 0.1, "epochs": 5}}), 400)
    assert config.training.learning_rate == 0.1 and config.training.epochs == 5
    assert config.training.optimizer == "sgd" and config.training.batch_size == 100
    assert choice.hyperparameters == (f"fixed recipe {RECIPE_NAME} with configured training.epochs, "
                                      "training.learning_rate")


def test_lora_keeps_its_configured_defaults():
    config, choice = resolve_run_config(config_from_dict({"model": {"transfer": "lora"}}), 1_070)
    assert choice.reason == "configured" and choice.hyperparameters == "configured"
    assert config.training == RunConfig().training


def test_resolved_config_round_trips_through_yaml_unchanged():
    resolved, _ = resolve_run_config(RunConfig(), 1_070)
    again, choice = resolve_run_config(config_from_dict(__import__("yaml").safe_load(resolved.to_yaml())), 1_070)
    assert again.model_dump() == resolved.model_dump() and choice.transfer == "probe"


def test_a_federation_spreads_the_recipe_epochs_over_its_rounds():
    config = config_from_dict({"mode": "federated", "federated": {"num_sites": 3, "rounds": 3}})
    resolved, choice = resolve_run_config(config, 1_070)
    assert choice.transfer == "probe"
    assert resolved.federated.local_epochs == 20 and resolved.training.batch_size == 89  # (1070 // 3) // 4
