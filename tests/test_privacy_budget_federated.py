"""The data set's privacy budget counts simulated federations and the canary audit's throw-away run.

Expected ε values come from Opacus' own PRV accountant stepped through the histories the
sites wrote in their own odometers (or the canary run's loader and steps), never from the
ledger's composition code; whole federations run in this process (``backend="local"``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from federated import protocol, run_federated
from federated.client_app import app as site_app
from secure_ft.errors import ConfigError
from secure_ft.privacy.budget_composition import compose_ledger
from secure_ft.privacy.budget_ledger import BudgetLedger, RunSpend
from secure_ft.records.policy import default_policy_path, load_policy


def opacus_prv_epsilon(segments, delta):
    """ε from a fresh Opacus PRV accountant stepped through `segments` of (σ, q, steps)."""
    from opacus.accountants import PRVAccountant

    accountant = PRVAccountant()
    for sigma, rate, steps in segments:
        for _ in range(int(steps)):
            accountant.step(noise_multiplier=float(sigma), sample_rate=float(rate))
    return float(accountant.get_epsilon(delta=delta))


def odometer_releases(run_dir: Path) -> dict[str, list[list[float]]]:
    """Every site's released (σ, q, steps), as the site itself wrote them."""
    releases = {}
    for path in sorted((run_dir / "sites").glob("*/odometer.json")):
        state = json.loads(path.read_text())
        releases[path.parent.name] = [[r["noise_multiplier"], r["sample_rate"], r["steps"]] for r in state["releases"]]
    return releases


@pytest.fixture
def dp_federation(toy_config, tmp_path):
    config = toy_config.model_copy(deep=True)
    config.privacy = config.privacy.model_copy(update={"mode": "dp", "target_epsilon": 6.0,
                                                       "budget_dir": str(tmp_path / "budget")})
    config.federated = config.federated.model_copy(update={
        "num_sites": 3, "partition": "iid", "rounds": 2, "local_epochs": 1, "min_train_sites": 2})
    return config


def only_entry(config, fingerprint):
    (entry,) = BudgetLedger(config.privacy.budget_dir).entries(fingerprint)
    return entry


