"""Glue between the Flower app and the secure-ft core: the model, the tensors sites exchange, local training.

Every site and the server build the same model from the same base checkpoint
(`secure_ft.text.models.load_base_model` + `apply_transfer`, seeded so that freshly initialised
heads and adapters agree). Only the parameters that train travel between them:

- ``transfer: probe`` — the classification head only (a few thousand numbers); each site reads its
  rows through the frozen encoder once, caching the embeddings in its own folder (`secure_ft.training.probe`);
- ``transfer: lora`` — the LoRA adapters and the classification head (+ a trained BERT pooler): about
  0.3 % of the full model's bytes for r = 8 on the query/value projections;
- ``transfer: top_k`` — the top k encoder layers and the head;
- ``transfer: full`` — every parameter.

``transfer: auto`` is resolved once by the server (`federated.coordinator`, from the whole
federation's rows) and sent resolved, so every site trains the same thing. The frozen rest
never leaves a site, so a site whose base checkpoint differs would train a
different model; `base_model_sha256` lets a site refuse such a mismatch before training.

Local training is `secure_ft.training.training_loop.fit`, the loop central runs use, on the site's rows.
"""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from flwr.app import ArrayRecord
from torch import nn
from torch.utils.data import TensorDataset

from secure_ft.errors import ModelError
from secure_ft.records.config import ModelConfig, RunConfig, TrainingConfig
from secure_ft.records.model_identity import model_digest
from secure_ft.text.models import apply_transfer, load_base_model, resolve_model_source
from secure_ft.training.training_loop import FitResult, TrainingEngine, encode, evaluate, fit, seed_everything

log = logging.getLogger(__name__)


def secure_ft_version() -> str:
    try:
        return metadata.version("secure-ft")
    except metadata.PackageNotFoundError:  # running from a source tree that was not installed
        return "unknown"


def build_model(config: RunConfig, label_names: list[str]) -> tuple[nn.Module, object]:
    """The model every participant trains (base + fresh head + transfer mode) and its tokenizer.

    Seeded with `config.seed`, so the randomly initialised head and LoRA adapters are the
    same on every site even before the server's initial weights arrive.
    """
    seed_everything(config.seed)
    base, tokenizer = load_base_model(config.model, label_names)
    return apply_transfer(base, config.model), tokenizer


def trainable_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The exchanged tensors: every parameter that trains, by name, as float arrays on the CPU."""
    return {name: parameter.detach().cpu().numpy().copy()
            for name, parameter in model.named_parameters() if parameter.requires_grad}


def load_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy exchanged tensors into `model`; keys and shapes must match exactly.

    Raises
    ------
    ModelError
        Naming the first missing, unexpected or mis-shaped tensor: the other side built a
        different model (base checkpoint, transfer mode, label set or secure-ft version).
    """
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(parameters) - set(arrays))
    unexpected = sorted(set(arrays) - set(parameters))
    if missing or unexpected:
        problem = (f"missing {missing[0]!r}" if missing else "") + (", " if missing and unexpected else "") + \
                  (f"unexpected {unexpected[0]!r}" if unexpected else "")
        raise ModelError(
            f"the received weights do not fit this model ({problem}; {len(missing)} missing, {len(unexpected)} "
            "unexpected): server and site must use the same base model, model.transfer, labels and secure-ft version"
        )
    with torch.no_grad():
        for name, parameter in parameters.items():
            value = np.asarray(arrays[name])
            if tuple(value.shape) != tuple(parameter.shape):
                raise ModelError(f"received tensor {name!r} has shape {tuple(value.shape)}, the model expects "
                                 f"{tuple(parameter.shape)}; server and site built different models")
            parameter.copy_(torch.as_tensor(np.array(value, dtype=np.float32, copy=True)).to(parameter.device))


def arrays_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in arrays.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def record_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Bytes one copy of these tensors takes on the wire (Flower's own count)."""
    return arrays_to_record(arrays).count_bytes()


def update_norm(new: Mapping[str, np.ndarray], old: Mapping[str, np.ndarray]) -> float:
    """L2 norm of the update `new − old` over all exchanged tensors together."""
    total = 0.0
    for name, value in new.items():
        difference = np.asarray(value, dtype=np.float64) - np.asarray(old[name], dtype=np.float64)
        total += float(np.sum(difference * difference))
    return float(np.sqrt(total))


def encode_frame(tokenizer, frame: pd.DataFrame, max_length: int) -> TensorDataset:
    return encode(tokenizer, frame["text"].tolist(), frame["label"].astype(int).tolist(), max_length)


def local_training_config(config: RunConfig) -> TrainingConfig:
    """`training` settings for one site's round: `local_epochs` epochs, at most `local_steps` steps.

    Early stopping is off (one round is too short to judge) and checkpoints are not written:
    the round itself is the unit of recovery.
    """
    return config.training.model_copy(update={
        "epochs": config.federated.local_epochs,
        "max_steps": config.federated.local_steps,
        "early_stopping_patience": None,
        "checkpoint_every_steps": None,
    })


def round_seed(seed: int, server_round: int, site_name: str) -> int:
    """A different, reproducible batch order for every (round, site)."""
    site_part = int.from_bytes(site_name.encode("utf-8")[:8].ljust(8, b"\0"), "little") % 1_000_003
    return (seed * 1_000_003 + server_round * 7919 + site_part) % (2**31 - 1)


def base_model_sha256(model_config: ModelConfig) -> str:
    """Hash of the base checkpoint (weights + config) when it is a local folder; '' for hub names."""
    source = Path(resolve_model_source(model_config.name_or_path))
    return model_digest(source) if source.is_dir() else ""


def train_locally(model: nn.Module, train_set: TensorDataset, validation_set: TensorDataset, label_names: list[str],
                  config: RunConfig, *, seed: int, engine: TrainingEngine, device: str = "cpu",
                  progress: bool = False) -> FitResult:
    """One site's local training for one round, through the product's one loop."""
    return fit(model, train_set, validation_set, label_names, local_training_config(config), seed=seed,
               device=device, engine=engine, progress=progress)


def evaluate_model(model: nn.Module, dataset: TensorDataset, label_names: list[str], config: RunConfig,
                   device: str = "cpu") -> dict:
    """Accuracy, macro-F1 and per-class recall (`secure_ft.training.training_loop.evaluate`)."""
    return evaluate(model, dataset, label_names, config.training.eval_batch_size, device)
