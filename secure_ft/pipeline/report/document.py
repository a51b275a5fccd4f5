"""The report as data: one JSON document with a versioned schema, built from a run directory.

Everything the HTML shows comes from this document, so the JSON is the record an auditor
files and the HTML is only a view of it. Top-level keys (schema version 1.0)::

    schema_version      "1.0"; readers refuse a major version they do not know
    kind                "secure-ft audit report"
    generated_at        UTC ISO 8601
    verdict             Verdict.to_dict(): outcome (passed | blocked | needs_review), passed, reasons,
                        review items, warnings, model and policy hashes
    run                 identity: run name, data summary + fingerprint, model (hash, base model,
                        transfer), seed, effective config, policy, library versions, platform,
                        ledger (lines, verified)
    training            metrics.json (per-epoch validation metrics, majority baseline) or null
    privacy_guarantee   privacy.json (ε, δ, accountant, noise, clipping, sampling, steps, ε history)
                        or null for a non-private run
    provenance          provenance.json (SLSA-style resource descriptors: data, base model, packages,
                        secure-ft version and revision) or null
    technical_documentation
                        the run config's card: statements (intended purpose, out-of-scope uses, known
                        limitations, de-identification, data provenance) and where each came from, the
                        ones the policy requires, and human oversight: the signed approvals in the run
                        directory (fingerprint, decision, time, comment) or "none yet"
                        (`secure_ft.records.technical_documentation`)
    audits              {name: AuditResult.to_dict()} for every audit that ran
    explanations        failed_checks (audit, check, what it measures and the next step),
                        interval_warnings (passes whose interval contains the threshold) and
                        policy_warnings (judgement keys the policy file omits)
    examples_included   whether report.include_examples allowed text from the data

Text from the data (training or test examples, adversarial examples) is withheld unless
``report.include_examples`` is true: every string under a metric field named like ``text``,
``texts`` or ``examples`` is replaced by a marker (numbers there, such as ``num_examples``, stay). Audits keep such text in separate evidence files.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from audits.gate import Verdict
from audits.result import AuditResult
from secure_ft.errors import BundleError
from secure_ft.records.config import RunConfig
from secure_ft.records.model_identity import HASH_FILE, model_digest
from secure_ft.records.policy import Policy, omitted_key_warnings
from secure_ft.records.run_directory import (DATA_FILE, METRICS_FILE, MODEL_DIR, POLICY_FILE, PRIVACY_FILE,
                                             PROVENANCE_FILE, TRANSFER_FILE)
from secure_ft.records.run_ledger import verify_ledger
from secure_ft.release.human_oversight import documentation_section
from secure_ft.release.verdict_explanations import failure_explanations, interval_warnings

REPORT_SCHEMA_VERSION = "1.0"
REPORT_KIND = "secure-ft audit report"
WITHHELD = "[withheld: report.include_examples is false]"

# libraries whose versions decide what a run computed
LIBRARIES = ("secure-ft", "torch", "transformers", "peft", "opacus", "flwr", "textattack", "fairlearn",
             "datasets", "scikit-learn", "numpy", "pandas", "safetensors", "cryptography")
# metric keys that may carry text from the data
_TEXT_KEYS = ("text", "texts", "example", "examples", "sentence", "sentences")


def build_report(run_dir: str | os.PathLike[str], results: list[AuditResult], verdict: Verdict,
                 config: RunConfig, signer: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report document of one run (see the module docstring for its keys)."""
    run_dir = Path(run_dir)
    include = bool(config.report.include_examples)
    policy_summary = _policy_summary(run_dir, verdict)
    audits = {}
    for result in results:
        raw = result.to_dict()
        audits[result.name] = raw if include else withhold_text(raw)
    return json_safe({
        "schema_version": REPORT_SCHEMA_VERSION,
        "kind": REPORT_KIND,
        "generated_at": datetime.now(timezone.utc).isoformat(),
        "verdict": verdict.to_dict(),
        "verdict_signer": signer,  # the gate key that signs verdict.dsse.json (which also covers this report)
        "run": run_identity(run_dir, verdict, config, policy_summary),
        "training": read_json(run_dir / METRICS_FILE),
        "privacy_guarantee": read_json(run_dir / PRIVACY_FILE),
        "provenance": read_json(run_dir / PROVENANCE_FILE),
        "technical_documentation": documentation_section(config, run_dir,
                                                         policy_summary.get("required_card_fields")),
        "audits": audits,
        "explanations": verdict_explanations(audits, policy_summary),
        "examples_included": include,
    })


