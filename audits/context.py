"""What an audit gets to look at: the trained model, the data splits, the config and the policy.

Audits read the trained model from its saved folder (never from the training code), so the
same audits apply to a central run, a federated run or a model handed in from elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from secure_ft.records.config import RunConfig
from secure_ft.records.data import DatasetSplits
from secure_ft.records.policy import Policy
from secure_ft.records.run_directory import RunDirectory


@dataclass
class AuditContext:
    run_dir: Path  # evidence files go here (audits/<name>/...)
    model_dir: Path  # trained model, save_pretrained layout (safetensors)
    splits: DatasetSplits  # train (members) / validation / test (held out)
    config: RunConfig
    policy: Policy
    device: str = "cpu"
    # False for a deployed federation: the training rows stayed at the sites, so the train split
    # here is not what the model trained on and cannot serve as membership-inference members
    members_available: bool = True

    def evidence_dir(self, audit_name: str) -> Path:
        folder = RunDirectory(self.run_dir).audit_evidence_dir(audit_name)
        folder.mkdir(parents=True, exist_ok=True)
        return folder
