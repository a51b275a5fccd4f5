"""Train one central run: from a `RunConfig` to a run directory holding the trained model.

The run directory's layout belongs to `secure_ft.records.run_directory`; this module fills it with
the config, the data summary, the model, checkpoints, metrics and (DP runs) the privacy
records, and is resumable from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secure_ft.records.checkpoint import CheckpointStore
from secure_ft.records.config import RunConfig
from secure_ft.records.data import DatasetSplits, load_splits
from secure_ft.records.run_directory import RunDirectory, new_run_dir
from secure_ft.records.run_ledger import Ledger
from secure_ft.text.models import (
    apply_transfer,
    load_base_model,
    resolve_device,
    resolve_model_source,
    save_trained_model,
    trainable_parameter_count,
)
from secure_ft.training.probe import encoder_graph_folder, head_training_threads
from secure_ft.training.robust_training import build_front_end, robust_datasets, robustness_summary
from secure_ft.training.training_loop import EpochRecord, TrainingEngine, fit, seed_everything
from secure_ft.training.transfer_choice import resolve_run_config

log = logging.getLogger(__name__)


@dataclass
class TrainedRun:
    run_dir: Path
    model_dir: Path
    model_sha256: str
    splits: DatasetSplits
    metrics: dict[str, Any]


def make_engine(config: RunConfig, splits: DatasetSplits) -> TrainingEngine:
    """The plain engine, or the Opacus engine when `privacy.mode` is dp."""
    if config.privacy.mode == "dp":
        from secure_ft.privacy.engine import PrivateEngine

        return PrivateEngine.from_config(config, dataset_size=len(splits.train), fingerprint=splits.fingerprint)
    return TrainingEngine(config.training.max_grad_norm, config.training.max_physical_batch_size)


def record_privacy_inputs(run: RunDirectory, ledger: Ledger) -> None:
    """Put the accountant's inputs in the run ledger, where the gate recomputes ε from them."""
    from secure_ft.privacy.accountant_history import load_accountant_history

    if run.read_privacy() is None:
        return
    history = load_accountant_history(run.path)
    ledger.append("privacy_accounted", accountant=history.accountant, delta=history.delta,
                  history=[list(entry) for entry in history.history_tuple()],
                  max_grad_norm=history.max_grad_norm, dataset_size=history.dataset_size)


def open_budget_entry(config: RunConfig, splits: DatasetSplits, run: RunDirectory, engine: TrainingEngine,
                      kind: str = "train"):
    """Open the run's entry in the data set's privacy budget ledger before training touches the data.

    A DP run's engine keeps it current step by step (`PrivateEngine.spend`); a non-private run
    is recorded as mechanism ``none`` (ε = ∞).
    """
    return open_spend(config, engine, fingerprint=splits.fingerprint, dataset_size=len(splits.train),
                      run=run.path.name, run_dir=run.path, kind=kind)


def open_spend(config: RunConfig, engine: TrainingEngine, *, fingerprint: str, dataset_size: int, run: str,
               run_dir: Path | None, kind: str):
    """Open an entry in the budget ledger of the data `fingerprint` for training through `engine`."""
    from secure_ft.privacy.budget_ledger import BudgetLedger, RunSpend, budget_dir_for

    ledger = BudgetLedger(budget_dir_for(config))
    private = getattr(engine, "name", "") == "dp"
    spend = RunSpend.open(ledger, fingerprint=fingerprint, run=run, run_dir=run_dir, kind=kind,
                          mechanism="dp-sgd" if private else "none",
                          accountant=engine.settings.accountant if private else None,
                          delta=engine.delta if private else None, dataset_size=dataset_size)
    if private:
        engine.spend = spend
    else:
        log.warning("privacy budget: %s trains without differential privacy; the data set %s… is recorded as "
                    "spent without bound (ε = ∞) in %s", run, fingerprint[:12], spend.path)
    return spend


@contextlib.contextmanager
def spend_recorded(config: RunConfig, engine: TrainingEngine, *, fingerprint: str, dataset_size: int, run: str,
                   kind: str):
    """Record a training that has no run directory (a benchmark's) in the data set's budget ledger, however
    it ends: every training on the data spends its budget."""
    spend = open_spend(config, engine, fingerprint=fingerprint, dataset_size=dataset_size, run=run, run_dir=None,
                       kind=kind)
    with recording_spend(engine, spend):
        yield spend


@contextlib.contextmanager
def recording_spend(engine: TrainingEngine, spend):
    """Close the budget entry however training ends: finished, stopped (Ctrl-C) or crashed."""
    private = getattr(engine, "name", "") == "dp"
    close = engine.close_spend if private else (lambda status, reason=None: spend.close(None, status, reason))
    try:
        yield
    except KeyboardInterrupt:
        close("stopped", "interrupted (Ctrl-C)")
        raise
    except BaseException as error:
        close("crashed", f"{type(error).__name__}: {error}"[:500])
        raise
    close("finished")


class PhaseClock:
    """Seconds per phase of one process's work: each `lap` names the time since the previous one."""

    def __init__(self):
        self.started = self._last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 3)
        self._last = now

    def total(self) -> float:
        return round(time.perf_counter() - self.started, 3)


