"""What ``GET /model-card`` shows: the bundle's card and the evidence that let the model out."""

from __future__ import annotations

import json
from typing import Any

from secure_ft.records.policy import describe_policy
from secure_ft.serving.bundle_loader import VerifiedBundle


def read_model_card(bundle: VerifiedBundle, labels: list[str]) -> dict[str, Any]:
    """Card text, verdict summary, privacy guarantee and signer of a verified bundle.

    Built once at start-up from the verified snapshot's bytes (``README.md``, ``verdict.json``,
    ``audit_report.json``), never from the bundle folder; nothing here is computed from requests.
    """
    verdict = _json(bundle.snapshot.files.get("verdict.json"))
    report = _json(bundle.snapshot.files.get("audit_report.json"))
    guarantee = report.get("privacy_guarantee") or {}
    card = bundle.snapshot.files.get("README.md")
    return {
        "model_sha256": bundle.model_sha256,
        "labels": labels,
        "policy_name": bundle.policy_name,
        # the name alone proves nothing: the digest, and whether it is the shipped policy of that name
        "policy_sha256": bundle.policy_sha256,
        "policy": describe_policy(bundle.policy_name, bundle.policy_sha256),
        "release_policy": bundle.release,
        "verdict": {
            "passed": verdict.get("passed"),
            "outcome": verdict.get("outcome") or ("passed" if verdict.get("passed") is True else "blocked"),
            "timestamp": verdict.get("timestamp"),
            "audits": verdict.get("audits") or {},
            "warnings": verdict.get("warnings") or [],
        },
        "privacy": {
            "epsilon": guarantee.get("epsilon"),
            "delta": guarantee.get("delta"),
            "accountant": guarantee.get("accountant"),
        },
        "signature": {"public_key_sha256": bundle.public_key_sha256, "trusted_key": bundle.trusted_key},
        # the run config's card: statements (intended purpose, limitations, ...); human oversight is release_policy
        "technical_documentation": (report.get("technical_documentation") or {}).get("statements"),
        "card": card.decode("utf-8", errors="replace") if card is not None else None,
    }


def _json(data: bytes | None) -> dict[str, Any]:
    try:
        data = json.loads(data.decode("utf-8")) if data is not None else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
