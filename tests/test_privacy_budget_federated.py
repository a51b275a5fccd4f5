"""The data set's privacy budget counts simulated federations and the canary audit's throw-away run.

Expected ε values come from Opacus' own PRV accountant stepped through the histories the
sites wrote in their own odometers (or the canary run's loader and steps), never from the
ledger's composition code; whole federations run in this process (``backend="local"``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from federated import protocol, run_federated
from federated.client_app import app as site_app
from secure_ft.errors import ConfigError
from secure_ft.policy import default_policy_path, load_policy
from secure_ft.privacy.budget_composition import compose_ledger
from secure_ft.privacy.budget_ledger import BudgetLedger, RunSpend


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


def test_a_simulated_federation_records_every_sites_history_composed_sequentially(dp_federation, tmp_path, capsys):
    from secure_ft.cli import main
    from secure_ft.data import load_splits

    trained = run_federated(dp_federation, tmp_path / "run", progress=False, backend="local")
    central_fingerprint = load_splits(dp_federation.data, dp_federation.seed).fingerprint  # what a central run uses
    entry = only_entry(dp_federation, central_fingerprint)
    assert entry["kind"] == "federated simulation" and entry["status"] == "finished" and entry["reserved"] == []
    assert entry["mechanism"] == "dp-sgd" and "sequential" in entry["composition"]

    released = odometer_releases(trained.run_dir)
    assert set(released) == set(entry["sites"]) == {"site-1", "site-2", "site-3"}
    privacy = json.loads((trained.run_dir / "privacy.json").read_text())
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

    config_file = tmp_path / "federated.yaml"
    config_file.write_text(dp_federation.to_yaml())
    assert main(["privacy", "budget", "--data", str(dp_federation.data.source), "--config", str(config_file)]) == 0
    table = capsys.readouterr().out
    assert central_fingerprint in table and "federated simulation, 3 sites, composed sequentially: conservative" in table
    assert "note: a simulated federation's sites are composed sequentially" in table


def test_a_federation_stopped_mid_way_records_the_steps_its_sites_took(dp_federation, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_federated(dp_federation, tmp_path / "run", progress=False, backend="local",
                      client_app=interrupting_app(partition_to_stop=1, server_round_to_stop=2))
    fingerprint = BudgetLedger(dp_federation.privacy.budget_dir).fingerprints()[0]
    entry = only_entry(dp_federation, fingerprint)
    assert entry["status"] == "stopped" and entry["reserved"] == []

    released = odometer_releases(tmp_path / "run")
    steps = {site: sum(int(k) for _, _, k in history) for site, history in released.items()}
    per_round = steps["site-2"]  # site-2 released round 1 only
    assert per_round > 0 and set(steps.values()) <= {per_round, 2 * per_round} and 2 * per_round in steps.values()
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
