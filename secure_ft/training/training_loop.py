"""The one fine-tuning loop: central, private and federated training all run through `fit`.

The loop owns batching, the optimizer schedule, evaluation, early stopping, checkpoints and
progress. What differs between plain and private training lives behind `TrainingEngine`:
the plain engine clips the total gradient norm; the private engine (`secure_ft.privacy.engine`)
wraps the same model, optimizer and loader with Opacus, splits logical batches into
physical ones and keeps the privacy accountant. A federated client calls `fit` on its
site's data.

A batch is either token tensors (`encode`: ids, mask, segment ids, positions, labels) for a
model that reads text, or ``(features, labels)`` for a model that reads precomputed features
(the frozen-encoder probe, `secure_ft.training.probe`): the loop trains and evaluates both the same way.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, recall_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from secure_ft.errors import CheckpointError
from secure_ft.records.checkpoint import CheckpointStore
from secure_ft.records.config import TrainingConfig
from secure_ft.training.accumulation import AccumulatingOptimizer, pieces
from secure_ft.training.multiplicity import collate_copies, copies_per_example

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


def make_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW, or SGD with momentum (the probe recipe: on unit-length features its steps stay bounded), over the trainable parameters."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.learning_rate, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def encode(tokenizer, texts: list[str], labels: list[int], max_length: int) -> TensorDataset:
    """Token ids padded to `max_length`, with explicit per-example position and segment ids.

    Explicit, contiguous position / token-type ids matter for per-sample gradients: BERT's
    buffered ids are broadcast views that Opacus would otherwise treat as batch size 1.
    """
    batch = tokenizer(list(texts), truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
    count, length = batch["input_ids"].shape
    positions = torch.arange(length).unsqueeze(0).repeat(count, 1)
    token_types = batch.get("token_type_ids", torch.zeros_like(batch["input_ids"]))
    return TensorDataset(batch["input_ids"], batch["attention_mask"], token_types.contiguous(), positions,
                         torch.as_tensor(labels, dtype=torch.long))


def _trim(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    """Cut the padding columns no example in the batch uses (speed only; results unchanged)."""
    if len(batch) == 2:  # (features, labels): nothing padded
        return batch
    input_ids, attention_mask, token_types, positions, labels = batch
    if len(input_ids) == 0:
        return batch
    used = int(attention_mask.sum(dim=1).max())
    # contiguous copies: Opacus' ghost-clipping embedding norm sampler needs .view()-able ids
    return [t[:, :used].contiguous() for t in (input_ids, attention_mask, token_types, positions)] + [labels]


def forward_logits(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    """Logits of a token batch (a transformers model) or of a ``(features, labels)`` batch (a plain module)."""
    if len(batch) == 2:
        output = model(batch[0])
        return getattr(output, "logits", output)
    input_ids, attention_mask, token_types, positions, _ = batch
    return model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_types,
                 position_ids=positions).logits


@dataclass
class Prepared:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


HEAD_MODULES = ("classifier", "score")  # the freshly initialised output projection


def give_head_its_learning_rate(optimizer: torch.optim.Optimizer, model: nn.Module, learning_rate: float) -> int:
    """Move the output head's parameters into their own optimizer group with `learning_rate`.

    The randomly initialised head has to travel far, while the pretrained adapters / encoder
    only need small, careful steps. Under DP-SGD with Adam every coordinate moves by about the
    learning rate per step, signal or noise, so large steps would wreck the pretrained
    features; in federated rounds each site takes only a few steps per round, and a slow head
    leaves the first rounds at the majority class. Returns how many tensors moved.
    """
    head = {id(p) for name, p in model.named_parameters()
            if any(part in HEAD_MODULES for part in name.split("."))}
    moved = 0
    for group in list(optimizer.param_groups):
        mine = [p for p in group["params"] if id(p) in head]
        if not mine or len(mine) == len(group["params"]):
            if mine:
                group["lr"] = learning_rate
                moved += len(mine)
            continue
        group["params"] = [p for p in group["params"] if id(p) not in head]
        optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": mine,
                                   "lr": learning_rate})
        moved += len(mine)
    if moved:
        log.info("the classification head (%d tensors) trains with learning rate %g", moved, learning_rate)
    return moved


class TrainingEngine:
    """Plain (non-private) training. Subclasses change how a gradient step is formed."""

    name = "plain"

    def __init__(self, max_grad_norm: float = 1.0, max_physical_batch_size: int | None = None):
        self.max_grad_norm = max_grad_norm
        self.max_physical_batch_size = max_physical_batch_size  # None: each logical batch in one pass

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, epochs: int) -> Prepared:
        if self.max_physical_batch_size and self.max_physical_batch_size < (loader.batch_size or 0):
            optimizer = AccumulatingOptimizer(optimizer)
        return Prepared(model, optimizer, loader, nn.CrossEntropyLoss())

    def begin_epoch(self, prepared: Prepared, epoch: int, seed: int) -> None:
        """Make the epoch's batch order a function of (seed, epoch), so a resumed run repeats it."""
        generator = getattr(prepared.loader, "generator", None) or getattr(prepared.loader.sampler, "generator", None)
        if generator is not None:
            generator.manual_seed(seed * 1_000_003 + epoch)

    @contextlib.contextmanager
    def physical_batches(self, prepared: Prepared) -> Iterator[Iterable]:
        if isinstance(prepared.optimizer, AccumulatingOptimizer):
            yield pieces(prepared.loader, self.max_physical_batch_size, prepared.optimizer)
        else:
            yield prepared.loader

    def loss_weight(self, prepared: Prepared) -> float:
        """What a physical batch's mean loss counts for in its logical batch's gradient."""
        return prepared.optimizer.share if isinstance(prepared.optimizer, AccumulatingOptimizer) else 1.0

    def before_step(self, prepared: Prepared) -> None:
        if not self.step_taken(prepared):
            return  # more pieces of this logical batch follow: clip their summed gradient once
        params = [p for p in prepared.model.parameters() if p.requires_grad and p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)

    def step_taken(self, prepared: Prepared) -> bool:
        """Whether the last optimizer.step() was a real (logical) step."""
        return prepared.optimizer.last_piece if isinstance(prepared.optimizer, AccumulatingOptimizer) else True

    def steps_per_epoch(self, loader: DataLoader) -> int:
        return len(loader)

    def after_step(self, steps: int) -> dict[str, float]:
        """Extra numbers for the progress bar (the private engine reports ε)."""
        return {}

    def stop_reason(self) -> str | None:
        """A reason to stop before the next step (the private engine: budget exhausted)."""
        return None

    def epoch_metrics(self) -> dict[str, Any]:
        return {}

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def write_artifacts(self, run_dir, result: "FitResult") -> list[str]:
        """Files this engine adds to the run directory (the private engine: privacy.json)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


@dataclass
class EpochRecord:
    epoch: int
    step: int
    train_loss: float
    val_accuracy: float
    val_macro_f1: float
    val_per_class_recall: dict[str, float]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FitResult:
    model: nn.Module  # the unwrapped model holding the best weights
    history: list[EpochRecord]
    steps: int
    best_epoch: int
    stopped_reason: str
    resumed_from_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "best_epoch": self.best_epoch,
            "stopped_reason": self.stopped_reason,
            "resumed_from_step": self.resumed_from_step,
            "epochs": [record.__dict__ for record in self.history],
        }


def evaluate(model: nn.Module, dataset: TensorDataset, label_names: list[str], batch_size: int,
             device: torch.device | str) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class recall on an encoded split."""
    was_training = model.training
    model.eval()
    predictions, targets = [], []
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=batch_size):
            batch = [tensor.to(device) for tensor in _trim(list(batch))]
            predictions.append(forward_logits(model, batch).argmax(dim=-1).cpu())
            targets.append(batch[-1].cpu())
    model.train(was_training)
    predicted = torch.cat(predictions).numpy()
    true = torch.cat(targets).numpy()
    classes = list(range(len(label_names)))
    recalls = recall_score(true, predicted, labels=classes, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(true, predicted)),
        "macro_f1": float(f1_score(true, predicted, labels=classes, average="macro", zero_division=0)),
        "per_class_recall": {label_names[i]: float(recalls[i]) for i in classes},
    }


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def _load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    parameters = dict(model.named_parameters())
    missing = [name for name in state if name not in parameters]
    if missing:
        raise CheckpointError(f"checkpoint does not fit this model (unknown parameters such as {missing[0]!r}); "
                              "it was written by another model or transfer mode")
    with torch.no_grad():
        for name, value in state.items():
            parameters[name].copy_(value.to(parameters[name].device))


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))


