"""The server's record of a federated run, one entry per round, and the best global model so far.

After every round Flower calls the strategy's ``evaluate_fn`` with the new global tensors;
`RoundBook.evaluate` is that function. It evaluates the global model on the server's
held-out validation split, keeps the tensors of the best round (by validation macro-F1, as a
central run keeps its best epoch), and writes the round's entry: server metrics, the
sites' aggregated and individual metrics, which sites were accepted, clipped, rejected or
failed (and why), which sampled sites never answered, whether the round was aggregated at
all, and the bytes exchanged. Each
entry is logged and appended to the run ledger as it happens.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, MetricRecord
from torch import nn
from torch.utils.data import TensorDataset

from federated.task import evaluate_model, load_arrays, record_to_arrays
from federated.update_validation import SiteOutcome
from secure_ft.records.config import RunConfig
from secure_ft.records.run_ledger import Ledger

log = logging.getLogger(__name__)


class RoundSource(Protocol):
    """What the server strategy (`UpdateGuard`, or the SecAgg+ strategy) records per round."""

    outcomes: list[SiteOutcome]
    skipped_rounds: dict[int, str]
    train_metrics: dict[int, dict[str, float]]
    evaluate_metrics: dict[int, dict[str, float]]
    bytes_down: dict[int, int]
    bytes_up: dict[int, int]
    sampled: dict[int, int]


@dataclass
class ServerEvaluator:
    """Evaluates global tensors on the server's held-out validation split."""

    model: nn.Module
    dataset: TensorDataset
    label_names: list[str]
    config: RunConfig
    device: str = "cpu"

    def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        load_arrays(self.model, arrays)
        return evaluate_model(self.model, self.dataset, self.label_names, self.config, self.device)


@dataclass
class RoundBook:
    evaluator: ServerEvaluator | None
    ledger: Ledger
    num_rounds: int
    source: RoundSource | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    initial: dict[str, Any] | None = None
    best_round: int = 0
    best_macro_f1: float = -1.0
    best_arrays: dict[str, np.ndarray] | None = None
    final_arrays: dict[str, np.ndarray] | None = None
    missing: dict[int, list[str]] = field(default_factory=dict)  # sampled sites that did not answer in time
    _started: float = field(default_factory=time.perf_counter)

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's ``evaluate_fn``: round 0 is the initial model, then one call per round."""
        tensors = record_to_arrays(arrays)
        scores = self.evaluator(tensors) if self.evaluator is not None else None
        if server_round == 0:
            self.initial = scores
            if scores:
                log.info("initial global model: validation accuracy %.4f, macro-F1 %.4f", scores["accuracy"],
                         scores["macro_f1"])
            self._started = time.perf_counter()
            return _metric_record(scores)
        self.final_arrays = {name: np.array(value, copy=True) for name, value in tensors.items()}
        if scores is None or scores["macro_f1"] >= self.best_macro_f1:  # ties: the later, more trained round
            self.best_round = server_round
            self.best_macro_f1 = scores["macro_f1"] if scores else self.best_macro_f1
            self.best_arrays = self.final_arrays
        entry = self._entry(server_round, scores)
        self.rounds.append(entry)
        self._log(entry)
        self.ledger.append("federated_round_done", **_ledger_view(entry))
        self._started = time.perf_counter()
        return _metric_record(scores)

    def _entry(self, server_round: int, scores: dict[str, Any] | None) -> dict[str, Any]:
        source = self.source
        sites = [outcome.to_dict() for outcome in (source.outcomes if source else []) if outcome.round == server_round]
        train_sites = [site for site in sites if site["phase"] == "train"]
        accepted = sum(site["status"] in ("accepted", "clipped") for site in train_sites)
        return {
            "round": server_round,
            "seconds": time.perf_counter() - self._started,
            "aggregated": source is None or (server_round not in source.skipped_rounds and accepted > 0),
            "skipped_reason": source.skipped_rounds.get(server_round) if source else None,
            "server_evaluation": scores,
            "federated_evaluation": source.evaluate_metrics.get(server_round) if source else None,
            "train": source.train_metrics.get(server_round) if source else None,
            "sites_sampled": source.sampled.get(server_round) if source else None,
            "sites_accepted": accepted,
            "sites_missing": list(self.missing.get(server_round, [])),
            "sites": sites,
            "bytes_down": source.bytes_down.get(server_round) if source else None,
            "bytes_up": source.bytes_up.get(server_round) if source else None,
        }

    def _log(self, entry: dict[str, Any]) -> None:
        scores = entry["server_evaluation"]
        head = f"round {entry['round']}/{self.num_rounds}"
        if scores:
            head += f": validation accuracy {scores['accuracy']:.4f}, macro-F1 {scores['macro_f1']:.4f}"
        if not entry["aggregated"]:
            head += f" — not aggregated ({entry['skipped_reason']})"
        parts = []
        for site in entry["sites"]:
            if site["phase"] != "train":
                continue
            metrics = site["metrics"]
            detail = f"{site['site']} {site['status']}"
            if "train-loss" in metrics:
                detail += f" loss {metrics['train-loss']:.4f}"
            if "epsilon" in metrics:
                detail += f" ε {metrics['epsilon']:.3f}"
            if site["update_norm"] is not None:
                detail += f" ‖Δ‖ {site['update_norm']:.3g}"
            if site["reason"] and site["status"] != "accepted":
                detail += f" ({site['reason']})"
            parts.append(detail)
        parts += [f"{site} missing (no answer)" for site in entry["sites_missing"]]
        log.info("%s | %s | %.1fs", head, "; ".join(parts) or "no site results", entry["seconds"])


def _metric_record(scores: dict[str, Any] | None) -> MetricRecord | None:
    if not scores:
        return None
    return MetricRecord({"accuracy": float(scores["accuracy"]), "macro-f1": float(scores["macro_f1"])})


def _ledger_view(entry: dict[str, Any]) -> dict[str, Any]:
    """The round as the ledger keeps it: outcomes and headline numbers, no per-class detail."""
    scores = entry["server_evaluation"] or {}
    return {
        "round": entry["round"],
        "aggregated": entry["aggregated"],
        "skipped_reason": entry["skipped_reason"],
        "val_accuracy": scores.get("accuracy"),
        "val_macro_f1": scores.get("macro_f1"),
        "sites_missing": entry.get("sites_missing", []),
        "sites": [{key: site[key] for key in ("site", "phase", "status", "reason")}
                  | ({"epsilon": site["metrics"]["epsilon"]} if "epsilon" in site["metrics"] else {})
                  for site in entry["sites"]],
    }
