"""A site's own policy: checked at the site before it trains, refusing with the rule; its lifetime odometer counts.

In-process, without Flower's processes: `train_site_round` with a deployed site's node config
(its own file, state folder and key) plus ``site-policy``, as `secure-ft deploy supernode
--site-policy FILE` starts it.
"""

from __future__ import annotations

import pytest
import yaml

from federated import protocol
from federated.site_errors import SiteFailure
from federated.site_policy import (BUDGET_FOLDER, POLICY_KEY, data_file_sha256, load_site_policy,
                                   planned_site_history)
from federated.site_training import Instructions, train_site_round
from federated.task import base_model_sha256, build_model, trainable_arrays
from secure_ft.deploy.certificates import make_site_key
from secure_ft.errors import ConfigError
from secure_ft.privacy.budget_composition import compose_ledger
from secure_ft.privacy.budget_ledger import BudgetLedger
from secure_ft.records.config import RunConfig
from toy_data import toy_frame

LABELS = ["cards", "loans", "reports"]


@pytest.fixture
def dp_config(toy_config) -> RunConfig:
    config = toy_config.model_copy(deep=True)
    config.model.transfer = "lora"
    config.privacy = config.privacy.model_copy(update={"mode": "dp", "target_epsilon": 8.0, "accountant": "rdp"})
    config.federated.rounds = 3
    config.data.labels = LABELS
    return config


@pytest.fixture
def site(tmp_path):
    path = tmp_path / "hospital-b.csv"
    toy_frame(rows_per_class=20, seed=7).to_csv(path, index=False)
    make_site_key(tmp_path / "keys", "hospital-b", force=False)
    return {protocol.DATA_PATH: str(path), protocol.SITE_NAME_KEY: "hospital-b",
            protocol.STATE_DIR: str(tmp_path / "state"), protocol.AUTH_KEY: str(tmp_path / "keys" / "hospital-b")}


def with_policy(site: dict, tmp_path, **rules) -> dict:
    path = tmp_path / "site-policy.yaml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    return {**site, POLICY_KEY: str(path)}


def lifetime(tmp_path, site) -> list[dict]:
    ledger = BudgetLedger(tmp_path / "state" / BUDGET_FOLDER)
    return ledger.entries(data_file_sha256(site[protocol.DATA_PATH]))


@pytest.mark.parametrize("rules, rule", [
    ({"max_rounds": 2}, "max_rounds = 2"),
    ({"accepted_label_sets": [["cards", "loans"]]}, "accepted_label_sets"),
    ({"accepted_base_models": ["0" * 64]}, "accepted_base_models"),
    ({"min_noise_multiplier": 50.0}, "min_noise_multiplier = 50"),
    ({"max_epsilon_per_run": 2.0}, "max_epsilon_per_run = 2"),
])
def test_a_site_refuses_a_run_that_breaks_its_policy_before_training(dp_config, site, tmp_path, rules, rule):
    model, _ = build_model(dp_config, LABELS)
    node = with_policy(site, tmp_path, **rules)
    with pytest.raises(SiteFailure) as caught:
        train_site_round(Instructions(config=dp_config, labels=LABELS, server_round=1, run_key="r1"),
                         trainable_arrays(model), node)
    message = str(caught.value)
    assert message.startswith("site hospital-b: checking the site policy failed: site policy " + rule)
    assert "no DP release this round" in message
    assert lifetime(tmp_path, site) == []  # nothing trained, nothing spent
    # the same run within the rules trains (the base model's digest is accepted here)
    accepted = with_policy(site, tmp_path, accepted_base_models=[base_model_sha256(dp_config.model)],
                           accepted_label_sets=[list(reversed(LABELS))], max_rounds=3, max_epsilon_per_run=8.5)
    if rule.startswith("max_rounds"):
        train_site_round(Instructions(config=dp_config, labels=LABELS, server_round=1, run_key="r1"),
                         trainable_arrays(model), accepted)
        assert len(lifetime(tmp_path, site)) == 1


