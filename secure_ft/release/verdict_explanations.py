"""What a verdict's checks mean, and what to do next: one sentence per check, for the report, card and CLI.

The gate (`audits.gate`) says *which* check failed; this module says what that check measures
and the most likely next step, with the README section to read. It is keyed by the metric
name a check ends in (``pwws.accuracy_under_attack`` → ``accuracy_under_attack``), so a new
recipe, column or site needs no new entry. It also finds the passes that the data cannot tell
apart from failures (a measure whose confidence interval contains its threshold) and words
the status of audits a policy does not require.

Everything here reads the stored, JSON forms (``AuditResult.to_dict()``, ``Verdict.to_dict()``),
so the report, the model card and the command line word the same verdict the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

# README sections (headings) the next steps point to
AUDITS = "Audits and the gate"
ROBUST_TRAINING = "Training for robustness (`training.robustness`)"
PRIVACY = "Differential privacy"
BUDGET = "A privacy budget across runs (issue #27)"
TRANSFER = "What trains: `model.transfer: auto` (issue #15)"
GATE = "The gate, signed"


@dataclass(frozen=True)
class Explanation:
    """What one kind of check measures and the most likely next step."""

    measures: str
    next_step: str
    readme: str

    def sentence(self) -> str:
        return f"It measures {self.measures}; most likely next step: {self.next_step} (README: \u201c{self.readme}\u201d)."


_FAIRNESS_STEP = ("look at which group is worst in the report's fairness table; collect more rows for small groups "
                  "or check whether the label itself differs by group before changing the model")
_ATTACK_STEP = ("train with augmentation copies and the typo-correcting front end (training.robustness), "
                "or read more tokens per text")
EXPLANATIONS: dict[str, Explanation] = {
    "accuracy": Explanation("the share of held-out test texts classified right",
                            "more training rows, more epochs or a larger transfer (lora / full)", TRANSFER),
    "macro_f1": Explanation("the F1 score averaged over classes, so a small class counts as much as a large one",
                            "check the per-class table for classes never predicted; more rows for them, or "
                            "merge classes too small to learn", TRANSFER),
    "gain_over_majority": Explanation("test accuracy minus always guessing the most frequent class",
                                      "the model barely beats a constant answer: more rows, a looser ε, or a "
                                      "larger transfer", TRANSFER),
    "min_class_recall": Explanation("the recall of the worst class (how many of its texts are found)",
                                    "more rows of that class, or merge it with a related one", TRANSFER),
    "accuracy_under_attack": Explanation("the share of sampled test texts still classified right after the attack "
                                         "changed characters or words", _ATTACK_STEP, ROBUST_TRAINING),
    "relative_accuracy_under_attack": Explanation(
        "accuracy under a label-preserving attack over the clean accuracy of the same sample: how much of what "
        "the model gets right an attacker within the policy's threat model takes away", _ATTACK_STEP, ROBUST_TRAINING),
    "attacked": Explanation("how many correctly classified texts the recipe attacked, the sample its rates rest on",
                            "raise audits.robustness.min_correct_examples (a larger test split gives more correct texts)",
                            AUDITS),
    "attack_success_rate": Explanation("how often the attack flipped a text the model had right",
                                       _ATTACK_STEP, ROBUST_TRAINING),
    "budget_exhausted_fraction": Explanation(
        "the share of attacks stopped by the query budget before they finished, above which accuracy under "
        "attack is not trustworthy", "raise audits.robustness.query_budget (or lower model.max_length)", AUDITS),
    "demographic_parity_difference": Explanation("the largest gap in selection rate between groups",
                                                 _FAIRNESS_STEP, AUDITS),
    "demographic_parity_ratio": Explanation("the ratio of the lowest to the highest group selection rate",
                                            _FAIRNESS_STEP, AUDITS),
    "equalized_odds_difference": Explanation("the largest gap in true- or false-positive rate between groups",
                                             _FAIRNESS_STEP, AUDITS),
    "equalized_odds_ratio": Explanation("the ratio of the lowest to the highest group TPR or FPR",
                                        _FAIRNESS_STEP, AUDITS),
    "equal_opportunity_difference": Explanation("the largest gap in true-positive rate (recall) between groups",
                                                _FAIRNESS_STEP, AUDITS),
    "worst_group_accuracy_gap": Explanation("overall accuracy minus the worst group's accuracy",
                                            _FAIRNESS_STEP, AUDITS),
    "worst_group_accuracy": Explanation("the accuracy of the worst group", _FAIRNESS_STEP, AUDITS),
    "groups_below_min_size": Explanation("how many groups have fewer test rows than audits.fairness.min_group_size",
                                         "more data for those groups, or insufficient_data: warn in the policy "
                                         "if small groups may be reported instead", AUDITS),
    "comparable_groups": Explanation("whether at least two groups are large enough to compare",
                                     "more test rows per group, or a coarser group column", AUDITS),
    "assessable_columns": Explanation("whether any sensitive column could be assessed at all",
                                      "add a group column with enough rows per group (data.group_columns)", AUDITS),
    "dp_guarantee": Explanation("whether the model was trained with differential privacy",
                                "train with privacy.mode: dp, or use a policy with require_dp: false for a "
                                "non-private baseline", PRIVACY),
    "epsilon": Explanation("the privacy loss ε the accountant computed for the run",
                           "lower privacy.target_epsilon to the policy's limit (the run then adds more noise)",
                           PRIVACY),
    "dataset_epsilon": Explanation("the data set's cumulative ε: every run recorded on its privacy budget ledger, "
                                   "composed by the accountant", "stop training on this data set, or raise "
                                   "privacy.max_dataset_epsilon where the organisation allows it "
                                   "(`secure-ft privacy budget` lists what spent it)", BUDGET),
    "delta": Explanation("the δ of the DP guarantee", "set privacy.target_delta at or below the policy's max_delta",
                         PRIVACY),
    "epsilon_recomputed": Explanation("whether the stated ε equals the ε recomputed from the recorded accountant "
                                      "inputs", "do not edit privacy.json or the ledger; retrain if they were "
                                      "changed", GATE),
    "privacy_inputs_match_ledger": Explanation("whether privacy.json's accountant inputs match the run ledger's",
                                               "do not edit privacy.json; retrain if it was changed", GATE),
    "membership_auc": Explanation("how well an attacker tells training texts from held-out ones by the model's "
                                  "loss (0.5 = chance)", "train with DP (or a smaller ε), fewer epochs, or more "
                                  "rows", PRIVACY),
    "membership_advantage": Explanation("the membership attack's TPR minus FPR at its best threshold",
                                        "train with DP (or a smaller ε), fewer epochs, or more rows", PRIVACY),
    "tpr_at_1pct_fpr": Explanation("how many training texts the membership attack finds at 1% false alarms",
                                   "train with DP (or a smaller ε), fewer epochs, or more rows", PRIVACY),
    "tpr_at_0_1pct_fpr": Explanation("how many training texts the membership attack finds at 0.1% false alarms",
                                     "train with DP (or a smaller ε), fewer epochs, or more rows", PRIVACY),
    "canary_max_exposure": Explanation("how much the model memorised inserted secret canaries (bits)",
                                       "train with DP or a smaller ε", PRIVACY),
}
COULD_NOT_RUN = Explanation("nothing: the audit stopped before measuring",
                            "fix the error it names and rerun `secure-ft audit RUN_DIR`", AUDITS)
NOT_RUN = Explanation("nothing: the policy requires an audit that did not run",
                      "rerun `secure-ft audit RUN_DIR` so every required audit runs", AUDITS)


def explanation_for(check_name: str) -> Explanation | None:
    """The explanation of a check, by the metric its name ends in (scopes such as ``pwws.`` dropped)."""
    parts = str(check_name).split(".")
    for start in range(len(parts)):
        found = EXPLANATIONS.get(".".join(parts[start:]))
        if found is not None:
            return found
    return None


def failure_explanations(audits: Mapping[str, Mapping[str, Any]], required: Iterable[str]) -> list[dict[str, str]]:
    """One entry per failed check, errored or missing required audit: audit, check, explanation sentence."""
    out = []
    required = list(dict.fromkeys(required))
    for name in required:
        result = audits.get(name)
        if not result:
            out.append({"audit": name, "check": "not run", "explanation": NOT_RUN.sentence()})
        elif result.get("error"):
            out.append({"audit": name, "check": "could not run", "explanation": COULD_NOT_RUN.sentence()})
        else:
            for check in result.get("checks") or []:
                if not check.get("passed"):
                    found = explanation_for(check.get("name", ""))
                    sentence = found.sentence() if found else f"See the {name} audit's table (README: \u201c{AUDITS}\u201d)."
                    out.append({"audit": name, "check": str(check.get("name")), "explanation": sentence})
    return out


def interval_warnings(audits: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Passed checks whose measure's confidence interval contains the threshold: the data cannot tell them apart."""
    warnings = []
    for name, result in audits.items():
        for check in (result or {}).get("checks") or []:
            if not check.get("passed") or not _is_number(check.get("threshold")):
                continue
            interval = _interval_of(result.get("metrics") or {}, str(check.get("name", "")), check.get("actual"))
            if interval is None:
                continue
            low, high = interval
            threshold = float(check["threshold"])
            if low < threshold < high:
                warnings.append(
                    f"{name}: {check['name']} passed ({format_number(check.get('actual'))} {check.get('comparison')} "
                    f"{format_number(threshold)}, {check.get('note') or 'point estimate'}), but its interval "
                    f"[{format_number(low)}, {format_number(high)}] contains the threshold: the test data cannot tell "
                    "this pass from a failure")
    return warnings


