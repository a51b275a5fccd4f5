"""Pre-flight: a config that cannot pass its policy is refused in seconds, before anything trains.

One test per kind of problem, each checking that the message names the setting (and, where
the policy is involved, the policy file and field); the shipped configs pass under the
policies they are meant for; and `secure-ft run` exits 2 with no run directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from secure_ft.errors import ConfigError, PolicyError
from secure_ft.pipeline.preflight import check_before_training
from secure_ft.records.config import RESERVED_COLUMNS, RunConfig, config_from_dict, load_config
from secure_ft.records.policy import default_policy_path, load_policy

from toy_data import TOY_CARD

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "secure_ft" / "records" / "policies"


def make_policy(tmp_path: Path, **changes):
    """The shipped default policy with some top-level sections or fields replaced, as a file."""
    raw = yaml.safe_load(default_policy_path().read_text(encoding="utf-8"))
    for key, value in changes.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    path = tmp_path / "test-policy.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    policy, _ = load_policy(path)
    return policy, path


def make_config(toy_csv: Path, tmp_path: Path, **sections) -> RunConfig:
    """A DP run on the toy data (84 training rows) with `sections` merged in."""
    raw = {
        "output_dir": str(tmp_path / "runs"),
        "data": {"source": str(toy_csv), "label_column": "product", "group_columns": ["region", "senior"],
                 "min_class_count": 5},
        "privacy": {"mode": "dp", "target_epsilon": 8.0, "target_delta": 1e-5},
        "card": dict(TOY_CARD),
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return RunConfig.model_validate(raw)


def without_card(config: RunConfig) -> RunConfig:
    from secure_ft.records.config import CardConfig

    return config.model_copy(update={"card": CardConfig()})


def problems(config: RunConfig, policy, path) -> str:
    with pytest.raises(ConfigError) as caught:
        check_before_training(config, policy, path)
    message = str(caught.value)
    assert "pre-flight" in message and str(path) in message
    return message


def test_a_config_within_the_policy_passes_and_reports_its_privacy_parameters(toy_csv, tmp_path):
    policy, path = make_policy(tmp_path)
    config = make_config(toy_csv, tmp_path)
    report = check_before_training(config, policy, path)
    assert report.train_rows == 84 and report.deltas == {"run": 1e-5} and report.epsilons == {"run": 8.0}
    assert not (tmp_path / "runs").exists()  # nothing written


# -- audits the policy requires ---------------------------------------------------------------

def test_fairness_required_without_group_columns(toy_csv, tmp_path):
    policy, path = make_policy(tmp_path)
    message = problems(make_config(toy_csv, tmp_path, data={"group_columns": []}), policy, path)
    assert "data.group_columns is empty" in message and "required_audits lists fairness" in message
    # without the fairness audit, no group column is needed
    policy, path = make_policy(tmp_path, required_audits=["performance", "privacy"])
    check_before_training(make_config(toy_csv, tmp_path, data={"group_columns": []}), policy, path)


def test_group_column_absent_from_the_data_file(toy_csv, tmp_path):
    policy, path = make_policy(tmp_path)
    message = problems(make_config(toy_csv, tmp_path, data={"group_columns": ["ethnicity"]}), policy, path)
    assert "data.group_columns" in message and "'ethnicity'" in message and str(toy_csv) in message
    # a sensitive column the loader never keeps cannot be audited either
    config = make_config(toy_csv, tmp_path, audits={"fairness": {"sensitive_columns": ["senior", "zip"]}})
    message = problems(config, policy, path)
    assert "audits.fairness.sensitive_columns: ['zip'] are not in data.group_columns" in message


def test_fairness_thresholds_need_intervals_and_a_test_that_can_reject(toy_csv, tmp_path):
    policy, path = make_policy(tmp_path)
    config = make_config(toy_csv, tmp_path, audits={"fairness": {"n_boot": 0, "n_permutations": 19}})
    message = problems(config, policy, path)
    assert "audits.fairness.n_boot is 0" in message
    assert "audits.fairness.n_permutations = 19 cannot give a p-value below" in message and "at least 20" in message
    check_before_training(make_config(toy_csv, tmp_path, audits={"fairness": {"n_permutations": 20}}), policy, path)


def test_unknown_audit_name_in_the_policy(toy_csv, tmp_path):
    # refused when the policy is read (audit names become file names), before pre-flight sees it
    with pytest.raises(PolicyError, match=r"test-policy.yaml: invalid policy: required_audits: .*unknown audit "
                                          r"'fairnes'; known audits are performance, robustness, fairness") as caught:
        make_policy(tmp_path, required_audits=["performance", "fairnes", "privacy"])
    assert caught.value.exit_code == 2


# -- differential privacy -------------------------------------------------------------------------

def test_require_dp_with_privacy_mode_none(toy_csv, tmp_path):
    policy, path = make_policy(tmp_path)
    message = problems(make_config(toy_csv, tmp_path, privacy={"mode": "none"}), policy, path)
    assert "privacy.mode: none" in message and "privacy.require_dp is true" in message
    # a federated run may get its guarantee from central client-level DP instead
    config = make_config(toy_csv, tmp_path, mode="federated", privacy={"mode": "none"},
                         federated={"num_sites": 2, "partition": "iid", "central_dp": "fixed",
                                    "central_noise_multiplier": 2.0})
    check_before_training(config, policy, path)


def test_central_delta_too_large(toy_csv, tmp_path):
    policy, path = make_policy(tmp_path)
    message = problems(make_config(toy_csv, tmp_path, privacy={"target_delta": 1e-3}), policy, path)
    assert "privacy.target_delta = 0.001 is above policy test-policy.yaml privacy.max_delta = 0.0001" in message
    # the default δ = min(1/(10 N), 1e-5) is above a policy that asks for 1e-6
    policy, path = make_policy(tmp_path, privacy={"max_delta": 1e-6})
    message = problems(make_config(toy_csv, tmp_path, privacy={"target_delta": None}), policy, path)
    assert "privacy.target_delta: null gives the training split δ = min(1/(10 N), 1e-5)" in message
    assert "N = 84" in message
    # and a δ at or above 1/N is refused whatever the policy says
    policy, path = make_policy(tmp_path, privacy={"max_delta": None})
    message = problems(make_config(toy_csv, tmp_path, privacy={"target_delta": 0.02}), policy, path)
    assert "privacy.target_delta = 0.02 is not below 1/N" in message


def test_site_delta_too_large_in_a_federated_run(toy_csv, tmp_path):
    policy, path = make_policy(tmp_path, privacy={"max_delta": 5e-6})  # below the default cap 1e-5
    federated = {"num_sites": 2, "partition": "iid"}
    message = problems(make_config(toy_csv, tmp_path, mode="federated", privacy={"target_delta": None},
                                   federated=federated), policy, path)
    assert "privacy.target_delta: null gives each simulated site δ = min(1/(10 N), 1e-5)" in message
    assert "site-1: N = 42" in message and "site-2: N = 42" in message and "max_delta = 5e-06" in message
    policy, path = make_policy(tmp_path, privacy={"max_delta": 1e-4})
    report = check_before_training(make_config(toy_csv, tmp_path, mode="federated", federated=federated),
                                   policy, path)
    assert report.site_train_rows == {"site-1": 42, "site-2": 42}
    assert report.deltas == {"site:site-1": 1e-5, "site:site-2": 1e-5}


def test_central_client_level_delta_too_large(toy_csv, tmp_path):
    policy, path = make_policy(tmp_path)
    config = make_config(toy_csv, tmp_path, mode="federated", federated={
        "num_sites": 2, "partition": "iid", "central_dp": "fixed", "central_noise_multiplier": 2.0,
        "central_delta": 1e-3})
    assert "federated.central_delta = 0.001 is above" in problems(config, policy, path)


def test_epsilon_above_the_policy_maximum(toy_csv, tmp_path):
    policy, path = make_policy(tmp_path)
    message = problems(make_config(toy_csv, tmp_path, privacy={"target_epsilon": 10.0}), policy, path)
    assert "privacy.target_epsilon = 10 (the run's ε) is above policy test-policy.yaml privacy.max_epsilon = 8" \
        in message
    message = problems(make_config(toy_csv, tmp_path, mode="federated", privacy={"target_epsilon": 10.0},
                                   federated={"num_sites": 2, "partition": "iid"}), policy, path)
    assert "(each site's ε)" in message
    # a fixed noise multiplier alone has no budget to compare
    message = problems(make_config(toy_csv, tmp_path, privacy={"target_epsilon": None, "noise_multiplier": 1.0}),
                       policy, path)
    assert "privacy.target_epsilon is null with a fixed privacy.noise_multiplier" in message


def test_central_client_level_epsilon_above_the_policy_maximum(toy_csv, tmp_path):
    policy, path = make_policy(tmp_path)
    federated = {"num_sites": 2, "partition": "iid", "central_dp": "fixed", "rounds": 3}
    message = problems(make_config(toy_csv, tmp_path, mode="federated",
                                   federated={**federated, "central_noise_multiplier": 1.0}), policy, path)
    assert "federated.central_noise_multiplier = 1" in message and "client-level ε of 9.01" in message
    report = check_before_training(make_config(toy_csv, tmp_path, mode="federated",
                                               federated={**federated, "central_noise_multiplier": 1.2}),
                                   policy, path)
    assert 7 < report.epsilons["central"] < 8 and report.deltas["central"] == 1e-5


def test_every_problem_is_listed_at_once(toy_csv, tmp_path):
    policy, path = make_policy(tmp_path, required_audits=["fairness", "privacy"])
    config = make_config(toy_csv, tmp_path, data={"group_columns": []}, privacy={"mode": "none"})
    message = problems(config, policy, path)
    assert "2 problem(s)" in message
    assert all(name in message for name in ("data.group_columns", "privacy.mode: none"))


# -- the technical documentation the regulated policies require ----------------------------------

@pytest.mark.parametrize("policy_file", ["regulated-default.yaml", "strict.yaml"])
def test_regulated_policies_refuse_a_run_without_its_card_statements(toy_csv, tmp_path, policy_file):
    config = make_config(toy_csv, tmp_path, card={"intended_purpose": None, "deidentification": None})
    policy_path = POLICIES / policy_file
    policy, _ = load_policy(policy_path)
    message = problems(config, policy, policy_path)
    assert "card.intended_purpose, card.deidentification missing" in message
    assert "documentation.required_card_fields" in message
    assert "card.data_provenance" not in message  # given: only the missing keys are named
    # the snippet is YAML to paste, and its placeholders are refused until someone writes the statements
    lines = message[message.index("\n      card:\n") + 1:].splitlines()
    snippet = [line[6:] for line in lines[:next((i for i, line in enumerate(lines) if not line.startswith(" " * 6)),
                                                len(lines))]]
    raw = yaml.safe_load("\n".join(snippet))
    assert set(raw["card"]) == {"intended_purpose", "deidentification"}
    with pytest.raises(ConfigError, match="placeholder"):
        config_from_dict(raw)


def test_research_policy_does_not_require_card_statements(toy_csv, tmp_path):
    config = without_card(make_config(toy_csv, tmp_path))
    assert config.card.intended_purpose is None
    policy, _ = load_policy(POLICIES / "research.yaml")
    check_before_training(config, policy, POLICIES / "research.yaml")


def test_built_in_statements_apply_only_to_their_own_data(toy_csv, tmp_path):
    from secure_ft.records.technical_documentation import missing_card_fields, with_builtin_card

    required = load_policy(default_policy_path())[0].documentation.required_card_fields
    default = RunConfig()
    assert missing_card_fields(default, required) == []  # the README's first command documents itself
    assert "CFPB" in with_builtin_card(default).card.data_provenance
    assert "mtsamples" in with_builtin_card(load_config(ROOT / "examples" / "mtsamples-dp.yaml")).card.data_provenance
    # the demo's statements would be false of other data: a user's file gets none of them
    own = without_card(make_config(toy_csv, tmp_path))
    assert missing_card_fields(own, required) == list(required)
    # a statement the config gives wins over the shipped one
    mine = RunConfig.model_validate({"card": {"intended_purpose": "Our own purpose."}})
    assert with_builtin_card(mine).card.intended_purpose == "Our own purpose."
    assert with_builtin_card(mine).card.deidentification == with_builtin_card(default).card.deidentification


def test_secure_ft_run_refuses_a_config_without_card_statements(tmp_path, toy_csv):
    config = tmp_path / "own-data.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": str(toy_csv), "label_column": "product",
                                               "group_columns": ["region", "senior"], "min_class_count": 5}}),
                      encoding="utf-8")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    finished = subprocess.run([sys.executable, "-m", "secure_ft.cli", "run", "--config", str(config),
                               "--out", str(out)], capture_output=True, text=True, env=env, timeout=150)
    assert finished.returncode == 2, finished.stderr[-2000:]
    assert "card.intended_purpose, card.out_of_scope_uses, card.known_limitations, card.deidentification, " \
           "card.data_provenance missing" in finished.stderr
    assert "  card:" in finished.stderr and "intended_purpose:" in finished.stderr
    assert not out.exists() or not any(out.iterdir())


# -- group columns that would overwrite the text, the label or internal columns -----------------

@pytest.mark.parametrize("column, says", [
    ("text", "is data.text_column"),
    ("product", "is data.label_column"),
    *[(name, "is a name secure-ft uses for its own columns") for name in RESERVED_COLUMNS if name != "text"],
])
def test_group_column_colliding_with_text_label_or_internal_column(toy_csv, tmp_path, column, says):
    raw = {"data": {"source": str(toy_csv), "label_column": "product", "group_columns": ["region", column]}}
    with pytest.raises(ConfigError, match=rf"data: .*data\.group_columns: '{column}' {says}"):
        config_from_dict(raw, "bad.yaml")


def test_reserved_columns_are_the_columns_the_loader_adds(toy_csv):
    # the config cannot import secure_ft.records.data (circle), so it keeps the names; this keeps them in step
    from secure_ft.records.data import load_splits

    config = make_config(toy_csv, Path("unused"))
    splits = load_splits(config.data, config.seed)
    assert set(splits.train.columns) - set(config.data.group_columns) == set(RESERVED_COLUMNS)


# -- the shipped configs pass under the policies they are meant for -----------------------------

@pytest.mark.parametrize("config_file, policy_file", [
    (None, "regulated-default.yaml"),
    ("cfpb-plain.yaml", "research.yaml"),
    ("mtsamples-dp.yaml", "regulated-default.yaml"),
    ("cfpb-federated.yaml", "regulated-default.yaml"),
])
def test_shipped_configs_pass_preflight(config_file, policy_file):
    config = load_config(ROOT / "examples" / config_file if config_file else None)
    policy_path = POLICIES / policy_file
    policy, _ = load_policy(policy_path)
    started = time.monotonic()
    report = check_before_training(config, policy, policy_path)
    assert time.monotonic() - started < 20
    for delta in report.deltas.values():
        assert delta <= (policy.privacy.max_delta or 1)
    if config.privacy.mode == "dp":
        assert report.deltas and report.epsilons


@pytest.mark.parametrize("overrides", [{"mode": "federated"},
                                       {"mode": "federated", "federated": {"central_dp": "fixed"}}],
                         ids=["federated-site-dp", "federated-central-dp"])
def test_built_in_defaults_pass_the_default_policy_in_every_mode(overrides):
    # the product's own defaults must never contradict its own default policy
    from secure_ft.records.config import config_from_dict

    config = config_from_dict(overrides)
    policy, _ = load_policy(POLICIES / "regulated-default.yaml")
    report = check_before_training(config, policy, POLICIES / "regulated-default.yaml")
    assert all(delta <= policy.privacy.max_delta for delta in report.deltas.values())


def test_the_plain_example_is_refused_by_the_regulated_policy():
    # non-private by design: its header comment points to the research policy
    config = load_config(ROOT / "examples" / "cfpb-plain.yaml")
    policy, _ = load_policy(default_policy_path())
    with pytest.raises(ConfigError, match="privacy.require_dp is true"):
        check_before_training(config, policy, default_policy_path())
    assert "research.yaml" in (ROOT / "examples" / "cfpb-plain.yaml").read_text(encoding="utf-8")


# -- the command line: exit 2 before anything trains --------------------------------------------

def test_secure_ft_run_refuses_a_bad_config_before_training(tmp_path):
    # needs run_pipeline to call check_before_training right after loading the policy
    config = tmp_path / "bad.yaml"
    config.write_text("privacy:\n  mode: none\n", encoding="utf-8")  # the default policy requires DP
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    # the bound only separates "refused before training" from "trained" (minutes); importing torch on
    # loaded 2-core CI machines has taken most of 30 s, so timing is left to the benchmarks
    try:
        finished = subprocess.run([sys.executable, "-m", "secure_ft.cli", "run", "--config", str(config),
                                   "--out", str(out)], capture_output=True, text=True, env=env, timeout=150)
    except subprocess.TimeoutExpired:
        pytest.fail("secure-ft run was still going after 150 s: pre-flight is not called by run_pipeline")
    assert finished.returncode == 2, finished.stderr[-2000:]
    assert "privacy.mode: none" in finished.stderr and "require_dp" in finished.stderr
    assert not out.exists() or not any(out.iterdir())  # no run directory


def test_a_deployed_holdout_too_small_for_the_fairness_audit_is_refused_before_any_site_trains(toy_csv, tmp_path):
    policy, path = make_policy(tmp_path, required_audits=["performance", "fairness", "privacy"])
    import pandas as pd

    labels = sorted(pd.read_csv(toy_csv)["product"].unique())
    config = make_config(toy_csv, tmp_path, mode="federated", data={"labels": labels},
                         federated={"num_sites": 2, "min_available_sites": 2, "min_train_sites": 2, "partition": "iid"})
    with pytest.raises(ConfigError) as caught:
        check_before_training(config, policy, path, deployed=True)
    message = str(caught.value)
    assert "test split (data.split.test_fraction = 0.15)" in message and "min_group_size = 20" in message
    assert "region: " in message and "before any site trains" in message
    # groups of 5 test rows are enough for a policy run with min_group_size 5; a simulation is not checked here
    check_before_training(config.model_copy(update={"audits": config.audits.model_copy(update={
        "fairness": config.audits.fairness.model_copy(update={"min_group_size": 5})})}), policy, path, deployed=True)
    check_before_training(config, policy, path)
