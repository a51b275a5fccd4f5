"""The privacy budget across runs: a ledger per data fingerprint, composed by the accountant.

Composition is checked against Opacus' own PRV accountant stepped through the same
mechanisms (never against our own function); concurrent writers are separate processes;
a crashed and a stopped run are real training runs on the toy data; pre-flight refuses with
the figures, and the privacy audit re-reads the ledger.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from secure_ft.errors import ConfigError, PrivacyError
from secure_ft.privacy.budget_composition import budget_delta, compose_ledger
from secure_ft.privacy.budget_ledger import BudgetLedger, RunSpend, counted_history, status_of
from secure_ft.records.policy import default_policy_path, load_policy

ROOT = Path(__file__).resolve().parents[1]
FINGERPRINT = "ab" * 32
DELTA = 1e-5


def opacus_prv_epsilon(segments, delta):
    """ε from a fresh Opacus PRV accountant stepped through `segments` of (σ, q, steps)."""
    from opacus.accountants import PRVAccountant

    accountant = PRVAccountant()
    for sigma, rate, steps in segments:
        for _ in range(steps):
            accountant.step(noise_multiplier=sigma, sample_rate=rate)
    return float(accountant.get_epsilon(delta=delta))


def record(ledger, history, *, run="run", mechanism="dp-sgd", delta=DELTA, status="finished"):
    spend = RunSpend.open(ledger, fingerprint=FINGERPRINT, run=run, run_dir=None, kind="train", mechanism=mechanism,
                          accountant="prv" if mechanism == "dp-sgd" else None,
                          delta=delta if mechanism == "dp-sgd" else None, dataset_size=100)
    spend.close(history, status)
    return spend


# -- composition ---------------------------------------------------------------------------------

def test_one_run_composes_to_the_accountants_own_epsilon(tmp_path):
    ledger = BudgetLedger(tmp_path)
    record(ledger, [[1.1, 0.1, 30]])
    statement = compose_ledger(FINGERPRINT, ledger.entries(FINGERPRINT), DELTA)
    assert statement.cumulative_epsilon == pytest.approx(opacus_prv_epsilon([(1.1, 0.1, 30)], DELTA), rel=1e-9)
    assert statement.rows[0]["epsilon"] == statement.cumulative_epsilon


def test_two_heterogeneous_runs_compose_as_the_accountant_on_the_concatenated_history(tmp_path):
    ledger = BudgetLedger(tmp_path)
    record(ledger, [[1.1, 0.1, 30]], run="first")
    record(ledger, [[0.8, 0.25, 12]], run="second")
    statement = compose_ledger(FINGERPRINT, ledger.entries(FINGERPRINT), DELTA)
    both = opacus_prv_epsilon([(1.1, 0.1, 30), (0.8, 0.25, 12)], DELTA)
    assert statement.cumulative_epsilon == pytest.approx(both, rel=1e-9)
    first, second = statement.rows
    assert first["cumulative_epsilon"] == pytest.approx(opacus_prv_epsilon([(1.1, 0.1, 30)], DELTA), rel=1e-9)
    assert second["epsilon"] == pytest.approx(opacus_prv_epsilon([(0.8, 0.25, 12)], DELTA), rel=1e-9)
    # the accountant composes more tightly than adding the runs' ε, and more than either run alone
    assert max(first["epsilon"], second["epsilon"]) < both < first["epsilon"] + second["epsilon"]
    assert statement.rdp_epsilon >= both  # RDP: rigorous but looser


def test_a_non_private_run_makes_the_data_sets_epsilon_unbounded(tmp_path, capsys):
    from secure_ft.cli import main

    ledger = BudgetLedger(tmp_path)
    record(ledger, [[1.1, 0.1, 30]], run="private")
    record(ledger, None, run="plain", mechanism="none")
    statement = compose_ledger(FINGERPRINT, ledger.entries(FINGERPRINT), DELTA)
    assert math.isinf(statement.cumulative_epsilon) and math.isinf(statement.rows[1]["epsilon"])
    assert math.isfinite(statement.rows[0]["cumulative_epsilon"])
    assert main(["privacy", "budget", "--fingerprint", FINGERPRINT, "--budget-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "none (not private: ε = ∞)" in table and "∞ (no finite bound)" in table
    assert main(["privacy", "budget", "--fingerprint", FINGERPRINT, "--budget-dir", str(tmp_path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["cumulative_unbounded"] is True and [e["run"] for e in shown["entries"]] == ["private", "plain"]


def test_budget_delta_is_the_smallest_of_the_runs_and_the_policy():
    entries = [{"delta": 1e-5}, {"delta": 2e-6}, {"delta": None}]
    assert budget_delta(entries, None) == 2e-6
    assert budget_delta(entries, 1e-6) == 1e-6
    assert budget_delta(entries, 1e-4, planned_delta=5e-7) == 5e-7
    assert budget_delta([], None) is None


# -- the ledger's files ------------------------------------------------------------------------

def _append_entries(root: str, worker: int, count: int) -> None:
    ledger = BudgetLedger(root)
    for index in range(count):
        record(ledger, [[1.0 + worker, 0.01, index + 1]], run=f"w{worker}-{index}")


def test_concurrent_appends_from_processes_lose_nothing(tmp_path):
    workers, each = 4, 15
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_append_entries, args=(str(tmp_path), worker, each))
                 for worker in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    entries = BudgetLedger(tmp_path).entries(FINGERPRINT)
    assert sorted(entry["run"] for entry in entries) == sorted(f"w{w}-{i}" for w in range(workers) for i in range(each))
    for entry in entries:  # each file whole: its own history, not another writer's
        worker, index = (int(part) for part in entry["run"][1:].split("-"))
        assert entry["history"] == [[1.0 + worker, 0.01, index + 1]]
    assert not [path for path in (tmp_path / FINGERPRINT).iterdir() if not path.name.endswith(".json")]


def test_a_damaged_entry_is_an_error_never_skipped(tmp_path):
    ledger = BudgetLedger(tmp_path)
    spend = record(ledger, [[1.1, 0.1, 30]])
    spend.path.write_text("{ half", encoding="utf-8")
    with pytest.raises(PrivacyError, match="under-state"):
        ledger.entries(FINGERPRINT)
    with pytest.raises(PrivacyError, match="not a data fingerprint"):
        ledger.folder("../elsewhere")


def test_a_process_killed_mid_run_is_counted_up_to_its_reservation(tmp_path):
    code = ("import os, sys; from secure_ft.privacy.budget_ledger import BudgetLedger, RunSpend;"
            f"s = RunSpend.open(BudgetLedger(sys.argv[1]), fingerprint='{FINGERPRINT}', run='killed', run_dir=None,"
            " kind='train', mechanism='dp-sgd', accountant='prv', delta=1e-5, dataset_size=100);"
            "s.reserve([[1.1, 0.1, 20]], [[1.1, 0.1, 5]]); os._exit(9)")
    finished = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert finished.returncode == 9
    (entry,) = BudgetLedger(tmp_path).entries(FINGERPRINT)
    assert counted_history(entry) == [[1.1, 0.1, 20], [1.1, 0.1, 5]]
    assert status_of(entry).startswith("ended without closing")
    statement = compose_ledger(FINGERPRINT, [entry], DELTA)
    assert statement.cumulative_epsilon == pytest.approx(opacus_prv_epsilon([(1.1, 0.1, 25)], DELTA), rel=1e-9)


# -- real training runs: finished, crashed, stopped --------------------------------------------

def _dp_config(toy_csv, tiny_model_dir, tmp_path, budget_dir, epochs=2):
    from dp_helpers import dp_config

    config = dp_config(toy_csv, tiny_model_dir, tmp_path / "runs", transfer="full", epochs=epochs)
    return config.model_copy(update={"privacy": config.privacy.model_copy(update={"budget_dir": str(budget_dir)})})


@pytest.mark.parametrize("raised, status", [(RuntimeError("disk on fire"), "crashed"),
                                            (KeyboardInterrupt(), "stopped")])
def test_a_crashed_or_stopped_run_records_the_steps_it_took(toy_csv, tiny_model_dir, tmp_path, monkeypatch,
                                                            raised, status):
    from secure_ft.training.central_run import train_run
    import secure_ft.training.training_loop as loop

    budget_dir = tmp_path / "budget"
    config = _dp_config(toy_csv, tiny_model_dir, tmp_path, budget_dir)
    real_end_epoch = loop._end_epoch

    def end_epoch_then_fail(engine, *args, **kwargs):
        record_ = real_end_epoch(engine, *args, **kwargs)
        end_epoch_then_fail.taken = engine.accountant_history()
        raise raised

    monkeypatch.setattr(loop, "_end_epoch", end_epoch_then_fail)
    with pytest.raises(type(raised)):
        train_run(config, progress=False)
    ledger = BudgetLedger(budget_dir)
    (fingerprint,) = ledger.fingerprints()
    (entry,) = ledger.entries(fingerprint)
    assert entry["status"] == status and entry["reserved"] == []
    taken = end_epoch_then_fail.taken
    assert entry["history"] == taken and sum(int(e[2]) for e in taken) == 6  # one epoch of the two, q = 1/6
    statement = compose_ledger(fingerprint, [entry], entry["delta"])
    assert statement.cumulative_epsilon == pytest.approx(
        opacus_prv_epsilon([(s, q, int(k)) for s, q, k in taken], entry["delta"]), rel=1e-9)


def test_a_finished_run_records_its_accountant_history_and_the_audit_reads_it_back(toy_csv, tiny_model_dir,
                                                                                  tmp_path):
    from audits.privacy import dataset_budget
    from secure_ft.training.central_run import train_run

    budget_dir = tmp_path / "budget"
    config = _dp_config(toy_csv, tiny_model_dir, tmp_path, budget_dir, epochs=1)
    trained = train_run(config, progress=False)
    privacy = json.loads((trained.run_dir / "privacy.json").read_text())
    (entry,) = BudgetLedger(budget_dir).entries(trained.splits.fingerprint)
    assert entry["status"] == "finished" and entry["run"] == trained.run_dir.name
    assert entry["history"] == [[privacy["noise_multiplier"], privacy["sample_rate"], privacy["steps"]]]

    policy, _ = load_policy(default_policy_path())
    context = SimpleNamespace(config=config, splits=trained.splits)
    for limit, passed in ((privacy["epsilon"] + 0.5, True), (privacy["epsilon"] - 0.5, False)):
        judged = policy.privacy.model_copy(update={"max_dataset_epsilon": limit})
        budget, checks = dataset_budget(context, judged, [])
        assert budget["cumulative_epsilon"] == pytest.approx(privacy["epsilon"], rel=1e-9)  # one run: its own ε
        assert [entry_["run"] for entry_ in budget["entries"]] == [trained.run_dir.name]
        (check,) = checks
        assert check.name == "dataset_epsilon" and check.passed is passed


# -- pre-flight ----------------------------------------------------------------------------------

def test_preflight_refuses_a_run_that_would_break_the_lifetime_budget_showing_the_figures(toy_csv, tmp_path):
    from toy_data import TOY_CARD

    from secure_ft.pipeline.preflight import check_before_training, planned_history
    from secure_ft.records.data import load_splits

    budget_dir = tmp_path / "budget"
    raw = {"output_dir": str(tmp_path / "runs"),
           "data": {"source": str(toy_csv), "label_column": "product", "group_columns": ["region", "senior"],
                    "min_class_count": 5},
           "model": {"transfer": "full"}, "training": {"epochs": 2, "batch_size": 16},
           "privacy": {"mode": "dp", "target_epsilon": 4.0, "target_delta": 1e-5, "budget_dir": str(budget_dir)},
           "card": TOY_CARD}  # the statements the shipped policy requires (documentation.required_card_fields)
    from secure_ft.records.config import RunConfig

    config = RunConfig.model_validate(raw)
    splits = load_splits(config.data, config.seed)
    planned, delta, _ = planned_history(config, len(splits.train))
    assert planned[0][1] == pytest.approx(1 / 6) and planned[0][2] == 12  # 84 rows, batch 16: 6 batches × 2 epochs
    ledger = BudgetLedger(budget_dir)
    (ledger.root / splits.fingerprint).mkdir(parents=True)
    spend = RunSpend.open(ledger, fingerprint=splits.fingerprint, run="earlier", run_dir=None, kind="train",
                          mechanism="dp-sgd", accountant="prv", delta=delta, dataset_size=len(splits.train))
    spend.close(planned, "finished")
    after_one = opacus_prv_epsilon([tuple(planned[0])], delta)
    after_two = opacus_prv_epsilon([tuple(planned[0]), tuple(planned[0])], delta)
    limit = round((after_one + after_two) / 2, 3)

    policy_raw = yaml.safe_load(default_policy_path().read_text(encoding="utf-8"))
    policy_raw["privacy"]["max_dataset_epsilon"] = limit
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy_raw), encoding="utf-8")
    policy, _ = load_policy(path)
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        check_before_training(config, policy, path)
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert f"has spent ε = {after_one:.4f}" in message and f"brings it to {after_two:.4f}" in message
    assert f"max_dataset_epsilon = {limit:g}" in message and "plans ε = " in message
    # with room for one more run the same config passes, and the report shows the figures
    policy_raw["privacy"]["max_dataset_epsilon"] = round(after_two + 0.1, 3)
    path.write_text(yaml.safe_dump(policy_raw), encoding="utf-8")
    policy, _ = load_policy(path)
    report = check_before_training(config, policy, path)
    assert report.dataset_budget["after_epsilon"] == pytest.approx(after_two, rel=1e-9)
    assert report.dataset_budget["spent_epsilon"] == pytest.approx(after_one, rel=1e-9)


def test_a_resumed_run_adds_the_steps_after_its_checkpoint_and_the_crashed_attempt_keeps_its_own(
        toy_csv, tiny_model_dir, tmp_path, monkeypatch):
    from secure_ft.privacy.engine import PrivateEngine
    from secure_ft.training.central_run import train_run

    budget_dir = tmp_path / "budget"
    config = _dp_config(toy_csv, tiny_model_dir, tmp_path, budget_dir)  # 2 epochs of 6 steps
    config = config.model_copy(update={"training": config.training.model_copy(update={"checkpoint_every_steps": 3})})
    real_after_step = PrivateEngine.after_step

    def crash_at_step_5(self, steps):
        extra = real_after_step(self, steps)
        if steps == 5:
            raise RuntimeError("power cut")
        return extra

    monkeypatch.setattr(PrivateEngine, "after_step", crash_at_step_5)
    with pytest.raises(RuntimeError, match="power cut"):
        train_run(config, progress=False)
    monkeypatch.setattr(PrivateEngine, "after_step", real_after_step)
    (run_dir,) = (tmp_path / "runs").iterdir()
    trained = train_run(None, run_dir, resume=True, progress=False)

    crashed, resumed = BudgetLedger(budget_dir).entries(trained.splits.fingerprint)
    (sigma, rate, steps_crashed), = crashed["history"]
    assert crashed["status"] == "crashed" and steps_crashed == 5  # steps 4 and 5 ran after the checkpoint at 3
    assert resumed["status"] == "finished" and resumed["resumed_from_step"] == 3
    assert resumed["history"] == [[sigma, rate, 9]]  # steps 4..12 of the resumed attempt
    privacy = json.loads((run_dir / "privacy.json").read_text())
    assert privacy["steps"] == 12  # the released model's own ε counts 12 steps; the data set's counts all 14
    statement = compose_ledger(trained.splits.fingerprint, [crashed, resumed], crashed["delta"])
    assert statement.cumulative_epsilon == pytest.approx(
        opacus_prv_epsilon([(sigma, rate, 14)], crashed["delta"]), rel=1e-9)
    assert statement.cumulative_epsilon > privacy["epsilon"]