def fit(
    model: nn.Module,
    train_set: TensorDataset,
    validation_set: TensorDataset,
    label_names: list[str],
    config: TrainingConfig,
    *,
    seed: int,
    device: str = "cpu",
    engine: TrainingEngine | None = None,
    checkpoints: CheckpointStore | None = None,
    resume: bool = False,
    fingerprint: str = "",
    progress: bool = True,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> FitResult:
    """Fine-tune `model` on `train_set`; evaluate on `validation_set` after every epoch.

    Returns the model holding the best-validation-macro-F1 weights. With `checkpoints`, a
    checkpoint is written atomically after every epoch (and every
    `config.checkpoint_every_steps` steps); `resume=True` continues from the last one.
    """
    engine = engine or TrainingEngine(config.max_grad_norm, config.max_physical_batch_size)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    seed_everything(seed)
    model.to(device).train()
    optimizer = make_optimizer(model, config)
    if config.head_learning_rate is not None:
        give_head_its_learning_rate(optimizer, model, config.head_learning_rate)
    # items with augmentation copies (secure_ft.training.multiplicity) become adjacent rows of one batch; the
    # engines see that from the dataset: sampling, batch size and ε stay per example
    copies = copies_per_example(train_set)
    loader = DataLoader(train_set, batch_size=min(config.batch_size, len(train_set)), shuffle=True,
                        generator=torch.Generator().manual_seed(seed), drop_last=False,
                        collate_fn=collate_copies if copies > 1 else None)
    prepared = engine.attach(model, optimizer, loader, config.epochs)
    steps_per_epoch = max(1, engine.steps_per_epoch(prepared.loader))
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    warmup = math.ceil(config.warmup_ratio * total_steps)
    if config.lr_schedule == "constant":
        scheduler = get_constant_schedule_with_warmup(prepared.optimizer, warmup)
    else:
        scheduler = get_linear_schedule_with_warmup(prepared.optimizer, warmup, total_steps)

    state = {"epoch": 1, "batches_done": 0, "step": 0, "history": [], "best_f1": -1.0, "best_epoch": 0,
             "best_state": None, "epochs_without_gain": 0, "loss_sum": 0.0, "loss_count": 0}
    resumed_from = None
    if resume:
        state, resumed_from = _restore(checkpoints, engine, prepared, scheduler, fingerprint)

    def save_checkpoint() -> None:
        if checkpoints is None:
            return
        checkpoints.save({
            "format": CHECKPOINT_FORMAT,
            "fingerprint": fingerprint,
            "model": _trainable_state(engine.unwrap(prepared.model)),
            "optimizer": prepared.optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "engine": engine.state_dict(),
            "rng": _rng_state(),
            **{key: value for key, value in state.items()},
        })
        if on_checkpoint:
            on_checkpoint(state["step"])

    stopped = "completed all epochs"
    bar = tqdm(total=total_steps, initial=state["step"], desc="training", unit="step", disable=not progress,
               dynamic_ncols=True)
    finished = False
    while state["epoch"] <= config.epochs and not finished:
        epoch = state["epoch"]
        started = time.perf_counter()
        engine.begin_epoch(prepared, epoch, seed)
        with engine.physical_batches(prepared) as batches:
            for index, batch in enumerate(batches):
                if index < state["batches_done"]:
                    continue  # replaying a resumed epoch: these batches were already trained on
                reason = engine.stop_reason()
                if reason is not None:
                    stopped, finished = reason, True
                    break
                batch = [tensor.to(device) for tensor in _trim(list(batch))]
                if len(batch[-1]) > 0:
                    loss = prepared.criterion(forward_logits(prepared.model, batch), batch[-1])
                    weight = engine.loss_weight(prepared)
                    # the DP engines' loss objects only support backward(): scale only when accumulating
                    (loss if weight == 1.0 else loss * weight).backward()
                    state["loss_sum"] += float(loss.detach()) * len(batch[-1])
                    state["loss_count"] += len(batch[-1])
                engine.before_step(prepared)
                prepared.optimizer.step()
                prepared.optimizer.zero_grad(set_to_none=True)
                state["batches_done"] = index + 1
                if not engine.step_taken(prepared):
                    continue
                scheduler.step()
                state["step"] += 1
                extra = engine.after_step(state["step"])
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{state['loss_sum'] / max(1, state['loss_count']):.4f}",
                                **{k: f"{v:.3f}" for k, v in extra.items()})
                if config.checkpoint_every_steps and state["step"] % config.checkpoint_every_steps == 0:
                    save_checkpoint()
                if config.max_steps and state["step"] >= config.max_steps:
                    stopped, finished = f"reached max_steps={config.max_steps}", True
                    break
        record = _end_epoch(engine, prepared, validation_set, label_names, config, device, state, started)
        if on_epoch:
            on_epoch(record)
        summary = (f"epoch {epoch}: loss {record.train_loss:.4f}  val accuracy {record.val_accuracy:.4f}  "
                   f"val macro-F1 {record.val_macro_f1:.4f}"
                   + "".join(f"  {k} {v:.3f}" for k, v in record.extra.items() if isinstance(v, float)))
        if progress:
            bar.write(summary)
        else:  # a disabled bar still prints what it writes: without progress the line goes to the log only
            log.info(summary)
        if config.early_stopping_patience and state["epochs_without_gain"] >= config.early_stopping_patience:
            stopped, finished = f"early stopping: no validation macro-F1 gain for {state['epochs_without_gain']} epochs", True
        save_checkpoint()
    bar.close()

    final_model = engine.unwrap(prepared.model)
    if state["best_state"] is not None:
        _load_trainable_state(final_model, state["best_state"])
    final_model.eval()
    history = [EpochRecord(**record) for record in state["history"]]
    return FitResult(final_model, history, state["step"], state["best_epoch"], stopped, resumed_from)


