"""Federated fine-tuning with Flower: many sites train one model, no site's rows leave it.

The Flower app has the shape Flower users expect (``[tool.flwr.app]`` in ``pyproject.toml``):

``task``            glue to the secure-ft core: the model, the exchanged tensors, local training
``client_app``      the ClientApp every site runs (train / evaluate, Message API)
``server_app``      the ServerApp (``flwr run``); its body is ``coordinator``
``partition``       simulated sites: IID, by a group column, or Dirichlet label skew

and behind them, one concept per module: ``site_data`` (which rows a site trains on),
``site_engine`` (DP-SGD across rounds, FedProx), ``site_training`` (one site's round),
``site_odometer`` (every DP release of a run, on the site's disk, before it leaves),
``site_errors`` (what a failing site may tell the coordinator: rule and counts),
``site_identity`` (the coordinator's side: names from registered keys, signed histories),
``strategy`` (FedAvg / FedProx behind validation and central DP), ``update_validation``,
``central_dp`` (Flower's DP wrappers and an accountant), ``secagg`` (SecAgg+ mode),
``round_book`` (per-round records, best model), ``handoff`` (the run directory a central run
would leave) and ``simulation`` (`run_federated`: simulated sites on one machine).

Run a simulation with ``secure-ft federate --config FILE`` or from Python::

    from federated import run_federated
    trained = run_federated(config, run_dir)      # -> secure_ft.training.central_run.TrainedRun

A deployment across real sites is described in ``deploy/README.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from secure_ft.records.config import RunConfig
    from secure_ft.training.central_run import TrainedRun

__all__ = ["run_federated"]


def run_federated(config: "RunConfig", run_dir: "Path", progress: bool = True, **kwargs) -> "TrainedRun":
    """Federated fine-tuning over simulated sites; see `federated.simulation.run_federated`."""
    from federated.simulation import run_federated as run

    return run(config, run_dir, progress=progress, **kwargs)
