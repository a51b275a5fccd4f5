"""The bundle's model card: a Hugging Face ``README.md`` written from the audit report.

The card follows the Hugging Face model-card layout: YAML front matter (``library_name``,
``pipeline_tag``, ``tags``, ``base_model``, ``model-index`` with the test metrics) followed by
Markdown sections for intended use, training data (its fingerprint, never its text),
training procedure, privacy guarantee, evaluation, fairness, robustness, the privacy audit
(ε and membership inference), limitations, and (from `secure_ft.release.bundle_usage`) how to load the model and verify the bundle.

It is rendered from the report document alone, so the card can never claim more than the
filed report holds.
"""

from __future__ import annotations

from typing import Any

import yaml

from secure_ft.records.policy import describe_policy
from secure_ft.release.bundle_usage import BundleFacts, usage_section, verification_section
from secure_ft.release.verdict_explanations import audit_status, check_outcome, format_estimate, format_number

# the packaged default encoder is this hub model
_DEFAULT_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _value(value: Any) -> Any:
    """Point value of an estimate dict, or the value itself."""
    return value.get("value") if isinstance(value, dict) and "value" in value else value


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, dict) and "value" in value:
        point, low, high = value.get("value"), value.get("ci_lower"), value.get("ci_upper")
        if low is None or high is None:
            return _fmt(point, digits)
        shown = format_estimate(point, low, high, digits)
        return f"{shown[0]} (CI {shown[1]}–{shown[2]})"
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format_number(value, digits)
    return str(value)


def _cell(value: Any) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _front_matter(report: dict[str, Any]) -> dict[str, Any]:
    run = report.get("run") or {}
    model = run.get("model") or {}
    config = run.get("config") or {}
    export = config.get("export") or {}
    performance = ((report.get("audits") or {}).get("performance") or {}).get("metrics") or {}
    tags = ["secure-ft", "text-classification", "audited"]
    if report.get("privacy_guarantee"):
        tags.append("differential-privacy")
    if str(run.get("mode", "")).startswith("federated"):
        tags.append("federated-learning")
    matter: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-classification", "tags": tags}
    if export.get("license"):
        matter["license"] = export["license"]
    base = model.get("base_model")
    if base == "default":
        matter["base_model"] = _DEFAULT_BASE_MODEL
    elif isinstance(base, str) and base.count("/") == 1 and not base.startswith((".", "/", "~")):
        matter["base_model"] = base
    results = []
    for key, metric_type, label in (("accuracy", "accuracy", "test accuracy"), ("macro_f1", "f1", "test macro-F1")):
        value = _value(performance.get(key))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            results.append({"type": metric_type, "value": round(float(value), 6), "name": label})
    if results:
        data = run.get("data") or {}
        matter["model-index"] = [{
            "name": run.get("name") or "secure-ft model",
            "results": [{
                "task": {"type": "text-classification", "name": "Text classification"},
                "dataset": {"name": str(data.get("source") or "private dataset"), "type": "private",
                            "split": "test", "revision": data.get("fingerprint")},
                "metrics": results,
            }],
        }]
    return matter


def _intended_use(report: dict[str, Any]) -> list[str]:
    run = report.get("run") or {}
    export = (run.get("config") or {}).get("export") or {}
    labels = (run.get("data") or {}).get("labels") or []
    card = (report.get("technical_documentation") or {}).get("statements") or {}
    lines = ["## Intended use", ""]
    lines.append(card.get("intended_purpose") or export.get("intended_use") or (
        f"Classifying text into {len(labels)} classes ({', '.join(map(str, labels))}) for texts of the same kind "
        "and population as the training data, as decision support whose outputs a qualified person reviews."
    ))
    lines += ["", "### Out-of-scope use", ""]
    if card.get("out_of_scope_uses"):
        return lines + [f"- {use}" for use in card["out_of_scope_uses"]]
    lines.append(export.get("out_of_scope_use") or (
        "Fully automated decisions about individuals; texts from other domains, languages or populations than the "
        "training data; any use that the fairness and robustness results below do not support."
    ))
    return lines


