"""The run directory: one folder per run, and the one module that knows its layout.

Everything a run leaves behind lives in its run directory; every other module asks this one
for a path or a typed record instead of spelling a file name::

    RUN_DIR/
      config.yaml          the effective run config
      data.json            split sizes, labels, dropped classes, dataset fingerprint
      metrics.json         per-epoch (or per-round) validation metrics, steps, stop reason
      model/               save_pretrained folder (safetensors) + model_hash.json
      checkpoints/         last.pt (+ .sha256) for resuming
      cache/               derived data worth keeping for a resume (the probe's sentence embeddings,
                           `secure_ft.text.embedding_cache`); as private as the training data, never elsewhere
      transfer.json        what trained (model.transfer resolved, `secure_ft.training.transfer_choice`) and why
      ledger.jsonl         the hash-chained record of every step (`secure_ft.records.run_ledger`)
      privacy.json         DP runs: the guarantee, enough to recompute ε
      privacy_ledger.json  DP runs: the accountant's history (`secure_ft.privacy.accountant_history`)
      federated.json       federated runs: sites, strategy, validation, DP, SecAgg+
      sites/NAME/          federated simulations: each site's own privacy records
      audits/NAME.json     each audit's result; audits/NAME/ its evidence files
      policy.yaml          the policy the gate applied
      verdict.json         the gate's verdict, for people to read (never trusted)
      verdict.dsse.json    the signed verdict: an in-toto attestation over the model and evidence
      provenance.json      what the model was built from: data, base model, packages (`secure_ft.release.provenance`)
      audit_report.json    the compliance report, and audit_report.html its rendering
      approvals/           signed human approvals of the verdict (`secure_ft.release.approvals`)

Central, distributed and federated runs all create and start their run directory here
(`new_run_dir`, `RunDirectory.start`), and every JSON record is written atomically
(`secure_ft.records.atomic_files`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secure_ft.errors import CheckpointError, RunDirectoryError
from secure_ft.records.atomic_files import atomic_write_json, atomic_write_text
from secure_ft.records.run_ledger import RUN_LEDGER_FILE, Ledger

if TYPE_CHECKING:
    from secure_ft.records.config import RunConfig
    from secure_ft.records.data import DatasetSplits

CONFIG_FILE = "config.yaml"
DATA_FILE = "data.json"
METRICS_FILE = "metrics.json"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
CACHE_DIR = "cache"
TRANSFER_FILE = "transfer.json"
PRIVACY_FILE = "privacy.json"
ACCOUNTANT_HISTORY_FILE = "privacy_ledger.json"
FEDERATED_FILE = "federated.json"
SITES_DIR = "sites"
AUDITS_DIR = "audits"
POLICY_FILE = "policy.yaml"
VERDICT_FILE = "verdict.json"
VERDICT_ATTESTATION_FILE = "verdict.dsse.json"
REPORT_JSON_FILE = "audit_report.json"
REPORT_HTML_FILE = "audit_report.html"
APPROVALS_DIR = "approvals"
PROVENANCE_FILE = "provenance.json"
RELEASE_POLICY_FILE = "release-policy.dsse.json"


def new_run_dir(output_dir: str | Path) -> Path:
    """A fresh, uniquely named run directory under `output_dir`."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = Path(output_dir) / f"run-{stamp}-{secrets.token_hex(3)}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


