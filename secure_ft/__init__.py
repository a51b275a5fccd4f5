"""secure-ft: fine-tune text classifiers on sensitive data and ship them only with evidence.

A run fine-tunes a pretrained encoder centrally under differential privacy (Opacus) or across
sites with federated learning (Flower); audits then measure adversarial robustness
(TextAttack), group fairness (Fairlearn) and privacy (the ε spent plus a membership-inference
attack); a gate compares the results with a written policy, and only a passing model is
exported as a signed bundle. Every step is recorded in the run's hash-chained ledger and
summarised in a compliance report.

The public surface is what this module exports and the `secure-ft` command; everything else
may change.

>>> from secure_ft import RunConfig, run_pipeline          # doctest: +SKIP
>>> outcome = run_pipeline(RunConfig(), "runs")            # doctest: +SKIP
>>> outcome.verdict.passed, outcome.bundle                 # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "RunConfig": "secure_ft.records.config",
    "load_config": "secure_ft.records.config",
    "load_splits": "secure_ft.records.data",
    "DatasetSplits": "secure_ft.records.data",
    "train_run": "secure_ft.training.central_run",
    "TrainedRun": "secure_ft.training.central_run",
    "run_pipeline": "secure_ft.pipeline.main_job",
    "Policy": "secure_ft.records.policy",
    "load_policy": "secure_ft.records.policy",
    "AuditResult": "audits.result",
    "Verdict": "audits.gate",
    "export_bundle": "secure_ft.release.export",
    "verify_bundle": "secure_ft.release.export",
    "Ledger": "secure_ft.records.run_ledger",
    "verify_ledger": "secure_ft.records.run_ledger",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    # lazy: `import secure_ft` stays cheap; torch and friends load on first use
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'secure_ft' has no attribute {name!r}")
