"""Human oversight of a run, and the report's ``technical_documentation`` section.

Human oversight is never typed into the config: it is the signed approvals of the run
(`secure_ft.release.approvals`), listed with their key fingerprints and comments, or "none yet".
The section joins them to the ``card:`` statements of `secure_ft.records.technical_documentation`.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

from secure_ft.records.config import RunConfig
from secure_ft.records.policy import CARD_FIELDS
from secure_ft.records.technical_documentation import builtin_card, with_builtin_card

NO_APPROVALS = ("none yet: no signed approval of this run's verdict exists (`secure-ft approve RUN_DIR --key KEY "
                "--comment TEXT` records one; the release policy decides at export whether it counts)")


def human_oversight(run_dir: str | Path) -> dict[str, Any]:
    """The signed approvals recorded in a run directory or bundle, as listed (whether they count is the release policy's).

    Each entry carries the approver's key fingerprint, decision, time and comment from the
    approval's signed statement; the signature itself is checked by `secure_ft.release.release_check`
    against the release policy's approvers at export, so this listing (``signatures_checked: false``)
    claims no more than what the files say; the bundle's model card lists the approvals that counted.
    """
    from secure_ft.release.approvals import read_approvals

    approvals = []
    for approval in read_approvals(Path(run_dir)):
        predicate = _unverified_predicate(approval.envelope)
        approver = predicate.get("approver") or {}
        approvals.append({"file": approval.file, "fingerprint": approver.get("public_key_sha256") or approval.keyid,
                          "decision": predicate.get("decision"), "time": predicate.get("time"),
                          "comment": predicate.get("comment"), "acknowledged": predicate.get("acknowledged") or []})
    return {"approvals": approvals, "statement": None if approvals else NO_APPROVALS,
            "signatures_checked": False}


def _unverified_predicate(envelope: dict) -> dict:
    """The predicate an approval envelope carries, read without checking its signature (listing only)."""
    try:
        statement = json.loads(base64.b64decode(envelope.get("payload") or "", validate=True).decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError, AttributeError):
        return {}
    predicate = statement.get("predicate") if isinstance(statement, dict) else None
    return predicate if isinstance(predicate, dict) else {}


def documentation_section(config: RunConfig, run_dir: str | Path | None = None,
                          required: list[str] | None = None) -> dict[str, Any]:
    """The report's ``technical_documentation``: the card statements, the ones the policy requires, human oversight."""
    card = with_builtin_card(config).card
    shipped = builtin_card(config.data.source)
    statements = {name: getattr(card, name) for name in CARD_FIELDS}
    return {
        "statements": statements,
        "source": {name: ("config" if getattr(config.card, name) is not None else
                          f"shipped with {config.data.source}" if name in shipped else None) for name in CARD_FIELDS},
        "required_by_policy": list(required or []),
        "human_oversight": (human_oversight(run_dir) if run_dir is not None else
                            {"approvals": [], "statement": NO_APPROVALS, "signatures_checked": False}),
    }
