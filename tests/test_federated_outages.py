"""Outages and restarts, with the sites in this process: the coordinator's side of a deployment's failures.

A site that goes away for good (its messages never answered, then it is no longer connected)
ends its round at ``round_timeout_s``: the run fails naming the site, or — when
``min_train_sites`` allows — goes on without it. A coordinator stopped mid-run records the
interruption in its ledger and ``resume`` finishes the run from its last checkpoint, in one
ledger that still verifies. The transport is `LocalGrid` (fast); the loopback deployment test
(`test_deploy_loopback.py`) does the same with real processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
from flwr.app import Context, RecordDict

from federated import protocol
from federated.client_app import app as site_app
from federated.coordinator import FederatedServer, FederationFailed
from federated.local_grid import LocalGrid
from federated.stoppable_grid import RunStopped
from secure_ft.errors import CheckpointError
from secure_ft.records.run_ledger import Ledger, verify_ledger


@pytest.fixture
def fed_config(toy_config):
    config = toy_config.model_copy(deep=True)
    config.training.learning_rate = 0.01
    config.federated = config.federated.model_copy(update={
        "num_sites": 2, "partition": "iid", "rounds": 3, "local_epochs": 1, "min_train_sites": 2,
        "min_available_sites": 2, "round_timeout_s": 1.5, "federated_evaluation": False,
        "run_timeout_s": 900})  # the default, rounds × 4 × 1.5 s, is too short for a loaded test machine
    return config


class FlakyGrid(LocalGrid):
    """Sites in this process; from round `gone_from` on, node `gone` never answers and then disconnects."""

    def __init__(self, sites: int, gone: int | None = None, gone_from: int = 2, stop_after_round: int | None = None,
                 stop: threading.Event | None = None, back_at: int | None = None):
        super().__init__(site_app, [{protocol.PARTITION_ID: index, protocol.NUM_PARTITIONS: sites}
                                    for index in range(sites)])
        self.gone, self.gone_from = (None if gone is None else 1000 + gone), gone_from
        self.stop_after_round, self.stop = stop_after_round, stop
        self.back_at = back_at  # the round whose messages find the site restarted and connected again
        self.disconnected = False
        self.current_round = 0

    def get_node_ids(self):
        if self.back_at is not None and self.current_round >= self.back_at - 1 and self.disconnected:
            self.disconnected = False  # restarted after the round it missed
        return [node for node in super().get_node_ids() if not (self.disconnected and node == self.gone)]

    def push_messages(self, messages):
        messages = list(messages)
        ids = []
        for message in messages:
            server_round = int(message.content[protocol.CONFIG][protocol.SERVER_ROUND])
            self.current_round = server_round
            if self.stop is not None and self.stop_after_round is not None and server_round > self.stop_after_round:
                self.stop.set()  # the coordinator is stopped while the next round is under way
            if message.metadata.dst_node_id == self.gone and server_round >= self.gone_from and (
                    self.back_at is None or server_round < self.back_at):
                self.disconnected = True  # killed: this message is never answered, the node drops off
                message.metadata.__dict__["_message_id"] = f"lost-{server_round}"
                ids.append(message.metadata.message_id)
                continue
            ids.extend(super().push_messages([message]))
        return ids


def run(server: FederatedServer, grid: LocalGrid):
    return server.run(grid, Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(),
                                    run_config={}))


def events(run_dir):
    return [event["event"] for event in Ledger(run_dir).events()]


def test_a_site_gone_for_good_ends_its_round_at_the_timeout_and_fails_the_run_naming_it(fed_config, tmp_path):
    run_dir = tmp_path / "run"
    started = time.monotonic()
    with pytest.raises(FederationFailed, match=r"round 2/3: site\(s\) site-2 sent no update \(unreachable, "
                                               r"or no answer within round_timeout_s = 1.5s\).*--resume"):
        run(FederatedServer(fed_config, run_dir, simulated=True), FlakyGrid(2, gone=1))
    assert time.monotonic() - started < 120
    failed = [event for event in Ledger(run_dir).events() if event["event"] == "federated_failed"]
    assert len(failed) == 1 and failed[0]["data"]["missing_sites"] == ["site-2"]
    assert failed[0]["data"]["checkpoint_round"] == 1 and failed[0]["data"]["resumable"]
    verify_ledger(run_dir)

    # the next round, the site is not even connected: the wait for sites ends at the timeout too
    fed_config.federated.rounds = 1
    with pytest.raises(FederationFailed, match=r"round 1/1: site\(s\) site-2 not connected"):
        grid = FlakyGrid(2, gone=1, gone_from=1)
        grid.disconnected = True
        server = FederatedServer(fed_config, tmp_path / "never", simulated=True, node_names={1001: "site-2"})
        run(server, grid)

    # and the whole run has a deadline
    fed_config.federated.run_timeout_s = 0.01
    with pytest.raises(FederationFailed, match="passed its deadline of 0.01s"):
        run(FederatedServer(fed_config, tmp_path / "late", simulated=True), FlakyGrid(2))
    assert Ledger(tmp_path / "late").events()[-1]["data"]["reason"] == "run deadline passed"


def test_with_min_train_sites_1_the_run_goes_on_without_the_missing_site(fed_config, tmp_path):
    fed_config.federated.min_train_sites = 1
    fed_config.federated.min_available_sites = 1
    trained = run(FederatedServer(fed_config, tmp_path / "run", simulated=True), FlakyGrid(2, gone=1))
    rounds = {entry["round"]: entry for entry in trained.metrics["rounds"]}
    assert rounds[2]["sites_missing"] == ["site-2"] and rounds[2]["aggregated"]
    assert rounds[3]["sites_missing"] == [] and rounds[3]["sites_sampled"] == 1  # no longer connected
    assert all(rounds[number]["aggregated"] for number in (1, 2, 3))


def test_a_site_that_comes_back_rejoins_the_next_round(fed_config, tmp_path):
    fed_config.federated.min_train_sites = 1
    fed_config.federated.min_available_sites = 1
    trained = run(FederatedServer(fed_config, tmp_path / "run", simulated=True), FlakyGrid(2, gone=1, back_at=3))
    rounds = {entry["round"]: entry for entry in trained.metrics["rounds"]}
    assert rounds[2]["sites_missing"] == ["site-2"]
    assert rounds[3]["sites_missing"] == [] and rounds[3]["sites_accepted"] == 2


def test_a_stopped_coordinator_resumes_from_its_checkpoint_into_one_ledger(fed_config, tmp_path):
    fed_config.privacy = fed_config.privacy.model_copy(update={"mode": "dp", "target_epsilon": 8.0})
    run_dir = tmp_path / "run"
    first = FederatedServer(fed_config, run_dir, simulated=True)
    with pytest.raises(RunStopped):
        run(first, FlakyGrid(2, stop_after_round=2, stop=first.stop))
    assert events(run_dir)[-1] == "federated_interrupted"
    assert Ledger(run_dir).events()[-1]["data"]["checkpoint_round"] == 2
    assert not (run_dir / "model").exists()

    # the folder holds a run: a new run into it is refused, whatever it holds
    with pytest.raises(CheckpointError, match="already holds a run.*--resume"):
        run(FederatedServer(fed_config, run_dir, simulated=True), FlakyGrid(2))

    resumed = run(FederatedServer(fed_config, run_dir, simulated=True, resume=True), FlakyGrid(2))
    assert [entry["round"] for entry in resumed.metrics["rounds"]] == [1, 2, 3]
    names = events(run_dir)
    assert names.count("federated_started") == 1 and names.count("config_loaded") == 1
    assert names.count("federated_resumed") == 1 and names[-1] == "model_saved"
    assert [event["data"]["round"] for event in Ledger(run_dir).events() if event["event"] == "federated_round_done"] \
        == [1, 2, 3]
    verify_ledger(run_dir)
    privacy = json.loads((run_dir / "privacy.json").read_text())
    assert sorted(privacy["sites"]) == ["site-1", "site-2"]
    trained_steps: dict[str, int] = {}
    for entry in resumed.metrics["rounds"]:
        for site in entry["sites"]:
            if site["phase"] == "train" and site["status"] in ("accepted", "clipped"):
                trained_steps[site["site"]] = trained_steps.get(site["site"], 0) + int(site["metrics"]["local-steps"])
    for name, site in privacy["sites"].items():
        # every release the coordinator received before and after the restart is in the history ε is computed
        # from: the reports kept in the checkpoint, composed with those after (a site whose accountant restarted
        # with the new Flower run is caught by its history no longer continuing the earlier one)
        assert site["last_round"] == 3 and sum(segment[2] for segment in site["history"]) >= trained_steps[name]
    checked = subprocess.run([sys.executable, "-m", "secure_ft.cli", "privacy", str(run_dir)], capture_output=True,
                             text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # the data set's budget ledger: the stopped attempt and the resumed one, each site's releases counted once
    from secure_ft.privacy.budget_ledger import BudgetLedger, budget_dir_for

    attempts = [entry for entry in BudgetLedger(budget_dir_for(fed_config)).entries(resumed.splits.fingerprint)
                if entry["run_dir"] == str(run_dir)]
    assert [entry["status"] for entry in attempts] == ["stopped", "finished"]
    for name in ("site-1", "site-2"):
        odometer = json.loads((run_dir / "sites" / name / "odometer.json").read_text())
        released = sum(release["steps"] for release in odometer["releases"])
        assert sum(segment[2] for entry in attempts for segment in entry["sites"][name]["history"]) == released > 0


def test_a_site_whose_accountant_restarted_has_every_reported_release_composed():
    from federated.handoff import _account_restarted_accountants
    from secure_ft.privacy.accountants import epsilon_from_history

    sigma, q = 0.9503173828125, 0.25
    # what the loopback deployment saw: rounds 1, 2, 3 of 4 steps; the accountant restarted with the resumed run
    reports = [(1, [[sigma, q, 4]], 4), (2, [[sigma, q, 4]], 4), (3, [[sigma, q, 8]], 4)]
    guarantee = {"epsilon": epsilon_from_history("rdp", ((sigma, q, 8),), 1e-5), "delta": 1e-5, "accountant": "rdp"}
    _account_restarted_accountants("site-a", guarantee, reports)
    assert guarantee["accountant_restarts"] == [2] and guarantee["steps"] == 12
    assert guarantee["epsilon"] == epsilon_from_history("rdp", ((sigma, q, 4), (sigma, q, 8)), 1e-5)
    # a continuing accountant, and a round with no steps (budget spent), are left alone
    steady = {"epsilon": 1.0, "delta": 1e-5, "accountant": "rdp"}
    _account_restarted_accountants("site-b", steady, [(1, [[sigma, q, 4]], 4), (2, [[sigma, q, 8]], 4),
                                                      (3, [[sigma, q, 8]], 0)])
    assert steady == {"epsilon": 1.0, "delta": 1e-5, "accountant": "rdp"}


class ForceExited(BaseException):
    """Stands for Flower's forced `os._exit`: nothing after it runs, so the except clauses must not record."""


