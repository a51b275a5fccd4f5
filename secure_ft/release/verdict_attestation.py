"""The signed verdict: what the gate decided, bound to everything it was decided from.

The gate's `Verdict` alone is a JSON file anyone who can write to the run directory could
edit. What export, verification and serving trust instead is its *attestation*: an in-toto
Statement (`secure_ft.release.attestation`) whose subjects are every file of the model folder and
whose predicate binds the verdict to

* the policy file's SHA-256,
* the SHA-256 of each audit result the verdict was reached from (``audits/NAME.json``),
* the SHA-256 of ``privacy.json``, the run config, ``verdict.json`` and the report,
* the run ledger's head (line count and hash) when the gate ran,
* what the model was built from (``provenance.json``, `secure_ft.release.provenance`), inline and by digest,

signed with the gate's key (`secure_ft.release.keys`) in a DSSE envelope, ``verdict.dsse.json``.
`check_run_attestation` re-derives everything it can: the signature against trusted keys,
the model folder now, each bound file now, the verdict recomputed from the signed results
and policy, and the ledger against its signed head, whose next ``verdict`` event must name
this attestation.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from audits.gate import Verdict, decide, same_decision
from audits.result import AuditResult
from secure_ft.errors import BundleError, ExportRefused, PolicyError
from secure_ft.records.policy import describe_policy, load_policy
from secure_ft.records.run_directory import (AUDITS_DIR, CONFIG_FILE, MODEL_DIR, POLICY_FILE, PRIVACY_FILE,
                                     PROVENANCE_FILE, REPORT_HTML_FILE, REPORT_JSON_FILE, VERDICT_ATTESTATION_FILE,
                                     VERDICT_FILE)
from secure_ft.records.run_ledger import Ledger, verify_ledger
from secure_ft.release.attestation import (check_model_matches, model_statement, read_envelope, sign_statement,
                                   statement_model_digest, verify_envelope, write_envelope)
from secure_ft.release.keys import public_key_fingerprint

PREDICATE_VERSION = 1


def file_digest(path: Path) -> str | None:
    """SHA-256 of a file's bytes, or None when it does not exist."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def payload_digest(envelope: dict) -> str:
    """The digest that names an attestation (of its signed payload's bytes) in the ledger."""
    return hashlib.sha256(envelope["payload"].encode("ascii")).hexdigest()


def attest_verdict(folder: Path, verdict: Verdict, audit_names: list[str], private_key, key_source: str) -> dict:
    """Sign `verdict` over the model and evidence in `folder` (a run directory); returns the envelope.

    The ledger's head is taken now: the caller appends the ``verdict`` event naming this
    attestation right after (see `record_attestation`).
    """
    folder = Path(folder)
    lines, head = Ledger(folder).head()
    predicate = {
        "version": PREDICATE_VERSION,
        "verdict": verdict.to_dict(),
        "policy": {"name": verdict.policy_name, "file": POLICY_FILE, "sha256": verdict.policy_sha256},
        "audit_results": {name: {"file": f"{AUDITS_DIR}/{name}.json",
                                 "sha256": file_digest(folder / AUDITS_DIR / f"{name}.json")}
                          for name in audit_names},
        "privacy": {"file": PRIVACY_FILE, "sha256": file_digest(folder / PRIVACY_FILE)},
        "config": {"file": CONFIG_FILE, "sha256": file_digest(folder / CONFIG_FILE)},
        # the documents people read travel in the bundle: bound too, so none can be rewritten before export
        "documents": {name: {"file": name, "sha256": file_digest(folder / name)}
                      for name in (VERDICT_FILE, REPORT_JSON_FILE, REPORT_HTML_FILE)},
        "ledger": {"lines": lines, "head_sha256": head},
        "signer": {"public_key_sha256": public_key_fingerprint(private_key.public_key()), "key_source": key_source},
    }
    provenance = folder / PROVENANCE_FILE
    if provenance.is_file():  # what the model was built from (`secure_ft.release.provenance`), inline and bound by digest
        predicate["provenance"] = {"file": PROVENANCE_FILE, "sha256": file_digest(provenance),
                                   "descriptors": json.loads(provenance.read_text(encoding="utf-8"))}
    statement = model_statement(folder / MODEL_DIR, predicate)
    envelope = sign_statement(statement, private_key)
    write_envelope(folder / VERDICT_ATTESTATION_FILE, envelope)
    return envelope