def _data_section(report: dict[str, Any]) -> list[str]:
    data = (report.get("run") or {}).get("data") or {}
    rows = data.get("rows") or {}
    derived = set(data.get("derived_group_columns") or [])
    groups = [f"{c} (derived proxy)" if c in derived else str(c) for c in data.get("group_columns") or []]
    if data.get("train_rows_used_for_training") is False:  # a deployed federation: the sites' rows trained it
        sites = data.get("sites") or []
        head = [
            "## Training data", "",
            "The model was trained across sites, each on its own rows, which never left the site and are not "
            "part of this bundle. The sites as the coordinator recorded them:", "",
            _table(["site", "training rows", "validation rows"],
                   [[site.get("name"), site.get("train_rows"), site.get("validation_rows")] for site in sites]), "",
            "## Evaluation data (the coordinator's hold-out)", "",
            "The rows below are the coordinator's own held-out set: not used for training; its validation split "
            "chose the saved round and its test split is what the audits measured. It is identified by its "
            "fingerprint: the SHA-256 of its canonical rows, labels and configuration.", "",
        ]
    else:
        head = [
            "## Training data", "",
            "The training text is not part of this bundle. The data is identified by its fingerprint: the SHA-256 "
            "of its canonical rows, labels and configuration, which anyone holding the data can recompute.", "",
        ]
    return [
        *head,
        _table(["field", "value"], [
            ["source", data.get("source")], ["fingerprint (SHA-256)", data.get("fingerprint")],
            ["rows train / validation / test", f"{rows.get('train')} / {rows.get('validation')} / {rows.get('test')}"],
            ["labels", ", ".join(map(str, data.get("labels") or [])) or None],
            ["sensitive group columns (never model input)", ", ".join(groups) or None],
            ["majority-class baseline accuracy", data.get("majority_baseline_accuracy")],
        ]),
    ]


def _training_section(report: dict[str, Any]) -> list[str]:
    run = report.get("run") or {}
    model = run.get("model") or {}
    training = report.get("training") or {}
    config = run.get("config") or {}
    best = training.get("best") or {}
    return [
        "## Training procedure", "",
        _table(["field", "value"], [
            ["mode", run.get("mode")], ["base model", model.get("base_model")], ["transfer", model.get("transfer")],
            ["encoder backend", _backend(model)],
            ["epochs configured", (config.get("training") or {}).get("epochs")],
            ["optimizer steps", training.get("steps")], ["best epoch", training.get("best_epoch")],
            ["best validation accuracy", best.get("val_accuracy")], ["best validation macro-F1", best.get("val_macro_f1")],
            ["seed", run.get("seed")], ["model SHA-256", model.get("sha256")],
        ]),
    ]


def _backend(model: dict[str, Any]) -> str | None:
    """``onnx (int8)``, ``onnx (fp32)``, ``torch``: what runs the encoder (`secure_ft.text.onnx_encoder`)."""
    backend = model.get("encoder_backend")
    if backend != "onnx":
        return backend
    quantize = model.get("encoder_quantize")
    return f"onnx ({'fp32' if quantize in (None, 'none') else quantize}): the exported graph in encoder_onnx/"


def _privacy_section(report: dict[str, Any]) -> list[str]:
    guarantee = report.get("privacy_guarantee")
    lines = ["## Privacy guarantee", ""]
    if not isinstance(guarantee, dict):
        return lines + ["This model was **not** trained with differential privacy; it may memorise training examples."]
    lines.append(
        f"Trained with sample-level differential privacy (DP-SGD, Opacus): **ε = {_fmt(guarantee.get('epsilon'))}, "
        f"δ = {_fmt(guarantee.get('delta'))}** ({guarantee.get('accountant')} accountant). Adding or removing one "
        "training example changes the probability of any training outcome by at most a factor e^ε, except with "
        "probability δ."
    )
    lines += ["", _table(["parameter", "value"], [
        ["noise multiplier", guarantee.get("noise_multiplier")], ["clipping norm", guarantee.get("max_grad_norm")],
        ["sampling rate", guarantee.get("sample_rate")], ["steps", guarantee.get("steps")],
        ["epochs", guarantee.get("epochs")], ["training set size", guarantee.get("dataset_size")],
    ])]
    return lines


