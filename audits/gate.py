"""The gate: audit results + policy → a `Verdict` on whether this exact model may leave.

The gate is a pure function. It reads the audit results and the policy and nothing else (no
files, no model), so the same inputs always give the same verdict and it can be re-derived
by an auditor from the report. Export later refuses any model whose current SHA-256 is not
the one the passing verdict names.

A verdict has one of three outcomes:

* ``blocked`` — a required audit is missing, could not run, or failed a check (or an
  inconclusive check under a policy section that says ``inconclusive: block``);
* ``needs_review`` — nothing failed, but some checks were inconclusive (their evidence
  straddles the limit; `audits.result.Check.from_interval`) and the policy section says
  ``inconclusive: review``; the verdict's ``review`` list names each item and what a
  reviewer must look at. Export treats it as blocked unless an organisation release policy's
  required approvers signed it off (`secure_ft.release.release_check`);
* ``passed`` — every required audit ran and passed every check (inconclusive checks under
  ``inconclusive: warn`` are kept as warnings).

Each problem gives exactly one reason, worded for the person who has to fix it. Audits that
ran but are not required never block export; their failures are kept as warnings so the
report still shows them. ``passed`` stays the plain yes/no (``outcome == "passed"``).

Reasons, review items and warnings are listed in the policy's audit order (then by audit
name), so the same results give the same verdict whatever order they are read in; verifiers
still compare them as sets (`same_decision`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel

from audits.result import AuditResult
from secure_ft.records.policy import Policy

VerdictOutcome = Literal["passed", "blocked", "needs_review"]
VERDICT_OUTCOMES = ("passed", "blocked", "needs_review")


@dataclass
class Verdict:
    """Whether a model (by SHA-256) passed a policy (by SHA-256), and why not."""

    passed: bool
    reasons: list[str]  # one per failed check, errored audit or missing required audit
    model_sha256: str
    policy_sha256: str
    policy_name: str
    timestamp: str  # UTC, ISO 8601
    audits: dict[str, bool] = field(default_factory=dict)  # audit name -> passed
    warnings: list[str] = field(default_factory=list)  # failures of audits the policy does not require
    outcome: VerdictOutcome | None = None  # None: derived (verdicts written before outcomes existed)
    review: list[str] = field(default_factory=list)  # needs_review: each inconclusive item, what to look at

    def __post_init__(self) -> None:
        if self.outcome is None:
            self.outcome = "passed" if self.passed else "blocked"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Verdict":
        known = {name for name in cls.__dataclass_fields__}
        missing = {"passed", "reasons", "model_sha256", "policy_sha256", "policy_name", "timestamp"} - set(raw)
        if missing:
            raise ValueError(f"verdict is missing {', '.join(sorted(missing))}")
        verdict = cls(**{key: value for key, value in raw.items() if key in known})
        if not isinstance(verdict.passed, bool):
            raise ValueError("verdict field `passed` must be true or false")
        if verdict.outcome not in VERDICT_OUTCOMES:
            raise ValueError(f"verdict field `outcome` must be one of {', '.join(VERDICT_OUTCOMES)}")
        if verdict.passed != (verdict.outcome == "passed"):
            raise ValueError(f"verdict fields disagree: passed={verdict.passed} but outcome={verdict.outcome}")
        if verdict.outcome == "needs_review" and (verdict.reasons or not verdict.review):
            raise ValueError("a needs_review verdict lists review items and no blocking reasons")
        if verdict.outcome == "blocked" and not verdict.reasons:
            raise ValueError("a blocked verdict lists its reasons")
        return verdict


def same_decision(signed: Verdict, again: Verdict) -> bool:
    """Whether two verdicts decide the same: outcome, policy, and the same reasons, review items and
    warnings as sets (their order carries no meaning)."""
    return (signed.outcome == again.outcome and signed.passed == again.passed
            and signed.policy_name == again.policy_name
            and Counter(signed.reasons) == Counter(again.reasons)
            and Counter(signed.review) == Counter(again.review))


def _problems(result: AuditResult, policy: Policy) -> list[str]:
    """Why one audit result fails (empty when nothing failed; inconclusive checks are not problems)."""
    if result.error is not None:
        return [f"{result.name}: could not run: {result.error}"]
    problems = [f"{result.name}: {check.describe()}" for check in result.checks if check.outcome == "fail"]
    if not problems and not result.passed and not result.inconclusive_checks():
        problems.append(f"{result.name}: reported as failed" + (f" ({'; '.join(result.notes)})" if result.notes else ""))
    section = getattr(policy, result.name, None)
    if not result.checks and isinstance(section, BaseModel) and section.sets_any_check():
        problems.append(
            f"{result.name}: reported no checks although the policy section `{result.name}` sets thresholds; "
            "the audit did not apply the policy"
        )
    return problems


def _inconclusive(result: AuditResult, policy: Policy) -> tuple[str, list[str]]:
    """What the policy does with this audit's inconclusive checks, and one item per check."""
    section = getattr(policy, result.name, None)
    mode = getattr(section, "inconclusive", "block")  # a section that says nothing: inconclusive blocks
    items = []
    for check in result.inconclusive_checks():
        look = f"; review: {check.review}" if check.review else ""
        items.append(f"{result.name}: {check.describe()}{look}")
    return mode, items


