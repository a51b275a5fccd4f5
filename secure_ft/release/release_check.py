"""Whether a checked verdict may be released under the organisation's release policy.

`check_release` runs after the signed verdict itself checked out
(`secure_ft.release.verdict_attestation.check_run_attestation`), in export, verify and serve alike.
Every rule of the release policy (`secure_ft.release.release_policy`) that is not met gives one line
naming the rule:

* ``accepted_audit_policies`` — the verdict's audit policy, by SHA-256, is not one the
  organisation accepts (a ``research`` verdict where ``regulated-default`` is required, or a
  file that calls itself ``regulated-default`` with other content);
* ``trusted_gate_keys`` — the verdict was signed by a gate key the policy does not list;
* ``revoked_keys`` — the gate key or an approver's key is revoked;
* ``max_verdict_age_days`` — the signed verdict is older than allowed;
* ``approvals`` — fewer than k valid approvals from listed approvers, an approval from an
  unlisted key, by a gate key, for another model or another verdict (replayed), one that does
  not acknowledge every review item, or a rejection by a listed approver.

Rule failures raise `ReleaseRefused` (exit 3); an approval whose signature does not verify with
its listed approver's key is evidence that does not check out (`BundleError`, exit 4). A
blocked verdict stays blocked: no approval releases it. With no release policy, today's rule
applies: only a passed verdict is released.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from secure_ft.errors import ExportRefused
from secure_ft.records.policy import describe_policy
from secure_ft.release.approvals import (read_approvals, subject_digests, verified_statement, MODEL_SUBJECT,
                                         VERDICT_SUBJECT)
from secure_ft.release.release_policy import SignedReleasePolicy
from secure_ft.release.verdict_attestation import AttestedVerdict, refuse_unless_passed

NO_RELEASE_POLICY = "no release policy applied (configure one with `secure-ft release-policy`; see the README)"


class ReleaseRefused(ExportRefused):
    """The signed verdict checks out, but the organisation's release policy does not let it out (exit 3)."""


@dataclass(frozen=True)
class CountedApproval:
    """An approval that checked out and counts towards the rule."""

    file: str
    approver: str
    fingerprint: str
    time: str
    comment: str


@dataclass
class ReleaseDecision:
    """What the release check established (for the CLI, the bundle, the model card)."""

    release: SignedReleasePolicy | None
    approvals: list[CountedApproval] = field(default_factory=list)
    approvals_required: bool = False

    def lines(self) -> list[str]:
        if self.release is None:
            return [NO_RELEASE_POLICY]
        policy = self.release.policy
        lines = [f"{self.release.describe()}: every rule met (audit policy accepted, gate key trusted and not revoked"
                 + (f", verdict younger than {policy.max_verdict_age_days:g} days" if policy.max_verdict_age_days else "")
                 + ")"]
        rule = policy.approvals
        if self.approvals_required:
            lines.append(f"approvals: {len(self.approvals)} of {rule.required} required (when: {rule.when})")
        for approval in self.approvals:
            lines.append(f"  approved by {approval.approver} (key {approval.fingerprint[:16]}…) at {approval.time}: "
                         f"{approval.comment}")
        return lines

    def summary(self) -> dict:
        """JSON for /model-card and the ledger."""
        if self.release is None:
            return {"applied": False, "note": NO_RELEASE_POLICY}
        return {"applied": True, "name": self.release.policy.name, "sha256": self.release.sha256,
                "root_public_key_sha256": self.release.root_sha256,
                "approvals": [approval.__dict__ for approval in self.approvals]}