@dataclass(frozen=True)
class RunDirectory:
    """Paths and typed records of one run directory."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # -- paths ------------------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def cache_dir(self) -> Path:
        """Derived data (embeddings) of this run; caches never live outside a run directory."""
        return self.path / CACHE_DIR

    @property
    def privacy_file(self) -> Path:
        return self.path / PRIVACY_FILE

    @property
    def verdict_file(self) -> Path:
        return self.path / VERDICT_FILE

    @property
    def policy_file(self) -> Path:
        return self.path / POLICY_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    def audit_result_file(self, audit: str) -> Path:
        return self.path / AUDITS_DIR / f"{audit}.json"

    def audit_evidence_dir(self, audit: str) -> Path:
        return self.path / AUDITS_DIR / audit

    def site(self, name: str) -> "RunDirectory":
        """A federated site's own folder inside the run (simulations keep site records here)."""
        return RunDirectory(self.path / SITES_DIR / name)

    # -- starting a run ---------------------------------------------------------------------

    def holds_run(self) -> bool:
        """True when a model or a checkpoint is already here."""
        from secure_ft.records.checkpoint import CheckpointStore

        return self.model_dir.exists() or CheckpointStore(self.checkpoint_dir).exists()

    def start(self, config: "RunConfig", splits: "DatasetSplits") -> Ledger:
        """Claim this folder for a new run: write the config, open the ledger, record the data.

        Refuses a folder that already holds a run (resuming is `secure-ft run --resume`).
        """
    
        if self.holds_run():
            raise CheckpointError(f"{self.path}: already holds a run; use --resume to continue it or choose a new folder")
        self.path.mkdir(parents=True, exist_ok=True)
        ledger = Ledger(self.path)
        config_text = config.to_yaml()
        atomic_write_text(self.config_file, config_text)
        ledger.append("config_loaded", config_sha256=hashlib.sha256(config_text.encode()).hexdigest(),
                      source=str(config.source_path) if config.source_path else "built-in default")
        ledger.append("data_fingerprinted", fingerprint=splits.fingerprint, rows=splits.summary()["rows"],
                      dropped_classes=splits.dropped_classes)
        return ledger

    # -- records ----------------------------------------------------------------------------

    def read_config(self) -> "RunConfig":
        """The run's saved config; a `CheckpointError` when the folder is not a run directory."""
        from secure_ft.records.config import load_config

        if not self.config_file.is_file():
            raise CheckpointError(f"{self.path}: not a run directory (no {CONFIG_FILE}); give the folder of an "
                                  "earlier run")
        return load_config(self.config_file)

    def write_record(self, name: str, payload: Any) -> Path:
        """Write one JSON record (`DATA_FILE`, `METRICS_FILE`, ...) atomically."""
        return atomic_write_json(self.path / name, payload)

    def read_record(self, name: str) -> dict[str, Any] | None:
        """One JSON record as written, or None when the run has none."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RunDirectoryError(f"{path}: not valid JSON ({error}); the file was damaged or edited by hand, "
                                    "re-run the step that writes it") from None
        if not isinstance(payload, dict):
            raise RunDirectoryError(f"{path}: expected a JSON object, got {type(payload).__name__}")
        return payload

    def write_data_summary(self, summary: dict[str, Any]) -> Path:
        return self.write_record(DATA_FILE, summary)

    def read_data_summary(self) -> dict[str, Any] | None:
        return self.read_record(DATA_FILE)

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        return self.write_record(METRICS_FILE, metrics)

    def read_metrics(self) -> dict[str, Any] | None:
        return self.read_record(METRICS_FILE)

    def write_privacy(self, guarantee: dict[str, Any]) -> Path:
        return self.write_record(PRIVACY_FILE, guarantee)

    def read_privacy(self) -> dict[str, Any] | None:
        return self.read_record(PRIVACY_FILE)

    def write_transfer_choice(self, choice: dict[str, Any]) -> Path:
        return self.write_record(TRANSFER_FILE, choice)

    def read_transfer_choice(self) -> dict[str, Any] | None:
        return self.read_record(TRANSFER_FILE)

    def write_federation(self, federation: dict[str, Any]) -> Path:
        return self.write_record(FEDERATED_FILE, federation)

    def read_federation(self) -> dict[str, Any] | None:
        return self.read_record(FEDERATED_FILE)

    def is_deployed_federation(self) -> bool:
        """True when real sites trained this run on rows that never left them (`federated.json` mode)."""
        federation = self.read_federation()
        return federation is not None and federation.get("mode") == "deployment"

    def write_verdict(self, verdict: dict[str, Any]) -> Path:
        return self.write_record(VERDICT_FILE, verdict)

    def read_verdict(self) -> dict[str, Any] | None:
        return self.read_record(VERDICT_FILE)

    def write_audit_result(self, audit: str, result: dict[str, Any]) -> Path:
        return atomic_write_json(self.audit_result_file(audit), result)