def record_attestation(folder: Path, verdict: Verdict, envelope: dict) -> None:
    """The ledger event that closes the gate: the verdict and the attestation's digest."""
    Ledger(folder).append("verdict", passed=verdict.passed, outcome=verdict.outcome, reasons=verdict.reasons,
                          review=verdict.review, model_sha256=verdict.model_sha256,
                          attestation_sha256=payload_digest(envelope))


@dataclass
class AttestedVerdict:
    """A verdict whose signature, model, evidence and ledger were checked."""

    verdict: Verdict
    statement: dict
    signer_sha256: str  # the fingerprint of the key whose signature verified
    ledger_lines: int
    ledger_head_sha256: str
    attestation_sha256: str = ""  # `payload_digest` of the envelope: what approvals name


def check_run_attestation(folder: Path, trusted_keys: list, *, require_pass: bool = True) -> AttestedVerdict:
    """Check the signed verdict in `folder` (a run directory or a bundle) against the folder now.

    Raises
    ------
    BundleError
        Not signed by a trusted key, or the model, policy, an audit result, privacy.json, the
        config or the ledger is not what was signed (each message names the file).
    ExportRefused
        Everything checks out and the signed verdict says the policy was not met.
    """
    folder = Path(folder)
    path = folder / VERDICT_ATTESTATION_FILE
    if not path.is_file():
        raise BundleError(f"{path}: no signed verdict; run the audits and the gate first (`secure-ft run` or "
                          "`secure-ft audit`) — an unsigned verdict.json is never trusted")
    envelope = read_envelope(path)
    statement = verify_envelope(envelope, trusted_keys, source=str(path))
    predicate = statement.get("predicate") or {}
    try:
        verdict = Verdict.from_dict(predicate["verdict"])
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"{path}: the signed predicate holds no readable verdict ({error})") from None
    check_model_matches(statement, folder / MODEL_DIR)
    if statement_model_digest(statement) != verdict.model_sha256:
        raise BundleError(f"{path}: the signed verdict names another model than the signed subjects")
    _check_bound_files(folder, predicate, path)
    _check_evidence_digests(folder, predicate)
    _check_recomputed_verdict(folder, predicate, verdict, path)
    lines, head = _check_anchored_ledger(folder, predicate, envelope, path)
    if require_pass:
        refuse_unless_passed(verdict)
    signer = envelope["signatures"][0]["keyid"]  # verified above: the key that actually signed
    return AttestedVerdict(verdict, statement, signer, lines, head, payload_digest(envelope))


def refuse_unless_passed(verdict: Verdict, approvals_possible: bool = False) -> None:
    """ExportRefused unless the verdict passed: what export does with no release policy (and with one, for a block).

    `approvals_possible`: a release policy is applied, so a needs_review verdict is refused here only
    because its approvals are missing (the release check says which).
    """
    shown = describe_policy(verdict.policy_name, verdict.policy_sha256)
    if verdict.outcome == "needs_review" and not approvals_possible:
        items = "\n".join(f"  - {item}" for item in verdict.review)
        raise ExportRefused(f"the gate's verdict under policy {shown} is needs_review: the evidence "
                            "neither meets nor breaks these limits, and a human reviewer must decide them. With no "
                            "release policy applied, export treats needs_review as blocked until signed human "
                            "approvals exist and a release policy accepts them (`secure-ft release-policy`, "
                            f"`secure-ft approve`):\n{items}")
    if verdict.outcome == "blocked":
        reasons = "\n".join(f"  - {reason}" for reason in verdict.reasons) or "  - (no reasons recorded)"
        raise ExportRefused(f"the gate blocked export under policy {shown}:\n{reasons}")


