"""The gate: audit results + policy → a `Verdict` on whether this exact model may leave.

The gate is a pure function. It reads the audit results and the policy and nothing else (no
files, no model), so the same inputs always give the same verdict and it can be re-derived
by an auditor from the report. Export later refuses any model whose current SHA-256 is not
the one the passing verdict names.

A model passes only when every audit the policy requires ran, reported no error, and passed
every one of its checks. Each problem gives exactly one reason, worded for the person who has
to fix it. Audits that ran but are not required never block export; their failures are kept
as warnings so the report still shows them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel

from audits.result import AuditResult
from secure_ft.policy import Policy


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
        return verdict


def _problems(result: AuditResult, policy: Policy) -> list[str]:
    """Why one audit result does not pass (empty when it does)."""
    if result.error is not None:
        return [f"{result.name}: could not run: {result.error}"]
    problems = [f"{result.name}: {check.describe()}" for check in result.checks if not check.passed]
    if not problems and not result.passed:
        problems.append(f"{result.name}: reported as failed" + (f" ({'; '.join(result.notes)})" if result.notes else ""))
    section = getattr(policy, result.name, None)
    if not result.checks and isinstance(section, BaseModel) and section.sets_any_check():
        problems.append(
            f"{result.name}: reported no checks although the policy section `{result.name}` sets thresholds; "
            "the audit did not apply the policy"
        )
    return problems


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
        ``secure_ft.model_identity.model_digest`` of the audited model folder.
    policy_sha256
        SHA-256 of the policy file's bytes (from ``load_policy``).
    now
        Timestamp of the decision; default the current UTC time.

    Returns
    -------
    Verdict
        ``passed`` is True only when ``reasons`` is empty.
    """
    if not model_sha256:
        raise ValueError("decide needs the SHA-256 of the audited model")
    moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    required = list(dict.fromkeys(policy.required_audits))
    reasons: list[str] = []
    warnings: list[str] = []
    audits: dict[str, bool] = {}
    seen: set[str] = set()

    for result in results:
        if result.name in seen:
            reasons.append(f"{result.name}: reported more than once; the results are ambiguous, rerun the audits")
            audits[result.name] = False
            continue
        seen.add(result.name)
        problems = _problems(result, policy)
        audits[result.name] = not problems
        if result.name in required:
            reasons.extend(problems)
        else:
            warnings.extend(f"{problem} (not required by the policy)" for problem in problems)

    for name in required:
        if name not in seen:
            audits[name] = False
            reasons.append(f"{name}: required by policy {policy.name!r} but was not run")

    return Verdict(
        passed=not reasons,
        reasons=reasons,
        model_sha256=model_sha256,
        policy_sha256=policy_sha256,
        policy_name=policy.name,
        timestamp=moment.isoformat(),
        audits=audits,
        warnings=warnings,
    )