def test_a_non_private_run_is_refused_by_a_per_run_epsilon_limit(dp_config, site, tmp_path):
    plain = dp_config.model_copy(update={"privacy": dp_config.privacy.model_copy(update={"mode": "none"})})
    model, _ = build_model(plain, LABELS)
    with pytest.raises(SiteFailure, match="site policy max_epsilon_per_run = 8"):
        train_site_round(Instructions(config=plain, labels=LABELS, server_round=1, run_key="plain"),
                         trainable_arrays(model), with_policy(site, tmp_path, max_epsilon_per_run=8.0))


def test_the_lifetime_odometer_keeps_a_runs_spend_and_refuses_the_next_run(dp_config, site, tmp_path):
    model, _ = build_model(dp_config, LABELS)
    arrays = trainable_arrays(model)
    first = train_site_round(Instructions(config=dp_config, labels=LABELS, server_round=1, run_key="first"),
                             arrays, site)
    (entry,) = lifetime(tmp_path, site)
    assert entry["kind"] == "site" and entry["site"] == "hospital-b" and entry["status"] == "released"
    assert entry["history"] == first.privacy["history"] and entry["reserved"] == []

    # a lifetime limit between this run's planned ε and that plus what the first run already released
    sigma, rate, _ = first.privacy["history"][0]
    planned, delta = planned_site_history(dp_config, first.privacy["dataset_size"], sigma)
    from secure_ft.privacy.budget_composition import composed_epsilon

    alone = composed_epsilon([planned], delta)
    with_first = composed_epsilon([entry["history"], planned], delta)
    assert alone < with_first
    node = with_policy(site, tmp_path, max_lifetime_epsilon=round((alone + with_first) / 2, 4))

    with pytest.raises(SiteFailure) as caught:  # a new run would break the data's lifetime budget
        train_site_round(Instructions(config=dp_config, labels=LABELS, server_round=1, run_key="second"), arrays, node)
    assert "site hospital-b: checking the site policy failed: site policy max_lifetime_epsilon" in str(caught.value)
    # the running run continues within it (its own planned spend is counted once), and its spend grows
    second_round = train_site_round(Instructions(config=dp_config, labels=LABELS, server_round=2, run_key="first"),
                                    arrays, node)
    (entry,) = lifetime(tmp_path, site)
    assert entry["history"] == second_round.privacy["history"]
    statement = compose_ledger(entry["fingerprint"], [entry], delta)
    assert statement.cumulative_epsilon == pytest.approx(composed_epsilon([second_round.privacy["history"]], delta))


def test_a_bad_site_policy_names_the_file_and_field(tmp_path):
    path = tmp_path / "site-policy.yaml"
    path.write_text("max_rounds: 0\nmax_epsilon: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_site_policy(path)
    assert str(path) in str(caught.value) and "max_rounds" in str(caught.value) and "max_epsilon" in str(caught.value)


def test_the_guides_site_policy_is_the_shipped_example_and_accepts_the_default_model():
    import re
    from pathlib import Path

    from secure_ft.records.config import ModelConfig

    root = Path(__file__).resolve().parents[1]
    guide = (root / "deploy" / "README.md").read_text(encoding="utf-8")
    section = guide.split("## Site policy", 1)[1].split("\n## ", 1)[0]
    shown = next(block for block in re.findall(r"```yaml\n(.*?)```", section, re.S))
    example = root / "examples" / "site-policy.yaml"
    assert yaml.safe_load(shown) == yaml.safe_load(example.read_text(encoding="utf-8"))
    policy = load_site_policy(example)
    assert policy.accepted_base_models == [base_model_sha256(ModelConfig())]
    deployed = yaml.safe_load((root / "examples" / "deployed-federation.yaml").read_text(encoding="utf-8"))
    assert sorted(deployed["data"]["labels"]) in [sorted(labels) for labels in policy.accepted_label_sets]
    assert "--site-policy /etc/secure-ft/site-policy.yaml" in section
