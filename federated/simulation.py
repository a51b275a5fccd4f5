"""Simulated sites on one machine: `run_federated`, what `secure-ft federate` and the pipeline call.

The ServerApp runs in this process (a thread of Flower's simulation engine); every site is a
virtual SuperNode whose ClientApp runs in a Ray worker, ``simulation_workers`` at a time,
each with an equal share of the CPU cores. Nothing outlives the call: Flower shuts Ray down
at the end of the simulation, also when the run fails.

Before Ray starts, the partition and (with DP) the privacy settings are checked here, so a
bad config fails in a second with a clear message instead of inside every site.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from secure_ft.records.config import RunConfig
from secure_ft.training.central_run import TrainedRun

log = logging.getLogger(__name__)

QUIET_ENVIRONMENT = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_DISABLE_USAGE_STATS": "1",
    "RAY_worker_niceness": "0",  # Ray runs workers at nice 15 by default; here they do the training
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def check_before_start(config: RunConfig) -> None:
    """Partition the data and (with DP) calibrate the smallest site's noise; raises on a bad config."""
    from federated.partition import partition_sites
    from federated.site_engine import site_noise_multiplier
    from secure_ft.records.data import load_splits

    from federated.site_data import simulated_partition

    splits = load_splits(config.data, config.seed)
    sites = partition_sites(splits, config.federated, config.seed, quiet=True)
    simulated_partition(config, splits.label_names, 0)  # what every site will compute, in the sites' code
    if config.privacy.mode == "dp":
        smallest = min(sites, key=lambda site: len(site.train))
        sigma = site_noise_multiplier(config, len(smallest.train))
        log.info("site DP: σ = %.3f for the smallest site (%s, %d rows) over %d rounds", sigma, smallest.name,
                 len(smallest.train), config.federated.rounds)


def backend_config(config: RunConfig, progress: bool) -> dict:
    cores = os.cpu_count() or 1
    workers = max(1, min(config.federated.simulation_workers, config.federated.num_sites, cores))
    return {
        "client_resources": {"num_cpus": max(1, cores // workers), "num_gpus": 0.0},
        "init_args": {"num_cpus": cores, "include_dashboard": False, "log_to_driver": progress,
                      "logging_level": logging.WARNING},
    }


def run_federated(config: RunConfig, run_dir: Path, progress: bool = True, *, backend: str = "ray",
                  client_app=None) -> TrainedRun:
    """Train `config` federated over `config.federated.num_sites` simulated sites into `run_dir`.

    Parameters
    ----------
    config
        The run config; `data` is partitioned into the sites (`federated.partition`).
    run_dir
        The run directory to create; it ends up with the same layout as a central run's.
    progress
        Log Flower's and the sites' progress (otherwise warnings only).
    backend
        ``ray``: Flower's simulation engine, each site in a Ray worker (default);
        ``local``: every site in this process, one after the other (`federated.local_grid`).
    client_app
        The ClientApp the sites run (default: `federated.client_app.app`); for tests that
        inject failing sites.

    Returns
    -------
    TrainedRun
        As `secure_ft.training.central_run.train_run` returns it.
    """
    if backend not in ("ray", "local"):
        raise ValueError(f"backend must be 'ray' or 'local', got {backend!r}")
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    check_before_start(config)

    from flwr.simulation import run_simulation

    from federated.coordinator import FederatedServer
    from federated.server_app import make_server_app

    if client_app is None:
        from federated.client_app import app as client_app

    server = FederatedServer(config, Path(run_dir), simulated=True)
    flower_logger = logging.getLogger("flwr")
    previous = flower_logger.level, flower_logger.propagate, os.environ.get("PYTHONPATH")
    flower_logger.propagate = False  # Flower prints through its own handler; avoid every line twice
    if not progress:
        flower_logger.setLevel(logging.WARNING)
    try:
        if backend == "local":
            return _run_local(server, config, client_app)
        run_simulation(server_app=make_server_app(server), client_app=client_app,
                       num_supernodes=config.federated.num_sites, backend_config=backend_config(config, progress))
    except KeyboardInterrupt:
        server.stop.set()  # Flower stopped the sites; the server thread must not wait for their replies
        raise
    finally:
        flower_logger.setLevel(previous[0])
        flower_logger.propagate = previous[1]
        _restore_pythonpath(previous[2])  # Flower's Ray backend rewrites it for its workers
    if server.result is None:
        raise RuntimeError(f"the federated simulation into {run_dir} ended without handing off a model; "
                           "see the log above for the server's error")
    return server.result


def _run_local(server, config: RunConfig, client_app) -> TrainedRun:
    from flwr.app import Context, RecordDict

    from federated import protocol
    from federated.local_grid import LocalGrid

    sites = config.federated.num_sites
    grid = LocalGrid(client_app, [{protocol.PARTITION_ID: index, protocol.NUM_PARTITIONS: sites}
                                  for index in range(sites)])
    return server.run(grid, Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(),
                                    run_config={}))


def _restore_pythonpath(previous: str | None) -> None:
    if previous is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = previous
