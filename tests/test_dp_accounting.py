"""DP runs state an ε that an independent accountant reproduces, and `secure-ft privacy` checks it."""

from __future__ import annotations

import json

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from dp_helpers import dp_config
from secure_ft.cli import main
from secure_ft.privacy.accountant_history import load_accountant_history
from secure_ft.text.models import load_trained_model
from secure_ft.training.central_run import train_run
from toy_data import toy_frame

SCHEMA = {"epsilon", "delta", "accountant", "noise_multiplier", "max_grad_norm", "sample_rate", "steps", "epochs",
          "dataset_size", "trained", "opacus_version", "epsilon_history"}


@pytest.fixture(scope="module")
def lora_dp_run(tmp_path_factory, tiny_model_dir):
    """One DP + LoRA run (prv accountant) shared by the read-only checks below."""
    folder = tmp_path_factory.mktemp("dp-lora")
    toy_frame().to_csv(folder / "data.csv", index=False)
    config = dp_config(folder / "data.csv", tiny_model_dir, folder / "runs", transfer="lora", epochs=2)
    return train_run(config, progress=False)


def test_privacy_json_has_the_agreed_schema(lora_dp_run):
    report = json.loads((lora_dp_run.run_dir / "privacy.json").read_text())
    assert SCHEMA <= set(report)
    assert report["trained"] == "lora" and report["accountant"] == "prv"
    assert report["dataset_size"] == len(lora_dp_run.splits.train) == 84
    assert report["delta"] == pytest.approx(min(1 / (10 * 84), 1e-5)) and "1/(10 N)" in report["delta_source"]
    assert report["steps"] == lora_dp_run.metrics["steps"] == 2 * 6  # q = 1/ceil(84/16): 6 steps per epoch
    assert report["grad_sample_mode"] == "bookkeeping"  # auto: the fastest exact mode
    assert report["epsilon"] <= 8.0 and report["epsilon"] > 7.0  # calibrated to reach the target
    assert [step for step, _ in report["epsilon_history"]] == [6, 12]
    assert report["epsilon_history"][-1][1] == report["epsilon"]
    # ε after each epoch reaches metrics.json too
    assert [epoch["extra"]["epsilon"] for epoch in lora_dp_run.metrics["epochs"]] == \
        [eps for _, eps in report["epsilon_history"]]
    assert "privacy.json" in (lora_dp_run.run_dir / "ledger.jsonl").read_text()


def test_epsilon_equals_an_independent_opacus_accountant(lora_dp_run):
    report = json.loads((lora_dp_run.run_dir / "privacy.json").read_text())
    q, sigma, steps, delta = report["sample_rate"], report["noise_multiplier"], report["steps"], report["delta"]
    independent = PRVAccountant()
    for _ in range(steps):
        independent.step(noise_multiplier=sigma, sample_rate=q)
    assert report["epsilon"] == independent.get_epsilon(delta=delta)
    ledger = load_accountant_history(lora_dp_run.run_dir)
    assert ledger.history == [[sigma, q, steps]]
    assert ledger.epsilon() == report["epsilon"]
    # the same ledger under another accountant gives that accountant's number, not a cached one
    rdp = RDPAccountant()
    rdp.history = [(sigma, q, steps)]
    ledger.accountant = "rdp"
    assert ledger.epsilon() == rdp.get_epsilon(delta=delta)


def test_lora_dp_model_saves_as_a_plain_classifier(lora_dp_run):
    model, _ = load_trained_model(lora_dp_run.model_dir)
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_privacy_command_verifies_and_catches_tampering(lora_dp_run, tmp_path, capsys):
    import shutil

    assert main(["privacy", str(lora_dp_run.run_dir)]) == 0
    assert "verified" in capsys.readouterr().out

    tampered = tmp_path / "tampered"
    shutil.copytree(lora_dp_run.run_dir, tampered)
    report = json.loads((tampered / "privacy.json").read_text())
    report["epsilon"] = report["epsilon"] / 2  # a run claiming more privacy than it has
    (tampered / "privacy.json").write_text(json.dumps(report))
    assert main(["privacy", str(tampered)]) == 4
    out = capsys.readouterr().out
    assert "[FAIL] ε matches ledger" in out and "MISMATCH" in out

    shutil.copytree(lora_dp_run.run_dir, tmp_path / "ledger-edited")
    ledger = json.loads((tmp_path / "ledger-edited" / "privacy_ledger.json").read_text())
    ledger["history"][0][2] -= 3  # hide three steps from the accountant
    ledger["steps"] -= 3
    (tmp_path / "ledger-edited" / "privacy_ledger.json").write_text(json.dumps(ledger))
    assert main(["privacy", str(tmp_path / "ledger-edited")]) == 4
    assert "[FAIL] steps matches ledger" in capsys.readouterr().out


def test_privacy_command_on_a_run_without_dp(tmp_path, capsys):
    assert main(["privacy", str(tmp_path)]) == 2
    assert "not a differentially private run" in capsys.readouterr().err


def test_too_little_noise_states_no_guarantee(tmp_path, tiny_model_dir, capsys):
    toy_frame().to_csv(tmp_path / "data.csv", index=False)
    config = dp_config(tmp_path / "data.csv", tiny_model_dir, tmp_path / "runs", epochs=1, noise_multiplier=0.01,
                       target_epsilon=None)
    config.training.max_steps = 3
    trained = train_run(config, progress=False)
    report = json.loads((trained.run_dir / "privacy.json").read_text())  # strict JSON: no Infinity
    assert report["epsilon"] is None and report["epsilon_history"][-1] == [3, None]
    assert load_accountant_history(trained.run_dir).epsilon() == float("inf")
    assert main(["privacy", str(trained.run_dir)]) == 4
    out = capsys.readouterr().out
    assert "[FAIL] finite guarantee" in out and "[ok] ε matches ledger" in out
