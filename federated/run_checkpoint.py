"""The coordinator's checkpoint after every round: what `deploy launch --resume` continues from.

One file, ``<run_dir>/checkpoints/last.pt`` (`secure_ft.records.checkpoint.CheckpointStore`: written
to a temporary file and renamed, with a SHA-256 sidecar, loaded with ``weights_only=True``),
holding

* the round it was written after and the run's federation id (the sites key their
  odometers by it, so a resumed run is the same run to them);
* the global tensors after that round, and the best round's tensors;
* the round book (every round's entry, the initial evaluation, which sites were missing);
* the strategy's records (every site's outcome per round, with the DP sites' accountant
  inputs — the privacy histories ``privacy.json`` is built from — skipped rounds, metrics,
  bytes, node → site names) and, under central DP, the accountant's releases and the
  adaptive clipping norm;
* the ledger's head (lines, SHA-256 of the last line) when it was written, so the resumed
  run can say which ledger lines came after it.

Tensors are stored as torch tensors, every other record as one JSON string, so the file
loads without unpickling anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from federated.round_book import RoundBook
from federated.update_validation import SiteOutcome
from secure_ft.errors import CheckpointError
from secure_ft.records.checkpoint import CheckpointStore
from secure_ft.records.run_ledger import Ledger, _json_default

KIND = "secure-ft federated coordinator"
_GUARD_RECORDS = ("skipped_rounds", "train_metrics", "evaluate_metrics", "bytes_down", "bytes_up", "sampled")


@dataclass
class Resumed:
    """What a resumed run continues with."""

    round: int
    federation_id: str
    arrays: dict[str, np.ndarray]
    ledger_lines: int


def _tensors(arrays: dict[str, np.ndarray] | None) -> dict[str, torch.Tensor] | None:
    return None if arrays is None else {name: torch.from_numpy(np.array(value, copy=True))
                                        for name, value in arrays.items()}


def _arrays(tensors: dict[str, torch.Tensor] | None) -> dict[str, np.ndarray] | None:
    return None if tensors is None else {name: tensor.numpy() for name, tensor in tensors.items()}


def _int_keys(record: dict[str, Any]) -> dict[int, Any]:
    return {int(key): value for key, value in record.items()}


def save_checkpoint(run_dir: Path, *, server_round: int, federation_id: str, book: RoundBook, strategy,
                    central_strategy=None, accountant=None) -> Path:
    """Write the checkpoint after `server_round` (atomically; the previous one stays until the rename)."""
    records: dict[str, Any] = {
        "rounds": book.rounds,
        "initial": book.initial,
        "missing": book.missing,
        "best_round": book.best_round,
        "best_macro_f1": book.best_macro_f1,
    }
    if strategy is not None:
        records["outcomes"] = [outcome.to_dict() for outcome in strategy.outcomes]
        records["node_sites"] = strategy.node_sites
        records.update({name: getattr(strategy, name) for name in _GUARD_RECORDS})
        if hasattr(strategy, "sites"):  # rounds sent and signed statements: a resumed run checks the same gaps
            records["site_book"] = strategy.sites.state_dict()
    if accountant is not None:
        records["central_accountant"] = accountant.state_dict()
    if central_strategy is not None and hasattr(central_strategy, "clipping_norm"):
        records["central_clipping_norm"] = float(central_strategy.clipping_norm)
    lines, head = Ledger(run_dir).head()
    state = {
        "kind": KIND,
        "round": server_round,
        "federation_id": federation_id,
        "global": _tensors(book.final_arrays),
        "best": _tensors(book.best_arrays),
        "records": json.dumps(records, default=_json_default),
        "ledger_lines": lines,
        "ledger_head_sha256": head,
    }
    return CheckpointStore(Path(run_dir) / "checkpoints").save(state)


def load_checkpoint(run_dir: Path, *, book: RoundBook, strategy, central_strategy=None, accountant=None) -> Resumed:
    """Restore `book`, `strategy` (and the central-DP state) from the run's checkpoint."""
    store = CheckpointStore(Path(run_dir) / "checkpoints")
    state = store.load()
    if not isinstance(state, dict) or state.get("kind") != KIND:
        raise CheckpointError(f"{store.last_path}: not a federated coordinator's checkpoint; a central run "
                              "continues with `secure-ft run --resume RUN_DIR`")
    records = json.loads(state["records"])
    book.rounds = records["rounds"]
    book.initial = records["initial"]
    book.missing = _int_keys(records.get("missing", {}))
    book.best_round = int(records["best_round"])
    book.best_macro_f1 = float(records["best_macro_f1"])
    book.final_arrays = _arrays(state["global"])
    book.best_arrays = _arrays(state["best"])
    if strategy is not None:
        strategy.outcomes = [SiteOutcome(**outcome) for outcome in records.get("outcomes", [])]
        strategy.node_sites = _int_keys(records.get("node_sites", {}))
        for name in _GUARD_RECORDS:
            setattr(strategy, name, _int_keys(records.get(name, {})))
        if hasattr(strategy, "sites") and "site_book" in records:
            strategy.sites.load_state_dict(records["site_book"])
    if accountant is not None:
        if "central_accountant" not in records:
            raise CheckpointError(f"{store.last_path}: holds no central-DP accountant state, but the run uses "
                                  "central DP; it cannot be resumed")
        accountant.load_state_dict(records["central_accountant"])
    if central_strategy is not None and "central_clipping_norm" in records:
        central_strategy.clipping_norm = records["central_clipping_norm"]
    if book.final_arrays is None:
        raise CheckpointError(f"{store.last_path}: holds no global model; start a new run")
    return Resumed(int(state["round"]), str(state["federation_id"]), book.final_arrays, int(state["ledger_lines"]))


def has_checkpoint(run_dir: Path) -> bool:
    return CheckpointStore(Path(run_dir) / "checkpoints").exists()
