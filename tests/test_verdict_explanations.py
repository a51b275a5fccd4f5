"""Verdicts explain themselves: failed checks say what they measure and what to do, near-passes warn,
audits a policy does not require are not reported as failures, intervals are printed readably."""

from __future__ import annotations

import html
import json
import re
import shutil

import yaml

import fake_run
from audits.gate import decide
from audits.result import AuditResult, Check
from fake_run import make_run
from secure_ft.pipeline.main_job import PipelineOutcome, print_outcome
from secure_ft.pipeline.report import write_report
from secure_ft.records.policy import load_policy
from secure_ft.release.model_card import render_model_card
from secure_ft.release.verdict_explanations import EXPLANATIONS, explanation_for, format_estimate, interval_warnings


def page_text(path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", path.read_text(encoding="utf-8")))


def rewrite(run, results, policy_text=None):
    """The run's report written again for `results` under `policy_text` (default: the run's policy)."""
    if policy_text is not None:
        (run.run_dir / "policy.yaml").write_text(policy_text)
    policy, sha = load_policy(run.run_dir / "policy.yaml")
    verdict = decide(results, policy, run.verdict.model_sha256, sha)
    json_path, html_path = write_report(run.run_dir, results, verdict, run.config)
    return verdict, json.loads(json_path.read_text()), html_path, json_path


def test_a_failed_check_says_what_it_measures_and_where_to_read_next(tmp_path, capsys):
    run = make_run(tmp_path, passing=False)  # ε 11.5 > 8
    verdict, report, html_path, json_path = rewrite(run, run.results)
    assert not verdict.passed
    failed = report["explanations"]["failed_checks"]
    assert [(item["audit"], item["check"]) for item in failed] == [("privacy", "run.epsilon")]
    sentence = failed[0]["explanation"]
    assert "privacy loss ε" in sentence and "target_epsilon" in sentence and "README: \u201cDifferential privacy\u201d" in sentence
    assert sentence in page_text(html_path)
    print_outcome(PipelineOutcome(run.run_dir, verdict, run.results, json_path, html_path, None))
    out = capsys.readouterr().out
    assert f"  - privacy run.epsilon: {sentence}" in out


def test_every_declared_policy_metric_has_an_explanation():
    from secure_ft.records import policy as policy_module
    from secure_ft.records.policy import declared_requirements, declared_thresholds

    for section in (policy_module.PerformancePolicy, policy_module.RobustnessPolicy, policy_module.FairnessPolicy,
                    policy_module.PrivacyPolicy):
        for threshold in declared_thresholds(section).values():
            assert explanation_for(f"scope.{threshold.check_name}") is not None, threshold.check_name
        for requirement in declared_requirements(section).values():
            assert requirement.check in EXPLANATIONS
    assert explanation_for("deepwordbug.accuracy_under_attack") is EXPLANATIONS["accuracy_under_attack"]


def test_a_pass_whose_interval_contains_the_threshold_warns(tmp_path, capsys):
    run = make_run(tmp_path)
    results = fake_run.audit_results()
    performance = results[0]
    # macro-F1 0.66 with interval [0.58, 0.73] against a minimum of 0.60: passes on the point estimate only
    performance.checks.append(Check.evaluate("macro_f1", 0.66, ">=", 0.60, "point estimate"))
    verdict, report, html_path, json_path = rewrite(run, results)
    assert verdict.passed and verdict.warnings == []
    warnings = report["explanations"]["interval_warnings"]
    assert len(warnings) == 1 and warnings[0].startswith("performance: macro_f1 passed (0.66 >= 0.6")
    assert "[0.58, 0.73] contains the threshold" in warnings[0]
    assert warnings[0] in page_text(html_path)
    assert f"- Warning: {warnings[0]}" in render_model_card(report)
    print_outcome(PipelineOutcome(run.run_dir, verdict, results, json_path, html_path, None))
    assert f"warning: {warnings[0]}" in capsys.readouterr().out
    # the checks the fake run passes clearly (0.66 against 0.20) carry no warning
    assert interval_warnings({"performance": fake_run.audit_results()[0].to_dict()}) == []


def test_an_audit_the_policy_does_not_require_is_not_reported_as_not_run(tmp_path):
    run = make_run(tmp_path)
    policy = yaml.safe_load((run.run_dir / "policy.yaml").read_text())
    policy.update(name="no-fairness", required_audits=["performance", "robustness", "privacy"])
    policy.pop("fairness")
    results = [result for result in fake_run.audit_results() if result.name != "fairness"]
    verdict, report, html_path, _ = rewrite(run, results, yaml.safe_dump(policy))
    assert verdict.passed
    text = page_text(html_path)
    assert "The fairness audit is not required by policy no-fairness." in text
    assert "fairness audit was not run" not in text
    card = render_model_card(report)
    assert "Fairness audit: **not required by policy no-fairness**." in card and "not run" not in card


def test_a_policy_without_judgement_keys_is_named_in_the_report(tmp_path):
    run = make_run(tmp_path)
    policy = yaml.safe_load((run.run_dir / "policy.yaml").read_text())
    del policy["robustness"]["max_budget_exhausted_fraction"], policy["robustness"]["use_ci_bound"]
    _, report, html_path, _ = rewrite(run, fake_run.audit_results(), yaml.safe_dump(policy))
    warnings = report["explanations"]["policy_warnings"]
    assert [w.split(":")[0] for w in warnings] == [
        "policy 'regulated-default' does not set robustness.use_ci_bound",
        "policy 'regulated-default' does not set robustness.max_budget_exhausted_fraction"]
    assert all(w in page_text(html_path) for w in warnings)


def test_intervals_are_printed_at_one_sensible_precision(tmp_path):
    assert format_estimate(0.0123, 3.469e-18, 0.03699) == ("0.0123", "0", "0.03699")
    run = make_run(tmp_path)
    results = fake_run.audit_results()
    results[0].metrics["min_class_recall"] = {"value": 0.0123, "ci_lower": 3.469e-18, "ci_upper": 0.03699}
    _, report, html_path, _ = rewrite(run, results)
    text = page_text(html_path)
    assert "0.0123 [0, 0.03699]" in text and "e-18" not in text
    assert "0.0123 (CI 0–0.03699)" in render_model_card(report)