def train_run(config: RunConfig | None, run_dir: Path | None = None, *, output_dir: str | Path | None = None,
              resume: bool = False, progress: bool = True) -> TrainedRun:
    """Load data and base model, fine-tune, save the model; resumable from the last checkpoint.

    A new run validates its data and base model *before* creating the run directory (under
    `output_dir`, or `run_dir` when given), so bad input leaves nothing behind. With
    `resume=True`, `run_dir` is an earlier run whose saved config is used.

    The metrics record where this process's time went (``timings``: loading, building the
    front end, preparing the datasets — front end, copies and, for the probe, the embedding
    pass with its own counts and seconds —, training, saving; a resumed run counts its own).
    """
    clock = PhaseClock()
    if resume:
        run = RunDirectory(run_dir)
        config = run.read_config()  # saved resolved: transfer and recipe are those the run started with
        CheckpointStore(run.checkpoint_dir).load()  # fail early on a missing or corrupt checkpoint
        splits = load_splits(config.data, config.seed)
        config, choice = resolve_run_config(config, len(splits.train))
        choice_record = run.read_transfer_choice() or choice.to_dict()
        ledger = Ledger(run.path)
        ledger.append("run_resumed", fingerprint=splits.fingerprint)
    else:
        splits = load_splits(config.data, config.seed)
        resolve_model_source(config.model.name_or_path)
        config, choice = resolve_run_config(config, len(splits.train))
        choice_record = choice.to_dict()
        if run_dir is None:
            run_dir = new_run_dir(output_dir if output_dir is not None else config.output_dir)
        run = RunDirectory(run_dir)
        ledger = run.start(config, splits)
        run.write_transfer_choice(choice_record)
        ledger.append("transfer_resolved", **choice_record)
    run_dir = run.path
    run.write_data_summary(splits.summary())

    device = resolve_device(config.device)
    seed_everything(config.seed)  # the fresh head and LoRA adapters: the seed, not the moment, decides the model
    base, tokenizer = load_base_model(config.model, splits.label_names)
    model = apply_transfer(base, config.model)
    trainable, total = trainable_parameter_count(model)
    log.info("model %s, transfer %s: %d of %d parameters train", config.model.name_or_path,
             config.model.transfer, trainable, total)
    clock.lap("load_seconds")
    robustness = config.training.robustness
    # the front end is part of the model: training reads corrected text, as audits and serving will
    front_end = build_front_end(robustness, tokenizer, splits.train["text"].tolist())
    clock.lap("front_end_build_seconds")
    # probe: the head trains on embeddings (copies included) cached in the run directory
    embedding: dict = {}
    trainee, train_set, (validation_set,) = robust_datasets(
        model, tokenizer, config, splits.train, [splits.validation], front_end=front_end, cache_dir=run.cache_dir,
        device=device, progress=progress, embedding_stats=embedding)
    clock.lap("datasets_seconds")
    engine = make_engine(config, splits)
    if hasattr(engine, "notes"):
        engine.notes.update(hyperparameters=choice_record["hyperparameters"], transfer_choice=choice_record,
                            head_init=getattr(base.config, "head_init", "random"))

    def on_epoch(record: EpochRecord) -> None:
        ledger.append("epoch_done", epoch=record.epoch, step=record.step, val_accuracy=record.val_accuracy,
                      val_macro_f1=record.val_macro_f1, **{k: v for k, v in record.extra.items() if k == "epsilon"})

    spend = open_budget_entry(config, splits, run, engine)
    # the probe's head is tiny: one thread (unless training.num_threads says otherwise)
    threads = head_training_threads(config.training.num_threads) if config.model.transfer == "probe" \
        else contextlib.nullcontext()
    with recording_spend(engine, spend), threads:
        result = fit(trainee, train_set, validation_set, splits.label_names, config.training, seed=config.seed,
                     device=device, engine=engine, checkpoints=CheckpointStore(run.checkpoint_dir), resume=resume,
                     fingerprint=splits.fingerprint, progress=progress, on_epoch=on_epoch)
    clock.lap("fit_seconds")
    ledger.append("privacy_budget_recorded", budget_entry=str(spend.path), status=spend.entry["status"],
                  mechanism=spend.entry["mechanism"])

    model_dir = run.model_dir
    # the probe trained the model's own classifier through `trainee`: save the whole model
    digest = save_trained_model(model if config.model.transfer == "probe" else result.model, tokenizer, model_dir,
                                front_end=front_end, encoder_graph=encoder_graph_folder(model, tokenizer, config.model))
    artifacts = engine.write_artifacts(run_dir, result)
    record_privacy_inputs(run, ledger)
    best = next((r for r in result.history if r.epoch == result.best_epoch), None)
    clock.lap("save_seconds")
    metrics = {
        **result.to_dict(),
        "engine": engine.name,
        "device": device,
        "transfer": config.model.transfer,
        "transfer_choice": choice_record,
        "hyperparameters": choice_record["hyperparameters"],
        "trainable_parameters": trainable,
        "total_parameters": total,
        "train_examples": len(splits.train),
        "majority_baseline_accuracy": splits.majority_baseline("validation"),
        "best": None if best is None else {"val_accuracy": best.val_accuracy, "val_macro_f1": best.val_macro_f1},
        "model_sha256": digest,
        "robust_training": robustness_summary(robustness, front_end),
        "timings": {**clock.laps, "total_seconds": clock.total(),
                    **({"embedding": embedding} if embedding else {})},
    }
    run.write_metrics(metrics)
    ledger.append("model_saved", model_sha256=digest, steps=result.steps, stopped_reason=result.stopped_reason,
                  artifacts=artifacts, augmentation_copies=robustness.augmentation_copies,
                  front_end=None if front_end is None else "spelling",
                  uses_private_vocabulary=metrics["robust_training"]["uses_private_vocabulary"])
    return TrainedRun(run_dir, model_dir, digest, splits, metrics)