def _policy_order(results: list[AuditResult], required: list[str]) -> list[AuditResult]:
    rank = {name: index for index, name in enumerate(required)}
    return sorted(results, key=lambda result: (rank.get(result.name, len(rank)), result.name))


def decide(results: list[AuditResult], policy: Policy, model_sha256: str, policy_sha256: str,
           now: datetime | None = None) -> Verdict:
    """Turn audit results and a policy into a verdict on one model.

    Parameters
    ----------
    results
        What the audits found; at most one result per audit name.
    policy
        The export policy; ``policy.required_audits`` must all be present and pass.
    model_sha256
        ``secure_ft.records.model_identity.model_digest`` of the audited model folder.
    policy_sha256
        SHA-256 of the policy file's bytes (from ``load_policy``).
    now
        Timestamp of the decision; default the current UTC time.

    Returns
    -------
    Verdict
        ``outcome`` is ``blocked`` when ``reasons`` is not empty, else ``needs_review`` when
        ``review`` is not empty, else ``passed``; ``passed`` is True only for the last.
    """
    if not model_sha256:
        raise ValueError("decide needs the SHA-256 of the audited model")
    moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    required = list(dict.fromkeys(policy.required_audits))
    reasons: list[str] = []
    review: list[str] = []
    warnings: list[str] = []
    audits: dict[str, bool] = {}
    seen: set[str] = set()

    for result in _policy_order(results, required):
        if result.name in seen:
            reasons.append(f"{result.name}: reported more than once; the results are ambiguous, rerun the audits")
            audits[result.name] = False
            continue
        seen.add(result.name)
        problems = _problems(result, policy)
        mode, unsettled = _inconclusive(result, policy) if result.error is None else ("block", [])
        audits[result.name] = not problems and not unsettled
        if result.name not in required:
            warnings.extend(f"{problem} (not required by the policy)" for problem in problems + unsettled)
            continue
        reasons.extend(problems)
        if mode == "review":
            review.extend(unsettled)
        elif mode == "warn":
            warnings.extend(f"{item} (inconclusive; policy {result.name}.inconclusive: warn)" for item in unsettled)
        else:
            reasons.extend(f"{item} (inconclusive; policy {result.name}.inconclusive: block)" for item in unsettled)

    for name in required:
        if name not in seen:
            audits[name] = False
            reasons.append(f"{name}: required by policy {policy.name!r} but was not run")

    outcome: VerdictOutcome = "blocked" if reasons else ("needs_review" if review else "passed")
    return Verdict(
        passed=outcome == "passed",
        reasons=reasons,
        model_sha256=model_sha256,
        policy_sha256=policy_sha256,
        policy_name=policy.name,
        timestamp=moment.isoformat(),
        audits=audits,
        warnings=warnings,
        outcome=outcome,
        review=review,  # kept on a blocked verdict too: the reviewer will need it once the blockers are fixed
    )
