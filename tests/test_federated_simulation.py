"""Flower's simulation engine (Ray) end to end: 3 sites, a site crashing mid-round, nothing left running."""

from __future__ import annotations

import json
import threading

import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from federated import protocol, run_federated
from federated.client_app import app as site_app
from own_processes import marked_environment, own_processes

FLOWER_PROCESSES = "flower-superlink|flower-supernode|flower-superexec|flwr-serverapp|flwr-clientapp|raylet"

crashing_site = ClientApp()


@crashing_site.train()
def train(msg: Message, context: Context) -> Message:
    if int(context.node_config[protocol.PARTITION_ID]) == 2 and int(msg.content[protocol.CONFIG][protocol.SERVER_ROUND]) == 2:
        raise RuntimeError("power cut at the third site")
    return site_app(message=msg, context=context)


@crashing_site.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return site_app(message=msg, context=context)


def _watch(token: str, seen: set[str], done: threading.Event) -> None:
    """Record this test's Flower / Ray processes while the simulation runs."""
    while not done.wait(0.5):
        seen |= own_processes(token, FLOWER_PROCESSES)


@pytest.fixture
def flower_env(tmp_path, monkeypatch):
    for key, value in {"FLWR_HOME": str(tmp_path / "flwr"), "FLWR_TELEMETRY_ENABLED": "0",
                       "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_DISABLE_USAGE_STATS": "1"}.items():
        monkeypatch.setenv(key, value)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_simulation_survives_a_crashing_site_and_leaves_no_process(toy_config, tmp_path, flower_env, monkeypatch):
    token = marked_environment(monkeypatch)  # Ray's and Flower's processes inherit it; nobody else's carry it
    config = toy_config.model_copy(deep=True)
    config.model.transfer = "lora"
    config.training.learning_rate = 0.01
    config.federated = config.federated.model_copy(update={
        "num_sites": 3, "partition": "iid", "rounds": 2, "min_train_sites": 2, "federated_evaluation": False})
    seen, done = set(), threading.Event()
    watcher = threading.Thread(target=_watch, args=(token, seen, done), daemon=True)
    watcher.start()
    try:
        trained = run_federated(config, tmp_path / "run", progress=False, client_app=crashing_site)
    finally:
        done.set()
        watcher.join(timeout=10)
    assert any("raylet" in line for line in seen), "the mark must reach Ray's processes, or the check below is empty"

    rounds = trained.metrics["rounds"]
    assert [entry["aggregated"] for entry in rounds] == [True, True]
    assert [entry["sites_accepted"] for entry in rounds] == [3, 2]
    failed = [site for site in rounds[1]["sites"] if site["status"] == "failed"]
    assert [site["site"] for site in failed] == ["site-3"] and "power cut" in failed[0]["reason"]
    assert (trained.model_dir / "model.safetensors").is_file()
    assert json.loads((trained.run_dir / "federated.json").read_text())["mode"] == "simulation"
    assert own_processes(token, FLOWER_PROCESSES) == set(), "Ray or Flower processes outlived the simulation"
