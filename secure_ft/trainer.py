"""Train one run: from a `RunConfig` to a run directory holding the trained model.

Run directory layout (everything written atomically):

    config.yaml     the effective config
    data.json       split sizes, labels, dropped classes, dataset fingerprint
    metrics.json    per-epoch validation metrics, steps, stop reason, majority baseline
    model/          save_pretrained folder (safetensors) + model_hash.json
    checkpoints/    last.pt (+ .sha256) for resuming
    ledger.jsonl    hash-chained record of every step
    privacy.json    (DP runs) the guarantee, written by the private engine
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from secure_ft.checkpoint import CheckpointStore
from secure_ft.config import RunConfig, atomic_write_text, load_config
from secure_ft.data import DatasetSplits, load_splits
from secure_ft.errors import CheckpointError
from secure_ft.ledger import Ledger
from secure_ft.models import (
    apply_transfer,
    load_base_model,
    resolve_device,
    resolve_model_source,
    save_trained_model,
    trainable_parameter_count,
)
from secure_ft.training import EpochRecord, TrainingEngine, encode, fit, seed_everything

log = logging.getLogger(__name__)


@dataclass
class TrainedRun:
    run_dir: Path
    model_dir: Path
    model_sha256: str
    splits: DatasetSplits
    metrics: dict[str, Any]


def new_run_dir(output_dir: str | Path) -> Path:
    """A fresh, uniquely named run directory under `output_dir`."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = Path(output_dir) / f"run-{stamp}-{secrets.token_hex(3)}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def make_engine(config: RunConfig, splits: DatasetSplits) -> TrainingEngine:
    """The plain engine, or the Opacus engine when `privacy.mode` is dp."""
    if config.privacy.mode == "dp":
        from secure_ft.privacy import PrivateEngine

        return PrivateEngine.from_config(config, dataset_size=len(splits.train), fingerprint=splits.fingerprint)
    return TrainingEngine(config.training.max_grad_norm, config.training.max_physical_batch_size)


def train_run(config: RunConfig | None, run_dir: Path | None = None, *, output_dir: str | Path | None = None,
              resume: bool = False, progress: bool = True) -> TrainedRun:
    """Load data and base model, fine-tune, save the model; resumable from the last checkpoint.

    A new run validates its data and base model *before* creating the run directory (under
    `output_dir`, or `run_dir` when given), so bad input leaves nothing behind. With
    `resume=True`, `run_dir` is an earlier run whose saved config is used.
    """
    if resume:
        run_dir = Path(run_dir)
        saved_config = run_dir / "config.yaml"
        if not saved_config.is_file():
            raise CheckpointError(f"{run_dir}: not a run directory (no config.yaml); give the folder of an earlier run")
        config = load_config(saved_config)
        CheckpointStore(run_dir / "checkpoints").load()  # fail early on a missing or corrupt checkpoint
        splits = load_splits(config.data, config.seed)
        ledger = Ledger(run_dir)
        ledger.append("run_resumed", fingerprint=splits.fingerprint)
    else:
        splits = load_splits(config.data, config.seed)
        resolve_model_source(config.model.name_or_path)
        if run_dir is None:
            run_dir = new_run_dir(output_dir if output_dir is not None else config.output_dir)
        run_dir = Path(run_dir)
        if (run_dir / "model").exists() or CheckpointStore(run_dir / "checkpoints").exists():
            raise CheckpointError(f"{run_dir}: already holds a run; use --resume to continue it or choose a new folder")
        run_dir.mkdir(parents=True, exist_ok=True)
        ledger = Ledger(run_dir)
        config_text = config.to_yaml()
        atomic_write_text(run_dir / "config.yaml", config_text)
        ledger.append("config_loaded", config_sha256=hashlib.sha256(config_text.encode()).hexdigest(),
                      source=str(config.source_path) if config.source_path else "built-in default")
        ledger.append("data_fingerprinted", fingerprint=splits.fingerprint, rows=splits.summary()["rows"],
                      dropped_classes=splits.dropped_classes)
    write_json(run_dir / "data.json", splits.summary())

    device = resolve_device(config.device)
    seed_everything(config.seed)  # the fresh head and LoRA adapters: the seed, not the moment, decides the model
    base, tokenizer = load_base_model(config.model, splits.label_names)
    model = apply_transfer(base, config.model)
    trainable, total = trainable_parameter_count(model)
    log.info("model %s, transfer %s: %d of %d parameters train", config.model.name_or_path,
             config.model.transfer, trainable, total)
    max_length = config.model.max_length
    train_set = encode(tokenizer, splits.train["text"].tolist(), splits.train["label"].tolist(), max_length)
    validation_set = encode(tokenizer, splits.validation["text"].tolist(), splits.validation["label"].tolist(), max_length)
    engine = make_engine(config, splits)

    def on_epoch(record: EpochRecord) -> None:
        ledger.append("epoch_done", epoch=record.epoch, step=record.step, val_accuracy=record.val_accuracy,
                      val_macro_f1=record.val_macro_f1, **{k: v for k, v in record.extra.items() if k == "epsilon"})

    result = fit(model, train_set, validation_set, splits.label_names, config.training, seed=config.seed,
                 device=device, engine=engine, checkpoints=CheckpointStore(run_dir / "checkpoints"), resume=resume,
                 fingerprint=splits.fingerprint, progress=progress, on_epoch=on_epoch)

    model_dir = run_dir / "model"
    digest = save_trained_model(result.model, tokenizer, model_dir)
    artifacts = engine.write_artifacts(run_dir, result)
    best = next((r for r in result.history if r.epoch == result.best_epoch), None)
    metrics = {
        **result.to_dict(),
        "engine": engine.name,
        "device": device,
        "transfer": config.model.transfer,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "train_examples": len(splits.train),
        "majority_baseline_accuracy": splits.majority_baseline("validation"),
        "best": None if best is None else {"val_accuracy": best.val_accuracy, "val_macro_f1": best.val_macro_f1},
        "model_sha256": digest,
    }
    write_json(run_dir / "metrics.json", metrics)
    ledger.append("model_saved", model_sha256=digest, steps=result.steps, stopped_reason=result.stopped_reason,
                  artifacts=artifacts)
    return TrainedRun(run_dir, model_dir, digest, splits, metrics)
