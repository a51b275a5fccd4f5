"""Fairness audit: how the trained model's errors and decisions differ between groups of people.

The model scores the held-out test split once (text only). The audit then splits those
predictions by each sensitive column of the data (``audits.fairness.sensitive_columns``,
default ``data.group_columns``) and, with ``audits.fairness.intersections``, by the
intersection of all of them, and reports per group: count, accuracy, selection rate, TPR,
FPR and FNR (with per-class recall for multi-class tasks), each with a seeded bootstrap
confidence interval, and per column the summary measures demographic parity difference and
ratio, equalized odds difference and ratio, equal opportunity difference, worst-group
accuracy and its gap to the overall accuracy. Definitions: :mod:`audits._group_rates`.

**Which class is "positive".** Rates such as TPR need a positive class. With
``audits.fairness.positive_class`` set, all rates are that class's one-vs-rest rates
(``mode = "one_vs_rest"``). A binary task without it uses its second label (e.g. ``1``,
``spam``, ``toxic``). A multi-class task without it uses ``mode = "macro"``: per-group TPR,
FPR, FNR are averages over classes of the one-vs-rest rates; each summary measure is computed
per class and averaged over classes; the per-group selection rate is then null (it averages
to 1/K everywhere) and ``class_selection_rate`` shows the per-class rates instead.

**Small groups.** A group with fewer than ``min_group_size`` test rows is reported with
``insufficient_data: true`` and left out of the summary measures. The policy's
``fairness.insufficient_data`` decides: ``fail`` adds a failing check per column with such
groups; ``warn`` adds a note. A column without two sufficient groups cannot be compared
(``status: "insufficient_data"``). If no column can be compared at all, the audit fails:
fairness that could not be measured is never reported as passed.

**Intervals.** Seeded resamples of the whole test split (rows drawn with replacement, as
Fairlearn's own bootstrap does), one set shared by all columns so that measures combining
metrics stay consistent. Group rates get percentile intervals. The differences and gaps do
not: a percentile interval of a max-minus-min is biased upward near a zero gap (on the default
model one sat wholly above its own estimate; Andrews 2000, Econometrica 68; Fang & Santos 2019,
Rev. Econ. Stud. 86), so each difference of two group rates, a smooth quantity, gets a
simultaneous studentized bootstrap (max-t) interval over all differences entering the measure
(Romano & Wolf 2005), and the measure's interval is derived from them
(:mod:`audits._disparity_intervals`); it always contains the estimate and covers the true
measure with at least the stated level when the differences are covered. The ratios keep
percentile intervals (no shipped policy judges them); the audit adds a note whenever an
estimate falls outside its own interval.

**Support.** A (class, group) cell with fewer than the policy's ``fairness.min_positives``
positives (default 10) is left out of equal opportunity and equalized odds, and listed by
name in ``excluded_cells`` and the audit's notes: a TPR estimated from a handful of positives
swings by 1/n with each example, so a max-minus-min over such cells measures noise, not the
model (Fairlearn's user guide warns that metrics on small subgroups have high variance and
need their uncertainty reported). The same floor applies to negatives for FPR.

**Checks.** One per column and policy threshold, judged three ways on the measure's
bootstrap interval and a permutation test (:mod:`audits._permutation`: the group labels
shuffled ``audits.fairness.n_permutations`` times, the same measure recomputed): **pass**
when the pessimistic end of the interval (upper for a difference or gap, lower for a ratio
or accuracy) meets the limit; **fail** when the optimistic end breaks it too and the
permutation p-value is below ``fairness.significance_level``; **inconclusive** otherwise,
with what a reviewer must look at. The policy's ``fairness.inconclusive`` says what the gate
does with an inconclusive check (block, review, warn). A measure that is undefined fails,
unless cells were left out for want of support, which makes it inconclusive.

Metric keys (``AuditResult.metrics``)
-------------------------------------
``mode`` ("one_vs_rest" | "macro"), ``positive_class`` (label or null),
``positive_class_source``, ``labels``, ``n_test``, ``min_group_size``, ``ci_level``,
``n_boot``, ``seed``, ``bootstrap`` (how the intervals were made), ``sensitive_columns``,
``predicted_classes`` (labels the model predicted at least once),
``overall``: {accuracy, selection_rate, tpr, fpr, fnr}, each an estimate
``{"value", "ci_lower", "ci_upper"}`` (null where undefined),
``columns``: {column name (an intersection is named "a & b", its groups "x | y"): {
``derived`` (bool: proxy attribute, not ground truth), ``intersection`` (bool),
``status`` ("ok" | "insufficient_data"), ``reason``, ``n_groups``, ``n_sufficient_groups``,
``insufficient_groups`` [names], ``worst_group``,
``groups``: [{``group``, ``count``, ``insufficient_data``, ``positives``, ``negatives`` (one-vs-rest
mode), ``accuracy``, ``selection_rate``, ``tpr``, ``fpr``, ``fnr`` (estimates), and for multi-class
tasks ``class_recall`` {label: estimate} and ``class_selection_rate`` {label: value}}],
``summary``: {demographic_parity_difference, demographic_parity_ratio,
equalized_odds_difference, equalized_odds_ratio, equal_opportunity_difference,
worst_group_accuracy, worst_group_accuracy_gap: estimate},
``min_positives``, ``excluded_cells``: [{``class``, ``group``, ``positives``, ``negatives``,
``left_out`` (["tpr"], ["fpr"] or both)}],
``tests``: {measure: {``p_value``, ``alternative``, ``n_permutations``, ``n_defined``, ``median``,
``histogram`` {edges, counts}}}}}, ``n_permutations``.

Evidence (under ``audits/fairness/``): ``groups.csv`` (one row per column and group),
``summary.csv`` (one row per column and measure, with the permutation p-value),
``excluded_cells.csv`` (one row per unsupported cell) and ``class_recall.csv`` for
multi-class tasks.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from audits._disaggregation import disaggregate
from audits._group_rates import GROUP_RATES, confusion_tensor, group_rates
from audits._intervals import bootstrap_counts, estimate, percentile_intervals
from audits._permutation import shuffles
from audits._scoring import load_model_for, score_split
from audits.context import AuditContext
from audits.registry import register
from audits.policy_checks import interval_checks
from audits.result import AuditResult, Check
from secure_ft.errors import AuditError, ConfigError, DataError
from secure_ft.records.atomic_files import atomic_write_text

NAME = "fairness"
BOOTSTRAP_METHOD = (
    "bootstrap over seeded resamples of the whole test split (rows drawn with replacement), shared by all "
    "columns. Demographic parity, equal opportunity and equalized odds differences, worst-group accuracy and its "
    "gap: intervals derived from simultaneous studentized bootstrap (max-t) intervals of every group-rate "
    "difference entering the measure (each difference studentized by its Agresti-Caffo standard error in every "
    "resample; Romano & Wolf 2005, JASA 100; Hall 1992), |d| bounded from each difference's interval, max-minus-"
    "min by the largest lower and upper bounds, equalized odds over the TPR and FPR pairs together, macro mode "
    "averaging per-class bounds of one family spanning all classes; cells supported in the point estimate stay "
    "fixed (min_positives). Not the percentile interval of the resampled max-minus-min, which is biased upward "
    "near a zero gap (Andrews 2000, Econometrica 68; Fang & Santos 2019, Rev. Econ. Stud. 86). Group rates, "
    "demographic parity and equalized odds ratios: equal-tailed percentile intervals (no shipped policy judges "
    "the ratios)")


def resolve_positive_class(requested: str | None, label_names: list[str]) -> tuple[int | None, str]:
    """Index of the positive class (None = macro) and where that choice came from."""
    if requested is not None:
        if requested not in label_names:
            raise ConfigError(
                f"audits.fairness.positive_class: {requested!r} is not a label of the data; "
                f"choose one of {label_names} or null (macro over classes)"
            )
        return label_names.index(requested), "audits.fairness.positive_class"
    if len(label_names) == 2:
        return 1, "default: second label of a binary task"
    return None, "macro over classes (multi-class task, no audits.fairness.positive_class)"


def sensitive_columns(context: AuditContext) -> list[str]:
    configured = context.config.audits.fairness.sensitive_columns
    columns = list(configured) if configured is not None else list(context.splits.group_columns)
    field = "audits.fairness.sensitive_columns" if configured is not None else "data.group_columns"
    if not columns:
        raise AuditError(
            "no sensitive columns to audit: data.group_columns and audits.fairness.sensitive_columns are empty; "
            "name the columns holding group membership (e.g. sex, age_group)"
        )
    test = context.splits.test
    missing = [column for column in columns if column not in test.columns]
    if missing:
        available = [c for c in test.columns if c not in ("row", "text", "label", "label_name")]
        raise AuditError(
            f"{field}: sensitive column(s) {missing} are not in the test split (group columns present: "
            f"{available or 'none'}); list them in data.group_columns so they are loaded with the data"
        )
    return columns


def _group_values(test: pd.DataFrame, columns: list[str]) -> pd.Series:
    values = test[columns[0]].astype(str)
    for column in columns[1:]:
        values = values + " | " + test[column].astype(str)
    return values.reset_index(drop=True)


def _overall(y_true, y_pred, n_classes, positive_class, weights, ci_level) -> tuple[dict, np.ndarray]:
    """Whole-split rates with intervals, and the accuracy of the split and of every resample."""
    confusion = confusion_tensor(y_true, y_pred, np.zeros(len(y_true), dtype=int), 1, n_classes, weights)
    rates = group_rates(confusion, positive_class)
    overall = {}
    for name in GROUP_RATES:
        low, high = percentile_intervals(rates[name][1:, 0], ci_level) if len(weights) > 1 else ([np.nan], [np.nan])
        overall[name] = estimate(rates[name][0, 0], np.ravel(low)[0], np.ravel(high)[0])
    return overall, rates["accuracy"][:, 0]


def _checks_for(column: str, report: dict, policy, level: float) -> tuple[list[Check], list[str]]:
    checks, notes = [], []
    if report["insufficient_groups"]:
        message = (f"{column}: {len(report['insufficient_groups'])} group(s) below the minimum size, left out of "
                   f"the summary measures: {', '.join(map(repr, report['insufficient_groups'][:10]))}"
                   + (" ..." if len(report["insufficient_groups"]) > 10 else ""))
        if policy.insufficient_data == "fail":
            checks.append(Check.evaluate(f"{column}.groups_below_min_size", len(report["insufficient_groups"]), "<=", 0,
                                         note="policy fairness.insufficient_data: fail"))
        else:
            notes.append(f"warning: {message}")
    if report["status"] != "ok":
        if policy.insufficient_data == "fail":
            checks.append(Check.evaluate(f"{column}.comparable_groups", report["n_sufficient_groups"], ">=", 2,
                                         note=report["reason"]))
        else:
            notes.append(f"warning: {column}: not assessed: {report['reason']}")
        return checks, notes
    excluded = report.get("excluded_cells") or []
    if excluded:
        shown = ", ".join(f"{cell['class']!r} in {cell['group']!r} ({cell['positives']} positives, "
                          f"{cell['negatives']} negatives)" for cell in excluded[:12])
        notes.append(f"{column}: {len(excluded)} (class, group) cell(s) below fairness.min_positives = "
                     f"{policy.min_positives} left out of equal opportunity / equalized odds: {shown}"
                     + (" ..." if len(excluded) > 12 else ""))
    tests = report.get("tests") or {}
    p_values = {measure: (tests.get(measure) or {}).get("p_value") for measure in report["summary"]}
    review, undefined = {}, {}
    for measure, value in report["summary"].items():
        p_value = p_values[measure]
        review[measure] = (
            f"the {level:.0%} interval [{_short(value['ci_lower'])}, {_short(value['ci_upper'])}] of {column}'s "
            f"{measure.replace('_', ' ')} reaches across the limit"
            + (f" and shuffled {column} labels give a value this extreme with p = {p_value:.3g}" if p_value is not None else "")
            + f"; read {column}'s per-group rates, excluded cells and permutation distribution in the report's "
            "fairness section and decide whether the gap is acceptable, or add test rows for the small groups")
        if excluded and measure in _SUPPORT_MEASURES and value["value"] is None:
            undefined[measure] = "inconclusive"
            review[measure] = (f"no two groups of {column} have enough positives (fairness.min_positives = "
                               f"{policy.min_positives}) to compare; add test rows for those groups")
    checks += interval_checks(policy, report["summary"], p_values=p_values, alpha=policy.significance_level,
                              scope=f"{column}.", ci_level=level, review=review, undefined=undefined)
    return checks, notes


_SUPPORT_MEASURES = {"equalized_odds_difference", "equalized_odds_ratio", "equal_opportunity_difference"}


def _short(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3g}"


def _interval_notes(reports: dict[str, dict], level: float) -> list[str]:
    """Say so when a point estimate lies outside its own bootstrap interval.

    Only a ratio's percentile interval can: the differences' derived intervals contain their
    estimate by construction.
    """
    notes = []
    for column, report in reports.items():
        for measure, value in report["summary"].items():
            low, high, point = value["ci_lower"], value["ci_upper"], value["value"]
            if None not in (low, high, point) and not low - 1e-12 <= point <= high + 1e-12:
                notes.append(
                    f"{column}.{measure}: the point estimate {point:.3g} lies outside its {level:.0%} bootstrap interval "
                    f"[{low:.3g}, {high:.3g}]: a percentile interval of a min/max ratio over small groups shifts under "
                    "resampling, so read it as a rough range, not as centred on the estimate"
                )
    return notes


_EXCLUDED_COLUMNS = ["column", "class", "group", "positives", "negatives", "left_out"]


def _write_evidence(context: AuditContext, columns: dict[str, dict], multi_class: bool) -> list[str]:
    folder = context.evidence_dir(NAME)
    group_rows, summary_rows, recall_rows, excluded_rows = [], [], [], []
    for column, report in columns.items():
        for group in report["groups"]:
            row = {"column": column, "derived": report["derived"], "group": group["group"], "count": group["count"],
                   "insufficient_data": group["insufficient_data"]}
            for rate in GROUP_RATES:
                row[rate] = group[rate]["value"]
                row[f"{rate}_ci_lower"] = group[rate]["ci_lower"]
                row[f"{rate}_ci_upper"] = group[rate]["ci_upper"]
            group_rows.append(row)
            for label, recall in group.get("class_recall", {}).items():
                recall_rows.append({"column": column, "group": group["group"], "class": label, "recall": recall["value"],
                                    "ci_lower": recall["ci_lower"], "ci_upper": recall["ci_upper"],
                                    "selection_rate": group["class_selection_rate"][label]})
        tests = report.get("tests") or {}
        for measure, value in report["summary"].items():
            test = tests.get(measure) or {}
            summary_rows.append({"column": column, "status": report["status"], "measure": measure, **value,
                                 "permutation_p_value": test.get("p_value"), "permutation_median": test.get("median")})
        for cell in report.get("excluded_cells") or []:
            excluded_rows.append({"column": column, **cell, "left_out": "+".join(cell["left_out"])})
    tables = {"groups.csv": group_rows, "summary.csv": summary_rows, "excluded_cells.csv": excluded_rows}
    if multi_class:
        tables["class_recall.csv"] = recall_rows
    evidence = []
    for filename, rows in tables.items():
        buffer = io.StringIO()
        columns = _EXCLUDED_COLUMNS if filename == "excluded_cells.csv" else None  # headers even when empty
        pd.DataFrame(rows, columns=columns).to_csv(buffer, index=False)
        atomic_write_text(folder / filename, buffer.getvalue())
        evidence.append(str((folder / filename).relative_to(context.run_dir)))
    return evidence


@register(NAME)
def fairness_audit(context: AuditContext) -> AuditResult:
    """Disaggregate the test-split predictions by every sensitive column; see the module docstring."""
    settings = context.config.audits.fairness
    policy = context.policy.fairness
    test = context.splits.test.reset_index(drop=True)
    if len(test) == 0:
        raise DataError("the test split is empty; the fairness audit needs held-out rows (raise data.split.test_fraction)")
    label_names = list(context.splits.label_names)
    columns = sensitive_columns(context)
    positive_class, positive_source = resolve_positive_class(settings.positive_class, label_names)
    if policy.sets_any_check() and settings.n_boot == 0:
        raise AuditError("policy fairness thresholds are judged on bootstrap intervals; set audits.fairness.n_boot > 0")
    if policy.sets_any_check() and 1.0 / (1 + settings.n_permutations) >= policy.significance_level:
        raise AuditError(
            f"audits.fairness.n_permutations = {settings.n_permutations} shuffles cannot give a p-value below the policy's "
            f"fairness.significance_level = {policy.significance_level:g}, so no disparity could ever fail; use at least "
            f"{int(np.ceil(1 / policy.significance_level))} (the default is 1000)")

    classifier = load_model_for(context)
    scores = score_split(classifier, test, context)
    y_true, y_pred = scores.labels, scores.predictions

    rng = np.random.default_rng(context.config.seed)
    weights = np.vstack([np.ones((1, len(test))), bootstrap_counts(len(test), settings.n_boot, rng)])
    overall, overall_accuracy = _overall(y_true, y_pred, len(label_names), positive_class, weights, settings.ci_level)
    orders = shuffles(len(test), settings.n_permutations, rng)  # drawn after the resamples: those stay as they were

    groupings = {column: ([column], column in context.splits.derived_group_columns) for column in columns}
    if settings.intersections and len(columns) > 1:
        derived = any(column in context.splits.derived_group_columns for column in columns)
        groupings[" & ".join(columns)] = (columns, derived)
    reports = {}
    for name, (parts, derived) in groupings.items():
        report = disaggregate(
            y_true, y_pred, _group_values(test, parts), label_names=label_names, positive_class=positive_class,
            min_group_size=settings.min_group_size, row_weights=weights[1:], ci_level=settings.ci_level,
            overall_accuracy=overall_accuracy, min_positives=policy.min_positives, orders=orders,
        )
        reports[name] = {"derived": derived, "intersection": len(parts) > 1, **report}

    checks, notes = [], []
    for name, report in reports.items():
        column_checks, column_notes = _checks_for(name, report, policy, settings.ci_level)
        checks += column_checks
        notes += column_notes
    assessed = sum(report["status"] == "ok" for report in reports.values())
    if assessed == 0:
        checks.append(Check.evaluate("assessable_columns", 0, ">=", 1,
                                     note=f"no sensitive column has two groups with at least {settings.min_group_size} test rows"))
    predicted = sorted({label_names[index] for index in y_pred.tolist()})
    if len(predicted) < len(label_names):
        notes.append(f"the model never predicted {sorted(set(label_names) - set(predicted))} on the test split")
    if positive_class is not None and not (y_true == positive_class).any():
        notes.append(f"positive class {label_names[positive_class]!r} does not occur in the test split: "
                     "TPR, FNR and the measures built on them are undefined")
    notes += _interval_notes(reports, settings.ci_level)
    for name, report in reports.items():
        if report["derived"]:
            notes.append(f"{name} is a derived (proxy) attribute, not ground truth; read its gaps with that in mind")

    metrics = {
        "mode": "one_vs_rest" if positive_class is not None else "macro",
        "positive_class": label_names[positive_class] if positive_class is not None else None,
        "positive_class_source": positive_source,
        "labels": label_names,
        "n_test": int(len(test)),
        "min_group_size": settings.min_group_size,
        "ci_level": settings.ci_level,
        "n_boot": settings.n_boot,
        "seed": context.config.seed,
        "bootstrap": BOOTSTRAP_METHOD,
        "n_permutations": settings.n_permutations,
        "min_positives": policy.min_positives,
        "significance_level": policy.significance_level,
        "permutation_test": "group labels shuffled across test rows, the same measure recomputed; one-sided p-value "
                            "(1 + shuffles at least as extreme) / (1 + shuffles)",
        "sensitive_columns": list(reports),
        "predicted_classes": predicted,
        "overall": overall,
        "columns": reports,
    }
    evidence = _write_evidence(context, reports, multi_class=len(label_names) > 2)
    return AuditResult.from_checks(NAME, metrics, checks, evidence=evidence, notes=notes)
