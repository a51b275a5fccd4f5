"""The one result type every audit returns.

An audit measures something about a trained model (`metrics`), compares some of those
measurements with the policy's thresholds (`checks`) and says whether it passed. An audit
that could not run has `error` set and never passes: a missing measurement is a failure,
not a skip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Comparison = Literal["<=", ">=", "==", "<", ">"]

_COMPARE = {
    "<=": lambda actual, limit: actual <= limit,
    ">=": lambda actual, limit: actual >= limit,
    "==": lambda actual, limit: actual == limit,
    "<": lambda actual, limit: actual < limit,
    ">": lambda actual, limit: actual > limit,
}


@dataclass(frozen=True)
class Check:
    """One threshold of the policy applied to one measured value."""

    name: str  # e.g. "pwws.accuracy_under_attack"
    actual: float | None  # None: could not be measured (counts as failed)
    comparison: Comparison
    threshold: float
    passed: bool
    note: str = ""

    @classmethod
    def evaluate(cls, name: str, actual: float | None, comparison: Comparison, threshold: float, note: str = "") -> "Check":
        passed = actual is not None and bool(_COMPARE[comparison](actual, threshold))
        return cls(name, actual, comparison, threshold, passed, note)

    def describe(self) -> str:
        shown = "not measured" if self.actual is None else f"{float(self.actual):.4g}"
        verdict = "ok" if self.passed else "FAILED"
        extra = f" ({self.note})" if self.note else ""
        return f"{self.name} = {shown}, required {self.comparison} {self.threshold:g}: {verdict}{extra}"


@dataclass
class AuditResult:
    """What one audit found. JSON-serialisable through `to_dict` / `from_dict`."""

    name: str
    passed: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)  # paths relative to the run directory
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # set when the audit could not run; then passed is False

    @classmethod
    def from_checks(cls, name: str, metrics: dict[str, Any], checks: list[Check], **extra: Any) -> "AuditResult":
        """A result that passes exactly when every check passed (and there was no error)."""
        error = extra.get("error")
        passed = error is None and all(check.passed for check in checks)
        return cls(name=name, passed=passed, metrics=metrics, checks=list(checks), **extra)

    @classmethod
    def failed_to_run(cls, name: str, reason: str) -> "AuditResult":
        return cls(name=name, passed=False, error=reason)

    def failure_reasons(self) -> list[str]:
        if self.error is not None:
            return [f"{self.name}: could not run: {self.error}"]
        return [f"{self.name}: {check.describe()}" for check in self.checks if not check.passed]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "AuditResult":
        checks = [Check(**check) for check in raw.get("checks", [])]
        return cls(**{**raw, "checks": checks})