def check_release(folder: str | Path, attested: AttestedVerdict, release: SignedReleasePolicy | None,
                  now: datetime | None = None) -> ReleaseDecision:
    """Apply `release` to the checked verdict in `folder` (a run directory or a bundle copy).

    Raises
    ------
    ReleaseRefused
        A rule of the release policy is not met (each line names the rule).
    ExportRefused
        The verdict is blocked (or, with no release policy, not passed).
    BundleError
        An approval's signature does not verify with its approver's listed key.
    """
    verdict = attested.verdict
    if release is None:
        refuse_unless_passed(verdict)
        return ReleaseDecision(None)
    refuse_unless_passed(verdict, approvals_possible=True)  # a block stays a block
    policy = release.policy
    now = now or datetime.now(timezone.utc)
    problems = []

    accepted = {entry.sha256: entry.name for entry in policy.accepted_audit_policies}
    if verdict.policy_sha256 not in accepted:
        listed = ", ".join(f"{name!r} (sha256 {sha[:16]}…)" for sha, name in accepted.items())
        problems.append(f"accepted_audit_policies: the release policy does not accept the audit policy this verdict "
                        f"was reached under: {describe_policy(verdict.policy_name, verdict.policy_sha256)}. "
                        f"Accepted (by content): {listed}. Re-run the audits under an accepted policy")

    signer = attested.signer_sha256
    signed_at = datetime.fromisoformat(verdict.timestamp)
    if signer not in policy.gate_key_fingerprints():
        problems.append(f"trusted_gate_keys: the verdict is signed by gate key {signer[:16]}…, which the release "
                        "policy does not list as a trusted gate key")
    revoked = policy.revocation(signer)
    if revoked is not None and revoked.refuses(signed_at):
        problems.append(f"revoked_keys: gate key {signer[:16]}… was revoked at {revoked.revoked_at.isoformat()} "
                        f"({revoked.reason}); its verdicts are no longer accepted: re-run the gate with a current key")

    if policy.max_verdict_age_days is not None:
        age_days = (now - signed_at).total_seconds() / 86400
        if age_days > policy.max_verdict_age_days:
            problems.append(f"max_verdict_age_days: the verdict was signed at {verdict.timestamp} ({age_days:.4g} "
                            f"days ago); the release policy accepts verdicts up to {policy.max_verdict_age_days:g} "
                            "days old: re-run the audits and the gate")

    counted, approval_problems = _check_approvals(Path(folder), attested, release)
    problems += approval_problems
    rule = policy.approvals
    required = rule.when == "always" or verdict.outcome == "needs_review"
    if required and len(counted) < rule.required:
        names = ", ".join(approver.name for approver in rule.approvers)
        items = "".join(f"\n      {n}. {item}" for n, item in enumerate(verdict.review, 1))
        why = "the verdict needs review" if verdict.outcome == "needs_review" else "the policy requires approval always"
        problems.append(f"approvals: {len(counted)} valid approval(s), {rule.required} required from the listed "
                        f"approvers ({names}) because {why}; an approver signs with `secure-ft approve RUN_DIR "
                        f"--key KEY --comment TEXT`" + (f", acknowledging each review item:{items}" if items else ""))
    if problems:
        raise ReleaseRefused(f"{release.describe()} refuses this release:\n"
                             + "\n".join(f"  - rule {problem}" for problem in problems))
    return ReleaseDecision(release, counted, required)


def _check_approvals(folder: Path, attested: AttestedVerdict,
                     release: SignedReleasePolicy) -> tuple[list[CountedApproval], list[str]]:
    """Approvals that count (one per approver), and one problem line per approval that does not."""
    policy, verdict = release.policy, attested.verdict
    gate_keys = policy.gate_key_fingerprints() | {attested.signer_sha256}
    counted: dict[str, CountedApproval] = {}
    problems = []
    for approval in read_approvals(folder):
        where = f"{approval.file}"
        approver = policy.approver(approval.keyid)
        if approval.keyid in gate_keys:
            problems.append(f"approvals: {where} is signed by gate key {approval.keyid[:16]}…; the key that signs "
                            "verdicts may not approve them (four eyes)")
            continue
        if approver is None:
            problems.append(f"approvals: {where} is signed by key {approval.keyid[:16]}…, which is not a listed "
                            "approver of the release policy")
            continue
        statement = verified_statement(approval, approver.key, folder)  # BundleError: forged or edited
        predicate, subjects = statement["predicate"], subject_digests(statement)
        who = f"{where} by {approver.name} (key {approval.keyid[:16]}…)"
        try:
            signed_at = datetime.fromisoformat(predicate.get("time"))
        except (TypeError, ValueError):
            problems.append(f"approvals: {who} carries no readable time")
            continue
        revoked = policy.revocation(approval.keyid)
        if revoked is not None and revoked.refuses(signed_at):
            problems.append(f"revoked_keys: {who}: the approver's key was revoked at "
                            f"{revoked.revoked_at.isoformat()} ({revoked.reason})")
            continue
        if subjects.get(MODEL_SUBJECT) != verdict.model_sha256:
            problems.append(f"approvals: {who} approves another model (sha256 "
                            f"{str(subjects.get(MODEL_SUBJECT))[:16]}…), not this one ({verdict.model_sha256[:16]}…); "
                            "an approval is never carried over to another model")
            continue
        if subjects.get(VERDICT_SUBJECT) != attested.attestation_sha256:
            problems.append(f"approvals: {who} approves another verdict (sha256 "
                            f"{str(subjects.get(VERDICT_SUBJECT))[:16]}…) of this model, not the signed verdict "
                            f"{attested.attestation_sha256[:16]}…; approve the current verdict")
            continue
        if predicate["decision"] == "reject":
            problems.append(f"approvals: {who} REJECTED this release at {predicate['time']}: "
                            f"{predicate.get('comment', '')}")
            continue
        if verdict.outcome == "needs_review" and Counter(predicate["acknowledged"]) != Counter(verdict.review):
            missing = [item for item in verdict.review if item not in predicate["acknowledged"]]
            problems.append(f"approvals: {who} does not acknowledge every review item of this verdict "
                            f"(missing: {'; '.join(missing) or 'items differ'})")
            continue
        counted.setdefault(approval.keyid, CountedApproval(approval.file, approver.name, approval.keyid,
                                                           predicate["time"], str(predicate.get("comment", ""))))
    return list(counted.values()), problems
