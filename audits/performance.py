"""Performance audit: is the trained model useful at all on held-out data?

The trained model scores the test split once. The audit reports accuracy, macro-F1 (averaged
over the classes that occur in the test labels or the predictions, as scikit-learn does),
per-class precision / recall / F1 with support, and the majority-class baseline (always
predicting the training split's most frequent class) with the model's gain over it, each
headline number with a seeded bootstrap percentile interval. A model that merely learned the
class prior has a gain near zero; a class the model never gets right shows as a recall of 0.

Checks against ``policy.performance``: ``min_accuracy``, ``min_macro_f1``,
``min_gain_over_majority`` and ``min_class_recall`` (lowest recall over classes present in
the test split), on the point estimate or, with ``use_ci_bound``, the lower interval bound.

Metric keys (``AuditResult.metrics``)
-------------------------------------
``n_test``, ``labels``, ``n_boot``, ``ci_level``, ``seed``, ``majority_class``,
``accuracy``, ``macro_f1``, ``majority_baseline_accuracy``, ``gain_over_majority``,
``min_class_recall`` (each an estimate ``{"value", "ci_lower", "ci_upper"}``),
``per_class``: [{``label``, ``support``, ``predicted``, ``precision``, ``recall``, ``f1``
(values; null where undefined), ``recall_ci``: [lower, upper]}],
``confusion_matrix``: {``labels``, ``counts`` (rows: true label, columns: predicted)}.

Evidence (under ``audits/performance/``): ``per_class.csv``, ``confusion_matrix.csv``.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from audits._group_rates import confusion_tensor
from audits._intervals import bootstrap_counts, estimate, finite_or_none, percentile_interval, percentile_intervals
from audits._scoring import load_model_for, score_split
from audits.context import AuditContext
from audits.registry import register
from audits.policy_checks import threshold_checks
from audits.result import AuditResult
from secure_ft.errors import DataError
from secure_ft.records.atomic_files import atomic_write_text

NAME = "performance"
N_BOOT = 200
CI_LEVEL = 0.95


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def classification_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and per-class scores from (B, K, K) confusion counts (rows true, columns predicted)."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    support, predicted = confusion.sum(axis=-1), confusion.sum(axis=-2)
    total = confusion.sum(axis=(-2, -1))
    f1 = _divide(2 * tp, support + predicted)  # = 2PR / (P + R); 0 when TP = 0
    present = (support + predicted) > 0
    return {
        "accuracy": _divide(tp.sum(axis=-1), total),
        "precision": _divide(tp, predicted),
        "recall": _divide(tp, support),
        "f1": f1,
        "macro_f1": _divide(np.where(present, f1, 0.0).sum(axis=-1), present.sum(axis=-1)),
        "support": support,
        "predicted": predicted,
    }


def _with_interval(values: np.ndarray) -> dict:
    low, high = percentile_interval(values[1:], CI_LEVEL) if len(values) > 1 else (None, None)
    return estimate(values[0], low, high)


def _write_evidence(context: AuditContext, per_class: list[dict], label_names: list[str], counts: np.ndarray) -> list[str]:
    folder = context.evidence_dir(NAME)
    tables = {
        "per_class.csv": pd.DataFrame(
            [{key: value for key, value in row.items() if key != "recall_ci"}
             | {"recall_ci_lower": row["recall_ci"][0], "recall_ci_upper": row["recall_ci"][1]} for row in per_class]
        ),
        "confusion_matrix.csv": pd.DataFrame(counts, index=pd.Index(label_names, name="true \\ predicted"),
                                             columns=label_names),
    }
    evidence = []
    for filename, table in tables.items():
        buffer = io.StringIO()
        table.to_csv(buffer, index=filename == "confusion_matrix.csv")
        atomic_write_text(folder / filename, buffer.getvalue())
        evidence.append(str((folder / filename).relative_to(context.run_dir)))
    return evidence


@register(NAME)
def performance_audit(context: AuditContext) -> AuditResult:
    """Test-split accuracy, macro-F1, per-class recall and the gain over the majority baseline."""
    splits = context.splits
    test = splits.test.reset_index(drop=True)
    if len(test) == 0:
        raise DataError("the test split is empty; the performance audit needs held-out rows (raise data.split.test_fraction)")
    if len(splits.train) == 0:
        raise DataError("the train split is empty; the majority-class baseline is taken from the training labels")
    label_names = list(splits.label_names)
    classifier = load_model_for(context)
    scores = score_split(classifier, test, context)
    y_true, y_pred = scores.labels, scores.predictions
    majority = int(splits.train["label"].mode().iloc[0])

    rng = np.random.default_rng(context.config.seed)
    weights = np.vstack([np.ones((1, len(test))), bootstrap_counts(len(test), N_BOOT, rng)])
    confusion = confusion_tensor(y_true, y_pred, np.zeros(len(test), dtype=int), 1, len(label_names), weights)[:, 0]
    result = classification_scores(confusion)
    baseline = _divide(confusion[:, majority, :].sum(axis=-1), confusion.sum(axis=(-2, -1)))
    gain = result["accuracy"] - baseline
    recall_low, recall_high = percentile_intervals(result["recall"][1:], CI_LEVEL)
    present = result["support"][0] > 0
    lowest_recall = np.where(present[None, :], result["recall"], np.inf).min(axis=-1)

    per_class = [
        {
            "label": label,
            "support": int(result["support"][0, index]),
            "predicted": int(result["predicted"][0, index]),
            "precision": finite_or_none(result["precision"][0, index]),
            "recall": finite_or_none(result["recall"][0, index]),
            "f1": finite_or_none(result["f1"][0, index]) if present[index] or result["predicted"][0, index] else None,
            "recall_ci": [finite_or_none(recall_low[index]), finite_or_none(recall_high[index])],
        }
        for index, label in enumerate(label_names)
    ]
    metrics = {
        "n_test": int(len(test)),
        "labels": label_names,
        "n_boot": N_BOOT,
        "ci_level": CI_LEVEL,
        "seed": context.config.seed,
        "majority_class": label_names[majority],
        "accuracy": _with_interval(result["accuracy"]),
        "macro_f1": _with_interval(result["macro_f1"]),
        "majority_baseline_accuracy": _with_interval(baseline),
        "gain_over_majority": _with_interval(gain),
        "min_class_recall": _with_interval(np.where(np.isinf(lowest_recall), np.nan, lowest_recall)),
        "per_class": per_class,
        "confusion_matrix": {"labels": label_names, "counts": confusion[0].astype(int).tolist()},
    }

    checks = threshold_checks(context.policy.performance, metrics, ci_level=CI_LEVEL)
    notes = []
    absent = [label for label, row in zip(label_names, per_class) if row["support"] == 0]
    if absent:
        notes.append(f"classes without test rows (recall undefined, left out of macro-F1 unless predicted): {absent}")
    never = [label for label, row in zip(label_names, per_class) if row["predicted"] == 0]
    if never:
        notes.append(f"the model never predicted {never} on the test split")
    evidence = _write_evidence(context, per_class, label_names, confusion[0].astype(int))
    return AuditResult.from_checks(NAME, metrics, checks, evidence=evidence, notes=notes)