def audit_status(name: str, result: Mapping[str, Any] | None, required: Iterable[str], policy_name: str | None) -> str:
    """``passed``, ``FAILED``, ``inconclusive``, ``could not run: …``, ``not required by policy NAME`` or ``not run``."""
    if not result:
        if name not in set(required):
            return f"not required by policy {policy_name}" if policy_name else "not required by the policy"
        return "not run"
    if result.get("error"):
        return f"could not run: {result['error']}"
    if result.get("passed"):
        return "passed"
    outcomes = {check_outcome(check) for check in result.get("checks") or []}
    return "inconclusive" if "inconclusive" in outcomes and "fail" not in outcomes else "FAILED"


def check_outcome(check: Mapping[str, Any]) -> str:
    """``pass``, ``fail`` or ``inconclusive`` of one stored check (results from before outcomes: from `passed`)."""
    return check.get("outcome") or ("pass" if check.get("passed") else "fail")


def format_number(value: Any, digits: int = 4) -> str:
    """A number as people read it: `digits` significant figures, float noise (|x| < 1e-12) as 0."""
    if not _is_number(value):
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if abs(value) < 1e-12:
        return "0"
    return f"{value:.{digits}g}"


def format_estimate(point: Any, low: Any, high: Any, digits: int = 4) -> tuple[str, str, str]:
    """Point, lower and upper bound printed to one precision: that of `digits` significant figures of the
    largest of them, so a bound of 3.5e-18 next to 0.037 reads 0 (it is zero up to rounding), not 3.469e-18."""
    numbers = [float(v) for v in (point, low, high) if _is_number(v) and math.isfinite(v)]
    scale = max((abs(v) for v in numbers), default=0.0)
    if scale == 0.0 or not 1e-4 <= scale < 1e6:
        return format_number(point, digits), format_number(low, digits), format_number(high, digits)
    decimals = max(0, digits - 1 - math.floor(math.log10(scale)))

    def fixed(value: Any) -> str:
        if not _is_number(value) or not math.isfinite(value):
            return format_number(value, digits)
        text = f"{value:.{decimals}f}"
        text = text.rstrip("0").rstrip(".") if "." in text else text
        return "0" if text in ("-0", "") else text

    return fixed(point), fixed(low), fixed(high)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _interval_of(metrics: Mapping[str, Any], check_name: str, actual: Any) -> tuple[float, float] | None:
    """The interval of the estimate a check judged: found by the check's name and its judged value."""
    parts = check_name.split(".")
    metric = parts[-1]
    aliases = {"membership_auc": "auc", "membership_advantage": "advantage", "canary_max_exposure": "max_exposure"}
    wanted = {metric, aliases.get(metric, metric)}
    matches = []
    for path, estimate in _estimates(metrics, ()):
        if path[-1] not in wanted or not all(scope in path for scope in parts[:-1]):
            continue
        low, high = estimate.get("ci_lower"), estimate.get("ci_upper")
        if not (_is_number(low) and _is_number(high)):
            continue
        judged = [estimate.get(key) for key in ("value", "ci_lower", "ci_upper")]
        if _is_number(actual) and any(_is_number(v) and math.isclose(v, actual, rel_tol=1e-9, abs_tol=1e-12) for v in judged):
            matches.append((float(low), float(high)))
    return matches[0] if len(set(matches)) == 1 else None


def _estimates(value: Any, path: tuple) -> Iterable[tuple[tuple, Mapping[str, Any]]]:
    if isinstance(value, Mapping):
        if "value" in value and ("ci_lower" in value or "ci_upper" in value):
            yield path, value
            return
        for key, item in value.items():
            yield from _estimates(item, path + (str(key),))
