"""Signed human approvals: a named person's decision on one verdict of one model.

An approval is an in-toto Statement in a DSSE envelope (`secure_ft.release.attestation`) signed with
the approver's own P-256 key. Its two subjects bind it to exactly one release::

    {"name": "model",             "digest": {"sha256": <model digest the verdict names>}}
    {"name": "verdict.dsse.json", "digest": {"sha256": <SHA-256 of the signed verdict's payload>}}

and its predicate says who decided what, when and why::

    {"decision": "approve" | "reject", "approver": {"public_key_sha256": …}, "time": …,
     "comment": …, "verdict": {"outcome", "policy_name", "policy_sha256", "timestamp"},
     "acknowledged": [each review item of a needs_review verdict, word for word]}

Approvals live in ``RUN_DIR/approvals/`` (one file each, never rewritten) and are appended to
the run ledger; export copies them into the bundle. Whether one counts is decided by the
release policy (`secure_ft.release.release_check`): a listed approver, not a gate key (four eyes),
not revoked, for this model and this verdict, acknowledging every review item.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from secure_ft.errors import BundleError, ConfigError
from secure_ft.records.run_directory import APPROVALS_DIR
from secure_ft.records.run_ledger import Ledger
from secure_ft.release.attestation import STATEMENT_TYPE, read_envelope, sign_statement, verify_envelope, write_envelope
from secure_ft.release.keys import load_private_key, public_key_fingerprint
from secure_ft.release.release_policy import SignedReleasePolicy, envelope_digest

APPROVAL_PREDICATE_TYPE = "https://secure-ft.dev/approval/v1"
MODEL_SUBJECT = "model"
VERDICT_SUBJECT = "verdict.dsse.json"
DECISIONS = ("approve", "reject")


@dataclass(frozen=True)
class Approval:
    """One approval file, read (its signature is checked against the release policy's approvers later)."""

    file: str  # relative to the run directory or bundle
    envelope: dict
    keyid: str  # the fingerprint the envelope claims

    @property
    def sha256(self) -> str:
        return envelope_digest(self.envelope)


def approval_statement(model_sha256: str, verdict_envelope: dict, verdict, approver_fingerprint: str,
                       decision: str, comment: str, acknowledged: list[str], now: datetime | None = None) -> dict:
    """The unsigned statement of one approval (see the module docstring)."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}")
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": MODEL_SUBJECT, "digest": {"sha256": model_sha256}},
                    {"name": VERDICT_SUBJECT, "digest": {"sha256": envelope_digest(verdict_envelope)}}],
        "predicateType": APPROVAL_PREDICATE_TYPE,
        "predicate": {
            "decision": decision,
            "approver": {"public_key_sha256": approver_fingerprint},
            "time": (now or datetime.now(timezone.utc)).isoformat(),
            "comment": comment,
            "verdict": {"outcome": verdict.outcome, "policy_name": verdict.policy_name,
                        "policy_sha256": verdict.policy_sha256, "timestamp": verdict.timestamp},
            "acknowledged": list(acknowledged),
        },
    }


def approve_run(run_dir: str | Path, key_path: str | Path, *, reject: bool, comment: str, acknowledge: list[int],
                trusted_keys: list, release: SignedReleasePolicy | None) -> tuple[Path, dict]:
    """Sign an approval (or rejection) of the run's signed verdict and append it to the run ledger.

    Parameters
    ----------
    run_dir
        A run directory whose signed verdict checks out (`check_run_attestation`).
    key_path
        The approver's P-256 private key (PEM).
    reject
        Sign a rejection instead of an approval.
    comment
        Why; required, kept in the signed statement.
    acknowledge
        For a needs_review verdict: the number (1-based) of each review item the approver read;
        an approval must acknowledge every one.
    trusted_keys
        Public keys the verdict's signature is checked against.
    release
        The release policy in force, if any: its gate keys may not approve either.

    Returns
    -------
    (Path, dict)
        The approval file and its statement.

    Raises
    ------
    ConfigError
        No comment; the key is a gate key (four eyes); a blocked verdict; review items not all
        acknowledged (the message lists them).
    BundleError
        The run's signed verdict does not check out.
    """
    from secure_ft.release.verdict_attestation import check_run_attestation

    run_dir = Path(run_dir)
    if not comment or not comment.strip():
        raise ConfigError("approve: --comment is required: say what you checked and why you decide so")
    attested = check_run_attestation(run_dir, trusted_keys, require_pass=False)
    verdict = attested.verdict
    key = load_private_key(key_path)
    fingerprint = public_key_fingerprint(key.public_key())
    gate_keys = {attested.signer_sha256} | (release.policy.gate_key_fingerprints() if release else set())
    if fingerprint in gate_keys:
        raise ConfigError(f"{key_path}: is a gate key (SHA-256 {fingerprint[:16]}…); the key that signs verdicts may "
                          "not approve them (four eyes): approve with your own key (`secure-ft keygen --out NAME`)")
    if release is not None and release.policy.approver(fingerprint) is None:
        raise ConfigError(f"{key_path}: key {fingerprint[:16]}… is not an approver of {release.describe()}; "
                          "an approval by an unlisted key would be refused at export")
    decision = "reject" if reject else "approve"
    if decision == "approve" and verdict.outcome == "blocked":
        raise ConfigError(f"{run_dir}: the signed verdict is blocked; approvals release needs_review or passed "
                          "verdicts only, never a blocked one (you may still --reject it)")
    acknowledged: list[str] = []
    if decision == "approve" and verdict.outcome == "needs_review":
        numbers = set(acknowledge)
        bad = sorted(n for n in numbers if not 1 <= n <= len(verdict.review))
        missing = [n for n in range(1, len(verdict.review) + 1) if n not in numbers]
        if bad or missing:
            items = "\n".join(f"  {n}. {item}" for n, item in enumerate(verdict.review, 1))
            raise ConfigError(f"approve: the verdict needs review of {len(verdict.review)} item(s); read each and "
                              f"acknowledge it with --acknowledge N (missing: {missing or 'none'}, unknown: "
                              f"{bad or 'none'}):\n{items}")
        acknowledged = list(verdict.review)
    envelope_path = run_dir / "verdict.dsse.json"
    statement = approval_statement(verdict.model_sha256, read_envelope(envelope_path), verdict, fingerprint,
                                   decision, comment.strip(), acknowledged)
    envelope = sign_statement(statement, key)
    stamp = re.sub(r"[^0-9TZ]", "", statement["predicate"]["time"].split(".")[0]) + "Z"
    target = run_dir / APPROVALS_DIR / f"{stamp}-{decision}-{fingerprint[:16]}.dsse.json"
    if target.exists():
        raise ConfigError(f"{target}: already exists; wait a second and approve again")
    target.parent.mkdir(exist_ok=True)
    write_envelope(target, envelope)
    Ledger(run_dir).append("approval", decision=decision, approver_sha256=fingerprint,
                           approval_sha256=envelope_digest(envelope), file=str(target.relative_to(run_dir)),
                           model_sha256=verdict.model_sha256, comment=comment.strip())
    return target, statement


def read_approvals(folder: Path) -> list[Approval]:
    """Every ``approvals/*.dsse.json`` of a run directory or bundle, sorted by name (not yet checked)."""
    approvals = []
    for path in sorted((Path(folder) / APPROVALS_DIR).glob("*.dsse.json")):
        envelope = read_envelope(path)
        signatures = envelope.get("signatures") if isinstance(envelope, dict) else None
        if not isinstance(signatures, list) or len(signatures) != 1 or not isinstance(signatures[0], dict):
            raise BundleError(f"{path}: an approval carries exactly one signature")
        approvals.append(Approval(f"{APPROVALS_DIR}/{path.name}", envelope, str(signatures[0].get("keyid"))))
    return approvals


def verified_statement(approval: Approval, approver_key, folder: Path) -> dict:
    """The approval's statement once its signature verifies with `approver_key` (BundleError otherwise)."""
    statement = verify_envelope(approval.envelope, [approver_key], predicate_type=APPROVAL_PREDICATE_TYPE,
                                source=str(Path(folder) / approval.file))
    predicate = statement["predicate"]
    if predicate.get("decision") not in DECISIONS or not isinstance(predicate.get("acknowledged"), list):
        raise BundleError(f"{Path(folder) / approval.file}: a signed approval without a readable decision")
    return statement


def subject_digests(statement: dict) -> dict[str, str]:
    return {subject["name"]: subject["digest"]["sha256"] for subject in statement["subject"]}