def _end_epoch(engine, prepared, validation_set, label_names, config, device, state, started) -> EpochRecord:
    model = engine.unwrap(prepared.model)
    scores = evaluate(model, validation_set, label_names, config.eval_batch_size, device)
    record = EpochRecord(
        epoch=state["epoch"], step=state["step"],
        train_loss=state["loss_sum"] / max(1, state["loss_count"]),
        val_accuracy=scores["accuracy"], val_macro_f1=scores["macro_f1"],
        val_per_class_recall=scores["per_class_recall"], seconds=time.perf_counter() - started,
        extra=engine.epoch_metrics(),
    )
    state["history"].append(record.__dict__)
    if record.val_macro_f1 > state["best_f1"]:
        state.update(best_f1=record.val_macro_f1, best_epoch=record.epoch, best_state=_trainable_state(model),
                     epochs_without_gain=0)
    else:
        state["epochs_without_gain"] += 1
    state.update(epoch=state["epoch"] + 1, batches_done=0, loss_sum=0.0, loss_count=0)
    return record


def _restore(checkpoints, engine, prepared, scheduler, fingerprint):
    if checkpoints is None:
        raise CheckpointError("resume was requested but this run has no checkpoint folder")
    saved = checkpoints.load()
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{checkpoints.last_path}: checkpoint format {saved.get('format')} is not supported")
    if fingerprint and saved.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{checkpoints.last_path}: checkpoint was written for other data (fingerprint "
            f"{str(saved.get('fingerprint'))[:12]}… ≠ {fingerprint[:12]}…); resume with the same data or start a new run"
        )
    _load_trainable_state(engine.unwrap(prepared.model), saved["model"])
    prepared.optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    engine.load_state_dict(saved["engine"])
    _set_rng_state(saved["rng"])
    state = {key: saved[key] for key in ("epoch", "batches_done", "step", "history", "best_f1", "best_epoch",
                                         "best_state", "epochs_without_gain", "loss_sum", "loss_count")}
    log.info("resumed from %s at step %d (epoch %d)", checkpoints.last_path, state["step"], state["epoch"])
    return state, state["step"]