class SignalledGrid(FlakyGrid):
    """In round `at_round`, Flower's signal handler fires: its exit handlers run, then the process is gone."""

    def __init__(self, sites: int, at_round: int, run_dir):
        super().__init__(sites)
        self.at_round, self.run_dir, self.seen_in_ledger = at_round, run_dir, None

    def push_messages(self, messages):
        messages = list(messages)
        if int(messages[0].content[protocol.CONFIG][protocol.SERVER_ROUND]) == self.at_round:
            from flwr.supercore.exit.exit_handler import trigger_exit_handlers
            trigger_exit_handlers(run_before_force_exit=True)  # what flwr_exit does before its 5 s force-exit timer
            self.seen_in_ledger = events(self.run_dir)[-1]
            raise ForceExited
        return super().push_messages(messages)


def test_a_signal_is_recorded_before_flower_force_exits(fed_config, tmp_path):
    """SIGTERM on loaded cores: Flower's exit handlers run, then os._exit may come before SystemExit is seen."""
    run_dir = tmp_path / "run"
    grid = SignalledGrid(2, at_round=2, run_dir=run_dir)
    with pytest.raises(ForceExited):
        run(FederatedServer(fed_config, run_dir, simulated=True), grid)
    assert grid.seen_in_ledger == "federated_interrupted"
    interrupted = [event for event in Ledger(run_dir).events() if event["event"] == "federated_interrupted"]
    assert len(interrupted) == 1 and interrupted[0]["data"]["resumable"]  # recorded once, round 1 checkpointed
    # the handler stays registered in this process but does nothing once its run has ended
    from flwr.supercore.exit.exit_handler import trigger_exit_handlers
    trigger_exit_handlers(run_before_force_exit=True)
    assert events(run_dir).count("federated_interrupted") == 1