def _audit_status(report: dict[str, Any], name: str) -> tuple[dict[str, Any] | None, str]:
    result = (report.get("audits") or {}).get(name)
    policy = (report.get("run") or {}).get("policy") or {}
    required = policy.get("required_audits")
    status = audit_status(name, result, required if required is not None else [name], policy.get("name"))
    return (result if status in ("passed", "FAILED", "inconclusive") else None), status


def _interval(bounds: Any) -> str | None:
    if isinstance(bounds, list) and len(bounds) == 2 and None not in bounds:
        return f"{_fmt(bounds[0])}–{_fmt(bounds[1])}"
    return None


def _checks(result: dict[str, Any]) -> list[str]:
    checks = result.get("checks") or []
    if not checks:
        return []
    shown = {"pass": "ok", "fail": "FAILED", "inconclusive": "inconclusive"}
    return ["", _table(["check", "measured", "interval", "permutation p", "required", "result"], [
        [c.get("name"), c.get("actual"), _interval(c.get("interval")), c.get("p_value"),
         f"{c.get('comparison')} {_fmt(c.get('threshold'))}", shown[check_outcome(c)]]
        for c in checks
    ])]


def _audit_sections(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    result, status = _audit_status(report, "performance")
    lines += ["## Evaluation", "", f"Performance audit on the held-out test split: **{status}**."]
    if result:
        metrics = result.get("metrics") or {}
        scalars = [[k, v] for k, v in metrics.items() if not isinstance(v, (list, dict)) or (isinstance(v, dict) and "value" in v)]
        if scalars:
            lines += ["", _table(["metric", "value"], scalars)]
        lines += _checks(result)

    result, status = _audit_status(report, "fairness")
    lines += ["", "## Fairness", "", f"Fairness audit: **{status}**."]
    if result:
        for column, table in ((result.get("metrics") or {}).get("columns") or {}).items():
            summary = table.get("summary") or {}
            title = f"{column} (derived proxy, not ground truth)" if table.get("derived") else column
            if table.get("status") not in (None, "ok"):
                lines += ["", f"- **{title}**: not assessed — {table.get('reason')}"]
                continue
            lines += ["", f"**{title}** (worst group: {table.get('worst_group')})", "",
                      _table(["measure", "estimate"], [[k, v] for k, v in summary.items()])]
        lines += _checks(result)

    result, status = _audit_status(report, "robustness")
    lines += ["", "## Robustness", "", f"Adversarial robustness audit (TextAttack): **{status}**."]
    if result:
        recipes = (result.get("metrics") or {}).get("recipes") or {}
        if isinstance(recipes, dict) and recipes:
            fields = ["original_accuracy", "accuracy_under_attack", "attack_success_rate"]
            lines += ["", _table(["recipe", *fields], [[name, *[(r or {}).get(f) for f in fields]] for name, r in recipes.items()])]
        lines += _checks(result)

    result, status = _audit_status(report, "privacy")
    lines += ["", "## Privacy audit (ε and membership inference)", "",
              f"Privacy audit (ε bound and membership-inference attack): **{status}**."]
    if result:
        attacks = ((result.get("metrics") or {}).get("membership") or {}).get("attacks") or {}
        fields = ["auc", "advantage", "tpr_at_1pct_fpr"]
        if isinstance(attacks, dict) and attacks:
            lines += ["", "An attacker who sees the model's loss on a text tries to tell training members from "
                      "held-out texts; an AUC near 0.5 means it cannot.", "",
                      _table(["attack", *fields], [[name, *[(a or {}).get(f) for f in fields]] for name, a in attacks.items()])]
        lines += _checks(result)
    return lines


def _limitations(report: dict[str, Any]) -> list[str]:
    data = (report.get("run") or {}).get("data") or {}
    lines = [
        "## Limitations", "",
        "- The audits measure this model on a held-out sample of the same data; performance, fairness and "
        "robustness on other populations are unknown.",
        "- Confidence intervals come from bootstrap resampling of a finite test split; small groups have wide "
        "intervals and groups below the minimum size are not assessed.",
        "- Robustness is measured against the listed attack recipes and query budget only; stronger or different "
        "attacks may succeed more often.",
        "- The membership-inference attack gives empirical evidence, not a proof; the differential-privacy "
        "guarantee (if any) is the formal bound.",
    ]
    if data.get("derived_group_columns"):
        lines.append("- Some group columns are derived proxies (" + ", ".join(data["derived_group_columns"])
                     + "), not self-reported attributes; their fairness results are approximate.")
    warnings = (report.get("verdict") or {}).get("warnings") or []
    lines += [f"- Warning from the gate: {warning}" for warning in warnings]
    explanations = report.get("explanations") or {}
    lines += [f"- Warning: {warning}" for warning in explanations.get("interval_warnings") or []]
    lines += [f"- Policy: {warning}" for warning in explanations.get("policy_warnings") or []]
    return lines


def render_model_card(report: dict[str, Any], facts: BundleFacts | None = None,
                      release: dict[str, Any] | None = None) -> str:
    """README.md text for an export bundle, from the report document.

    `facts` (`secure_ft.release.bundle_usage.bundle_facts`, read from the bundled model folder) adds
    the "How to use" and "Verification" sections; without them the card describes the run only.
    `release` (`secure_ft.release.release_check.ReleaseDecision.summary`) adds "Release and human
    oversight": the release policy export applied and the signed approvals that counted.
    """
    run = report.get("run") or {}
    verdict = report.get("verdict") or {}
    front = yaml.safe_dump(_front_matter(report), sort_keys=False, allow_unicode=True)
    outcome = verdict.get("outcome") or ("passed" if verdict.get("passed") is True else "blocked")
    shown = describe_policy(str(verdict.get("policy_name")), str(verdict.get("policy_sha256") or ""))
    if outcome == "needs_review" and release and release.get("applied"):
        why = (f"Its verdict under policy **{shown}** (SHA-256 `{verdict.get('policy_sha256')}`) on "
               f"{verdict.get('timestamp')} was **needs review**, and it was exported because the organisation's "
               f"release policy **{release.get('name')}** accepted the signed human approvals listed below")
    else:
        why = (f"It was exported only because it passed policy **{shown}** (SHA-256 "
               f"`{verdict.get('policy_sha256')}`) on {verdict.get('timestamp')}")
    lines = [
        "---", front.rstrip(), "---", "",
        f"# {run.get('name') or 'secure-ft model'}", "",
        f"A text classifier fine-tuned and audited with secure-ft. {why}; the full evidence is in "
        "`audit_report.html` / `audit_report.json`.", "",
        f"- Gate verdict: **{verdict.get('outcome') or ('passed' if verdict.get('passed') is True else 'blocked')}**",
        f"- Model SHA-256 (config + weights): `{verdict.get('model_sha256')}`",
        f"- Data fingerprint: `{(run.get('data') or {}).get('fingerprint')}`", "",
    ]
    lines += _intended_use(report) + [""]
    lines += _data_section(report) + [""]
    lines += _training_section(report) + [""]
    lines += _privacy_section(report) + [""]
    lines += _audit_sections(report) + [""]
    lines += _limitations(report) + [""]
    if isinstance(report.get("provenance"), dict):
        lines += _provenance_section(report["provenance"]) + [""]
    lines += _documentation_section(report, release) + [""]
    if release is not None:
        lines += _release_section(release, verdict) + [""]
    if facts is not None:
        lines += usage_section(facts) + [""] + verification_section(facts) + [""]
    return "\n".join(lines)


def _documentation_section(report: dict[str, Any], release: dict[str, Any] | None) -> list[str]:
    """The technical documentation (EU AI Act Annex IV): the run config's card: statements and human oversight.

    Human oversight lists the approvals the release policy checked and counted at export
    (`release`); without a release policy, the approvals the run directory held, as their files
    state them, or "none yet".
    """
    documentation = report.get("technical_documentation")
    lines = ["## Technical documentation", ""]
    if not isinstance(documentation, dict):
        return lines + ["Not recorded: the report predates the run config's `card:` section."]
    statements = documentation.get("statements") or {}
    lines.append("Statements from the run config's `card:` section (`config.yaml` in the run directory, bound by the "
                 "signed verdict).")
    for key, label in (("intended_purpose", "Intended purpose"), ("out_of_scope_uses", "Out-of-scope uses"),
                       ("known_limitations", "Known limitations"), ("deidentification", "De-identification"),
                       ("data_provenance", "Data provenance")):
        value = statements.get(key)
        lines += ["", f"### {label}", ""]
        if not value:
            lines.append("Not stated.")
        elif isinstance(value, list):
            lines += [f"- {item}" for item in value]
        else:
            lines.append(str(value))
    lines += ["", "### Human oversight", ""]
    if release is not None and release.get("applied"):
        approvals = release.get("approvals") or []
        lines.append(f"Approvals checked and counted by the release policy **{release.get('name')}** at export"
                     + (":" if approvals else ": none were required for this verdict."))
        lines += [f"- {a.get('approver')} (key `{a.get('fingerprint')}`), {a.get('time')}: {a.get('comment')}"
                  for a in approvals]
        return lines
    oversight = documentation.get("human_oversight") or {}
    approvals = oversight.get("approvals") or []
    if not approvals:
        return lines + [str(oversight.get("statement") or "None yet.")]
    lines.append("Approvals in the run directory, as their files state them (no release policy checked them at export):")
    lines += [f"- {a.get('decision')} by key `{a.get('fingerprint')}`, {a.get('time')}: {a.get('comment')}"
              for a in approvals]
    return lines


def _release_section(release: dict[str, Any], verdict: dict[str, Any]) -> list[str]:
    """Which release policy let the model out, and who approved it (EU AI Act Art. 14: human oversight)."""
    lines = ["## Release and human oversight", ""]
    if not release.get("applied"):
        return lines + ["No organisation release policy was applied at export; no human approval was required."]
    lines.append(f"Released under the organisation's release policy **{release.get('name')}** (SHA-256 "
                 f"`{release.get('sha256')}`, signed by root key `{release.get('root_public_key_sha256')}`; the "
                 "signed policy is `release-policy.dsse.json` in this bundle).")
    approvals = release.get("approvals") or []
    if approvals:
        lines += ["", "Signed approvals (`approvals/` in this bundle):", ""]
        lines += [f"- **{a.get('approver')}** (key `{a.get('fingerprint')}`), {a.get('time')}: {a.get('comment')}"
                  for a in approvals]
    if verdict.get("outcome") == "needs_review":
        lines += ["", "Items the approvers acknowledged (inconclusive checks of the verdict):", ""]
        lines += [f"- {item}" for item in verdict.get("review") or []]
    return lines


def _provenance_section(provenance: dict[str, Any]) -> list[str]:
    """What the model was built from (`secure_ft.release.provenance`; `provenance.json`, bound by the signed verdict)."""
    def digest(entry: dict) -> str:
        return ", ".join(f"{k} `{v}`" for k, v in (entry.get("digest") or {}).items()) or "no digest"

    lines = ["## Provenance", "", "Bound by the gate's signed verdict (`provenance.json` in this bundle):", ""]
    for entry in provenance.get("training_data") or []:
        fingerprint = (entry.get("annotations") or {}).get("dataset_fingerprint")
        lines.append(f"- Data `{entry.get('name')}`: {digest(entry)}; dataset fingerprint `{fingerprint}`")
    base = provenance.get("base_model") or {}
    lines.append(f"- Base model `{base.get('name')}`: {digest(base)}")
    packages = provenance.get("packages") or {}
    lines.append(f"- Python distributions: {(packages.get('annotations') or {}).get('count')} installed, {digest(packages)}")
    tool = provenance.get("secure_ft") or {}
    lines.append(f"- secure-ft {(tool.get('annotations') or {}).get('version')}: {digest(tool)}")
    return lines
