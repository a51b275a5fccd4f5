"""A finished run directory, read back so that it can be audited, gated and exported.

Whatever trained the model — a central run, a simulated federation, or a deployment whose
sites trained on rows that never left them — the run directory holds the same records
(`secure_ft.records.run_directory`). `load_finished_run` reads them back into the `TrainedRun` the
pipeline's audits take: the saved model, the run's recorded config, and the data splits
re-read from that config's data source (for a deployment: the coordinator's held-out set).
The re-read data must be the data the run recorded (same fingerprint and labels); otherwise
the audits would judge the model on something else.
"""

from __future__ import annotations

from pathlib import Path

from secure_ft.errors import DataError, RunDirectoryError
from secure_ft.records.config import RunConfig
from secure_ft.records.data import load_splits
from secure_ft.records.model_identity import model_digest
from secure_ft.records.run_directory import DATA_FILE, RunDirectory
from secure_ft.training.central_run import TrainedRun


def load_finished_run(run_dir: str | Path) -> tuple[TrainedRun, RunConfig]:
    """The run's model, splits and metrics, and its recorded config.

    Raises
    ------
    RunDirectoryError
        The folder is not a finished run (no config or no saved model: still training or killed).
    DataError
        The data the config names is not the data the run recorded (fingerprint or labels differ).
    """
    run = RunDirectory(Path(run_dir))
    config = run.read_config()
    if not (run.model_dir / "model_hash.json").is_file():
        raise RunDirectoryError(
            f"{run.path}: no finished model ({run.model_dir.name}/model_hash.json is missing); the run is still "
            "training or was stopped: let it finish (central runs: `secure-ft run --resume RUN_DIR`; deployed "
            "federated runs: `secure-ft deploy launch --resume RUN_DIR`)")
    deployed = run.is_deployed_federation()
    splits = load_splits(config.data, config.seed, keep_declared_labels=deployed)
    recorded = run.read_data_summary() or {}
    if recorded.get("fingerprint") and recorded["fingerprint"] != splits.fingerprint:
        raise DataError(
            f"{splits.source}: these rows are not the ones the run recorded in {run.path / DATA_FILE} (fingerprint "
            f"{splits.fingerprint[:12]}… vs {recorded['fingerprint'][:12]}…); restore the data the run was trained "
            "and held out on, or audit a run trained on this data")
    if recorded.get("labels") and recorded["labels"] != splits.label_names:
        raise DataError(f"{splits.source}: labels {splits.label_names} differ from the run's {recorded['labels']} "
                        f"({run.path / DATA_FILE}); restore the run's data")
    trained = TrainedRun(run.path, run.model_dir, model_digest(run.model_dir), splits, run.read_metrics() or {})
    return trained, config


def members_held_here(run_dir: Path) -> bool:
    """False for a deployment: its training rows stayed at the sites, so no membership attack can use them."""
    return not RunDirectory(run_dir).is_deployed_federation()
