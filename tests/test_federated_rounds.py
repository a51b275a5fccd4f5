"""Whole federated runs with the sites in this process (LocalGrid): failures, poisoning, DP, SecAgg+, hand-off.

The server code is exactly what runs under Flower's simulation engine or a deployment; only
the transport differs (see federated/local_grid.py). The Ray-backed path is covered by
test_federated_simulation.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from safetensors.numpy import load_file

from federated import protocol, run_federated
from federated.client_app import app as site_app
from federated.coordinator import FederationFailed
from federated.task import arrays_to_record, record_to_arrays
from secure_ft.cli import main
from secure_ft.records.model_identity import model_digest as model_hash
from secure_ft.records.run_ledger import verify_ledger
from secure_ft.text.models import load_trained_model


@pytest.fixture
def fed_config(toy_config):
    source = toy_config.data.source  # a class too small to split: dropped by the server and every site alike
    with open(source, "a", encoding="utf-8") as stream:
        stream.write("my insurance claim was denied,insurance,north,False\n" * 2)
    config = toy_config.model_copy(deep=True)
    config.training.learning_rate = 0.01
    config.federated = config.federated.model_copy(update={
        "num_sites": 3, "partition": "iid", "rounds": 3, "local_epochs": 2, "min_train_sites": 2})
    return config


def misbehaving_app(behaviour) -> ClientApp:
    """The real ClientApp, except that `behaviour(partition, round, reply)` may raise or tamper."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        server_round = int(msg.content[protocol.CONFIG][protocol.SERVER_ROUND])
        partition = int(context.node_config[protocol.PARTITION_ID])
        behaviour(partition, server_round, None)  # may raise before training, like a crash mid-round
        reply = site_app(message=msg, context=context)
        behaviour(partition, server_round, reply)
        return reply

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return site_app(message=msg, context=context)

    return app


def round_sites(metrics, server_round, phase="train"):
    entry = next(entry for entry in metrics["rounds"] if entry["round"] == server_round)
    return {site["site"]: site for site in entry["sites"] if site["phase"] == phase}


