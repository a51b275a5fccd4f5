"""Checkpoint and resume of a robustness audit: one JSON line per finished attack.

A long audit (many examples, large budgets) that is interrupted should not start over. Each
finished (recipe, example) record is appended to a progress file in the audit's evidence
folder as soon as it arrives; the first line is a key over everything that decides the
outcomes (model hash, the sampled examples, the attack settings, the seed). A later run with
the same key picks up the records and attacks only what is missing; any other key starts
afresh. The file holds example text like the evidence CSV beside it, and is removed once the
CSV is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from secure_ft.records.atomic_files import atomic_write_text

log = logging.getLogger(__name__)

PROGRESS_FILE = ".progress.jsonl"


def run_key(model_hash: str, examples: list, settings: dict, max_length: int, seed: int) -> str:
    """SHA-256 over what decides each attack's outcome (workers, resume, paths excluded)."""
    decisive = {k: v for k, v in settings.items() if k not in ("workers", "resume", "resources_dir")}
    payload = {
        "model": model_hash,
        "examples": [[e.index, e.row, e.label, hashlib.sha256(e.text.encode()).hexdigest()] for e in examples],
        "settings": decisive,
        "max_length": max_length,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class ProgressStore:
    """Append-only record log for one audit run, keyed by :func:`run_key`."""

    def __init__(self, folder: Path, key: str, resume: bool):
        self.path = Path(folder) / PROGRESS_FILE
        self.key = key
        self.records: dict[tuple[str, int], dict] = {}
        if resume:
            self.records = self._load()
        if self.records:
            log.info("robustness: resuming, %d attacks already done", len(self.records))
        # rewrite cleanly: drops a line cut short by an interruption, or another run's records
        lines = [json.dumps({"key": key}), *(json.dumps(record) for record in self.records.values())]
        atomic_write_text(self.path, "\n".join(lines) + "\n")

    def _load(self) -> dict[tuple[str, int], dict]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return {}
        try:
            header = json.loads(lines[0]) if lines else {}
        except ValueError:
            return {}
        if header.get("key") != self.key:
            return {}
        records = {}
        for line in lines[1:]:
            try:
                record = json.loads(line)
            except ValueError:
                break  # a line cut short by the interruption; everything after it is redone
            records[(record["recipe"], int(record["example"]))] = record
        return records

    def done(self, recipe: str, example: int) -> bool:
        return (recipe, example) in self.records

    def add(self, record: dict) -> None:
        self.records[(record["recipe"], int(record["example"]))] = record
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