def _check_bound_files(folder: Path, predicate: dict, source: Path) -> None:
    bound = [(predicate.get("policy") or {}, "policy")]
    bound += [(entry, f"audit result {name!r}") for name, entry in (predicate.get("audit_results") or {}).items()]
    bound += [(predicate.get("privacy") or {}, "privacy guarantee"), (predicate.get("config") or {}, "run config")]
    bound += [(entry, name) for name, entry in (predicate.get("documents") or {}).items()]
    if predicate.get("provenance"):
        bound.append((predicate["provenance"], "provenance"))
    for entry, what in bound:
        relative = entry.get("file")
        if not relative or ".." in Path(relative).parts or Path(relative).is_absolute():
            raise BundleError(f"{source}: the signed {what} entry names no safe file ({relative!r})")
        now = file_digest(folder / relative)
        if now != entry.get("sha256"):
            state = "is missing" if now is None and entry.get("sha256") else (
                "exists but the gate saw none" if entry.get("sha256") is None else "was changed")
            raise BundleError(f"{folder / relative}: {state} since the gate signed its verdict ({what}); "
                              "re-run the audits and the gate")


def _check_evidence_digests(folder: Path, predicate: dict) -> None:
    """Evidence files an audit result names with a digest (``metrics.evidence_sha256``) must still match it.

    The audit result is bound by its own digest, so these digests are signed too. A bundle
    exported without evidence lacks the files: an absent file is not checked; a present one
    that differs fails.
    """
    for name, entry in (predicate.get("audit_results") or {}).items():
        try:
            raw = json.loads((folder / entry["file"]).read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError, KeyError):
            continue  # unreadable results fail in _check_recomputed_verdict, with the reason
        digests = (raw.get("metrics") or {}).get("evidence_sha256") if isinstance(raw, dict) else None
        for relative, expected in (digests or {}).items() if isinstance(digests, dict) else ():
            if ".." in Path(relative).parts or Path(relative).is_absolute():
                raise BundleError(f"{folder / entry['file']}: evidence path {relative!r} points outside the run directory")
            now = file_digest(folder / relative)
            if now is not None and now != expected:
                raise BundleError(f"{folder / relative}: was changed since the gate signed its verdict (evidence of "
                                  f"audit {name!r}); re-run the audits and the gate")


def _check_recomputed_verdict(folder: Path, predicate: dict, verdict: Verdict, source: Path) -> None:
    """The signed verdict must be what the gate gives on the signed results and policy."""
    try:
        policy, policy_sha256 = load_policy(folder / POLICY_FILE)
    except PolicyError as error:
        raise BundleError(f"{source}: the signed policy cannot be read: {error}") from None
    results = []
    for name, entry in (predicate.get("audit_results") or {}).items():
        try:
            results.append(AuditResult.from_dict(json.loads((folder / entry["file"]).read_text(encoding="utf-8"))))
        except (ValueError, TypeError, KeyError) as error:
            raise BundleError(f"{folder / entry['file']}: the signed audit result {name!r} cannot be read ({error})") from None
    again = decide(results, policy, verdict.model_sha256, policy_sha256, now=datetime.fromisoformat(verdict.timestamp))
    # the same checks decide the same way; in which order they are listed carries no meaning
    if not same_decision(verdict, again):
        raise BundleError(f"{source}: the signed verdict ({verdict.outcome}) is not what the policy gives on the "
                          f"signed audit results ({again.outcome}: "
                          f"{'; '.join(again.reasons + again.review) or 'no reasons'})")


def _check_anchored_ledger(folder: Path, predicate: dict, envelope: dict, source: Path) -> tuple[int, str]:
    anchor = predicate.get("ledger") or {}
    lines, head = anchor.get("lines"), anchor.get("head_sha256")
    if not isinstance(lines, int) or not isinstance(head, str):
        raise BundleError(f"{source}: the signed verdict holds no ledger anchor")
    verify_ledger(folder, expected_lines=lines, expected_head_sha256=head)
    events = Ledger(folder).events()
    following = events[lines] if len(events) > lines else None
    if (following is None or following.get("event") != "verdict"
            or (following.get("data") or {}).get("attestation_sha256") != payload_digest(envelope)):
        raise BundleError(f"{folder}: the run ledger has no `verdict` event for this attestation right after the "
                          "signed head; the ledger or the signed verdict was replaced")
    return lines, head