def test_a_site_raising_mid_round_does_not_stop_the_run_and_the_handoff_matches_a_central_run(fed_config, tmp_path):
    def crash(partition, server_round, reply):
        if reply is None and partition == 1 and server_round == 2:
            raise RuntimeError("the site's disk filled up")

    trained = run_federated(fed_config, tmp_path / "run", progress=False, backend="local",
                            client_app=misbehaving_app(crash))
    metrics = trained.metrics
    assert [entry["aggregated"] for entry in metrics["rounds"]] == [True, True, True]
    second = round_sites(metrics, 2)
    assert second["site-2"]["status"] == "failed" and "disk filled up" in second["site-2"]["reason"]
    assert {second["site-1"]["status"], second["site-3"]["status"]} == {"accepted"}
    assert all(site["status"] == "accepted" for site in round_sites(metrics, 3).values())
    initial = metrics["initial_evaluation"]["accuracy"]
    assert metrics["best"]["val_accuracy"] > max(initial, metrics["majority_baseline_accuracy"]) + 0.1

    run_dir = trained.run_dir
    for name in ("config.yaml", "data.json", "metrics.json", "federated.json", "ledger.jsonl", "model/model_hash.json"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "privacy.json").exists()  # no DP anywhere: no guarantee is claimed
    assert trained.model_sha256 == model_hash(run_dir / "model") == metrics["model_sha256"]
    model, _ = load_trained_model(run_dir / "model")
    assert model.config.num_labels == 3
    for key in ("steps", "best_epoch", "epochs", "best", "majority_baseline_accuracy", "train_examples", "engine"):
        assert key in metrics
    assert metrics["epochs"][-1]["epoch"] == 3 and metrics["steps"] > 0
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["mode"] == "federated"
    data = json.loads((run_dir / "data.json").read_text())
    assert data["fingerprint"] == trained.splits.fingerprint and len(data["sites"]) == 3
    events = [json.loads(line)["event"] for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    assert events.count("federated_round_done") == 3 and events[-1] == "model_saved"
    assert verify_ledger(run_dir) == len(events)
    assert (run_dir / "sites" / "site-1" / "ledger.jsonl").is_file()


def test_nan_and_oversized_updates_are_rejected_with_the_reason_and_never_reach_the_model(fed_config, tmp_path):
    fed_config.federated.update_norm_bound = 25.0

    def poison(partition, server_round, reply):
        if reply is None or partition != 2:
            return
        arrays = record_to_arrays(reply.content[protocol.ARRAYS])
        name = sorted(arrays)[0]
        if server_round == 1:
            arrays[name] = np.full_like(arrays[name], np.nan)
        elif server_round == 2:
            arrays = {key: value * 1000 for key, value in arrays.items()}
        reply.content[protocol.ARRAYS] = arrays_to_record(arrays)

    trained = run_federated(fed_config, tmp_path / "run", progress=False, backend="local",
                            client_app=misbehaving_app(poison))
    first, second, third = (round_sites(trained.metrics, r) for r in (1, 2, 3))
    assert first["site-3"]["status"] == "rejected" and "non-finite values (NaN/Inf)" in first["site-3"]["reason"]
    assert second["site-3"]["status"] == "rejected" and "exceeds update_norm_bound 25" in second["site-3"]["reason"]
    assert third["site-3"]["status"] == "accepted"
    assert all(entry["aggregated"] for entry in trained.metrics["rounds"])
    weights = load_file(str(trained.model_dir / "model.safetensors"))
    assert all(np.all(np.isfinite(value)) for value in weights.values())
    problems = json.loads((trained.run_dir / "federated.json").read_text())["problems"]
    assert [(problem["round"], problem["site"]) for problem in problems] == [(1, "site-3"), (2, "site-3")]
    ledger = (trained.run_dir / "ledger.jsonl").read_text()
    assert "non-finite values" in ledger and "exceeds update_norm_bound" in ledger


def test_a_run_in_which_no_update_is_usable_fails_loudly(fed_config, tmp_path):
    fed_config.federated.update_norm_bound = 1e-6
    fed_config.federated.rounds = 1
    with pytest.raises(FederationFailed, match="aggregated none of its 1 rounds.*exceeds update_norm_bound"):
        run_federated(fed_config, tmp_path / "run", progress=False, backend="local")
    assert not (tmp_path / "run" / "model").exists()


@pytest.mark.slow
def test_site_dp_and_central_dp_are_both_accounted_and_the_weakest_is_reported(fed_config, tmp_path):
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    from audits._guarantee import read_guarantee
    from federated.central_dp import ORDERS

    fed_config.privacy = fed_config.privacy.model_copy(update={"mode": "dp", "target_epsilon": 6.0,
                                                               "accountant": "rdp"})
    fed_config.federated = fed_config.federated.model_copy(update={
        "rounds": 2, "local_epochs": 1, "central_dp": "fixed", "central_noise_multiplier": 1.5,
        "central_clipping_norm": 5.0, "central_delta": 1e-4})
    trained = run_federated(fed_config, tmp_path / "run", progress=False, backend="local")
    privacy = json.loads((trained.run_dir / "privacy.json").read_text())

    assert set(privacy["sites"]) == {"site-1", "site-2", "site-3"}
    rows = {site["name"]: site["train_rows"] for site in json.loads((trained.run_dir / "data.json").read_text())["sites"]}
    for site, guarantee in privacy["sites"].items():
        assert 0 < guarantee["epsilon"] <= 6.0 + 1e-6, site  # the per-site budget holds over all rounds
        assert guarantee["delta"] == pytest.approx(min(1 / (10 * rows[site]), 1e-5))  # δ = min(1/(10 N), 1e-5), the site's own N
        assert (trained.run_dir / guarantee["details"]).is_file()
    expected, _ = get_privacy_spent(orders=list(ORDERS), delta=1e-4,
                                    rdp=compute_rdp(q=1.0, noise_multiplier=1.5, steps=2, orders=list(ORDERS)))
    assert privacy["central"]["epsilon"] == pytest.approx(expected, rel=1e-6)
    assert privacy["central"]["releases"] == 2 and privacy["central"]["delta"] == 1e-4
    weakest = max([privacy["central"]] + list(privacy["sites"].values()), key=lambda g: g["epsilon"])
    assert privacy["epsilon"] == weakest["epsilon"] and privacy["delta"] == weakest["delta"]
    assert privacy["scope"] == ("central" if weakest is privacy["central"] else privacy["scope"])

    guarantee = read_guarantee(trained.run_dir)  # the privacy audit reads it as it reads a central run's
    scopes = {scope.scope for scope in guarantee.scopes}
    assert scopes == {"run", "central", "site:site-1", "site:site-2", "site:site-3"}
    assert json.loads((trained.run_dir / "federated.json").read_text())["engine"] == \
        "federated-fedavg+site-dp+central-dp-fixed"
    assert math.isfinite(trained.metrics["epochs"][-1]["extra"]["epsilon"])


def test_secagg_aggregates_the_same_model_as_plain_fedavg(fed_config, tmp_path):
    fed_config.federated.rounds = 2
    plain = run_federated(fed_config, tmp_path / "plain", progress=False, backend="local")
    fed_config.federated.secagg = True
    fed_config.federated.secagg_max_weight = 50  # just above the largest site: finest quantization
    secure = run_federated(fed_config, tmp_path / "secagg", progress=False, backend="local")
    assert json.loads((secure.run_dir / "federated.json").read_text())["secagg"] is True
    assert all(entry["sites_accepted"] == 3 for entry in secure.metrics["rounds"])
    ours, theirs = (load_file(str(run.model_dir / "model.safetensors")) for run in (plain, secure))
    assert set(ours) == set(theirs)
    worst = max(float(np.max(np.abs(ours[name] - theirs[name]))) for name in ours)
    changed = max(float(np.max(np.abs(ours[name]))) for name in ours)
    assert worst < 1e-5 and changed > 1e-2  # equal up to SecAgg+'s fixed-point quantization


def test_secure_ft_federate_command(fed_config, tmp_path, capsys):
    fed_config.federated.rounds = 2
    config_file = tmp_path / "federated.yaml"
    config_file.write_text(fed_config.to_yaml())
    assert main(["federate", "--config", str(config_file), "--out", str(tmp_path / "runs"), "--local"]) == 0
    printed = capsys.readouterr().out
    assert "global model:" in printed and "no differential privacy" in printed
    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / "model" / "model.safetensors").is_file()
    assert main(["federate", "--config", str(tmp_path / "missing.yaml")]) == 2
