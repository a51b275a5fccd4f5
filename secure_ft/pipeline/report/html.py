"""The report document rendered as one self-contained HTML page.

The page opens with the verdict and its reasons, then run identity, training summary,
privacy guarantee, the audits (performance, fairness, robustness, privacy: ε and membership inference),
and the effective configuration. Charts are PNGs embedded as ``data:`` URIs and the style
sheet is inline: the page makes no network request and can be archived as a single file.
Every section renders from whatever the document holds; a missing part shows as "not run"
or "not recorded" instead of failing the report.
"""

from __future__ import annotations

import html
import math
from typing import Any, Iterable

import yaml

from secure_ft.pipeline.report import plots
from secure_ft.records.policy import describe_policy
from secure_ft.release.verdict_explanations import audit_status, check_outcome, format_estimate, format_number

SECTIONS = (
    ("verdict", "Verdict"),
    ("identity", "Run identity"),
    ("training", "Training summary"),
    ("privacy", "Privacy guarantee"),
    ("performance", "Performance"),
    ("fairness", "Fairness"),
    ("robustness", "Robustness"),
    ("membership", "Privacy audit (ε and membership inference)"),
    ("documentation", "Technical documentation"),
    ("configuration", "Configuration"),
)
_DEDICATED = {"performance", "fairness", "robustness", "privacy"}

