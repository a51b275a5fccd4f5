"""A small but complete run directory for report / export tests: tiny model, hand-written JSON.

The audit results follow the metric layouts the audits document (fairness: ``columns`` with
``groups`` and ``summary`` estimates; robustness: ``recipes``; privacy: membership ROC).
A canary string stands in for sensitive test text: it is put where careless code would
leak it (robustness example metrics and an evidence file).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from audits.gate import Verdict, decide
from secure_ft.pipeline.main_job import GateKey, audit_record
from secure_ft.records.run_directory import RunDirectory
from audits.result import AuditResult, Check
from secure_ft.records.config import RunConfig
from secure_ft.records.run_ledger import Ledger
from secure_ft.text.models import load_trained_model, save_trained_model
from tiny_models import tiny_bert_folder
from secure_ft.pipeline.report import write_report
from secure_ft.records.policy import default_policy_path, load_policy

CANARY = "zqxcanary 7781 patient jane roe ssn 078-05-1120"
ROBUSTNESS_EVIDENCE = "audits/robustness/adversarial_examples.jsonl"
ROBUSTNESS_EVIDENCE_BYTES = (json.dumps({"original": CANARY, "perturbed": CANARY}) + "\n").encode()
WORDS = ["loan", "card", "bank", "mortgage", "fee", "late", "charge", "debt", "credit", "account",
         "payment", "interest", "refund", "fraud", "report", "score"]
LABELS = ["credit_card", "mortgage", "debt_collection"]
TEXTS = [f"{WORDS[i % 16]} {WORDS[(3 * i + 1) % 16]} {WORDS[(5 * i + 2) % 16]} charge" for i in range(20)]


def _estimate(value, low, high):
    return {"value": value, "ci_lower": low, "ci_upper": high}


def audit_results(passing: bool = True) -> list[AuditResult]:
    epsilon = 3.2 if passing else 11.5
    performance = AuditResult.from_checks(
        "performance",
        {"n_test": 120, "labels": LABELS, "n_boot": 200, "ci_level": 0.95, "majority_class": "credit_card",
         "accuracy": _estimate(0.71, 0.64, 0.78), "macro_f1": _estimate(0.66, 0.58, 0.73),
         "majority_baseline_accuracy": _estimate(0.41, 0.41, 0.41), "gain_over_majority": _estimate(0.30, 0.22, 0.37),
         "min_class_recall": _estimate(0.55, 0.4, 0.7),
         "per_class": [{"label": label, "support": 40, "predicted": 38 + i, "precision": 0.7, "recall": 0.55 + 0.1 * i,
                        "f1": 0.6 + 0.05 * i, "recall_ci": [0.4, 0.8]} for i, label in enumerate(LABELS)],
         "confusion_matrix": {"labels": LABELS, "counts": [[30, 5, 5], [6, 28, 6], [4, 8, 28]]}},
        [Check.evaluate("gain_over_majority", 0.30, ">=", 0.05), Check.evaluate("macro_f1", 0.66, ">=", 0.20)],
    )
    groups = [
        {"group": name, "count": count, "insufficient_data": count < 20,
         "accuracy": _estimate(acc, acc - 0.08, acc + 0.07), "selection_rate": None,
         "tpr": _estimate(acc - 0.05, acc - 0.15, acc + 0.04), "fpr": _estimate(0.12, 0.05, 0.2),
         "fnr": _estimate(0.3, 0.2, 0.4)}
        for name, count, acc in (("Older American", 40, 0.69), ("none", 70, 0.73), ("Servicemember", 10, 0.6))
    ]
    fairness = AuditResult.from_checks(
        "fairness",
        {"mode": "macro", "positive_class": None, "ci_level": 0.95, "n_boot": 200,
         "bootstrap": "percentile intervals over seeded resamples",
         "overall": {"accuracy": _estimate(0.71, 0.64, 0.78)},
         "columns": {"older_american": {
             "derived": False, "intersection": False, "status": "ok", "reason": None, "n_groups": 3,
             "n_sufficient_groups": 2, "insufficient_groups": ["Servicemember"], "worst_group": "Older American",
             "groups": groups,
             "summary": {"demographic_parity_difference": _estimate(0.04, 0.01, 0.11),
                         "equalized_odds_difference": _estimate(0.07, 0.02, 0.16),
                         "worst_group_accuracy_gap": _estimate(0.02, -0.03, 0.09)}}}},
        [Check.evaluate("older_american.demographic_parity_difference", 0.04, "<=", 0.30),
         Check.evaluate("older_american.equalized_odds_difference", 0.07, "<=", 0.50)],
        evidence=["audits/fairness/groups.csv"],
        notes=["warning: older_american: 1 group(s) below the minimum size"],
    )
    robustness = AuditResult.from_checks(
        "robustness",
        {"recipes": {
            "deepwordbug": {"original_accuracy": 0.7, "accuracy_under_attack": 0.35, "attack_success_rate": 0.5,
                            "examples_attacked": 30, "avg_queries": 41.0},
            "pwws": {"original_accuracy": 0.7, "accuracy_under_attack": 0.42, "attack_success_rate": 0.4,
                     "examples_attacked": 30, "avg_queries": 88.5},
         },
         # careless audits might put raw text here: the report must withhold it
         "worst_examples": [{"original_text": CANARY, "perturbed_text": CANARY + " chrge"}],
         # bound through this result's own digest in the signed verdict
         "evidence_sha256": {ROBUSTNESS_EVIDENCE: hashlib.sha256(ROBUSTNESS_EVIDENCE_BYTES).hexdigest()}},
        [Check.evaluate("deepwordbug.accuracy_under_attack", 0.35, ">=", 0.10),
         Check.evaluate("pwws.accuracy_under_attack", 0.42, ">=", 0.10)],
        evidence=["audits/robustness/adversarial_examples.jsonl"],
    )
    roc = [[i / 20, min(1.0, i / 20 * 1.08)] for i in range(21)]
    attack = {"auc": _estimate(0.53, 0.48, 0.58), "balanced_accuracy": _estimate(0.52, 0.49, 0.55),
              "advantage": _estimate(0.04, 0.0, 0.09), "tpr_at_1pct_fpr": _estimate(0.02, 0.0, 0.05),
              "tpr_at_0_1pct_fpr": _estimate(0.0, 0.0, 0.01), "roc_curve": roc, "fpr_resolution": 0.005,
              "empirical_epsilon": {"point_estimate": 0.2, "lower_bound": 0.0, "confidence": 0.95, "delta": 1e-5}}
    privacy = AuditResult.from_checks(
        "privacy",
        {"guarantee": {"dp": True, "source": "privacy.json", "epsilon": epsilon, "delta": 1e-5,
                       "epsilon_unbounded": False, "scopes": [{"scope": "run", "epsilon": epsilon, "delta": 1e-5}],
                       "epsilon_history": [[s, 0.06 * s] for s in range(1, 55)]},
         "membership": {"n_members": 120, "n_non_members": 120, "non_member_sources": {"test": 120},
                        "excluded_duplicates": 0, "n_boot": 200, "ci_level": 0.95,
                        "attacks": {"loss": attack, "calibrated": {**attack, "auc": _estimate(0.55, 0.5, 0.6)}}},
         "epsilon_comparison": {"accountant_epsilon": epsilon, "empirical_lower_bound": 0.0,
                                "empirical_point_estimate": 0.2},
         "canary": None},
        [Check.evaluate("run.epsilon", epsilon, "<=", 8.0), Check.evaluate("membership_auc", 0.55, "<=", 0.60)],
        evidence=["audits/privacy/roc_loss.csv"],
    )
    return [performance, fairness, robustness, privacy]


@dataclass
class FakeRun:
    run_dir: Path
    config: RunConfig
    results: list[AuditResult]
    verdict: Verdict


def make_run(root: Path, *, passing: bool = True, config: RunConfig | None = None, report: bool = True,
             model_dir: Path | None = None, front_end=None, results: list[AuditResult] | None = None,
             policy_path: Path | None = None, provenance: bool = False, onnx_encoder: bool = False) -> FakeRun:
    """A run directory with model, config, data/metrics/privacy JSON, ledger, verdict and report.

    `model_dir`: a saved classifier with ``len(LABELS)`` classes to put in the run instead of the
    tiny random BERT (benchmarks use a real model). `front_end`: a `secure_ft.text.spelling.SpellingFrontEnd`
    saved inside the run's model folder (part of the model, as training saves it). `results`: the
    audit results to gate and sign instead of `audit_results(passing)`. `policy_path`: the policy
    the gate applies instead of the shipped default. `provenance`: write ``provenance.json`` before
    the report, as the pipeline does. `onnx_encoder`: the model is a probe-style classifier
    (mean-normalised pooling) saved with its exported encoder graph.
    """
    config = config or RunConfig()
    base = model_dir or tiny_bert_folder(root / "base", WORDS, num_labels=len(LABELS), seed=3)
    model, tokenizer = load_trained_model(base)
    model.config.id2label = dict(enumerate(LABELS))
    model.config.label2id = {name: index for index, name in enumerate(LABELS)}
    run_dir = root / "run"
    run_dir.mkdir(parents=True)
    graph = None
    if onnx_encoder:
        from secure_ft.records.model_identity import model_digest
        from secure_ft.text.onnx_encoder import encoder_graph
        from secure_ft.text.pooling import MEAN_NORMALIZED, use_mean_pooling

        use_mean_pooling(model, MEAN_NORMALIZED)
        graph = encoder_graph(model, tokenizer, model_digest(base), MEAN_NORMALIZED)
    digest = save_trained_model(model, tokenizer, run_dir / "model", front_end=front_end, encoder_graph=graph)
    ledger = Ledger(run_dir)
    # as a run saves it (`resolve_run_config`): a built-in data set's card: statements filled in
    from secure_ft.records.technical_documentation import with_builtin_card

    (run_dir / "config.yaml").write_text(with_builtin_card(config).to_yaml())
    ledger.append("config_loaded", source="test")
    data = {"source": "tests/complaints.csv", "fingerprint": "d" * 64,
            "rows": {"train": 560, "validation": 120, "test": 120}, "labels": LABELS,
            "group_columns": ["older_american"], "derived_group_columns": [], "dropped_classes": {},
            "majority_baseline_accuracy": 0.41}
    (run_dir / "data.json").write_text(json.dumps(data))
    ledger.append("data_fingerprinted", fingerprint=data["fingerprint"])
    epochs = [{"epoch": e, "step": 18 * e, "train_loss": 1.1 - 0.2 * e, "val_accuracy": 0.5 + 0.08 * e,
               "val_macro_f1": 0.45 + 0.08 * e, "val_per_class_recall": {}, "seconds": 12.0,
               "extra": {"epsilon": 1.1 * e}} for e in (1, 2, 3)]
    (run_dir / "metrics.json").write_text(json.dumps({
        "steps": 54, "best_epoch": 3, "stopped_reason": "max epochs", "resumed_from_step": None, "epochs": epochs,
        "engine": "dp", "device": "cpu", "transfer": "full", "trainable_parameters": 70000,
        "total_parameters": 70000, "train_examples": 560, "majority_baseline_accuracy": 0.41,
        "best": {"val_accuracy": 0.74, "val_macro_f1": 0.69}, "model_sha256": digest}))
    (run_dir / "privacy.json").write_text(json.dumps({
        "epsilon": 3.2, "delta": 1e-5, "accountant": "prv", "noise_multiplier": 0.9, "max_grad_norm": 1.0,
        "sample_rate": 0.057, "steps": 54, "epochs": 3, "dataset_size": 560, "trained": True,
        "opacus_version": "1.6.0", "epsilon_history": [[s, 0.06 * s] for s in range(1, 55)]}))
    for epoch in epochs:
        ledger.append("epoch_done", epoch=epoch["epoch"], epsilon=epoch["extra"]["epsilon"])
    ledger.append("model_saved", model_sha256=digest)
    evidence = run_dir / "audits" / "robustness"
    evidence.mkdir(parents=True)
    (run_dir / ROBUSTNESS_EVIDENCE).write_bytes(ROBUSTNESS_EVIDENCE_BYTES)
    (run_dir / "audits" / "fairness").mkdir(parents=True)
    (run_dir / "audits" / "fairness" / "groups.csv").write_text("column,group,count\nolder_american,none,70\n")
    (run_dir / "audits" / "privacy").mkdir(parents=True)
    (run_dir / "audits" / "privacy" / "roc_loss.csv").write_text("fpr,tpr\n0,0\n1,1\n")

    shutil.copy(policy_path or default_policy_path(), run_dir / "policy.yaml")
    policy, policy_sha = load_policy(run_dir / "policy.yaml")
    results = results if results is not None else audit_results(passing)
    for result in results:
        ledger.append("audit_finished", audit=result.name, passed=result.passed)
    run = RunDirectory(run_dir)
    for result in results:
        run.write_audit_result(result.name, audit_record(result, config))
    verdict = decide(results, policy, digest, policy_sha)
    run.write_verdict(verdict.to_dict())
    if provenance:
        from secure_ft.release.provenance import write_provenance

        write_provenance(run_dir, config)
    gate_key = GateKey.for_config(config)  # the pipeline's own signing steps, in its order
    if report:
        write_report(run_dir, results, verdict, config, signer=gate_key.describe())
    gate_key.sign(run, verdict, results)
    return FakeRun(run_dir, config, results, verdict)
