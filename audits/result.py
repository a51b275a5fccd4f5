"""The one result type every audit returns.

An audit measures something about a trained model (`metrics`), compares some of those
measurements with the policy's thresholds (`checks`) and says whether it passed. An audit
that could not run has `error` set and never passes: a missing measurement is a failure,
not a skip.

A check has one of three outcomes (`Check.outcome`): ``pass``, ``fail`` or ``inconclusive``.
The third is for a measurement whose uncertainty straddles the limit: the data neither
shows the limit is met nor that it is broken. `Check.from_interval` makes that judgement
for any estimate with a confidence interval (and, optionally, a significance test); the
gate then does what the policy section's ``inconclusive`` setting says (block, ask for a
human review, or warn). ``passed`` stays as the plain yes/no (``outcome == "pass"``).
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


Outcome = Literal["pass", "fail", "inconclusive"]
OUTCOMES = ("pass", "fail", "inconclusive")


def _pessimistic_and_optimistic(comparison: Comparison, low: float | None, high: float | None):
    """(pessimistic, optimistic) interval end for a limit: the upper end is the worst case of a maximum."""
    return (high, low) if comparison in ("<=", "<") else (low, high)


@dataclass(frozen=True)
class Check:
    """One threshold of the policy applied to one measured value.

    ``outcome`` is ``pass``, ``fail`` or ``inconclusive``; ``passed`` is ``outcome == "pass"``
    (kept for readers that know only yes/no). An inconclusive check says in ``review`` what a
    human reviewer must look at to decide it.
    """

    name: str  # e.g. "pwws.accuracy_under_attack"
    actual: float | None  # None: could not be measured (counts as failed)
    comparison: Comparison
    threshold: float
    passed: bool
    note: str = ""
    outcome: Outcome | None = None  # None: derived from `passed` (results written before outcomes existed)
    interval: list[float | None] | None = None  # [lower, upper] confidence bounds of `actual`, when judged on them
    p_value: float | None = None  # significance test of the breach, when one was part of the judgement
    review: str = ""  # for an inconclusive check: what a reviewer must look at

    def __post_init__(self) -> None:
        outcome = self.outcome if self.outcome is not None else ("pass" if self.passed else "fail")
        if outcome not in OUTCOMES:
            raise ValueError(f"check {self.name!r}: outcome must be one of {OUTCOMES}, not {outcome!r}")
        if bool(self.passed) != (outcome == "pass"):
            raise ValueError(f"check {self.name!r}: passed={self.passed} contradicts outcome {outcome!r}")
        object.__setattr__(self, "outcome", outcome)
        if self.interval is not None:
            object.__setattr__(self, "interval", list(self.interval))

    @classmethod
    def evaluate(cls, name: str, actual: float | None, comparison: Comparison, threshold: float, note: str = "") -> "Check":
        passed = actual is not None and bool(_COMPARE[comparison](actual, threshold))
        return cls(name, actual, comparison, threshold, passed, note)

    @classmethod
    def from_interval(cls, name: str, value: float | None, low: float | None, high: float | None,
                      comparison: Comparison, threshold: float, *, p_value: float | None = None,
                      alpha: float | None = None, note: str = "", review: str = "",
                      undefined: Outcome = "fail") -> "Check":
        """Judge an estimate on its confidence interval (and optionally a significance test).

        * ``pass`` when the pessimistic end of the interval meets the limit;
        * ``fail`` when the optimistic end breaks it too and, with `alpha` given, the test of
          the breach is significant (``p_value < alpha``);
        * ``inconclusive`` otherwise: the interval straddles the limit, or the breach is one
          that chance reproduces (a missing p-value never supports a failure).

        `undefined` is the outcome when the estimate itself could not be computed.
        """
        if value is None:
            return cls(name, None, comparison, threshold, undefined == "pass", note, undefined,
                       [low, high], p_value, review if undefined == "inconclusive" else "")
        pessimistic, optimistic = _pessimistic_and_optimistic(comparison, low, high)
        meets = _COMPARE[comparison]
        if pessimistic is not None and meets(pessimistic, threshold):
            outcome: Outcome = "pass"
        elif (optimistic is not None and not meets(optimistic, threshold)
              and (alpha is None or (p_value is not None and p_value < alpha))):
            outcome = "fail"
        else:
            outcome = "inconclusive"
        return cls(name, float(value), comparison, threshold, outcome == "pass", note, outcome, [low, high], p_value,
                   review if outcome == "inconclusive" else "")

    def describe(self) -> str:
        shown = "not measured" if self.actual is None else f"{float(self.actual):.4g}"
        if self.interval is not None and None not in self.interval:
            shown += f" [interval {float(self.interval[0]):.3g}, {float(self.interval[1]):.3g}]"
        if self.p_value is not None:
            shown += f", p = {self.p_value:.3g}"
        verdict = {"pass": "ok", "fail": "FAILED", "inconclusive": "INCONCLUSIVE"}[self.outcome]
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
        return [f"{self.name}: {check.describe()}" for check in self.checks if check.outcome == "fail"]

    def inconclusive_checks(self) -> list[Check]:
        """Checks whose evidence neither met nor broke their limit (see `Check.from_interval`)."""
        return [check for check in self.checks if check.outcome == "inconclusive"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "AuditResult":
        checks = [Check(**check) for check in raw.get("checks", [])]
        return cls(**{**raw, "checks": checks})
