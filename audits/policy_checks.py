"""Policy thresholds applied to measurements: the one function every audit (and the gate) uses.

Each threshold field of a policy section declares what it checks (`secure_ft.records.policy.Threshold`:
metric, comparison, pessimistic bound, group). An audit measures; `threshold_checks` turns
its measurements and the section into `Check`s. Because the declarations are data, the gate
can re-evaluate a stored audit result against a policy without the audit's code, and
renaming a policy field cannot silently change what it checks.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import BaseModel

from audits.result import Check
from secure_ft.records.policy import Threshold, declared_thresholds


def _limit(section: BaseModel, field: str, key: str | None) -> float | None:
    limit = getattr(section, field)
    if isinstance(limit, dict):  # per-key thresholds (robustness recipes), "default" for the rest
        return limit.get(key, limit.get("default")) if key is not None else limit.get("default")
    return limit


def judged_value(measured: Any, threshold: Threshold, use_ci_bound: bool) -> float | None:
    """The number a threshold judges: the point estimate, or its pessimistic CI bound."""
    if isinstance(measured, Mapping):
        if use_ci_bound and threshold.pessimistic_bound is not None:
            return measured.get(threshold.pessimistic_bound)
        return measured.get("value")
    return measured


def bound_note(threshold: Threshold, use_ci_bound: bool, ci_level: float | None) -> str:
    if not use_ci_bound or threshold.pessimistic_bound is None:
        return "point estimate"
    side = "lower" if threshold.pessimistic_bound == "ci_lower" else "upper"
    return f"{side} {ci_level:.0%} CI bound" if ci_level is not None else f"{side} CI bound"


def threshold_checks(section: BaseModel, measured: Mapping[str, Any], *, group: str = "main", scope: str = "",
                     key: str | None = None, ci_level: float | None = None, missing_note: str = "",
                     notes: Mapping[str, str] | None = None) -> list[Check]:
    """One `Check` per threshold the policy section sets in `group`, judged on `measured`.

    Parameters
    ----------
    section
        A policy section (``policy.performance``, ...).
    measured
        Metric name → a number, None (not measurable: the check fails), or an estimate
        ``{"value", "ci_lower", "ci_upper"}`` of which the declared bound is judged.
    group
        Only thresholds declared for this group of measurements are applied.
    scope
        Prefix of the check names (a column, a recipe, a federated site), e.g. ``"sex."``.
    key
        For per-key thresholds (``{recipe: limit, "default": limit}``), the key to look up.
    ci_level
        Confidence level of the intervals, for the check's note.
    missing_note
        Appended to the note of a check whose value could not be measured (None).
    notes
        Extra text per metric, appended to the check's note.
    """
    use_ci_bound = bool(getattr(section, "use_ci_bound", False))
    checks = []
    for field, threshold in declared_thresholds(type(section)).items():
        if threshold.group != group:
            continue
        limit = _limit(section, field, key)
        if limit is None:
            continue
        value = judged_value(measured.get(threshold.metric), threshold, use_ci_bound)
        note = bound_note(threshold, use_ci_bound, ci_level)
        for extra in ((notes or {}).get(threshold.metric), missing_note if value is None else ""):
            if extra:
                note = f"{note}; {extra}"
        checks.append(Check.evaluate(f"{scope}{threshold.check_name}", value, threshold.comparison, limit, note))
    return checks


def interval_checks(section: BaseModel, measured: Mapping[str, Any], *, p_values: Mapping[str, float | None],
                    alpha: float | None, scope: str = "", ci_level: float | None = None,
                    notes: Mapping[str, str] | None = None, review: Mapping[str, str] | None = None,
                    undefined: Mapping[str, str] | None = None, group: str = "main") -> list[Check]:
    """One three-way `Check` per threshold the section sets, judged by `Check.from_interval`.

    Parameters
    ----------
    section
        A policy section whose thresholds are judged on intervals (``policy.fairness``).
    measured
        Metric name → an estimate ``{"value", "ci_lower", "ci_upper"}`` (or None).
    p_values
        Metric name → the p-value of the test of a breach (None: no test, so no failure).
    alpha
        Significance level a breach's p-value must be below to fail; None: no test required.
    review
        Metric name → what a reviewer must look at when the check is inconclusive.
    undefined
        Metric name → the outcome when the estimate is undefined (default ``fail``).
    """
    level = f"{ci_level:.0%} " if ci_level is not None else ""
    checks = []
    for field, threshold in declared_thresholds(type(section)).items():
        if threshold.group != group or getattr(section, field) is None:
            continue
        estimate = measured.get(threshold.metric)
        value, low, high = ((estimate.get("value"), estimate.get("ci_lower"), estimate.get("ci_upper"))
                            if isinstance(estimate, Mapping) else (estimate, None, None))
        p_value = p_values.get(threshold.metric)
        note = (f"judged on the {level}bootstrap interval"
                + (f" and a permutation test (fails only when p < {alpha:g})" if alpha is not None else ""))
        for extra in ((notes or {}).get(threshold.metric),
                      "undefined on this data (e.g. no positives or no selections in the compared groups)"
                      if value is None else ""):
            if extra:
                note = f"{note}; {extra}"
        checks.append(Check.from_interval(
            f"{scope}{threshold.check_name}", value, low, high, threshold.comparison, getattr(section, field),
            p_value=p_value, alpha=alpha, note=note, review=(review or {}).get(threshold.metric, ""),
            undefined=(undefined or {}).get(threshold.metric, "fail")))
    return checks