def json_safe(value: Any) -> Any:
    """`value` with NaN / infinity as null, so the file is strict JSON any reader accepts."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy / torch scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def withhold_text(value: Any) -> Any:
    """A copy of `value` with the text under every field named like text/examples replaced by a marker.

    Redaction acts on what a value holds, not on its key's name: under such a field every
    string (and only strings) is withheld, so counts such as ``num_examples`` or an example's
    label index stay numbers.
    """
    if isinstance(value, dict):
        return {key: _withhold_strings(item) if _is_text_key(key) else withhold_text(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [withhold_text(item) for item in value]
    return value


def _withhold_strings(value: Any) -> Any:
    """`value` with every string in it replaced by the marker; numbers, booleans and nulls kept."""
    if isinstance(value, str):
        return WITHHELD
    if isinstance(value, dict):
        return {key: _withhold_strings(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_withhold_strings(item) for item in value]
    return value


def _is_text_key(key: Any) -> bool:
    name = str(key).lower()
    return any(name == word or name.endswith("_" + word) for word in _TEXT_KEYS)


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when the file is absent."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        return {"error": f"{path.name} is unreadable: {error}"}


def run_identity(run_dir: Path, verdict: Verdict, config: RunConfig,
                 policy_summary: dict[str, Any] | None = None) -> dict[str, Any]:
    data = read_json(run_dir / DATA_FILE) or {}
    choice = read_json(run_dir / TRANSFER_FILE) or {}  # what `transfer: auto` resolved to, and why
    model_dir = run_dir / MODEL_DIR
    current_hash = model_digest(model_dir) if (model_dir / "config.json").is_file() else None
    return {
        "name": run_dir.name,
        "data": data,
        "model": {
            "sha256": current_hash,
            "audited_sha256": verdict.model_sha256,
            "matches_verdict": current_hash == verdict.model_sha256,
            "hash_recorded_at_save": (read_json(model_dir / HASH_FILE) or {}).get("sha256"),
            "base_model": config.model.name_or_path,
            "base_model_revision": config.model.revision,
            "transfer": choice.get("transfer", config.model.transfer),
            "transfer_reason": choice.get("reason"),
            "hyperparameters": choice.get("hyperparameters"),
            "max_length": config.model.max_length,
            "labels": data.get("labels"),
            **_encoder_backend(model_dir),
        },
        "seed": config.seed,
        "mode": _training_mode(run_dir, config),
        "config": config.model_dump(mode="json"),
        "policy": policy_summary if policy_summary is not None else _policy_summary(run_dir, verdict),
        "library_versions": library_versions(),
        "platform": machine_identity(),
        "ledger": _ledger_state(run_dir),
    }


def _training_mode(run_dir: Path, config: RunConfig) -> str:
    privacy = read_json(run_dir / PRIVACY_FILE) or {}
    if getattr(config, "mode", None) == "federated" or privacy.get("sites") or privacy.get("central"):
        site_dp = bool(privacy.get("sites"))
        central_dp = bool(privacy.get("central"))
        kinds = [kind for kind, on in (("sample-level DP on each site", site_dp), ("central DP", central_dp)) if on]
        return "federated" + (f", {' and '.join(kinds)}" if kinds else ", not private")
    return "central, differentially private" if config.privacy.mode == "dp" else "central, not private"


def _policy_summary(run_dir: Path, verdict: Verdict) -> dict[str, Any]:
    summary: dict[str, Any] = {"name": verdict.policy_name, "sha256": verdict.policy_sha256}
    path = run_dir / POLICY_FILE
    if path.is_file():
        try:
            summary["content"] = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            summary["content"] = None
    content = summary.get("content")
    if isinstance(content, dict):
        try:
            policy = Policy.model_validate(content)
        except ValidationError:
            return summary
        summary["required_audits"] = list(policy.required_audits)
        summary["required_card_fields"] = list(policy.documentation.required_card_fields)
        # keys the file leaves out whose default decides how checks are judged (CI bound, budget check)
        summary["warnings"] = omitted_key_warnings(content, policy)
    return summary


def verdict_explanations(audits: dict[str, Any], policy_summary: dict[str, Any]) -> dict[str, Any]:
    """What each failed check means and what to do next, passes the data cannot tell from failures,
    and the policy's omitted judgement keys (`secure_ft.release.verdict_explanations`)."""
    required = policy_summary.get("required_audits") or list(audits)
    return {"failed_checks": failure_explanations(audits, required),
            "interval_warnings": interval_warnings(audits),
            "policy_warnings": policy_summary.get("warnings") or []}


def _ledger_state(run_dir: Path) -> dict[str, Any]:
    try:
        return {"lines": verify_ledger(run_dir), "verified": True, "problem": None}
    except BundleError as error:
        return {"lines": None, "verified": False, "problem": str(error)}


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_identity() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "system": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python_implementation": platform.python_implementation(),
    }


def _encoder_backend(model_dir: Path) -> dict[str, Any]:
    """What runs the model's encoder, read from the model folder itself (its ``encoder_onnx/`` graph or none)."""
    from secure_ft.errors import ModelError
    from secure_ft.text.onnx_encoder import describe_backend

    try:
        backend = describe_backend(model_dir)
    except (ModelError, OSError) as error:
        return {"encoder_backend": f"unreadable ({error})"}
    return {"encoder_backend": backend["encoder_backend"], "encoder_quantize": backend["quantize"]}