_STYLE = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;background:#f6f7f9}
main{max-width:1040px;margin:0 auto;padding:24px 28px 64px;background:#fff}
h1{font-size:1.6em;margin:0 0 4px}h2{border-bottom:2px solid #e3e6ea;padding-bottom:4px;margin-top:36px}
h3{margin:22px 0 8px;font-size:1.05em}
table{border-collapse:collapse;margin:8px 0 14px;font-size:.9em}
th,td{border:1px solid #dde1e6;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f1f3f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.banner{padding:16px 20px;border-radius:6px;color:#fff;font-size:1.25em;font-weight:600}
.pass{background:#1b7f3b}.fail{background:#b3261e}.review{background:#a15c00}.muted{color:#666}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:.85em;font-weight:600;color:#fff}
.badge.pass{background:#1b7f3b}.badge.fail{background:#b3261e}.badge.review{background:#a15c00}.badge.none{background:#8a8f98}
.note{background:#fff8e1;border-left:4px solid #f2b600;padding:6px 10px;margin:8px 0}
code,pre{font-family:"SFMono-Regular",Consolas,monospace;font-size:.85em}
pre{background:#f6f8fa;padding:10px;overflow-x:auto;border:1px solid #e3e6ea}
img{max-width:100%;height:auto;display:block;margin:8px 0}
nav a{margin-right:12px}details{margin:8px 0}
"""


# -- formatting helpers --------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_estimate(value: Any) -> bool:
    return isinstance(value, dict) and "value" in value and ("ci_lower" in value or "ci_upper" in value)


def fmt(value: Any, digits: int = 4) -> str:
    """A value as the report shows it: numbers to `digits` significant figures, estimates with CI."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if _is_number(value):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return format_number(value, digits)
    if _is_estimate(value):
        low, high = value.get("ci_lower"), value.get("ci_upper")
        point, shown_low, shown_high = format_estimate(value.get("value"), low, high, digits)
        return point if low is None and high is None else f"{point} [{shown_low}, {shown_high}]"
    if isinstance(value, dict) and len(value) <= 12 and all(not isinstance(v, (dict, list)) for v in value.values()):
        return ", ".join(f"{key}: {fmt(item, digits)}" for key, item in value.items()) or "—"
    if isinstance(value, list):
        if len(value) <= 12 and all(not isinstance(item, (dict, list)) for item in value):
            return ", ".join(fmt(item, digits) for item in value)
        return f"{len(value)} values (see audit_report.json)"
    return str(value)


def _table(headers: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            css = ' class="num"' if _is_number(cell) or _is_estimate(cell) else ""
            cells.append(f"<td{css}>{_e(fmt(cell))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _pairs(rows: Iterable[tuple[str, Any]]) -> str:
    return _table(("field", "value"), [(name, value) for name, value in rows])


def _image(uri: str | None, alt: str) -> str:
    return f'<img src="{uri}" alt="{_e(alt)}">' if uri else ""


def _badge(status: str) -> str:
    css = {"passed": "pass", "FAILED": "fail", "could not run": "fail", "not run": "fail", "inconclusive": "review"}.get(status, "none")
    return f'<span class="badge {css}">{_e(status)}</span>'


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested metrics as (dotted name, leaf) rows; estimates and short lists stay whole."""
    if isinstance(value, dict) and not _is_estimate(value):
        rows: list[tuple[str, Any]] = []
        for key, item in value.items():
            rows += flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        rows = []
        for index, item in enumerate(value):
            label = item.get("group") or item.get("name") or item.get("recipe") if isinstance(item, dict) else None
            rows += flatten(item, f"{prefix}[{label if label is not None else index}]")
        return rows
    return [(prefix, value)]


# -- sections ------------------------------------------------------------------------------


def _verdict(report: dict[str, Any]) -> str:
    verdict = report.get("verdict") or {}
    passed = verdict.get("passed") is True
    outcome = verdict.get("outcome") or ("passed" if passed else "blocked")
    banner, css = {
        "passed": ("PASSED — the model may be exported", "pass"),
        "needs_review": ("NEEDS REVIEW — a human reviewer must decide the items below; export releases "
                         "the model only when a release policy's required approvers have signed off", "review"),
    }.get(outcome, ("BLOCKED — the model may not be exported", "fail"))
    parts = [f'<div class="banner {css}" id="verdict-banner">Verdict: {banner}</div>']
    reasons = verdict.get("reasons") or []
    if reasons:
        parts.append("<h3>Reasons</h3><ol>" + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ol>")
    elif passed:
        parts.append("<p>Every audit the policy requires ran and passed every check.</p>")
    review = verdict.get("review") or []
    if review:
        parts.append("<h3>For a human reviewer (inconclusive: the evidence neither meets nor breaks the limit)</h3>"
                     "<ol>" + "".join(f"<li>{_e(item)}</li>" for item in review) + "</ol>")
    explanations = report.get("explanations") or {}
    failed = explanations.get("failed_checks") or []
    if failed:
        parts.append("<h3>What the checks that did not pass mean</h3><ul>" + "".join(
            f"<li><b>{_e(item.get('audit'))}: {_e(item.get('check'))}</b> — {_e(item.get('explanation'))}</li>"
            for item in failed) + "</ul>")
    warnings = [*(verdict.get("warnings") or []), *(explanations.get("interval_warnings") or []),
                *(explanations.get("policy_warnings") or [])]
    if warnings:
        parts.append("<h3>Warnings (do not block export)</h3><ul>" + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>")
    audits = verdict.get("audits") or {}
    if audits:
        parts.append(_table(("audit", "passed"), sorted(audits.items())))
    parts.append(_pairs([
        ("policy", describe_policy(str(verdict.get("policy_name")), str(verdict.get("policy_sha256") or ""))),
        ("policy SHA-256", verdict.get("policy_sha256")),
        ("model SHA-256", verdict.get("model_sha256")), ("decided at (UTC)", verdict.get("timestamp")),
    ]))
    signer = report.get("verdict_signer")
    if signer:
        parts.append(_pairs([("verdict signed by (key SHA-256)", signer.get("public_key_sha256")),
                             ("signing key", signer.get("key_source"))]))
        if signer.get("created_for_this_run"):
            parts.append('<p class="note">No signing key was configured, so a per-user key was made for this run '
                         "and is trusted on this machine only; verifiers elsewhere need its public key.</p>")
    return "".join(parts)


def _identity(report: dict[str, Any]) -> str:
    run = report.get("run") or {}
    data, model = run.get("data") or {}, run.get("model") or {}
    parts = []
    if model and model.get("matches_verdict") is False:
        parts.append('<p class="note">The model folder no longer matches the audited SHA-256: '
                     "it was changed after the audit, and export will be refused.</p>")
    derived = set(data.get("derived_group_columns") or [])
    groups = [f"{c} (derived proxy)" if c in derived else c for c in data.get("group_columns") or []]
    rows = data.get("rows") or {}
    parts.append(_pairs([
        ("run", run.get("name")), ("mode", run.get("mode")),
        ("data source", data.get("source")), ("data fingerprint (SHA-256)", data.get("fingerprint")),
        ("rows (train / validation / test)", " / ".join(fmt(rows.get(k)) for k in ("train", "validation", "test"))),
        ("labels", data.get("labels")), ("group columns", groups or None),
        ("dropped classes", data.get("dropped_classes") or None),
        ("model SHA-256", model.get("sha256")), ("audited model SHA-256", model.get("audited_sha256")),
        ("base model", model.get("base_model")), ("base model revision", model.get("base_model_revision")),
        ("transfer", model.get("transfer")), ("why this transfer", model.get("transfer_reason")),
        ("hyperparameters", model.get("hyperparameters")), ("max sequence length", model.get("max_length")),
        ("seed", run.get("seed")),
        ("policy", f"{(run.get('policy') or {}).get('name')} (SHA-256 {(run.get('policy') or {}).get('sha256')})"),
    ]))
    ledger = run.get("ledger") or {}
    if ledger:
        state = (f"{ledger.get('lines')} events, hash chain verified" if ledger.get("verified")
                 else f"DOES NOT VERIFY: {ledger.get('problem')}")
        parts.append(_pairs([("run ledger (ledger.jsonl)", state)]))
    parts.append(_provenance(report.get("provenance")))
    versions = run.get("library_versions") or {}
    if versions:
        parts.append("<h3>Library versions</h3>" + _table(("library", "version"), sorted(versions.items())))
    machine = run.get("platform") or {}
    if machine:
        parts.append("<h3>Machine</h3>" + _pairs(list(machine.items())))
    return "".join(parts)


def _provenance(provenance: Any) -> str:
    """What the model was built from, as the signed verdict binds it (``provenance.json``)."""
    if not isinstance(provenance, dict):
        return ""
    rows = []
    for kind, entries in (("training data", provenance.get("training_data") or []),
                          ("base model", [provenance.get("base_model") or {}]),
                          ("packages", [provenance.get("packages") or {}]), ("secure-ft", [provenance.get("secure_ft") or {}])):
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or not entry:
                continue
            notes = {k: v for k, v in (entry.get("annotations") or {}).items() if k != "distributions"}
            digest = ", ".join(f"{k}: {v}" for k, v in (entry.get("digest") or {}).items()) or "-"
            rows.append((kind, entry.get("name"), digest, "; ".join(f"{k}: {v}" for k, v in notes.items()) or "-"))
    return ("<h3>Provenance (bound by the signed verdict)</h3>" + _table(("what", "name", "digest", "notes"), rows)
            if rows else "")


def _training(report: dict[str, Any]) -> str:
    training = report.get("training")
    if not isinstance(training, dict):
        return '<p class="muted">No training metrics recorded (metrics.json missing).</p>'
    epochs = [row for row in training.get("epochs") or [] if isinstance(row, dict)]
    parts = [_pairs([
        ("engine", training.get("engine")), ("device", training.get("device")),
        ("optimizer steps", training.get("steps")), ("best epoch", training.get("best_epoch")),
        ("stopped because", training.get("stopped_reason")),
        ("resumed from step", training.get("resumed_from_step")),
        ("training examples", training.get("train_examples")),
        ("trainable / total parameters", f"{fmt(training.get('trainable_parameters'))} / {fmt(training.get('total_parameters'))}"),
        ("majority-class baseline accuracy (validation)", training.get("majority_baseline_accuracy")),
    ])]
    if epochs:
        columns = [("epoch", "epoch"), ("step", "step"), ("train_loss", "training loss"),
                   ("val_loss", "validation loss"), ("val_accuracy", "validation accuracy"),
                   ("val_macro_f1", "validation macro-F1"), ("epsilon", "ε"), ("seconds", "seconds")]
        def lookup(row, key):
            return row.get(key, (row.get("extra") or {}).get(key))
        present = [(key, title) for key, title in columns if any(lookup(row, key) is not None for row in epochs)]
        parts.append(_table([title for _, title in present], [[lookup(row, key) for key, _ in present] for row in epochs]))
        parts.append(_image(plots.training_curves(epochs), "validation accuracy and macro-F1 per epoch"))
    else:
        parts.append('<p class="muted">No per-epoch records.</p>')
    return "".join(parts)


def _privacy(report: dict[str, Any]) -> str:
    guarantee = report.get("privacy_guarantee")
    if not isinstance(guarantee, dict):
        mode = ((report.get("run") or {}).get("config") or {}).get("privacy", {}).get("mode")
        why = "the run was not differentially private (privacy.mode: none)" if mode == "none" else "privacy.json missing"
        return f'<p class="muted">No privacy guarantee recorded: {_e(why)}.</p>'
    rows = [
        ("ε (epsilon)", guarantee.get("epsilon")), ("δ (delta)", guarantee.get("delta")),
        ("accountant", guarantee.get("accountant")), ("noise multiplier σ", guarantee.get("noise_multiplier")),
        ("per-sample clipping norm C", guarantee.get("max_grad_norm")), ("sampling rate q", guarantee.get("sample_rate")),
        ("optimizer steps", guarantee.get("steps")), ("epochs", guarantee.get("epochs")),
        ("training set size", guarantee.get("dataset_size")), ("trained", guarantee.get("trained")),
        ("hyperparameters", guarantee.get("hyperparameters")), ("Opacus version", guarantee.get("opacus_version")),
    ]
    shown = {"epsilon", "delta", "accountant", "noise_multiplier", "max_grad_norm", "sample_rate", "steps", "epochs",
             "dataset_size", "trained", "hyperparameters", "opacus_version", "epsilon_history", "sites", "central"}
    rows += [(key, value) for key, value in guarantee.items() if key not in shown and not isinstance(value, (dict, list))]
    parts = [_pairs(rows)]
    if _is_number(guarantee.get("epsilon")) and _is_number(guarantee.get("delta")):
        parts.append(f"<p>Sample-level (ε = {fmt(guarantee['epsilon'])}, δ = {fmt(guarantee['delta'])})-differential "
                     "privacy: adding or removing any one training example changes the probability of any outcome of "
                     f"training by at most a factor e<sup>ε</sup>, except with probability δ.</p>")
    limit = _check_threshold(report, "privacy", "epsilon")
    parts.append(_image(plots.epsilon_curve(guarantee.get("epsilon_history"), limit), "epsilon spent over optimizer steps"))
    for key, title in (("sites", "Per-site guarantees (federated)"), ("central", "Central (server-side) DP")):
        value = guarantee.get(key)
        if isinstance(value, dict) and value:
            if all(isinstance(item, dict) for item in value.values()):
                fields = sorted({field for item in value.values() for field in item if field != "epsilon_history"})
                parts.append(f"<h3>{_e(title)}</h3>" + _table(["site", *fields], [[site, *[item.get(f) for f in fields]] for site, item in value.items()]))
            else:
                parts.append(f"<h3>{_e(title)}</h3>" + _pairs(flatten(value)))
        elif isinstance(value, list) and value:
            parts.append(f"<h3>{_e(title)}</h3>" + _pairs(flatten({str(i): item for i, item in enumerate(value)})))
    return "".join(parts)


def _check_threshold(report: dict[str, Any], audit: str, needle: str) -> float | None:
    result = (report.get("audits") or {}).get(audit) or {}
    for check in result.get("checks") or []:
        if needle in str(check.get("name", "")) and _is_number(check.get("threshold")):
            return check["threshold"]
    return None


def _audit_header(result: dict[str, Any] | None, name: str, report: dict[str, Any] | None = None) -> tuple[str, bool]:
    """Status line, checks table and notes of one audit; False when the audit did not run."""
    if not result:
        policy = ((report or {}).get("run") or {}).get("policy") or {}
        required = policy.get("required_audits")
        status = audit_status(name, None, required if required is not None else [name], policy.get("name"))
        if status != "not run":  # the policy does not ask for it: nothing failed
            return f"<p>{_badge(status)} The {_e(name)} audit is {_e(status)}.</p>", False
        who = f"policy {policy.get('name')}" if policy.get("name") else "the policy"
        return f"<p>{_badge('not run')} The {_e(name)} audit was not run, although {_e(who)} requires it.</p>", False
    if result.get("error"):
        return f"<p>{_badge('could not run')} {_e(result['error'])}</p>", False
    checks = result.get("checks") or []
    status = audit_status(name, result, [name], None)
    parts = [f"<p>{_badge(status)}</p>"]
    if checks:
        judged = any(c.get("interval") is not None or c.get("p_value") is not None for c in checks)
        shown = {"pass": "ok", "fail": "FAILED", "inconclusive": "INCONCLUSIVE"}
        headers = ("check", "measured", *(("interval", "permutation p") if judged else ()), "required", "result", "note")
        parts.append("<h3>Policy checks</h3>" + _table(headers, [
            (c.get("name"), c.get("actual"),
             *((_bounds(c.get("interval")), c.get("p_value")) if judged else ()),
             f"{c.get('comparison')} {fmt(c.get('threshold'))}", shown[check_outcome(c)],
             " ".join(part for part in (c.get("note"), f"Review: {c['review']}" if c.get("review") else "") if part))
            for c in checks]))
    notes = result.get("notes") or []
    if notes:
        parts.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    return "".join(parts), True


def _bounds(bounds: Any) -> str:
    if isinstance(bounds, list) and len(bounds) == 2 and None not in bounds:
        return f"[{fmt(bounds[0])}, {fmt(bounds[1])}]"
    return "—"


def _all_metrics(result: dict[str, Any]) -> str:
    rows = [(name, value) for name, value in flatten(result.get("metrics") or {}) if name]
    evidence = result.get("evidence") or []
    parts = []
    if rows:
        parts.append("<details><summary>All measurements</summary>" + _pairs(rows) + "</details>")
    if evidence:
        parts.append("<p class='muted'>Evidence files (in the run directory): " + ", ".join(f"<code>{_e(p)}</code>" for p in evidence) + "</p>")
    return "".join(parts)


def _performance(report: dict[str, Any]) -> str:
    result = (report.get("audits") or {}).get("performance")
    header, ran = _audit_header(result, "performance", report)
    if not ran:
        return header
    metrics = result.get("metrics") or {}
    parts = [header]
    headline = [(title, metrics.get(key)) for key, title in (
        ("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("majority_baseline_accuracy", "majority-class baseline accuracy"),
        ("gain_over_majority", "gain over the majority baseline"), ("min_class_recall", "lowest class recall"),
        ("n_test", "test rows"), ("majority_class", "majority class")) if metrics.get(key) is not None]
    if headline:
        level = metrics.get("ci_level")
        parts.append(f"<h3>Test split{f' ({fmt(level)} intervals)' if level else ''}</h3>" + _table(("measure", "estimate [CI]"), headline))
    per_class = [row for row in metrics.get("per_class") or [] if isinstance(row, dict)]
    if per_class:
        parts.append("<h3>Per class</h3>" + _table(
            ("class", "support", "predicted", "precision", "recall", "recall CI", "F1"),
            [(r.get("label"), r.get("support"), r.get("predicted"), r.get("precision"), r.get("recall"),
              r.get("recall_ci"), r.get("f1")) for r in per_class]))
    confusion = metrics.get("confusion_matrix") or {}
    labels, counts = confusion.get("labels") or [], confusion.get("counts") or []
    if labels and len(counts) == len(labels):
        parts.append("<h3>Confusion matrix (rows: true class, columns: predicted)</h3>"
                     + _table(["true \\ predicted", *labels], [[label, *row] for label, row in zip(labels, counts)]))
    rest = {k: v for k, v in metrics.items() if k not in ("per_class", "confusion_matrix")}
    parts.append(_all_metrics({"metrics": rest, "evidence": result.get("evidence")}))
    return "".join(parts)


def _fairness(report: dict[str, Any]) -> str:
    result = (report.get("audits") or {}).get("fairness")
    header, ran = _audit_header(result, "fairness", report)
    if not ran:
        return header
    metrics = result.get("metrics") or {}
    parts = [header]
    overall = metrics.get("overall") or {}
    if overall:
        parts.append("<h3>Overall (test split)</h3>" + _pairs(list(overall.items())))
    level = metrics.get("ci_level")
    if level:
        parts.append(f"<p class='muted'>Intervals: {fmt(level)} {_e(metrics.get('bootstrap') or 'bootstrap')} "
                     f"({fmt(metrics.get('n_boot'))} resamples). Mode: {_e(metrics.get('mode'))}"
                     f"{', positive class ' + _e(metrics.get('positive_class')) if metrics.get('positive_class') else ''}.</p>")
    overall_accuracy = (overall.get("accuracy") or {}).get("value") if isinstance(overall.get("accuracy"), dict) else None
    for column, table in (metrics.get("columns") or {}).items():
        if not isinstance(table, dict):
            continue
        title = column + (" — derived proxy attribute, not ground truth" if table.get("derived") else "")
        parts.append(f"<h3>{_e(title)}</h3>")
        if table.get("status") not in (None, "ok"):
            parts.append(f"<p class='note'>Not assessed: {_e(table.get('reason'))}</p>")
        groups = [g for g in table.get("groups") or [] if isinstance(g, dict)]
        if groups:
            rates = [r for r in ("accuracy", "selection_rate", "tpr", "fpr", "fnr") if any(g.get(r) is not None for g in groups)]
            parts.append(_table(["group", "count", "too small", *rates],
                                [[g.get("group"), g.get("count"), g.get("insufficient_data"), *[g.get(r) for r in rates]] for g in groups]))
            bars = [(str(g.get("group")), *_estimate_parts(g.get("accuracy"))) for g in groups]
            parts.append(_image(plots.group_bars(f"accuracy by {column} (with CI)", bars, overall_accuracy, "overall accuracy"),
                                f"accuracy per group of {column}"))
        summary = table.get("summary") or {}
        tests = table.get("tests") or {}
        if summary:
            parts.append(_table(("measure", "estimate [CI]", "permutation p", "median under shuffled labels"),
                                [(measure, value, (tests.get(measure) or {}).get("p_value"),
                                  (tests.get(measure) or {}).get("median")) for measure, value in summary.items()]))
        excluded = [cell for cell in table.get("excluded_cells") or [] if isinstance(cell, dict)]
        if excluded:
            parts.append(f"<p>{len(excluded)} (class, group) cell(s) with fewer than {_e(table.get('min_positives'))} "
                         "positives (or negatives) are left out of equal opportunity / equalized odds:</p>"
                         + _table(("class", "group", "positives", "negatives", "left out of"),
                                  [(c.get("class"), c.get("group"), c.get("positives"), c.get("negatives"),
                                    ", ".join(c.get("left_out") or [])) for c in excluded]))
        for check in result.get("checks") or []:
            measure = str(check.get("name", "")).removeprefix(f"{column}.")
            test = tests.get(measure) or {}
            if str(check.get("name", "")).startswith(f"{column}.") and test.get("histogram"):
                parts.append(_image(plots.permutation_histogram(
                    f"{column}: {measure.replace('_', ' ')} under shuffled group labels (p = {fmt(test.get('p_value'))})",
                    test["histogram"], (summary.get(measure) or {}).get("value"), check.get("threshold")),
                    f"permutation distribution of {measure} for {column}"))
    parts.append(_all_metrics({"evidence": result.get("evidence")}))
    return "".join(parts)


def _estimate_parts(value: Any) -> tuple[float | None, float | None, float | None]:
    if _is_estimate(value):
        return value.get("value"), value.get("ci_lower"), value.get("ci_upper")
    return (value, None, None) if _is_number(value) else (None, None, None)


_ROBUSTNESS_COLUMNS = [
    ("attacked", "attacked"), ("original_accuracy", "clean accuracy"),
    ("accuracy_under_attack", "accuracy under attack (95% CI)"),
    ("relative_accuracy_under_attack", "under attack / clean (95% CI)"),
    ("attack_success_rate", "attack success rate (95% CI)"), ("avg_queries", "queries per example"),
    ("avg_seconds", "seconds per example"), ("budget_exhausted", "budget exhausted"),
]


def _recipe_rows(rows: dict[str, dict[str, Any]]) -> str:
    return _table(["recipe", *[title for _, title in _ROBUSTNESS_COLUMNS]],
                  [[name, *[r.get(key) for key, _ in _ROBUSTNESS_COLUMNS]] for name, r in rows.items()])


def _threat_model(name: str, row: dict[str, Any]) -> str:
    """One recipe's threat model in words (from the policy), its constraints and what they rejected."""
    threat = row.get("threat_model") if isinstance(row.get("threat_model"), dict) else None
    parts = [f"<h4>{_e(name)}{'' if row.get('gated', True) else ' (stress test, not judged)'}</h4>"]
    if threat:
        parts.append(f"<p><b>Perturbation family:</b> {_e(threat.get('family'))}. <b>Attacker:</b> "
                     f"{_e(threat.get('attacker'))} <b>What stays true:</b> {_e(threat.get('validity'))}</p>")
    else:
        parts.append("<p class='muted'>The policy states no threat model for this recipe.</p>")
    constraints = row.get("constraints") or []
    if constraints:
        parts.append("<p class='muted'>Constraints as built: " + "; ".join(f"<code>{_e(c)}</code>" for c in constraints)
                     + "</p>")
    counts = row.get("constraint_rejections")
    if isinstance(counts, dict):
        rejected = counts.get("rejected_by") or {}
        excluded = counts.get("positions_excluded_by") or {}
        rows = [[c, excluded.get(c), None] for c in excluded] + [[c, None, rejected.get(c)] for c in rejected]
        parts.append(f"<p>{_e(fmt(counts.get('candidates')))} candidate perturbations generated, "
                     f"{_e(fmt(counts.get('passed_to_model')))} passed every constraint and reached the model.</p>")
        parts.append(_table(["constraint", "word positions kept out of the search", "candidates rejected"], rows))
    effect = row.get("front_end_effect")
    if isinstance(effect, dict):
        parts.append(f"<p>Spelling front end on the {_e(fmt(effect.get('changed_words')))} words this recipe changed: "
                     f"{_e(fmt(effect.get('restored')))} read back as the original word, "
                     f"{_e(fmt(effect.get('other_word')))} turned into another real word "
                     f"({_e(fmt(effect.get('other_word_share')))} of them), {_e(fmt(effect.get('as_typed')))} left as typed. "
                     "The front end is part of the attacked surface.</p>")
    return "".join(parts)


def _robustness(report: dict[str, Any]) -> str:
    result = (report.get("audits") or {}).get("robustness")
    header, ran = _audit_header(result, "robustness", report)
    if not ran:
        return header
    metrics = result.get("metrics") or {}
    recipes = metrics.get("recipes") or {}
    if isinstance(recipes, list):
        recipes = {str(r.get("recipe") or r.get("name") or i): r for i, r in enumerate(recipes) if isinstance(r, dict)}
    stress = metrics.get("stress_recipes") if isinstance(metrics.get("stress_recipes"), dict) else {}
    parts = [header]
    rows = {name: r for name, r in recipes.items() if isinstance(r, dict)}
    stress_rows = {name: r for name, r in stress.items() if isinstance(r, dict)}
    if rows:
        parts.append("<h3>Judged recipes</h3>")
        parts.append(_recipe_rows(rows))
        limits = {}
        for check in result.get("checks") or []:
            name = str(check.get("name", ""))
            if name.endswith(".accuracy_under_attack"):
                limits[name.split(".")[0]] = check.get("threshold")
        bars = [(name, _point(_first(r, "original_accuracy", "clean_accuracy", "accuracy")),
                 _point(_first(r, "accuracy_under_attack", "attacked_accuracy", "adversarial_accuracy")),
                 limits.get(name)) for name, r in {**rows, **stress_rows}.items()]
        parts.append(_image(plots.robustness_bars(bars), "clean accuracy and accuracy under attack per recipe"))
    if stress_rows:
        parts.append(f"<h3>Stress test (stock recipes, not judged)</h3><p>The unconstrained recipes on the first "
                     f"{_e(fmt(metrics.get('stress_examples')))} sampled texts: a success may change what the text "
                     "says, so these numbers show how brittle the model is, not whether a realistic attacker wins.</p>")
        parts.append(_recipe_rows(stress_rows))
    if rows or stress_rows:
        parts.append("<h3>Threat model per recipe</h3>")
        encoder = metrics.get("independent_encoder")
        if isinstance(encoder, dict):
            parts.append(f"<p>Meaning is judged by an independent sentence encoder, <code>{_e(encoder.get('name'))}</code> "
                         f"(SHA-256 <code>{_e(encoder.get('sha256'))}</code>), not by the audited model's encoder.</p>")
        parts.extend(_threat_model(name, r) for name, r in {**rows, **stress_rows}.items())
    hidden = ("recipes", "stress_recipes")
    parts.append(_all_metrics({"metrics": {k: v for k, v in metrics.items() if k not in hidden}, "evidence": result.get("evidence")}))
    return "".join(parts)


def _first(row: dict[str, Any], *keys: str) -> Any:
    return next((row[key] for key in keys if row.get(key) is not None), None)


def _point(value: Any) -> float | None:
    return _estimate_parts(value)[0]


def _roc_points(attack: dict[str, Any]) -> tuple[list[float], list[float]]:
    """ROC of one attack: `roc_curve` [[fpr, tpr], ...] or parallel `fpr` / `tpr` lists."""
    curve = attack.get("roc_curve") or attack.get("roc")
    if isinstance(curve, dict):
        return list(curve.get("fpr") or []), list(curve.get("tpr") or [])
    if isinstance(curve, list):
        pairs = [p for p in curve if isinstance(p, (list, tuple)) and len(p) >= 2]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    return list(attack.get("fpr") or []), list(attack.get("tpr") or [])


_ATTACK_COLUMNS = (("auc", "AUC"), ("balanced_accuracy", "balanced accuracy"), ("advantage", "advantage (TPR − FPR)"),
                   ("tpr_at_1pct_fpr", "TPR at 1% FPR"), ("tpr_at_0_1pct_fpr", "TPR at 0.1% FPR"))


def _membership(report: dict[str, Any]) -> str:
    result = (report.get("audits") or {}).get("privacy")
    header, ran = _audit_header(result, "privacy", report)
    if not ran:
        return header
    metrics = result.get("metrics") or {}
    parts = [header]
    guarantee = metrics.get("guarantee") or {}
    scopes = [s for s in guarantee.get("scopes") or [] if isinstance(s, dict)]
    if guarantee:
        state = "differentially private" if guarantee.get("dp") else "NOT differentially private"
        parts.append(f"<h3>Formal guarantee</h3><p>The run was {state}"
                     f"{' (from ' + _e(guarantee.get('source')) + ')' if guarantee.get('source') else ''}.</p>")
        if scopes:
            parts.append(_table(("scope", "ε (— = unbounded)", "δ"), [(s.get("scope"), s.get("epsilon"), s.get("delta")) for s in scopes]))
    parts.append(_dataset_budget(metrics.get("dataset_budget")))
    membership = metrics.get("membership") or {}
    attacks = {name: a for name, a in (membership.get("attacks") or {}).items() if isinstance(a, dict)}
    if membership:
        parts.append("<h3>Membership-inference attacks</h3>" + _pairs([
            ("members attacked (train rows)", membership.get("n_members")),
            ("non-members (held-out rows)", membership.get("n_non_members")),
            ("non-member sources", membership.get("non_member_sources")),
            ("left out (text also in train)", membership.get("excluded_duplicates")),
            ("confidence level", membership.get("ci_level")), ("bootstrap resamples", membership.get("n_boot")),
        ]))
    if attacks:
        parts.append(_table(["attack", *[title for _, title in _ATTACK_COLUMNS], "empirical ε lower bound"],
                            [[name, *[a.get(key) for key, _ in _ATTACK_COLUMNS],
                              (a.get("empirical_epsilon") or {}).get("lower_bound")] for name, a in attacks.items()]))
        curves = {name: (*_roc_points(a), _point(a.get("auc"))) for name, a in attacks.items()}
        parts.append(_image(plots.roc_curves(curves), "membership-inference ROC curves"))
    elif isinstance(membership.get("roc"), dict) or isinstance(metrics.get("roc"), dict):
        holder = membership if isinstance(membership.get("roc"), dict) else metrics
        curves = {"attack": (*_roc_points(holder), _point(holder.get("auc")))}
        parts.append(_image(plots.roc_curves(curves), "membership-inference ROC curve"))
    comparison = metrics.get("epsilon_comparison") or {}
    if comparison:
        parts.append("<h3>Accountant ε against the attack</h3>" + _pairs([
            ("ε from the accountant (upper bound)", comparison.get("accountant_epsilon")),
            ("empirical ε lower bound (from the attacks)", comparison.get("empirical_lower_bound")),
            ("empirical ε point estimate", comparison.get("empirical_point_estimate")),
        ]))
    canary = metrics.get("canary")
    if isinstance(canary, dict):
        parts.append("<h3>Canary exposure</h3>" + _pairs([(k, v) for k, v in canary.items() if k != "canaries"]))
    parts.append(_all_metrics({"metrics": _drop_curves(metrics), "evidence": result.get("evidence")}))
    return "".join(parts)


def _dataset_budget(budget: Any) -> str:
    """The data set's lifetime ε from the privacy budget ledger, and the runs that spent it."""
    if not isinstance(budget, dict):
        return ""
    title = "<h3>The data set's privacy budget (every recorded run)</h3>"
    if budget.get("error"):
        return title + f"<p>The privacy budget ledger could not be read: {_e(budget['error'])}</p>"
    unbounded = budget.get("cumulative_unbounded")
    cumulative = "∞ (no finite bound: a run without DP used this data)" if unbounded else fmt(budget.get("cumulative_epsilon"))
    parts = [title, _pairs([
        ("data fingerprint", budget.get("fingerprint")), ("ledger", budget.get("budget_dir")),
        ("cumulative ε (all runs)", cumulative), ("δ", budget.get("delta")),
        ("lifetime limit (policy privacy.max_dataset_epsilon)", budget.get("limit")),
        ("RDP bound for the same history (looser)", budget.get("rdp_cumulative_epsilon")),
        ("composition", budget.get("note")),
    ])]
    rows = [[row.get("run"), row.get("kind_note") or row.get("kind"), row.get("date"), row.get("status"),
             row.get("mechanism"), "∞" if row.get("epsilon_unbounded") else row.get("epsilon")]
            for row in budget.get("entries") or [] if isinstance(row, dict)]
    if rows:
        parts.append(_table(["run", "kind", "date", "status", "mechanism", "ε of the run"], rows))
    return "".join(parts)


def _drop_curves(value: Any) -> Any:
    """Metrics without long arrays (ROC points, ε history), which the charts show instead."""
    if isinstance(value, dict):
        return {k: _drop_curves(v) for k, v in value.items() if not (isinstance(v, list) and len(v) > 12)}
    return value


def _other_audits(report: dict[str, Any]) -> str:
    parts = []
    for name, result in (report.get("audits") or {}).items():
        if name in _DEDICATED:
            continue
        header, ran = _audit_header(result, name)
        parts.append(f"<h3>{_e(name)}</h3>" + header + (_all_metrics(result) if ran else ""))
    return "".join(parts)


_CARD_LABELS = (("intended_purpose", "Intended purpose"), ("out_of_scope_uses", "Out-of-scope uses"),
                ("known_limitations", "Known limitations"), ("deidentification", "De-identification"),
                ("data_provenance", "Data provenance"))


def _documentation(report: dict[str, Any]) -> str:
    """The card: statements of the run config (EU AI Act Annex IV) and human oversight (the signed approvals)."""
    documentation = report.get("technical_documentation")
    if not isinstance(documentation, dict):
        return '<p class="muted">Not recorded (a report written before the card: section existed).</p>'
    statements = documentation.get("statements") or {}
    sources = documentation.get("source") or {}
    required = set(documentation.get("required_by_policy") or [])
    parts = ['<p class="muted">Statements from the run config\'s <code>card:</code> section, saved in the run\'s '
             "config.yaml, which the signed verdict binds.</p>"]
    for key, label in _CARD_LABELS:
        value = statements.get(key)
        note = []
        if key in required:
            note.append("required by the policy")
        if sources.get(key) and sources.get(key) != "config":
            note.append(str(sources[key]))
        heading = f"<h3>{_e(label)}" + (f' <span class="muted">({_e("; ".join(note))})</span>' if note else "") + "</h3>"
        if value is None:
            body = '<p class="muted">not stated</p>'
        elif isinstance(value, list):
            body = "<ul>" + "".join(f"<li>{_e(item)}</li>" for item in value) + "</ul>"
        else:
            body = f"<p>{_e(value)}</p>"
        parts.append(heading + body)
    oversight = documentation.get("human_oversight") or {}
    parts.append("<h3>Human oversight</h3>")
    approvals = [a for a in oversight.get("approvals") or [] if isinstance(a, dict)]
    if approvals:
        parts.append('<p class="muted">Signed approvals in the run directory, as their files state them; the release '
                     "policy checks each signature at export.</p>")
        parts.append(_table(("approver key (SHA-256)", "decision", "time", "comment"),
                            [(a.get("fingerprint"), a.get("decision"), a.get("time"), a.get("comment"))
                             for a in approvals]))
    else:
        parts.append(f"<p>{_e(oversight.get('statement') or 'none yet')}</p>")
    return "".join(parts)


def _configuration(report: dict[str, Any]) -> str:
    run = report.get("run") or {}
    parts = []
    config = run.get("config")
    parts.append("<h3>Effective run configuration</h3>" + (
        f"<pre>{_e(yaml.safe_dump(config, sort_keys=False))}</pre>" if config else "<p class='muted'>not recorded</p>"))
    policy = (run.get("policy") or {}).get("content")
    if policy:
        parts.append("<h3>Policy</h3>" + f"<pre>{_e(yaml.safe_dump(policy, sort_keys=False))}</pre>")
    return "".join(parts)


_RENDERERS = {
    "verdict": _verdict, "identity": _identity, "training": _training, "privacy": _privacy,
    "performance": _performance, "fairness": _fairness, "robustness": _robustness,
    "membership": _membership, "documentation": _documentation, "configuration": _configuration,
}


def render_html(report: dict[str, Any]) -> str:
    """The whole report page as one HTML string (no external resources)."""
    run = report.get("run") or {}
    title = f"secure-ft audit report — {run.get('name') or 'run'}"
    nav = "".join(f'<a href="#{key}">{_e(label)}</a>' for key, label in SECTIONS)
    body = []
    for key, label in SECTIONS:
        body.append(f'<section id="{key}"><h2>{_e(label)}</h2>{_RENDERERS[key](report)}</section>')
        if key == "membership":
            others = _other_audits(report)
            if others:
                body.append(f'<section id="other-audits"><h2>Other audits</h2>{others}</section>')
    examples = ("Examples from the data are included (report.include_examples: true)." if report.get("examples_included")
                else "No training or test text is included (report.include_examples: false).")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<meta name=\"generator\" content=\"secure-ft report schema {_e(report.get('schema_version'))}\">"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body><main>"
        f"<h1>{_e(title)}</h1><p class=\"muted\">Generated {_e(report.get('generated_at'))} · report schema "
        f"{_e(report.get('schema_version'))} · {_e(examples)}</p><nav>{nav}</nav>"
        + "".join(body) + "</main></body></html>\n"
    )