def interrupting_app(partition_to_stop: int, server_round_to_stop: int) -> ClientApp:
    """The real ClientApp; one site's process is stopped (Ctrl-C) at the start of one round."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        server_round = int(msg.content[protocol.CONFIG][protocol.SERVER_ROUND])
        if (int(context.node_config[protocol.PARTITION_ID]), server_round) == (partition_to_stop, server_round_to_stop):
            raise KeyboardInterrupt
        return site_app(message=msg, context=context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return site_app(message=msg, context=context)

    return app


@pytest.mark.slow
def test_a_simulated_federation_records_every_sites_history_composed_sequentially(dp_federation, tmp_path, capsys):
    from secure_ft.cli import main
    from secure_ft.privacy.accountants import epsilon_from_history
    from secure_ft.records.data import load_splits

    dp_federation.federated = dp_federation.federated.model_copy(update={  # and server-side (client-level) DP
        "central_dp": "fixed", "central_noise_multiplier": 1.5, "central_clipping_norm": 5.0, "central_delta": 1e-4})
    trained = run_federated(dp_federation, tmp_path / "run", progress=False, backend="local")
    central_fingerprint = load_splits(dp_federation.data, dp_federation.seed).fingerprint  # what a central run uses
    entry = only_entry(dp_federation, central_fingerprint)
    assert entry["kind"] == "federated simulation" and entry["status"] == "finished" and entry["reserved"] == []
    assert entry["mechanism"] == "dp-sgd" and "sequential" in entry["composition"]

    released = odometer_releases(trained.run_dir)
    assert set(released) == set(entry["sites"]) == {"site-1", "site-2", "site-3"}
    privacy = json.loads((trained.run_dir / "privacy.json").read_text())
    # the server's mechanism is kept with its unit named, at the ε the run itself reports, and not counted per record
    central = entry["central"]
    assert central["history"] == [[1.5, 1.0, 2]] and central["unit"].startswith("site") and central["counted"] is False
    assert central["epsilon"] == pytest.approx(privacy["central"]["epsilon"], rel=1e-9)
    assert central["epsilon"] == pytest.approx(epsilon_from_history("rdp", ((1.5, 1.0, 2),), 1e-4), rel=1e-9)
    for site, history in released.items():
        assert sum(int(k) for _, _, k in history) > 0
        assert entry["sites"][site]["history"] == history
        assert history == privacy["sites"][site]["history"]  # what the site stated to the coordinator
    every_site = [segment for history in released.values() for segment in history]
    expected = opacus_prv_epsilon(every_site, entry["delta"])
    statement = compose_ledger(central_fingerprint, [entry], entry["delta"])
    assert statement.cumulative_epsilon == pytest.approx(expected, rel=1e-9)
    # sequential composition: more than the worst site alone (which parallel composition would give)
    worst = max(opacus_prv_epsilon(history, entry["delta"]) for history in released.values())
    assert statement.cumulative_epsilon > worst * 1.2

    # the privacy audit (the gate's dataset_epsilon check) reads the same entry back for a simulated federation
    from types import SimpleNamespace

    from audits.privacy import dataset_budget

    policy, _ = load_policy(default_policy_path())
    context = SimpleNamespace(config=trained.config if hasattr(trained, "config") else
                              dp_federation.model_copy(update={"mode": "federated"}),
                              splits=trained.splits, members_available=True)
    budget, (check,) = dataset_budget(context, policy.privacy.model_copy(update={"max_dataset_epsilon": 100.0}), [])
    assert budget["cumulative_epsilon"] == pytest.approx(expected, rel=1e-9) and check.passed
    from secure_ft.pipeline.report.document import withhold_text

    (row,) = withhold_text(budget)["entries"]  # what the report shows, test texts withheld
    assert row["kind_note"] == "federated simulation, 3 sites, composed sequentially: conservative"

    # the canary audit of this federation trains with its least noisy site's σ, as pre-flight plans it
    from audits._guarantee import read_guarantee
    from secure_ft.pipeline.preflight import planned_canary_history, planned_federation_history

    sigma, clip, noise_from = read_guarantee(trained.run_dir).canary_noise()
    least_noisy = min(privacy["sites"], key=lambda site: privacy["sites"][site]["noise_multiplier"])
    assert sigma == privacy["sites"][least_noisy]["noise_multiplier"] == min(s for s, _, _ in every_site)
    assert clip == privacy["sites"][least_noisy]["max_grad_norm"] and noise_from.endswith("least noisy of 3")
    federation = dp_federation.model_copy(update={"mode": "federated"})
    planned_sites, _, _ = planned_federation_history(federation, trained.splits)
    planned_canary, words = planned_canary_history(federation, len(trained.splits.train), planned_sites)
    assert planned_canary[0][0] == pytest.approx(sigma, rel=1e-9) and words.startswith("canary audit: DP-SGD")

    config_file = tmp_path / "federated.yaml"
    config_file.write_text(dp_federation.to_yaml())
    assert main(["privacy", "budget", "--data", str(dp_federation.data.source), "--config", str(config_file)]) == 0
    table = capsys.readouterr().out
    assert central_fingerprint in table and "federated simulation, 3 sites, composed sequentially: conservative" in table
    assert "note: a simulated federation's sites are composed sequentially" in table
    assert "server-side Gaussian z=1.5 ×2 (unit: a site" in table and "not counted at the record level" in table


def test_a_federation_stopped_mid_way_records_the_steps_its_sites_took(dp_federation, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_federated(dp_federation, tmp_path / "run", progress=False, backend="local",
                      client_app=interrupting_app(partition_to_stop=1, server_round_to_stop=2))
    fingerprint = BudgetLedger(dp_federation.privacy.budget_dir).fingerprints()[0]
    entry = only_entry(dp_federation, fingerprint)
    assert entry["status"] == "stopped" and entry["reserved"] == []

    released = odometer_releases(tmp_path / "run")
    steps = {site: sum(int(k) for _, _, k in history) for site, history in released.items()}
    per_round = min(steps.values())  # every site released round 1; the run stopped during round 2
    assert per_round > 0 and set(steps.values()) <= {per_round, 2 * per_round}
    assert sum(steps.values()) < 3 * 2 * per_round  # fewer than the whole run's steps: it stopped mid-way
    counted = [segment for site in sorted(entry["sites"]) for segment in entry["sites"][site]["history"]]
    assert counted == [segment for site in sorted(released) for segment in released[site]]
    statement = compose_ledger(fingerprint, [entry], entry["delta"])
    every_site = [segment for history in released.values() for segment in history]
    assert statement.cumulative_epsilon == pytest.approx(opacus_prv_epsilon(every_site, entry["delta"]), rel=1e-9)


def test_a_sites_failed_round_counts_the_steps_it_took_though_nothing_was_released(dp_federation, tmp_path,
                                                                                     monkeypatch):
    import federated.site_training as site_training
    from federated.task import round_seed

    real_train_locally = site_training.train_locally
    failing_seed = round_seed(dp_federation.seed, 1, "site-3")  # site-3's first round
    taken = []

    def train_then_fail(*args, seed, engine, **kwargs):
        result = real_train_locally(*args, seed=seed, engine=engine, **kwargs)
        if seed == failing_seed:
            taken.extend(engine.accountant_history())
            raise RuntimeError("the site's disk filled up after training")
        return result

    monkeypatch.setattr(site_training, "train_locally", train_then_fail)
    trained = run_federated(dp_federation, tmp_path / "run", progress=False, backend="local")
    entry = only_entry(dp_federation, trained.splits.fingerprint)
    released = odometer_releases(trained.run_dir)
    (sigma, rate, steps_taken), = taken
    assert steps_taken > 0 and released["site-3"] == [[sigma, rate, steps_taken]]  # round 2 only left the site
    # the failed round's steps ran on the data: they count, though nothing of them was released
    assert entry["sites"]["site-3"]["history"] == [[sigma, rate, steps_taken], [sigma, rate, steps_taken]]
    every = [segment for site in sorted(entry["sites"]) for segment in entry["sites"][site]["history"]]
    statement = compose_ledger(trained.splits.fingerprint, [entry], entry["delta"])
    assert statement.cumulative_epsilon == pytest.approx(opacus_prv_epsilon(every, entry["delta"]), rel=1e-9)
    assert statement.cumulative_epsilon > opacus_prv_epsilon(
        [segment for history in released.values() for segment in history], entry["delta"])


# -- pre-flight --------------------------------------------------------------------------------------

def _policy_with_limit(tmp_path, limit):
    policy_raw = yaml.safe_load(default_policy_path().read_text(encoding="utf-8"))
    policy_raw["privacy"]["max_dataset_epsilon"] = limit
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy_raw), encoding="utf-8")
    return load_policy(path)[0], path


def test_preflight_refuses_a_simulated_federation_that_would_break_the_lifetime_budget(dp_federation, tmp_path):
    import time

    from federated.partition import partition_sites
    from federated.site_engine import _calibrated_noise, site_noise_multiplier
    from federated.site_policy import site_round_steps
    from secure_ft.pipeline.preflight import check_before_training
    from secure_ft.privacy.engine import resolve_delta
    from secure_ft.records.data import load_splits
    from secure_ft.training.transfer_choice import resolve_run_config

    config = dp_federation.model_copy(update={"mode": "federated"})
    splits = load_splits(config.data, config.seed)
    # the sites' plans, worked out here from the sites' own settings: σ, q = 1/batches, rounds × local steps
    resolved, _ = resolve_run_config(config, len(splits.train))
    sites = partition_sites(splits, resolved.federated, resolved.seed, quiet=True)
    plans, deltas = [], []
    for site in sites:
        rate, per_round = site_round_steps(resolved, len(site.train))
        plans.append((site_noise_multiplier(resolved, len(site.train)), rate, resolved.federated.rounds * per_round))
        deltas.append(resolve_delta(resolved.privacy, len(site.train))[0])
    delta = min(deltas)
    ledger = BudgetLedger(config.privacy.budget_dir)
    earlier = RunSpend.open(ledger, fingerprint=splits.fingerprint, run="earlier", run_dir=None, kind="train",
                            mechanism="dp-sgd", accountant="prv", delta=delta, dataset_size=len(splits.train))
    earlier.close([[1.2, 1 / 6, 12]], "finished")
    spent = opacus_prv_epsilon([(1.2, 1 / 6, 12)], delta)
    after = opacus_prv_epsilon([(1.2, 1 / 6, 12), *plans], delta)
    limit = round((spent + after) / 2, 3)

    policy, path = _policy_with_limit(tmp_path, limit)
    _calibrated_noise.cache_clear()  # pre-flight calibrates σ itself, timed
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        check_before_training(config, policy, path)
    assert time.monotonic() - started < 30 and caught.value.exit_code == 2
    message = str(caught.value)
    assert f"has spent ε = {spent:.4f}" in message and f"brings it to {after:.4f}" in message
    assert f"max_dataset_epsilon = {limit:g}" in message
    assert "federated simulation, 3 sites composed sequentially (conservative)" in message
    policy, path = _policy_with_limit(tmp_path, round(after + 0.1, 3))
    report = check_before_training(config, policy, path)
    assert report.dataset_budget["after_epsilon"] == pytest.approx(after, rel=1e-9)
    assert sorted(map(tuple, report.dataset_budget["planned_history"])) == sorted(plans)


# -- the canary audit ------------------------------------------------------------------------------

def test_a_canary_run_copies_the_least_noise_any_record_had():
    from audits._guarantee import PrivacyGuarantee

    central = PrivacyGuarantee(Path("privacy.json"), [], {"noise_multiplier": 1.2, "max_grad_norm": 0.5})
    assert central.canary_noise() == (1.2, 0.5, "the run")
    sites = {"b": {"noise_multiplier": 0.9, "max_grad_norm": 2.0}, "a": {"noise_multiplier": 1.4, "max_grad_norm": 1.0}}
    federation = PrivacyGuarantee(Path("privacy.json"), [], {}, site_details=sites)
    assert federation.canary_noise() == (0.9, 2.0, "site b, the least noisy of 2")
    sites["c"] = {"epsilon": None}  # a site that trained without DP: its records had no noise at all
    assert PrivacyGuarantee(Path("privacy.json"), [], {}, site_details=sites).canary_noise()[:2] == (None, None)
    assert PrivacyGuarantee(Path("privacy.json"), [], {}).canary_noise()[:2] == (None, None)


def test_the_canary_run_is_recorded_and_the_data_sets_epsilon_includes_it(toy_csv, tiny_model_dir, tmp_path):
    from types import SimpleNamespace

    from dp_helpers import dp_config

    from audits._canary import canary_report
    from audits.privacy import dataset_budget
    from secure_ft.pipeline.preflight import planned_canary_history, planned_history
    from secure_ft.training.central_run import train_run

    config = dp_config(toy_csv, tiny_model_dir, tmp_path / "runs", epochs=1)
    config = config.model_copy(update={
        "privacy": config.privacy.model_copy(update={"budget_dir": str(tmp_path / "budget")}),
        "audits": config.audits.model_copy(update={"privacy": config.audits.privacy.model_copy(update={
            "canaries": 2, "canary_repeats": 3, "canary_candidates": 20, "canary_steps": 4})})})
    trained = train_run(config, progress=False)
    privacy = json.loads((trained.run_dir / "privacy.json").read_text())
    context = SimpleNamespace(config=config, splits=trained.splits, run_dir=trained.run_dir, device="cpu")
    canary = canary_report(context, privacy["noise_multiplier"], privacy["max_grad_norm"])

    run_entry, canary_entry = BudgetLedger(tmp_path / "budget").entries(trained.splits.fingerprint)
    assert canary_entry["kind"] == "canary audit" and canary_entry["run"] == trained.run_dir.name
    assert canary_entry["status"] == "finished" and canary_entry["reserved"] == []
    # 84 training rows + 2 canaries × 3 = 90 rows in batches of 16: Opacus' Poisson loader samples at q = 1/6
    assert canary_entry["history"] == [[privacy["noise_multiplier"], 1 / 6, 4]] == canary["budget_history"]
    # pre-flight plans exactly what the canary run took
    planned, _, _ = planned_history(config, len(trained.splits.train))
    assert planned_canary_history(config, len(trained.splits.train), planned)[0] == canary_entry["history"]

    policy, _ = load_policy(default_policy_path())
    budget, (check,) = dataset_budget(context, policy.privacy.model_copy(update={"max_dataset_epsilon": 100.0}), [])
    expected = opacus_prv_epsilon([*run_entry["history"], *canary_entry["history"]], budget["delta"])
    assert budget["cumulative_epsilon"] == pytest.approx(expected, rel=1e-9)
    assert budget["cumulative_epsilon"] > privacy["epsilon"] + 1e-3  # the canary run spent budget too
    assert [row["kind"] for row in budget["entries"]] == ["train", "canary audit"]
    assert check.name == "dataset_epsilon" and check.actual == pytest.approx(expected, rel=1e-9)


def test_the_privacy_audit_reads_the_ledger_after_its_canary_run(toy_csv, tiny_model_dir, tmp_path, monkeypatch):
    import audits.privacy as privacy_audit_module

    order = []
    real_canary, real_budget = privacy_audit_module.canary_report, privacy_audit_module.dataset_budget
    monkeypatch.setattr(privacy_audit_module, "canary_report",
                        lambda *args, **kwargs: order.append("canary") or real_canary(*args, **kwargs))
    monkeypatch.setattr(privacy_audit_module, "dataset_budget",
                        lambda *args, **kwargs: order.append("budget") or real_budget(*args, **kwargs))
    from secure_ft.records.config import RunConfig

    config = RunConfig.model_validate({
        "data": {"source": str(toy_csv), "label_column": "product", "group_columns": ["region", "senior"],
                 "min_class_count": 5},
        "model": {"name_or_path": str(tiny_model_dir), "transfer": "full", "max_length": 16},
        "training": {"batch_size": 16}, "privacy": {"mode": "none", "budget_dir": str(tmp_path / "budget")},
        "audits": {"privacy": {"membership_examples": 10, "n_boot": 0, "calibrated_attack": False, "canaries": 1,
                               "canary_repeats": 1, "canary_candidates": 10, "canary_steps": 1}}})
    from audits.context import AuditContext
    from secure_ft.records.data import load_splits
    from secure_ft.records.policy import Policy
    from secure_ft.text.models import load_base_model, save_trained_model

    splits = load_splits(config.data, config.seed)
    model, tokenizer = load_base_model(config.model, splits.label_names)
    save_trained_model(model, tokenizer, tmp_path / "run" / "model")
    context = AuditContext(run_dir=tmp_path / "run", model_dir=tmp_path / "run" / "model", splits=splits,
                           config=config, policy=Policy.model_validate({"privacy": {"require_dp": False,
                                                                                   "max_dataset_epsilon": 50.0}}))
    result = privacy_audit_module.privacy_audit(context)
    assert order == ["canary", "budget"]
    budget = result.metrics["dataset_budget"]
    assert [row["kind"] for row in budget["entries"]] == ["canary audit"]  # a run without DP: its canary run too
    assert budget["cumulative_unbounded"] is True
    assert next(check for check in result.checks if check.name == "dataset_epsilon").passed is False
